"""SDC1-like 560 MHz continuum sky simulator.

:func:`simulate_continuum_field` writes ``image.fits`` (apparent sky x primary beam + noise, Jy/beam),
``pb.fits`` (primary beam, values in [0, 1]) and ``truth.txt`` (SDC1 12-column truth, intrinsic fluxes) into a
directory and returns a :class:`ContinuumField` with the paths and the truth :class:`~astropy.table.Table`.
:func:`sample_population` draws the catalogue population alone (for statistics); :func:`calibrate_population`
re-derives the population model from any SDC1 truth catalogue (the defaults come from the real B1 training
catalogue ``TrainingSet_B1_v2_ML.txt``, see ``docs/sdc1.md``).

Geometry
--------
* Square field of ``size`` x ``size`` pixels, 0.6043" pixels (``CDELT = -/+ 1.67847e-4`` deg), ``RA---SIN`` /
  ``DEC--SIN`` centred on ``center`` (default RA 0, Dec -30 as SDC1); ``CRPIX = size/2 + 0.5`` so the field
  centre is the reference point. Pixel ``x`` grows to the west (RA decreases), ``y`` to the north.
* Header: ``BUNIT = JY/BEAM``, ``BMAJ = BMIN = 4.1666667e-4`` deg (1.5"), ``BPA = 0``, ``FREQ = 5.6e8`` Hz
  (keyword ``RESTFRQ`` too). ``ndim=2`` (default) writes a 2-D image; ``ndim=4`` writes the SDC1
  ``(STOKES, FREQ, Y, X)`` layout with degenerate FREQ (560 MHz) and STOKES axes.

Position angle convention (truth = rendering)
---------------------------------------------
The SDC1 PA is "clockwise from due west". With the image displayed north up / east left, west is +x, so a
source of truth PA ``theta`` is rendered with its major axis along the pixel direction
``(cos theta, -sin theta)`` (rotating from +x towards -y). This is the geometry of CIANNA's target boxes
(``sdc1.md`` §3.6) and corresponds to ``PA_SDC1 = (90 - PA_EofN) mod 180`` for an east-of-north angle. SFG PAs are
drawn in [-90, 90), AGN PAs in [0, 360) like the real catalogue. The pixel frame is used (north = +y at the
reference pixel); the SIN-projection rotation of north away from the centre (< 1.5 deg at the edge of a 5.5 deg
field) is ignored.

Sources
-------
* SFG (class 3): size class 2 = elliptical Gaussian of FWHM ``b_maj, b_min``; size class 3 = exponential disc of
  scale lengths ``b_maj, b_min`` (oversampled stamp, convolved with the beam numerically).
* FS-AGN (class 2): compact circular Gaussian of FWHM ``b_maj`` (core + unresolved lobe), ``core = centroid``.
* SS-AGN (class 1): size class 2 = elliptical Gaussian; size class 1 (LAS) = a point core with
  ``core_frac * flux`` at the host position plus two Gaussian lobes of FWHM ``0.3 LAS x 0.3 LAS * q`` centred
  ``0.35 LAS`` either side along the major axis, carrying ``(1 - core_frac) * flux`` split ``1/2 +- delta``.
  ``delta`` is drawn so that the core-centroid offset follows the real catalogue; the truth centroid is the
  flux-weighted centroid of the rendered components.
* Gaussians are convolved with the beam analytically (covariances add) and evaluated at pixel centres on a
  stamp of +-5 sigma. Pixel value = ``flux_app * beam_area_px * pdf``, so the image sum over a source divided by
  the beam area in pixels is the apparent flux.
* Apparent flux = intrinsic flux x PB at the source position (a per-source factor: the PB varies on degree
  scales). The truth keeps intrinsic (PB-corrected) fluxes, as SDC1.

Primary beam: Airy power pattern ``(2 J1(x)/x)^2`` with ``x = 3.8317 r / pb_null_radius``, set to 0 beyond the
first null (``pb_null_radius = 2.75`` deg: SDC1 B1 "FoV to first null 5.5 deg"); ``pb_null_radius=None`` gives a
flat PB of 1. ``pb.fits`` is a ``pb_npix`` x ``pb_npix`` image on the same projection covering the field.

Noise: white Gaussian noise convolved with the restoring beam and rescaled so its rms is ``noise_rms`` (default
0.36 uJy/beam, the measured rms of the real 1000 h B1 map), plus a confusion component: point sources below the
catalogue population (``confusion_density`` per deg^2, ``dN/dS ~ S^confusion_slope`` between
``confusion_flux_range``), multiplied by the PB and convolved with the beam, not listed in the truth.

Realism options (``docs/sdc1.md`` §1.7-1.8): ``faint_sources=True`` extends the population below the real
catalogue's completeness limit to the density of the official full truth (all listed in the truth);
``dirty_psf=True`` convolves sources below 8.6 uJy/beam with the dirty PSF measured on the real map and gives the
noise its autocorrelation, as SDC1 did.

Large fields are written in horizontal strips of ``strip_rows`` rows straight to the FITS file (header, then
big-endian float32 rows), so memory stays bounded (about 12 x ``strip_rows`` x ``size`` bytes + the source
list). Noise and confusion sources are generated per 64-row block with their own seeds, so the image does not
depend on ``strip_rows``. Everything is reproducible from ``seed``.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.wcs import WCS

__all__ = [
    "PIXEL_SIZE_DEG", "BEAM_FWHM_DEG", "FREQ_HZ", "ComponentModel", "PopulationModel", "ContinuumField",
    "default_population", "calibrate_population", "sample_population", "simulate_continuum_field",
    "make_wcs", "make_header", "primary_beam", "render_sources", "dirty_psf_image", "axes_covariance",
]

log = logging.getLogger(__name__)

PIXEL_SIZE_DEG = 1.67847e-4          #: SDC1 B1 pixel (0.6043")
BEAM_FWHM_DEG = 4.1666667e-4         #: SDC1 B1 restoring beam FWHM (1.5")
FREQ_HZ = 560e6                      #: SDC1 B1 frequency
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
AIRY_FIRST_NULL = 3.8317059702075125
_BLOCK_ROWS = 64                     # noise/confusion block height (independent of the strip height)
#: probability levels of the stored quantile tables
QUANT_P = np.array([0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6,
                    0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99, 0.995, 1.0])
_LAS_LOBE_OFFSET = 0.35              # lobe centre distance from the core, in units of LAS
_LAS_LOBE_FWHM = 0.30                # lobe FWHM along the axis, in units of LAS
# Faint extension of the catalogue population (``faint_sources=True``; docs/sdc1.md §1.7). The real training
# catalogue is a pre-filtered selection: its dN/dlogS turns over below ~5 uJy. Above 6 uJy it is taken as
# complete; below, the counts continue as the power law fitted (maximum likelihood) to its 6-60 uJy sources,
# down to the apparent flux at which the total density reaches that of the official full truth in the 560 MHz
# training box (190 551 rows in 0.3117 deg^2, sdc1 spec §1.1/§1.3).
FAINT_FLUX_BREAK = 6.0e-6            #: Jy; catalogue population kept above, power law below
FAINT_SLOPE = -1.791                 #: dN/dS slope of the real catalogue between 6 and 60 uJy
FAINT_FLUX_MIN = 2.72e-7             #: Jy (apparent); lower flux limit of the truth
FAINT_DENSITY = 562_062.0            #: deg^-2 between FAINT_FLUX_MIN and FAINT_FLUX_BREAK (611 327 - 49 265)
# Dirty PSF (``dirty_psf=True``; docs/sdc1.md §1.8). SDC1 deconvolved "perfectly" only down to 3x the 8 h rms
# (8.6 uJy/beam at 560 MHz); fainter emission was convolved with the dirty PSF (sdc1 spec §1.1). The PSF here is
# a fit to the noise autocorrelation of the real 1000 h B1 map (160 x 174 px cutout of SKAMid_B1_1000h_v3.fits
# in informationcake/SKA_SDC1_solution tests/testdata, sources > 4 sigma masked; under natural weighting the
# noise autocorrelation is the dirty beam): an elliptical main lobe minus a wide negative ring,
#     PSF(x, y) = (1 + a) exp(-x^2 / 2 sx^2 - y^2 / 2 sy^2) - a exp(-r^2 / 2 sr^2),  PSF(0) = 1,
# with x, y in SDC1 B1 pixels (0.6043"), fitted within r <= 7 px (rms residual 0.019, the measurement noise).
# Measured radial profile r = 0..5 px: 1, 0.569, 0.111, -0.060, -0.057, -0.027.
DIRTY_PSF = {"sx": 1.236, "sy": 1.407, "a": 0.424, "sr": 2.188}   #: px of the SDC1 B1 grid
CLEAN_LIMIT = 8.6e-6                 #: Jy/beam; sources with a lower peak are convolved with the dirty PSF
DIRTY_NOISE_RMS = 0.30e-6            #: Jy/beam thermal rms with faint sources and the dirty PSF
FAINT_NOISE_RMS = 0.315e-6           #: Jy/beam thermal rms with the faint sources (total ~0.36 as the real map)


# --------------------------------------------------------------------------------------- population model
@dataclass(frozen=True)
class ComponentModel:
    """Distribution of one (class, size class) component of the source population.

    Attributes
    ----------
    cls, size_class : int
        SDC1 class (1 SS-AGN, 2 FS-AGN, 3 SFG) and size class (1 LAS, 2 Gaussian FWHM, 3 exponential).
    weight : float
        Fraction of the catalogue population in this component.
    logflux_q : tuple of float
        Quantiles of log10(flux / Jy) at :data:`QUANT_P` (inverse CDF, linearly interpolated).
    size_coef : tuple of float
        ``(a, b)`` of ``log10(b_maj / arcsec) = a + b log10(flux / Jy) + residual``.
    size_resid_q : tuple of float
        Quantiles of the residual (dex) at :data:`QUANT_P`.
    ratio_q : tuple of float
        Quantiles of the axis ratio ``b_min / b_maj`` at :data:`QUANT_P`.
    cf_zero_frac : float
        Fraction with ``core_frac == 0``.
    cf_q : tuple of float
        Quantiles of the non-zero ``core_frac`` at :data:`QUANT_P`.
    offset_q : tuple of float
        Quantiles of (core-centroid separation / b_maj) at :data:`QUANT_P` (LAS sources only).
    bmaj_range : tuple of float
        Clip range of ``b_maj`` in arcsec.
    """

    cls: int
    size_class: int
    weight: float
    logflux_q: tuple
    size_coef: tuple
    size_resid_q: tuple
    ratio_q: tuple
    cf_zero_frac: float = 1.0
    cf_q: tuple = (0.0,) * len(QUANT_P)
    offset_q: tuple = (0.0,) * len(QUANT_P)
    bmaj_range: tuple = (1e-3, 120.0)


@dataclass(frozen=True)
class PopulationModel:
    """Catalogue population: components and surface density.

    Attributes
    ----------
    components : tuple of ComponentModel
    density : float
        Sources per square degree (intrinsic, all components).
    """

    components: tuple
    density: float

    @property
    def weights(self) -> np.ndarray:
        """Normalised component weights, shape (n_components,)."""
        w = np.array([c.weight for c in self.components], float)
        return w / w.sum()


def _q(values: np.ndarray) -> tuple:
    return tuple(float(v) for v in np.round(np.quantile(values, QUANT_P), 5))


def calibrate_population(truth: Table, *, area_deg2: float | None = None) -> PopulationModel:
    """Fit the population model to an SDC1 truth catalogue.

    Parameters
    ----------
    truth : astropy.table.Table
        SDC1 catalogue (:func:`cianna.scoring.sdc1.read_sdc1_catalog`), N rows.
    area_deg2 : float, optional
        Solid angle covered by the catalogue in deg^2 (for the density). Default: the RA/Dec bounding box of the
        core positions.

    Returns
    -------
    PopulationModel
        One component per (class, size class) pair present with at least 10 sources.
    """
    flux = np.asarray(truth["flux"], float)
    cls = np.asarray(truth["class"], int)
    size = np.asarray(truth["size"], int)
    bmaj = np.asarray(truth["b_maj"], float)
    bmin = np.asarray(truth["b_min"], float)
    cf = np.asarray(truth["core_frac"], float)
    if area_deg2 is None:
        ra = np.asarray(truth["ra_core"], float)
        ra = np.where(ra > 180, ra - 360, ra)
        dec = np.radians(np.asarray(truth["dec_core"], float))
        area_deg2 = np.degrees(np.ptp(np.radians(ra))) * np.degrees(abs(np.sin(dec.max()) - np.sin(dec.min())))
    comps = []
    for c in (1, 2, 3):
        for s in (1, 2, 3):
            m = (cls == c) & (size == s)
            if m.sum() < 10:
                continue
            lf = np.log10(flux[m])
            bj = np.clip(bmaj[m], 1e-3, None)
            lb = np.log10(bj)
            A = np.vstack([np.ones(m.sum()), lf]).T
            coef = np.linalg.lstsq(A, lb, rcond=None)[0]
            resid = lb - A @ coef
            ratio = np.clip(np.where(bmaj[m] > 0, bmin[m] / np.where(bmaj[m] > 0, bmaj[m], 1), 1.0), 0.0, 1.0)
            cfm = cf[m]
            nz = cfm[cfm > 0]
            ra_c, de_c = np.asarray(truth["ra_core"])[m], np.asarray(truth["dec_core"])[m]
            ra_t, de_t = np.asarray(truth["ra_cent"])[m], np.asarray(truth["dec_cent"])[m]
            sep = np.hypot((ra_c - ra_t) * np.cos(np.radians(de_c)), de_c - de_t) * 3600.0
            comps.append(ComponentModel(
                cls=c, size_class=s, weight=float(m.sum()) / len(flux), logflux_q=_q(lf),
                size_coef=(round(float(coef[0]), 5), round(float(coef[1]), 5)), size_resid_q=_q(resid),
                ratio_q=_q(ratio), cf_zero_frac=round(float(np.mean(cfm <= 0)), 5),
                cf_q=_q(nz) if nz.size else (0.0,) * len(QUANT_P), offset_q=_q(sep / bj),
                bmaj_range=(float(max(bj.min(), 1e-3)), float(bj.max()))))
    return PopulationModel(components=tuple(comps), density=float(len(flux) / area_deg2))


# Calibration of ``calibrate_population`` on the real SDC1 B1 training catalogue TrainingSet_B1_v2_ML.txt
# (19 222 rows; density over the scorer training box 0.3117 deg^2). Regenerate with
# ``calibrate_population(read_sdc1_catalog(path), area_deg2=0.31174)``.
_DEFAULT_CALIBRATION: dict = {
    "density": 61660.4,
    "components": [
        dict(
            bmaj_range=(1.987, 107.11),
            cf_q=(
                0.00036, 0.00038, 0.00041, 0.00076, 0.00253, 0.00297, 0.00414, 0.00463, 0.00487, 0.00597, 0.00684,
                 0.00855, 0.0095, 0.01035, 0.01208, 0.01317, 0.01429, 0.01638, 0.01767, 0.02611, 0.03173, 0.0446,
                 0.08848, 0.09544, 0.1172, 0.22447, 0.3337),
            cf_zero_frac=0.08929,
            cls=1,
            logflux_q=(
                -5.25555, -5.19493, -5.13039, -4.99597, -4.90426, -4.74892, -4.65944, -4.58023, -4.47201,
                 -4.27463, -4.22814, -4.06092, -4.0167, -3.89191, -3.81428, -3.72417, -3.62649, -3.51654, -3.4636,
                 -3.29244, -3.0512, -2.79981, -2.63562, -2.46305, -1.60603, -1.47417, -1.40534),
            offset_q=(
                0.0005, 0.00059, 0.00071, 0.00142, 0.00288, 0.00731, 0.01239, 0.01598, 0.0179, 0.02081, 0.02563,
                 0.03336, 0.03615, 0.04302, 0.05113, 0.05576, 0.05766, 0.06286, 0.06674, 0.07328, 0.08087, 0.10837,
                 0.13076, 0.14914, 0.16895, 0.18358, 0.19974),
            ratio_q=(
                0.21735, 0.24491, 0.2716, 0.3151, 0.33734, 0.42523, 0.45366, 0.4902, 0.50813, 0.53171, 0.55804,
                 0.61102, 0.6561, 0.6961, 0.70576, 0.74399, 0.76746, 0.82317, 0.85002, 0.87394, 0.90356, 0.94041,
                 0.98684, 0.99154, 0.99589, 0.99639, 0.99649),
            size_class=1,
            size_coef=(1.82944, 0.27151),
            size_resid_q=(
                -0.58381, -0.57862, -0.57128, -0.49568, -0.43898, -0.26144, -0.2095, -0.17331, -0.14531, -0.10752,
                 -0.05761, -0.03228, -0.01582, 0.01874, 0.03595, 0.05444, 0.08278, 0.11221, 0.13184, 0.16473,
                 0.23496, 0.27463, 0.35857, 0.41545, 0.50159, 0.55688, 0.61562),
            weight=0.005826656955571741,
        ),
        dict(
            bmaj_range=(0.127, 2.755),
            cf_q=(
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            cf_zero_frac=1.0,
            cls=1,
            logflux_q=(
                -5.26406, -5.2582, -5.25235, -5.23479, -5.21337, -5.14813, -5.07049, -5.01008, -4.94412, -4.75114,
                 -4.67566, -4.60501, -4.49738, -4.42677, -4.33723, -4.30431, -4.28704, -4.16972, -4.01023,
                 -3.94386, -3.87345, -3.1901, -2.61337, -2.1504, -1.93958, -1.8693, -1.79903),
            offset_q=(
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            ratio_q=(
                0.21569, 0.21735, 0.21901, 0.22399, 0.2286, 0.25697, 0.26838, 0.28987, 0.30842, 0.33791, 0.41979,
                 0.44914, 0.48124, 0.56965, 0.58872, 0.6491, 0.67709, 0.68224, 0.72074, 0.77237, 0.81642, 0.87317,
                 0.92832, 0.93535, 0.95294, 0.9588, 0.96466),
            size_class=2,
            size_coef=(0.03222, 0.028),
            size_resid_q=(
                -0.8134, -0.75754, -0.70168, -0.53409, -0.45977, -0.401, -0.38945, -0.21825, -0.19888, -0.1517,
                 -0.1189, -0.0767, -0.05145, -0.00046, 0.03935, 0.10735, 0.14478, 0.17104, 0.25145, 0.27659,
                 0.34758, 0.36325, 0.49955, 0.5265, 0.52765, 0.52804, 0.52842),
            weight=0.0017688065757985641,
        ),
        dict(
            bmaj_range=(0.001, 2.773),
            cf_q=(
                0.50323, 0.51593, 0.53889, 0.56208, 0.60048, 0.62662, 0.66329, 0.6915, 0.70432, 0.72581, 0.73623,
                 0.74915, 0.76712, 0.78125, 0.78876, 0.80971, 0.82074, 0.8392, 0.8545, 0.8715, 0.88743, 0.90253,
                 0.94289, 0.96685, 1.01534, 1.03012, 1.06683),
            cf_zero_frac=0.0,
            cls=2,
            logflux_q=(
                -5.45223, -5.42773, -5.41966, -5.39055, -5.36457, -5.32535, -5.29364, -5.2692, -5.23497, -5.18155,
                 -5.14383, -5.07649, -5.02851, -4.95974, -4.9034, -4.82775, -4.75818, -4.6416, -4.56275, -4.4327,
                 -4.2404, -4.04117, -3.85063, -3.58479, -3.27042, -2.97181, -2.51223),
            offset_q=(
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            ratio_q=(
                1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0,
                 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
            size_class=2,
            size_coef=(-1.10498, 0.12957),
            size_resid_q=(
                -1.34711, -1.33239, -1.30507, -1.27689, -1.23821, -0.96804, -0.78637, -0.71489, -0.56091, -0.4576,
                 -0.31787, -0.19716, -0.10649, -0.02245, 0.09298, 0.18406, 0.26874, 0.33133, 0.41135, 0.55491,
                 0.7785, 1.06759, 1.53804, 1.74849, 1.79253, 1.80638, 2.05883),
            weight=0.013630215378212464,
        ),
        dict(
            bmaj_range=(0.061, 17.798),
            cf_q=(
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            cf_zero_frac=1.0,
            cls=3,
            logflux_q=(
                -5.52874, -5.45187, -5.42812, -5.38913, -5.35003, -5.30397, -5.26239, -5.22417, -5.18792,
                 -5.15152, -5.11304, -5.0765, -5.03539, -4.98992, -4.94116, -4.88919, -4.83664, -4.77578, -4.70321,
                 -4.61414, -4.5175, -4.37625, -4.16861, -3.98638, -3.77894, -3.64333, -3.01066),
            offset_q=(
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            ratio_q=(
                0.01641, 0.07855, 0.094, 0.11621, 0.14101, 0.17533, 0.2, 0.22065, 0.24027, 0.25728, 0.27426,
                 0.2907, 0.30658, 0.32245, 0.33886, 0.35458, 0.37114, 0.38768, 0.40491, 0.42335, 0.44484, 0.47244,
                 0.51266, 0.54617, 0.59636, 0.70225, 0.97536),
            size_class=2,
            size_coef=(2.9344, 0.61887),
            size_resid_q=(
                -0.976, -0.5741, -0.50059, -0.41618, -0.34553, -0.26518, -0.2139, -0.17191, -0.13703, -0.10693,
                 -0.07878, -0.05042, -0.02455, 0.00133, 0.02934, 0.05581, 0.08435, 0.11431, 0.14573, 0.17783,
                 0.21787, 0.2651, 0.33399, 0.39255, 0.45138, 0.48658, 0.66875),
            weight=0.9666007699510977,
        ),
        dict(
            bmaj_range=(1.998, 21.917),
            cf_q=(
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            cf_zero_frac=1.0,
            cls=3,
            logflux_q=(
                -4.6085, -4.48694, -4.47655, -4.40851, -4.37548, -4.26432, -4.19161, -4.14102, -4.0776, -4.01102,
                 -3.94511, -3.86577, -3.80833, -3.75877, -3.71451, -3.63349, -3.5865, -3.51234, -3.44485, -3.39801,
                 -3.31073, -3.21479, -3.03766, -2.98488, -2.85106, -2.73301, -2.29983),
            offset_q=(
                0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            ratio_q=(
                0.045, 0.07508, 0.07578, 0.09903, 0.11267, 0.12775, 0.14796, 0.16039, 0.17201, 0.18811, 0.19954,
                 0.21677, 0.23097, 0.24297, 0.2634, 0.27662, 0.29305, 0.3181, 0.33047, 0.34404, 0.39407, 0.58336,
                 0.8404, 0.88313, 0.90443, 0.9388, 0.97348),
            size_class=3,
            size_coef=(1.38991, 0.18178),
            size_resid_q=(
                -0.43872, -0.4333, -0.40291, -0.35938, -0.33187, -0.22759, -0.10959, -0.08318, -0.075, -0.05502,
                 -0.04277, -0.0275, -0.01064, 0.00675, 0.01997, 0.03407, 0.05015, 0.0731, 0.09768, 0.12027,
                 0.14101, 0.17874, 0.24637, 0.29106, 0.35738, 0.44986, 0.494),
            weight=0.01217355113931953,
        ),
    ],
}


def default_population() -> PopulationModel:
    """Population model calibrated on the real SDC1 B1 training catalogue (see ``docs/sdc1.md``)."""
    comps = tuple(ComponentModel(**c) for c in _DEFAULT_CALIBRATION["components"])
    return PopulationModel(components=comps, density=_DEFAULT_CALIBRATION["density"])


def _inv_cdf(q: tuple, u_: np.ndarray) -> np.ndarray:
    return np.interp(u_, QUANT_P, np.asarray(q, float))


def sample_population(n: int, *, rng: np.random.Generator | int | None = None,
                      model: PopulationModel | None = None, flux: np.ndarray | None = None) -> Table:
    """Draw intrinsic source properties of the catalogue population (no positions).

    Parameters
    ----------
    n : int
        Number of sources.
    rng : numpy.random.Generator or int, optional
        Random generator or seed.
    model : PopulationModel, optional
        Default :func:`default_population`.
    flux : numpy.ndarray, optional
        Shape (n,), Jy: impose these fluxes instead of drawing them from the components' flux distributions
        (the class, size and shape still follow the components, the size through its flux-size relation).

    Returns
    -------
    astropy.table.Table
        n rows: ``flux`` [Jy], ``core_frac``, ``b_maj``, ``b_min`` [arcsec], ``pa`` [deg], ``size``, ``class``,
        ``core_offset`` (core-centroid separation / b_maj, LAS sources) and ``lobe_delta`` (lobe flux
        asymmetry), in the conventions of the module docstring.
    """
    rng = np.random.default_rng(rng)
    model = model or default_population()
    if flux is not None:
        flux = np.asarray(flux, float)
        if flux.shape != (n,) or not np.all(flux > 0):
            raise ValueError(f"flux must be {n} positive values in Jy, got shape {flux.shape}")
    comp_idx = rng.choice(len(model.components), size=n, p=model.weights)
    out = {k: np.zeros(n) for k in ("flux", "core_frac", "b_maj", "b_min", "pa", "core_offset", "lobe_delta")}
    size = np.zeros(n, np.int64)
    klass = np.zeros(n, np.int64)
    for k, comp in enumerate(model.components):
        m = comp_idx == k
        nk = int(m.sum())
        if nk == 0:
            continue
        lf = _inv_cdf(comp.logflux_q, rng.random(nk))
        if flux is not None:
            lf = np.log10(flux[m])
        lb = comp.size_coef[0] + comp.size_coef[1] * lf + _inv_cdf(comp.size_resid_q, rng.random(nk))
        bmaj = np.clip(10.0**lb, *comp.bmaj_range)
        ratio = np.clip(_inv_cdf(comp.ratio_q, rng.random(nk)), 0.02, 1.0)
        cf = np.where(rng.random(nk) < comp.cf_zero_frac, 0.0, _inv_cdf(comp.cf_q, rng.random(nk)))
        if comp.cls == 3:
            pa = rng.uniform(-90.0, 90.0, nk)
        else:
            pa = rng.uniform(0.0, 360.0, nk)
        out["flux"][m] = 10.0**lf
        out["b_maj"][m] = bmaj
        out["b_min"][m] = bmaj * ratio
        out["core_frac"][m] = cf
        out["pa"][m] = pa
        if comp.size_class == 1:
            off = _inv_cdf(comp.offset_q, rng.random(nk))
            delta = np.clip(off / (2.0 * _LAS_LOBE_OFFSET * np.maximum(1.0 - cf, 1e-3)), 0.0, 0.45)
            out["core_offset"][m] = off
            out["lobe_delta"][m] = delta * rng.choice([-1.0, 1.0], nk)
        size[m] = comp.size_class
        klass[m] = comp.cls
    t = Table(out)
    t["size"] = size
    t["class"] = klass
    t["flux"].unit = u.Jy
    for c in ("b_maj", "b_min"):
        t[c].unit = u.arcsec
    t["pa"].unit = u.deg
    return t


# ------------------------------------------------------------------------------------------ geometry & PB
def make_wcs(size: int, *, center: tuple[float, float] = (0.0, -30.0), pixel_size: float = PIXEL_SIZE_DEG) -> WCS:
    """Celestial SIN WCS of a ``size`` x ``size`` field centred on ``center`` (RA, Dec in deg).

    ``CRPIX = size/2 + 0.5`` (1-based), i.e. the reference point is the field centre; ``CDELT1 < 0``.
    """
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [float(center[0]) % 360.0, float(center[1])]
    w.wcs.crpix = [size / 2.0 + 0.5, size / 2.0 + 0.5]
    w.wcs.cdelt = [-pixel_size, pixel_size]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    return w


def _separation_deg(ra, dec, ra0, dec0):
    ra, dec = np.radians(ra), np.radians(dec)
    ra0, dec0 = math.radians(ra0), math.radians(dec0)
    c = np.sin(dec) * math.sin(dec0) + np.cos(dec) * math.cos(dec0) * np.cos(ra - ra0)
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def primary_beam(sep_deg: np.ndarray, null_radius_deg: float | None = 2.75) -> np.ndarray:
    """Airy power pattern ``(2 J1(x) / x)^2``, ``x = 3.8317 sep / null_radius``, 0 beyond the first null.

    Parameters
    ----------
    sep_deg : array_like
        Angular distance from the pointing centre in deg.
    null_radius_deg : float or None
        Radius of the first null in deg (2.75 for SDC1 B1); ``None`` = flat PB of 1.

    Returns
    -------
    numpy.ndarray
        PB values in [0, 1], same shape as ``sep_deg``.
    """
    sep = np.asarray(sep_deg, float)
    if null_radius_deg is None:
        return np.ones_like(sep)
    from scipy.special import j1

    x = AIRY_FIRST_NULL * sep / float(null_radius_deg)
    with np.errstate(invalid="ignore", divide="ignore"):
        pb = np.where(x > 1e-8, (2.0 * j1(x) / np.where(x > 1e-8, x, 1.0)) ** 2, 1.0)
    return np.where(x < AIRY_FIRST_NULL, pb, 0.0)


# ------------------------------------------------------------------------------------------- rendering
@dataclass
class _Components:
    """Rendering list: Gaussians (beam-convolved covariance in px^2) and exponential discs."""

    gx: np.ndarray
    gy: np.ndarray
    gamp: np.ndarray      # apparent flux x beam area in px (Jy/beam x px^2)
    gcov: np.ndarray      # (n, 3): sxx, sxy, syy including the beam
    ghalf: np.ndarray     # stamp half size, px
    ex: np.ndarray
    ey: np.ndarray
    eamp: np.ndarray
    eshape: np.ndarray    # (n, 3): h_major px, h_minor px, theta rad
    ehalf: np.ndarray


def axes_covariance(sig_maj, sig_min, theta_rad):
    """Pixel-frame covariance of a 2-D Gaussian from its axes and SDC1 position angle.

    Parameters
    ----------
    sig_maj, sig_min : array_like
        Standard deviations along the major and minor axes (pixels).
    theta_rad : array_like
        SDC1 PA in radians: the major axis runs along the pixel direction ``(cos θ, −sin θ)``.

    Returns
    -------
    sxx, sxy, syy : numpy.ndarray
        Covariance terms (pixels²), broadcast shape of the inputs.
    """
    c, s = np.cos(theta_rad), -np.sin(theta_rad)       # major-axis unit vector (cos t, -sin t)
    a2, b2 = np.asarray(sig_maj, float) ** 2, np.asarray(sig_min, float) ** 2
    return a2 * c * c + b2 * s * s, (a2 - b2) * c * s, a2 * s * s + b2 * c * c


def _cov(fwhm_maj_px, fwhm_min_px, theta_rad, beam_sigma_px):
    sxx, sxy, syy = axes_covariance(np.asarray(fwhm_maj_px) * FWHM_TO_SIGMA, np.asarray(fwhm_min_px) * FWHM_TO_SIGMA,
                                    theta_rad)
    return np.stack([sxx + beam_sigma_px**2, sxy, syy + beam_sigma_px**2], axis=-1)


def _build_components(cat: dict, pix_deg: float, beam_sigma_px: float, dirty: np.ndarray | None = None,
                      psf: dict | None = None) -> _Components:
    """Turn a catalogue (pixel positions, apparent fluxes) into rendering components.

    ``dirty`` (bool per source) marks single Gaussians convolved with the dirty PSF ``psf`` (:data:`DIRTY_PSF`
    in pixels of this grid) instead of the restoring beam: two components, main lobe and negative ring.
    """
    arcsec_px = 1.0 / (pix_deg * 3600.0)
    beam_area = 2.0 * math.pi * beam_sigma_px**2
    theta = np.radians(cat["pa"])
    gx, gy, gamp, gcov = [], [], [], []
    # single Gaussians: size class 2 (all classes)
    single = cat["size"] == 2
    dirty = np.zeros(single.shape, bool) if dirty is None else (np.asarray(dirty, bool) & single)
    m = single & ~dirty
    gx.append(cat["x"][m]); gy.append(cat["y"][m]); gamp.append(cat["flux_app"][m] * beam_area)
    gcov.append(_cov(cat["b_maj"][m] * arcsec_px, cat["b_min"][m] * arcsec_px, theta[m], beam_sigma_px))
    if dirty.any():
        m = dirty
        intr = _cov(cat["b_maj"][m] * arcsec_px, cat["b_min"][m] * arcsec_px, theta[m], 0.0)
        sx, sy, a, sr = psf["sx"], psf["sy"], psf["a"], psf["sr"]
        f = cat["flux_app"][m]
        gx += [cat["x"][m]] * 2
        gy += [cat["y"][m]] * 2
        gamp += [f * (1.0 + a) * 2.0 * math.pi * sx * sy, -f * a * 2.0 * math.pi * sr**2]
        gcov += [intr + np.array([sx**2, 0.0, sy**2]), intr + np.array([sr**2, 0.0, sr**2])]
    # LAS sources: core + two lobes
    m = cat["size"] == 1
    if m.any():
        las = cat["b_maj"][m] * arcsec_px
        q = cat["b_min"][m] / np.maximum(cat["b_maj"][m], 1e-9)
        ux, uy = np.cos(theta[m]), -np.sin(theta[m])
        f = cat["flux_app"][m] * beam_area
        cf, delta = cat["core_frac"][m], cat["lobe_delta"][m]
        xc, yc = cat["x_core"][m], cat["y_core"][m]
        lobe_cov = _cov(_LAS_LOBE_FWHM * las, _LAS_LOBE_FWHM * las * q, theta[m], beam_sigma_px)
        core_cov = _cov(np.zeros_like(las), np.zeros_like(las), theta[m], beam_sigma_px)
        d = _LAS_LOBE_OFFSET * las
        for sign, frac in ((1.0, 0.5 + delta), (-1.0, 0.5 - delta)):
            gx.append(xc + sign * d * ux); gy.append(yc + sign * d * uy)
            gamp.append(f * (1.0 - cf) * frac); gcov.append(lobe_cov)
        keep = cf > 0
        gx.append(xc[keep]); gy.append(yc[keep]); gamp.append(f[keep] * cf[keep]); gcov.append(core_cov[keep])
    gx, gy, gamp = (np.concatenate(a) for a in (gx, gy, gamp))
    gcov = np.concatenate(gcov, axis=0)
    lam = 0.5 * (gcov[:, 0] + gcov[:, 2]) + np.sqrt(0.25 * (gcov[:, 0] - gcov[:, 2]) ** 2 + gcov[:, 1] ** 2)
    ghalf = np.ceil(5.0 * np.sqrt(lam)).astype(np.int64) + 1
    # exponential discs
    m = cat["size"] == 3
    ha = np.maximum(cat["b_maj"][m] * arcsec_px, 0.05)
    hb = np.maximum(cat["b_min"][m] * arcsec_px, 0.05)
    ehalf = np.ceil(8.0 * ha + 5.0 * beam_sigma_px).astype(np.int64) + 1
    return _Components(gx, gy, gamp, gcov, ghalf, cat["x"][m], cat["y"][m], cat["flux_app"][m] * beam_area,
                       np.stack([ha, hb, theta[m]], axis=-1), ehalf)


def _add_stamp(buf, stamp, x0, y0):
    """Add ``stamp`` with lower-left pixel (x0, y0) into ``buf`` (rows y, cols x), clipping at the edges."""
    h, w = stamp.shape
    by0, bx0 = max(y0, 0), max(x0, 0)
    by1, bx1 = min(y0 + h, buf.shape[0]), min(x0 + w, buf.shape[1])
    if by1 <= by0 or bx1 <= bx0:
        return
    buf[by0:by1, bx0:bx1] += stamp[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0]


def _render_gaussians(buf, comp: _Components, sel: np.ndarray, row0: int):
    """Render the selected Gaussian components into ``buf`` whose first row is image row ``row0``."""
    if sel.size == 0:
        return
    halves = comp.ghalf[sel]
    for k in np.unique(halves):
        idx = sel[halves == k]
        n = 2 * k + 1
        ix0 = np.rint(comp.gx[idx]).astype(np.int64) - k
        iy0 = np.rint(comp.gy[idx]).astype(np.int64) - k
        grid = np.arange(n, dtype=np.float64)
        dx = (ix0[:, None] + grid[None, :]) - comp.gx[idx][:, None]           # (m, n)
        dy = (iy0[:, None] + grid[None, :]) - comp.gy[idx][:, None]
        sxx, sxy, syy = comp.gcov[idx, 0], comp.gcov[idx, 1], comp.gcov[idx, 2]
        det = sxx * syy - sxy**2
        ixx, ixy, iyy = syy / det, -sxy / det, sxx / det
        norm = comp.gamp[idx] / (2.0 * math.pi * np.sqrt(det))
        # exponent: -0.5 (ixx dx^2 + 2 ixy dx dy + iyy dy^2), stamps indexed [m, y, x]
        expo = (ixx[:, None, None] * dx[:, None, :] ** 2
                + 2.0 * ixy[:, None, None] * dx[:, None, :] * dy[:, :, None]
                + iyy[:, None, None] * dy[:, :, None] ** 2)
        stamps = (norm[:, None, None] * np.exp(-0.5 * expo)).astype(np.float32)
        for j in range(len(idx)):
            _add_stamp(buf, stamps[j], int(ix0[j]), int(iy0[j]) - row0)


def _exp_stamp(x, y, amp, ha, hb, theta, half, beam_sigma_px):
    from scipy.ndimage import gaussian_filter

    n = 2 * half + 1
    ix0, iy0 = int(round(x)) - half, int(round(y)) - half
    over = 5 if ha < 2 else (3 if ha < 6 else 1)
    sub = (np.arange(n * over) + 0.5) / over - 0.5
    gx = ix0 + sub - x
    gy = iy0 + sub - y
    c, s = math.cos(theta), -math.sin(theta)
    X, Y = np.meshgrid(gx, gy)                       # [y, x]
    uu = X * c + Y * s
    vv = -X * s + Y * c
    prof = np.exp(-np.sqrt((uu / ha) ** 2 + (vv / hb) ** 2))
    img = prof.reshape(n, over, n, over).mean(axis=(1, 3))
    img *= amp / img.sum()
    img = gaussian_filter(img, beam_sigma_px, mode="constant", truncate=5.0)
    return img.astype(np.float32), ix0, iy0


def _beam_kernel(beam_sigma_px: float) -> np.ndarray:
    half = int(math.ceil(4.0 * beam_sigma_px))
    xk = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (xk / beam_sigma_px) ** 2)
    return k / k.sum()


def dirty_psf_image(half: int, psf: dict | None = None) -> np.ndarray:
    """The dirty PSF of :data:`DIRTY_PSF` sampled on a ``(2 half + 1)^2`` pixel grid (peak 1), rows = y."""
    p = DIRTY_PSF if psf is None else psf
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    return ((1.0 + p["a"]) * np.exp(-0.5 * (xx**2 / p["sx"] ** 2 + yy**2 / p["sy"] ** 2))
            - p["a"] * np.exp(-0.5 * (xx**2 + yy**2) / p["sr"] ** 2))


def _dirty_noise_kernel(psf: dict, half: int = 10) -> np.ndarray:
    """Filter ``h`` with ``h * h = PSF`` (spectral square root, negative frequencies of the PSF clipped), so that
    white noise convolved with ``h`` has the PSF as autocorrelation; unit L2 norm, shape (2 half + 1)^2."""
    n = 128
    big = np.zeros((n, n))
    img = dirty_psf_image(n // 2 - 1, psf)
    big[1:, 1:] = img
    spec = np.fft.fft2(np.fft.ifftshift(big)).real
    h = np.fft.fftshift(np.fft.ifft2(np.sqrt(np.clip(spec, 0.0, None))).real)
    c = n // 2
    h = h[c - half:c + half + 1, c - half:c + half + 1]
    return h / np.sqrt(np.sum(h**2))


@dataclass
class _Background:
    """Noise + confusion generator, one seeded block of rows at a time (width = size + 2 margin)."""

    size: int
    seed: int
    sigma_white: float           # per-pixel std before the beam convolution
    conf_per_px: float           # confusion sources per pixel
    conf_range: tuple
    conf_slope: float
    beam_area: float
    pb_fn: object                # callable (x, y) -> PB
    margin: int

    def block(self, b: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 104729, b + 1_000_000])
        w = self.size + 2 * self.margin
        out = rng.standard_normal((_BLOCK_ROWS, w), dtype=np.float32)
        out *= np.float32(self.sigma_white)
        n = rng.poisson(self.conf_per_px * _BLOCK_ROWS * w)
        if n:
            xs = rng.uniform(-0.5, w - 0.5, n)
            ys = rng.uniform(-0.5, _BLOCK_ROWS - 0.5, n)
            s = _powerlaw(rng, n, *self.conf_range, self.conf_slope)
            s *= self.pb_fn(xs - self.margin, ys + b * _BLOCK_ROWS)
            np.add.at(out, (np.rint(ys).astype(int), np.rint(xs).astype(int)), (s * self.beam_area).astype(np.float32))
        return out

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Unconvolved background for image rows [r0, r1), columns -margin .. size + margin."""
        b0, b1 = r0 // _BLOCK_ROWS, (r1 - 1) // _BLOCK_ROWS
        stack = np.concatenate([self.block(b) for b in range(b0, b1 + 1)], axis=0)
        off = r0 - b0 * _BLOCK_ROWS
        return stack[off:off + (r1 - r0)]


def _powerlaw(rng, n, smin, smax, slope):
    """Draw n values from dN/dS ~ S^slope on [smin, smax]."""
    u_ = rng.random(n)
    a = slope + 1.0
    if abs(a) < 1e-9:
        return smin * (smax / smin) ** u_
    return (smin**a + u_ * (smax**a - smin**a)) ** (1.0 / a)


def render_sources(shape: tuple[int, int], catalog: dict, *, pixel_size: float = PIXEL_SIZE_DEG,
                   beam_fwhm: float = BEAM_FWHM_DEG) -> np.ndarray:
    """Render a catalogue (pixel positions, apparent fluxes) into a noiseless image (in memory).

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the output.
    catalog : dict of numpy.ndarray
        Keys ``x, y, x_core, y_core`` (0-based px), ``flux_app`` (Jy), ``b_maj, b_min`` (arcsec), ``pa`` (deg,
        SDC1 convention), ``size``, ``core_frac``, ``lobe_delta`` (as in :func:`sample_population`).
    pixel_size, beam_fwhm : float
        Pixel size and beam FWHM in deg.

    Returns
    -------
    numpy.ndarray, shape (ny, nx), float32
        Image in Jy/beam.
    """
    beam_sigma_px = beam_fwhm * FWHM_TO_SIGMA / pixel_size
    comp = _build_components(catalog, pixel_size, beam_sigma_px)
    buf = np.zeros(shape, np.float32)
    _render_gaussians(buf, comp, np.arange(comp.gx.size), 0)
    for j in range(comp.ex.size):
        st, ix0, iy0 = _exp_stamp(comp.ex[j], comp.ey[j], comp.eamp[j], *comp.eshape[j], comp.ehalf[j], beam_sigma_px)
        _add_stamp(buf, st, ix0, iy0)
    return buf


# ---------------------------------------------------------------------------------------------- fields
@dataclass
class ContinuumField:
    """Result of :func:`simulate_continuum_field`.

    Attributes
    ----------
    image, pb, truth_path : str
        Paths of ``image.fits``, ``pb.fits`` and ``truth.txt``.
    truth : astropy.table.Table
        Truth with the 12 SDC1 columns plus ``x, y`` (centroid px, 0-based), ``x_core, y_core``, ``pb``,
        ``flux_app`` [Jy] (flux x PB), ``peak_app`` [Jy/beam] (analytic restoring-beam peak of single-Gaussian
        sources, NaN otherwise), ``dirty`` (rendered with the dirty PSF).
    wcs : astropy.wcs.WCS
        Celestial WCS of the image.
    meta : dict
        Settings, timings, measured rms of the white noise.
    """

    image: str
    pb: str
    truth_path: str
    truth: Table
    wcs: WCS
    meta: dict = field(default_factory=dict)


def make_header(wcs: WCS, size: int, *, ndim: int = 2, freq_hz: float = FREQ_HZ,
                beam_fwhm: float = BEAM_FWHM_DEG) -> fits.Header:
    """FITS header of a simulated ``size`` x ``size`` float32 image (SDC1-like keywords, see module notes).

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        Celestial WCS (:func:`make_wcs`).
    size : int
        Image side in pixels.
    ndim : {2, 4}, optional
        2-D image or ``(1, 1, size, size)`` layout with FREQ and STOKES axes.
    freq_hz, beam_fwhm : float, optional
        Frequency (Hz) and circular beam FWHM (deg).

    Returns
    -------
    astropy.io.fits.Header
    """
    hdr = fits.Header()
    hdr["SIMPLE"] = True
    hdr["BITPIX"] = -32
    hdr["NAXIS"] = ndim
    hdr["NAXIS1"] = size
    hdr["NAXIS2"] = size
    if ndim == 4:
        hdr["NAXIS3"] = 1
        hdr["NAXIS4"] = 1
    hdr["EXTEND"] = True
    hdr.update(wcs.to_header())
    if ndim == 4:
        hdr["CTYPE3"], hdr["CRVAL3"], hdr["CDELT3"], hdr["CRPIX3"], hdr["CUNIT3"] = "FREQ", freq_hz, 0.3 * freq_hz, 1.0, "Hz"
        hdr["CTYPE4"], hdr["CRVAL4"], hdr["CDELT4"], hdr["CRPIX4"], hdr["CUNIT4"] = "STOKES", 1.0, 1.0, 1.0, ""
    hdr["BMAJ"] = beam_fwhm
    hdr["BMIN"] = beam_fwhm
    hdr["BPA"] = 0.0
    hdr["BUNIT"] = "JY/BEAM"
    hdr["FREQ"] = (freq_hz, "[Hz] observing frequency")
    hdr["RESTFRQ"] = freq_hz
    hdr["ORIGIN"] = "cianna.sim.continuum"
    return hdr


def _pb_image(wcs: WCS, size: int, center, null_radius, npix: int, pixel_size: float):
    pw = make_wcs(npix, center=center, pixel_size=pixel_size * (size + 8) / (npix - 1))  # 4 px margin
    yy, xx = np.mgrid[0:npix, 0:npix]
    ra, dec = pw.all_pix2world(xx, yy, 0)
    data = primary_beam(_separation_deg(ra, dec, *center), null_radius).astype(np.float32)
    hdr = pw.to_header()
    hdr["BUNIT"] = ""
    hdr["FREQ"] = FREQ_HZ
    hdr["COMMENT"] = "Primary beam (Airy power pattern) of the simulated field"
    return fits.PrimaryHDU(data=data, header=hdr)


def simulate_continuum_field(out_dir: str | os.PathLike, size: int = 2048, seed: int = 0, *,
                             center: tuple[float, float] = (0.0, -30.0), noise_rms: float | None = None,
                             density: float | None = None, population: PopulationModel | None = None,
                             pb_null_radius: float | None = 2.75, pb_npix: int = 129,
                             confusion_density: float | None = None, confusion_flux_range: tuple = (5e-8, 3e-6),
                             confusion_slope: float = -1.7, faint_sources: bool = False, dirty_psf: bool = False,
                             ndim: int = 2,
                             strip_rows: int = 1024,
                             pixel_size: float = PIXEL_SIZE_DEG, beam_fwhm: float = BEAM_FWHM_DEG,
                             overwrite: bool = True) -> ContinuumField:
    """Simulate an SDC1-like 560 MHz continuum field and write ``image.fits``, ``pb.fits``, ``truth.txt``.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output directory (created).
    size : int, optional
        Image side in pixels (default 2048; up to 32768 is written strip by strip).
    seed : int, optional
        Random seed; the outputs are a deterministic function of the arguments.
    center : (float, float), optional
        Field centre / PB pointing centre (RA, Dec) in deg.
    noise_rms : float, optional
        rms of the beam-convolved white noise in Jy/beam. Default 0.36e-6 (the rms of the real 1000 h B1 map);
        with ``faint_sources`` :data:`FAINT_NOISE_RMS`, so that noise + faint sources give that rms.
    density : float, optional
        Catalogue sources per deg^2 (default: the model density, 6.17e4 deg^-2 for the real catalogue).
    population : PopulationModel, optional
        Default :func:`default_population`.
    pb_null_radius : float or None, optional
        First-null radius of the PB in deg (2.75 as SDC1 B1; smaller values make PB correction visible on small
        fields; ``None`` = no PB).
    pb_npix : int, optional
        Side of ``pb.fits``, covering the field.
    confusion_density, confusion_flux_range, confusion_slope : optional
        Faint point sources below the catalogue population, not in the truth: per deg^2 (default 1.5e5, or 0
        with ``faint_sources``), flux range [Jy], dN/dS slope. Set the density to 0 to switch confusion off.
    faint_sources : bool, optional
        Extend the population below the catalogue's completeness limit as the official full truth does
        (:data:`FAINT_FLUX_BREAK`, :data:`FAINT_SLOPE`, :data:`FAINT_FLUX_MIN`, :data:`FAINT_DENSITY`):
        catalogue sources above 6 uJy, a power law from 0.27 to 6 uJy (about 10x more sources, 611 000 per
        deg^2 in all), all rendered and all in the truth. Default False (the catalogue population alone).
    dirty_psf : bool, optional
        As SDC1, convolve sources whose peak is below :data:`CLEAN_LIMIT` (8.6 uJy/beam) with the dirty PSF
        :data:`DIRTY_PSF` instead of the restoring beam (single-Gaussian sources; extended LAS and exponential
        sources stay clean), and give the noise the dirty PSF as autocorrelation, as measured on the real map.
        Default noise with ``faint_sources``: :data:`DIRTY_NOISE_RMS`. The header beam stays the 1.5" restoring
        beam, as in the real files.
    ndim : {2, 4}, optional
        2-D image or SDC1-like 4-D ``(1, 1, Y, X)`` layout.
    strip_rows : int, optional
        Rows rendered and written at a time (multiple of 64); bounds the memory.
    pixel_size, beam_fwhm : float, optional
        Pixel size and restoring-beam FWHM in deg (SDC1 B1 values).
    overwrite : bool, optional
        Replace existing outputs.

    Returns
    -------
    ContinuumField
        Paths, truth table (N rows) and WCS.
    """
    from cianna.scoring.sdc1 import write_sdc1_catalog

    t_start = time.perf_counter()
    if ndim not in (2, 4):
        raise ValueError(f"ndim must be 2 or 4, got {ndim}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    strip_rows = max(_BLOCK_ROWS, int(strip_rows) // _BLOCK_ROWS * _BLOCK_ROWS)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, k) for k in ("image.fits", "pb.fits", "truth.txt")}
    if not overwrite:
        for p in paths.values():
            if os.path.exists(p):
                raise FileExistsError(f"{p}: exists (overwrite=False)")
    population = population or default_population()
    density = population.density if density is None else float(density)
    if noise_rms is None:
        noise_rms = (DIRTY_NOISE_RMS if dirty_psf else FAINT_NOISE_RMS) if faint_sources else 0.36e-6
    if confusion_density is None:
        confusion_density = 0.0 if faint_sources else 1.5e5
    rng = np.random.default_rng([int(seed), 1])
    wcs = make_wcs(size, center=center, pixel_size=pixel_size)
    beam_sigma_px = beam_fwhm * FWHM_TO_SIGMA / pixel_size
    beam_area = 2.0 * math.pi * beam_sigma_px**2
    area_deg2 = (size * pixel_size) ** 2

    # --- catalogue population
    n_src = int(rng.poisson(density * area_deg2))
    pop = sample_population(n_src, rng=rng, model=population)
    if faint_sources:
        frng = np.random.default_rng([int(seed), 2])
        pop = pop[pop["flux"] >= FAINT_FLUX_BREAK]
        n_faint = int(frng.poisson(FAINT_DENSITY * area_deg2))
        fflux = _powerlaw(frng, n_faint, FAINT_FLUX_MIN, FAINT_FLUX_BREAK, FAINT_SLOPE)
        pop = vstack([pop, sample_population(n_faint, rng=frng, model=population, flux=fflux)])
        n_src = len(pop)
    xc = rng.uniform(-0.5, size - 0.5, n_src)
    yc = rng.uniform(-0.5, size - 0.5, n_src)
    cat = {k: np.asarray(pop[k], float) for k in ("flux", "b_maj", "b_min", "pa", "core_frac", "lobe_delta",
                                                  "core_offset")}
    cat["size"] = np.asarray(pop["size"], int)
    cat["class"] = np.asarray(pop["class"], int)
    cat["x_core"], cat["y_core"] = xc, yc
    # centroid of LAS sources: flux-weighted mean of core (weight cf) and lobes (weights (1-cf)(1/2 +- delta))
    theta = np.radians(cat["pa"])
    shift = np.where(cat["size"] == 1, 2.0 * cat["lobe_delta"] * (1.0 - cat["core_frac"]) * _LAS_LOBE_OFFSET
                     * cat["b_maj"] / (pixel_size * 3600.0), 0.0)
    cat["x"] = xc + shift * np.cos(theta)
    cat["y"] = yc - shift * np.sin(theta)
    ra_c, dec_c = wcs.all_pix2world(xc, yc, 0)
    ra_t, dec_t = wcs.all_pix2world(cat["x"], cat["y"], 0)
    pb_fn = (lambda x, y: primary_beam(_separation_deg(*wcs.all_pix2world(x, y, 0), *center), pb_null_radius))
    cat["pb"] = pb_fn(xc, yc) if n_src else np.zeros(0)
    cat["flux_app"] = cat["flux"] * cat["pb"]
    if faint_sources:   # the truth lists sources down to an apparent flux (sdc1 spec: 176 000 deg^-2 field-wide)
        keep = cat["flux_app"] >= FAINT_FLUX_MIN
        cat = {k: v[keep] for k, v in cat.items()}
        xc, yc, ra_c, dec_c, ra_t, dec_t = (a[keep] for a in (xc, yc, ra_c, dec_c, ra_t, dec_t))
        theta = theta[keep]
        n_src = int(keep.sum())
    fwhm_px = lambda a: a / (pixel_size * 3600.0)  # noqa: E731
    cov = _cov(fwhm_px(cat["b_maj"]), fwhm_px(cat["b_min"]), theta, beam_sigma_px)
    det = cov[:, 0] * cov[:, 2] - cov[:, 1] ** 2
    peak_app = np.where(cat["size"] == 2, cat["flux_app"] * beam_area / (2 * math.pi * np.sqrt(det)), np.nan)
    psf = {k: (v if k == "a" else v * PIXEL_SIZE_DEG / pixel_size) for k, v in DIRTY_PSF.items()}
    dirty = (cat["size"] == 2) & (peak_app < CLEAN_LIMIT) & bool(dirty_psf)
    comp = _build_components(cat, pixel_size, beam_sigma_px, dirty=dirty, psf=psf)
    order = np.argsort(comp.gy, kind="stable")
    gy_sorted = comp.gy[order]
    gmax = int(comp.ghalf.max()) if comp.ghalf.size else 0
    t_cat = time.perf_counter()

    # --- background generator (white noise + confusion), normalised after the beam convolution
    kern = _beam_kernel(beam_sigma_px)
    m = kern.size // 2
    sigma_white = noise_rms / float(np.sum(kern**2))   # 2-D separable kernel: ||K||_2 = sum(k^2)
    if dirty_psf:                                       # noise autocorrelation = dirty PSF, ||h||_2 = 1
        h_noise = _dirty_noise_kernel(psf, half=max(10, int(math.ceil(4.5 * psf["sr"]))))
        m = max(m, h_noise.shape[0] // 2)
        sigma_white = noise_rms
    bg = _Background(size=size, seed=int(seed), sigma_white=sigma_white,
                     conf_per_px=confusion_density * pixel_size**2, conf_range=tuple(confusion_flux_range),
                     conf_slope=confusion_slope, beam_area=beam_area,
                     pb_fn=lambda x, y: pb_fn(x, y), margin=m)

    # --- write the image strip by strip
    from scipy.ndimage import convolve1d
    from scipy.signal import fftconvolve

    hdr = make_header(wcs, size, ndim=ndim, beam_fwhm=beam_fwhm)
    tmp = paths["image.fits"] + ".part"
    exp_y = comp.ey
    with open(tmp, "wb") as fh:
        fh.write(hdr.tostring().encode("ascii"))
        for r0 in range(0, size, strip_rows):
            r1 = min(size, r0 + strip_rows)
            back = bg.rows(r0 - m, r1 + m)
            if dirty_psf:
                back = fftconvolve(back, h_noise, mode="same").astype(np.float32)
            else:
                back = convolve1d(back, kern, axis=1, mode="constant")
                back = convolve1d(back, kern, axis=0, mode="constant")
            strip = np.ascontiguousarray(back[m:m + (r1 - r0), m:m + size])
            lo = np.searchsorted(gy_sorted, r0 - gmax - 1, side="left")
            hi = np.searchsorted(gy_sorted, r1 + gmax + 1, side="right")
            cand = order[lo:hi]
            cand = cand[(np.rint(comp.gy[cand]) + comp.ghalf[cand] >= r0)
                        & (np.rint(comp.gy[cand]) - comp.ghalf[cand] < r1)]
            _render_gaussians(strip, comp, cand, r0)
            for j in np.nonzero((np.rint(exp_y) + comp.ehalf >= r0) & (np.rint(exp_y) - comp.ehalf < r1))[0]:
                st, ix0, iy0 = _exp_stamp(comp.ex[j], comp.ey[j], comp.eamp[j], *comp.eshape[j], comp.ehalf[j],
                                          beam_sigma_px)
                _add_stamp(strip, st, ix0, iy0 - r0)
            fh.write(strip.astype(">f4").tobytes())
        nbytes = size * size * 4
        pad = (-nbytes) % 2880
        fh.write(b"\0" * pad)
    os.replace(tmp, paths["image.fits"])
    t_img = time.perf_counter()

    # --- PB image and truth
    _pb_image(wcs, size, center, pb_null_radius, pb_npix, pixel_size).writeto(paths["pb.fits"], overwrite=True)
    truth = Table()
    truth["id"] = np.arange(1, n_src + 1, dtype=np.int64)
    truth["ra_core"] = np.where(ra_c > 180, ra_c - 360, ra_c) * u.deg
    truth["dec_core"] = dec_c * u.deg
    truth["ra_cent"] = np.where(ra_t > 180, ra_t - 360, ra_t) * u.deg
    truth["dec_cent"] = dec_t * u.deg
    truth["flux"] = cat["flux"] * u.Jy
    truth["core_frac"] = cat["core_frac"]
    truth["b_maj"] = cat["b_maj"] * u.arcsec
    truth["b_min"] = cat["b_min"] * u.arcsec
    truth["pa"] = cat["pa"] * u.deg
    truth["size"] = cat["size"]
    truth["class"] = cat["class"]
    truth["x"], truth["y"] = cat["x"], cat["y"]
    truth["x_core"], truth["y_core"] = xc, yc
    truth["pb"] = cat["pb"]
    truth["flux_app"] = cat["flux_app"] * u.Jy
    truth["peak_app"] = peak_app * u.Jy
    truth["dirty"] = dirty
    write_sdc1_catalog(truth[list(truth.colnames[:12])], paths["truth.txt"], header=False)
    t_end = time.perf_counter()
    meta = dict(size=size, seed=int(seed), center=tuple(center), n_sources=n_src, noise_rms=noise_rms,
                density=density, pb_null_radius=pb_null_radius, confusion_density=confusion_density,
                faint_sources=bool(faint_sources), dirty_psf=bool(dirty_psf),
                ndim=ndim, seconds_catalogue=t_cat - t_start, seconds_image=t_img - t_cat,
                seconds_total=t_end - t_start)
    truth.meta.update({k: v for k, v in meta.items() if k != "center"})
    log.info("simulated %d^2 field with %d sources in %.2f s -> %s", size, n_src, t_end - t_start, out_dir)
    return ContinuumField(image=paths["image.fits"], pb=paths["pb.fits"], truth_path=paths["truth.txt"],
                          truth=truth, wcs=wcs, meta=meta)
