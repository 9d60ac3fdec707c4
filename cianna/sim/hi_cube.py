"""SDC2-like HI spectral cube simulator (noise + rotating inclined discs + SDC2 truth catalogue).

The cube mimics the SKA SDC2 cubes: 2.8 arcsec pixels, a 7 arcsec circular Gaussian beam, 30 kHz channels
inside 950-1150 MHz, an RA---SIN/DEC--SIN + FREQ WCS centred on (180, -30) deg, Jy/beam, and the
frequency-dependent noise of the SDC2 generator (optionally with RFI-excess channels). Galaxies are thin
rotating discs whose parameters follow the real development-cube truth catalogue:

* ``central_freq``, ``line_flux_integral``, ``i``, ``w20`` and the offset of ``hi_size`` from the size-mass
  relation are drawn from a Gaussian copula fitted to ``sky_dev_truthcat_v2.txt`` (2684 rows): 33 quantiles
  of each marginal and the 5x5 correlation of the normal scores are embedded below (:data:`DEV_PRIOR`;
  re-fit with :func:`fit_truth_prior`). Marginals are therefore reproduced, and the main pairwise
  dependences (flux-frequency, w20-inclination, w20-flux) approximately.
* HI mass ``M = 49.8 D_L^2 S`` (Duffy et al. 2012), HI diameter from ``log D[kpc] = 0.51 log M - 3.32``
  (Wang et al. 2016) times the sampled truth offset, converted to arcsec with D_A (flat LCDM, H0 = 67,
  Om = 0.32).
* Surface density: exponential outer disc (scale length 0.18 R1, R1 = D_HI/2) with a flat (saturated) centre
  whose radius is solved so that Sigma(R1) = 1 Msun/pc^2 for the galaxy's mass, i.e. ``hi_size`` is the
  1 Msun/pc^2 diameter of the rendered model where the mass allows it.
* Kinematics: ``v(R) = v_flat (1 - exp(-R / (0.2 R1)))``, line-of-sight ``v sin i cos(phi)``, Gaussian
  dispersion 10 km/s; ``v_flat`` is solved so that the model spectrum reaches the sampled w20 (capped at
  450 km/s). Receding side along PA (east of north). Minor axis scaled by ``q = sqrt(cos^2 i (1-a^2)+a^2)``,
  ``a = 0.2`` as in the SDC2 generator.
* Truth ``w20`` is measured on the noiseless model spectrum (quarter-channel resolution, 20 % of peak,
  linear interpolation from the edges inwards), in km/s via ``c nu0 / nu^2``.

The cube is written channel slab by channel slab (:class:`astropy.io.fits.StreamingHDU`), so memory is bounded
by the slab size whatever the cube size. Noise of channel k comes from its own seeded generator, so the cube
does not depend on the slab size.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy import ndimage

__all__ = ["HiCubeResult", "simulate_hi_cube", "sample_hi_sources", "sdc2_noise_sigma", "fit_truth_prior",
           "measure_w20", "render_disc", "make_cube_header", "DEV_PRIOR"]

log = logging.getLogger(__name__)

NU0 = 1.420405752e9  #: HI rest frequency [Hz]
C_KMS = 299792.458  #: speed of light [km/s]
PIXEL_ARCSEC = 2.8
BEAM_ARCSEC = 7.0
CHANNEL_HZ = 30e3
BAND_HZ = (950e6, 1150e6)
THICKNESS_ALPHA = 0.2
DISPERSION_KMS = 10.0
VFLAT_MAX = 450.0

#: Gaussian-copula prior fitted to the SDC2 development truth (2684 rows); columns: central_freq [MHz],
#: log10 line_flux_integral [Jy Hz], log10(hi_size / size-mass relation), i [deg], log10 w20 [km/s].
DEV_PRIOR = {
    "n_sources": 2684, "npix": 643,
    "probs": [0, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
              0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.965, 0.98, 0.99, 0.995, 0.998, 1],
    "quantiles": [
        [950.357, 950.648, 950.824, 951.195, 952.052, 955.903, 958.009, 960.458, 963.781, 971.660, 981.034,
         988.560, 997.849, 1006.634, 1014.870, 1028.101, 1036.766, 1051.464, 1061.211, 1068.940, 1081.887,
         1099.373, 1106.760, 1112.040, 1120.179, 1121.973, 1123.403, 1127.182, 1138.491, 1145.229, 1146.342,
         1146.964, 1148.344],
        [0.14493, 0.17309, 0.20683, 0.2233, 0.24055, 0.26758, 0.28408, 0.30908, 0.32865, 0.38132, 0.42306,
         0.47191, 0.51868, 0.57077, 0.62188, 0.68339, 0.73754, 0.8029, 0.86935, 0.94784, 1.03291, 1.11677,
         1.22183, 1.32035, 1.46828, 1.54748, 1.64295, 1.7376, 1.86702, 1.99763, 2.16443, 2.26752, 2.75333],
        [-0.2621, -0.2621, -0.2621, -0.2621, -0.1066, -0.0742, -0.0742, -0.0627, -0.0627, -0.054, -0.0297,
         0.0059, 0.0255, 0.0401, 0.0574, 0.0856, 0.0948, 0.1109, 0.1194, 0.1236, 0.156, 0.1636, 0.1796, 0.1927,
         0.234, 0.2638, 0.408, 0.4826, 0.4826, 0.4826, 0.4826, 0.4826, 0.4826],
        [1.35797, 3.79269, 6.56091, 8.66798, 11.03643, 14.49202, 18.30068, 22.66335, 25.79441, 32.14351,
         37.01232, 41.43348, 45.64804, 49.65538, 53.44112, 56.58522, 60.13044, 63.19388, 66.29735, 69.36955,
         72.144, 75.01145, 78.35037, 81.26434, 84.57217, 86.01499, 87.36316, 88.25249, 89.00385, 89.44877,
         89.62242, 89.85459, 89.99641],
        [1.48139, 1.59467, 1.6748, 1.70161, 1.75825, 1.81254, 1.85129, 1.9213, 2.03688, 2.14135, 2.1914,
         2.22591, 2.25518, 2.27769, 2.30229, 2.32365, 2.346, 2.36552, 2.39315, 2.43057, 2.47243, 2.51394,
         2.55002, 2.58605, 2.63083, 2.65338, 2.69205, 2.71126, 2.73824, 2.76723, 2.79174, 2.81473, 2.90227]],
    "corr": [[1.0, 0.16556, -0.02447, 0.00936, -0.10297],
             [0.16556, 1.0, -0.0384, 0.02379, 0.36998],
             [-0.02447, -0.0384, 1.0, 0.0318, 0.28281],
             [0.00936, 0.02379, 0.0318, 1.0, 0.41089],
             [-0.10297, 0.36998, 0.28281, 0.41089, 1.0]],
}


# --------------------------------------------------------------------------------------------- physics helpers
_COSMO = None


def _distances(freq_hz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Luminosity distance [Mpc] and angular-diameter distance [kpc] of HI at ``freq_hz`` (flat LCDM)."""
    global _COSMO
    if _COSMO is None:
        from astropy.cosmology import FlatLambdaCDM

        cosmo = FlatLambdaCDM(H0=67.0, Om0=0.32)
        zgrid = np.linspace(0.0, 0.6, 601)
        _COSMO = (zgrid, cosmo.luminosity_distance(zgrid).to_value(u.Mpc),
                  cosmo.angular_diameter_distance(zgrid).to_value(u.kpc))
    z = NU0 / np.asarray(freq_hz, dtype=float) - 1.0
    zgrid, dl, da = _COSMO
    return np.interp(z, zgrid, dl), np.interp(z, zgrid, da)


def sdc2_noise_sigma(freq_hz, gamma_rfi=1.0, channel_hz: float = CHANNEL_HZ) -> np.ndarray:
    """Per-channel noise of the SDC2 generator.

    Parameters
    ----------
    freq_hz : array_like
        Channel frequencies [Hz].
    gamma_rfi : float or array_like, optional
        RFI noise excess factor (>= 1).
    channel_hz : float, optional
        Channel width [Hz]; the formula is given for 115 kHz and scales as sqrt(115 kHz / width).

    Returns
    -------
    numpy.ndarray
        sigma in Jy/beam: ``gamma (13.6 + 3.5 (nu - 0.95 GHz) / 0.4 GHz) uJy * sqrt(115 kHz / width)``
        (26.6 uJy at 950 MHz, 30.1 uJy at 1150 MHz for 30 kHz).
    """
    f = np.asarray(freq_hz, dtype=float)
    base = 13.6 + 3.5 * (f - 0.95e9) / 0.4e9
    return np.asarray(gamma_rfi) * base * 1e-6 * math.sqrt(115e3 / channel_hz)


def measure_w20(spectrum: np.ndarray, freq_hz: np.ndarray, nu_ref: float | None = None) -> float:
    """Line width at 20 % of the peak, measured from the edges inwards with linear interpolation.

    Parameters
    ----------
    spectrum : numpy.ndarray, shape (N,)
        Flux density per spectral bin (any unit; positive line).
    freq_hz : numpy.ndarray, shape (N,)
        Bin-centre frequencies [Hz], uniformly spaced (ascending or descending).
    nu_ref : float, optional
        Frequency used for the Hz -> km/s conversion ``c nu0 / nu^2`` (default: flux-weighted centre).

    Returns
    -------
    float
        w20 in km/s (0 when the spectrum has no positive peak).
    """
    s = np.asarray(spectrum, dtype=float)
    if s.size == 0 or not np.any(s > 0):
        return 0.0
    peak = s.max()
    level = 0.2 * peak
    above = np.flatnonzero(s >= level)
    lo, hi = above[0], above[-1]
    # interpolate the crossing positions (in bin units) just outside the first/last bins above the level
    x_lo = float(lo) if lo == 0 else lo - (s[lo] - level) / (s[lo] - s[lo - 1])
    x_hi = float(hi) if hi == s.size - 1 else hi + (s[hi] - level) / (s[hi] - s[hi + 1])
    dnu = abs(float(freq_hz[1] - freq_hz[0])) if s.size > 1 else CHANNEL_HZ
    width_hz = (x_hi - x_lo) * dnu
    if nu_ref is None:
        pos = np.clip(s, 0, None)
        nu_ref = float(np.sum(pos * freq_hz) / pos.sum())
    return width_hz * C_KMS * NU0 / nu_ref ** 2


# ------------------------------------------------------------------------------------------------ prior model
def fit_truth_prior(path: str | os.PathLike, npix: int = 643) -> dict:
    """Fit the Gaussian-copula source prior (as :data:`DEV_PRIOR`) to an SDC2 truth catalogue.

    Parameters
    ----------
    path : str or os.PathLike
        SDC2 truth catalogue (text, header row).
    npix : int, optional
        Side of the (square) cube the catalogue covers, in pixels (643 for the dev cube); sets the density.

    Returns
    -------
    dict
        ``probs`` (K,), ``quantiles`` (5, K), ``corr`` (5, 5), ``n_sources``, ``npix``.
    """
    from scipy.stats import norm, rankdata

    from cianna.scoring.sdc2 import read_sdc2_catalog

    t = read_sdc2_catalog(path)
    freq = np.asarray(t["central_freq"], dtype=float)
    flux = np.asarray(t["line_flux_integral"], dtype=float)
    dl, da = _distances(freq)
    size_rel = _size_relation_arcsec(flux * 49.8 * dl ** 2, da)
    cols = [freq / 1e6, np.log10(flux), np.log10(np.asarray(t["hi_size"]) / size_rel), np.asarray(t["i"]),
            np.log10(np.asarray(t["w20"]))]
    probs = list(DEV_PRIOR["probs"])
    quant = [list(np.quantile(c, probs)) for c in cols]
    scores = np.array([norm.ppf((rankdata(c) - 0.5) / len(c)) for c in cols])
    return {"n_sources": len(t), "npix": int(npix), "probs": probs, "quantiles": quant,
            "corr": np.corrcoef(scores).tolist()}


def _size_relation_arcsec(m_hi: np.ndarray, da_kpc: np.ndarray) -> np.ndarray:
    """HI diameter [arcsec] from log D[kpc] = 0.51 log M - 3.32 at angular-diameter distance da [kpc]."""
    d_kpc = 10.0 ** (0.51 * np.log10(m_hi) - 3.32)
    return d_kpc / da_kpc * 206264.806


def sample_hi_sources(n: int | None, freq_range: tuple[float, float], rng: np.random.Generator,
                      prior: dict | None = None, flux_boost: float = 0.0, area_pix: float | None = None) -> Table:
    """Draw HI galaxy parameters from the truth prior, conditioned on a frequency range.

    Parameters
    ----------
    n : int or None
        Number of galaxies; ``None`` uses the dev-cube density over ``area_pix`` and ``freq_range``.
    freq_range : tuple of float
        (low, high) central-frequency range [Hz].
    rng : numpy.random.Generator
        Random generator.
    prior : dict, optional
        Copula prior (default :data:`DEV_PRIOR`).
    flux_boost : float, optional
        Exponent g >= 0 of a re-weighting ``w ~ S^g`` of the flux distribution (0 = the real distribution;
        1-2 boost the bright tail for training sets).
    area_pix : float, optional
        Cube area in pixels (needed when ``n`` is None).

    Returns
    -------
    astropy.table.Table
        Columns central_freq [Hz], line_flux_integral [Jy Hz], m_hi [solMass], hi_size [arcsec], i [deg],
        pa [deg], w20_target [km/s].
    """
    from scipy.stats import norm

    prior = prior or DEV_PRIOR
    probs = np.asarray(prior["probs"], dtype=float)
    quant = np.asarray(prior["quantiles"], dtype=float)
    corr = np.asarray(prior["corr"], dtype=float)
    lo, hi = sorted(float(f) for f in freq_range)
    u_lo, u_hi = np.interp([lo / 1e6, hi / 1e6], quant[0], probs)
    if n is None:
        if area_pix is None:
            raise ValueError("sample_hi_sources: area_pix is needed when n is None")
        n = int(round(prior["n_sources"] * area_pix / prior["npix"] ** 2 * (u_hi - u_lo)))
    n_draw = n if flux_boost <= 0 else 20 * max(n, 1)
    eps = 1e-6
    u_f = rng.uniform(max(u_lo, eps), min(max(u_hi, u_lo + eps), 1 - eps), n_draw)
    z_f = norm.ppf(u_f)
    # other normal scores conditional on the frequency score
    s_of = corr[1:, 0]
    cond_cov = corr[1:, 1:] - np.outer(s_of, s_of)
    chol = np.linalg.cholesky(cond_cov + 1e-9 * np.eye(4))
    z_o = z_f[:, None] * s_of[None, :] + rng.standard_normal((n_draw, 4)) @ chol.T
    u_o = norm.cdf(z_o)
    freq = np.clip(np.interp(u_f, probs, quant[0]) * 1e6, lo, hi)
    vals = [np.interp(u_o[:, k], probs, quant[k + 1]) for k in range(4)]
    log_flux_dev, log_size_off, incl, log_w20 = vals
    if flux_boost > 0:
        w = 10.0 ** (flux_boost * (log_flux_dev - log_flux_dev.max()))
        keep = rng.choice(n_draw, size=n, replace=False, p=w / w.sum())
        freq, log_flux_dev, log_size_off, incl, log_w20 = (a[keep] for a in (freq, log_flux_dev, log_size_off,
                                                                             incl, log_w20))
    flux = 10.0 ** log_flux_dev
    dl, da = _distances(freq)
    m_hi = 49.8 * dl ** 2 * flux
    size = _size_relation_arcsec(m_hi, da) * 10.0 ** log_size_off
    t = Table()
    t["central_freq"] = freq * u.Hz
    t["line_flux_integral"] = flux * u.Jy * u.Hz
    t["m_hi"] = m_hi * u.solMass
    t["hi_size"] = size * u.arcsec
    t["i"] = incl * u.deg
    t["pa"] = rng.uniform(0.0, 360.0, len(freq)) * u.deg
    t["w20_target"] = 10.0 ** log_w20 * u.km / u.s
    return t


# ------------------------------------------------------------------------------------------------- rendering
def _core_radius_fraction(m_hi: float, r1_kpc: float, h_frac: float = 0.18) -> float:
    """Flat-core radius / R1 such that the disc reaches 1 Msun/pc^2 at R1 (clipped to [0, 1])."""
    h = h_frac * r1_kpc

    def sigma_r1(xc: float) -> float:
        rc = xc * r1_kpc
        sig_c = m_hi / (2 * np.pi * (rc ** 2 / 2 + h * (rc + h)))  # Msun/kpc^2
        return sig_c * np.exp(-(r1_kpc - rc) / h) / 1e6 - 1.0

    if sigma_r1(0.0) >= 0:
        return 0.0
    if sigma_r1(1.0) <= 0:
        return 1.0
    a, b = 0.0, 1.0
    for _ in range(40):
        m = 0.5 * (a + b)
        if sigma_r1(m) < 0:
            a = m
        else:
            b = m
    return 0.5 * (a + b)


@dataclass
class DiscModel:
    """A rendered galaxy: Jy/beam cubelet placed at ``origin`` (z0, y0, x0) of the full cube."""

    cubelet: np.ndarray  # (nz, ny, nx) Jy/beam, beam-convolved
    origin: tuple
    w20: float  # km/s, measured on the model spectrum
    v_flat: float  # km/s


def _disc_geometry(dx: np.ndarray, dy: np.ndarray, pa_deg: float, incl_deg: float, r1_px: float,
                   m_hi: float, r1_kpc: float):
    """Surface-density weights and normalised rotation pattern of sub-pixels at offsets (dx, dy) [px]."""
    pa = np.radians(pa_deg)
    inc = np.radians(incl_deg)
    a = -dx * np.sin(pa) + dy * np.cos(pa)  # along the receding major axis (+x = west, +y = north)
    b = dx * np.cos(pa) + dy * np.sin(pa)
    q = math.sqrt(math.cos(inc) ** 2 * (1 - THICKNESS_ALPHA ** 2) + THICKNESS_ALPHA ** 2)
    r = np.hypot(a, b / q)
    xc = _core_radius_fraction(m_hi, r1_kpc)
    h = 0.18 * r1_px
    sigma = np.exp(-np.clip(r - xc * r1_px, 0, None) / h)
    sigma[r > 1.5 * r1_px] = 0.0
    r_turn = 0.2 * r1_px + 0.1
    cos_phi = np.divide(a, r, out=np.zeros_like(r), where=r > 0)
    pattern = (1 - np.exp(-r / r_turn)) * math.sin(inc) * cos_phi  # v_los / v_flat
    return sigma, pattern


def render_disc(x_c: float, y_c: float, z_freq: float, params: dict, freqs: np.ndarray,
                shape_xy: tuple[int, int]) -> DiscModel:
    """Render one galaxy as a beam-convolved Jy/beam cubelet.

    Parameters
    ----------
    x_c, y_c : float
        Centre in 0-based pixel coordinates of the full cube.
    z_freq : float
        Central (dynamical-centre) frequency [Hz].
    params : dict
        ``line_flux_integral`` [Jy Hz], ``hi_size`` [arcsec], ``i`` [deg], ``pa`` [deg], ``m_hi`` [Msun],
        ``w20_target`` [km/s]; optional ``v_flat`` [km/s] to skip the w20 solve, ``dispersion`` [km/s].
    freqs : numpy.ndarray, shape (Z,)
        Channel frequencies of the full cube [Hz], ascending, uniform spacing.
    shape_xy : tuple of int
        (X, Y) size of the full cube (the cubelet is clipped to it).

    Returns
    -------
    DiscModel
        Cubelet of shape (nz, ny, nx) in Jy/beam, its origin (z0, y0, x0), the measured w20 [km/s] and v_flat.
    """
    dnu = float(freqs[1] - freqs[0])
    nx_cube, ny_cube = shape_xy
    r1_px = max(float(params["hi_size"]) / 2 / PIXEL_ARCSEC, 0.05)
    _, da_kpc = _distances(np.array([z_freq]))
    r1_kpc = float(params["hi_size"]) / 2 / 206264.806 * float(da_kpc[0])
    sig_beam = BEAM_ARCSEC / PIXEL_ARCSEC / (2 * math.sqrt(2 * math.log(2)))
    half = int(math.ceil(1.5 * r1_px + 4 * sig_beam + 1))
    osf = int(np.clip(math.ceil(6.0 / r1_px), 4, 12))
    x0, y0 = int(math.floor(x_c)) - half, int(math.floor(y_c)) - half
    n = 2 * half + 1
    sub = (np.arange(n * osf) + 0.5) / osf - 0.5  # sub-pixel centres in pixel units
    gx = x0 + sub[None, :] - x_c
    gy = y0 + sub[:, None] - y_c
    gx, gy = np.broadcast_arrays(gx, gy)
    sigma, pattern = _disc_geometry(gx, gy, float(params["pa"]), float(params["i"]), r1_px,
                                    float(params["m_hi"]), r1_kpc)
    weights = sigma.ravel() / sigma.sum()
    pattern = pattern.ravel()
    hz_per_kms = z_freq ** 2 / (C_KMS * NU0)
    disp = float(params.get("dispersion", DISPERSION_KMS))
    osz = 4
    fine = dnu / osz

    def fine_spectrum(v_flat: float, nfine: int, f_lo: float) -> np.ndarray:
        nu = z_freq - v_flat * pattern * hz_per_kms
        idx = np.clip(((nu - f_lo) / fine).astype(np.int64), 0, nfine - 1)
        spec = np.bincount(idx, weights=weights, minlength=nfine)
        return ndimage.gaussian_filter1d(spec, disp * hz_per_kms / fine, mode="constant")

    # spectral window covering the widest allowed profile
    v_max = VFLAT_MAX if "v_flat" not in params else float(params["v_flat"])
    span_hz = (v_max + 5 * disp + 20.0) * hz_per_kms
    k_lo = int(math.floor((z_freq - span_hz - freqs[0]) / dnu))
    k_hi = int(math.ceil((z_freq + span_hz - freqs[0]) / dnu)) + 1
    nfine = (k_hi - k_lo) * osz
    f_lo = freqs[0] + (k_lo - 0.5) * dnu
    fine_freqs = f_lo + (np.arange(nfine) + 0.5) * fine
    target = float(params.get("w20_target", 0.0))
    if "v_flat" in params:
        v_flat = float(params["v_flat"])
    else:  # bisection: w20 grows monotonically with v_flat
        a, b = 0.0, VFLAT_MAX
        if measure_w20(fine_spectrum(b, nfine, f_lo), fine_freqs, z_freq) <= target:
            a = b
        for _ in range(18):
            if b - a < 0.5:
                break
            m = 0.5 * (a + b)
            if measure_w20(fine_spectrum(m, nfine, f_lo), fine_freqs, z_freq) < target:
                a = m
            else:
                b = m
        v_flat = 0.5 * (a + b)
    spec = fine_spectrum(v_flat, nfine, f_lo)
    w20 = measure_w20(spec, fine_freqs, z_freq)
    # trim the window to the emission, then render the cubelet (pixel x fine channel histogram)
    nz_fine = np.flatnonzero(spec > 1e-7 * spec.max())
    c_lo = k_lo + nz_fine[0] // osz - 1
    c_hi = k_lo + nz_fine[-1] // osz + 2
    f_lo2 = freqs[0] + (c_lo - 0.5) * dnu
    nfine2 = (c_hi - c_lo) * osz
    nu = z_freq - v_flat * pattern * hz_per_kms
    fidx = np.clip(((nu - f_lo2) / fine).astype(np.int64), 0, nfine2 - 1)
    pix = ((np.arange(n * osf) // osf)[:, None] * n + (np.arange(n * osf) // osf)[None, :]).ravel()
    hist = np.bincount(pix * nfine2 + fidx, weights=weights, minlength=n * n * nfine2).reshape(n, n, nfine2)
    hist = ndimage.gaussian_filter1d(hist, disp * hz_per_kms / fine, axis=2, mode="constant")
    cub = hist.reshape(n, n, c_hi - c_lo, osz).sum(axis=3).transpose(2, 0, 1)  # (nz, y, x)
    cub *= float(params["line_flux_integral"]) / dnu  # Jy/pixel
    beam_area = math.pi * (BEAM_ARCSEC / PIXEL_ARCSEC) ** 2 / (4 * math.log(2))
    cub = ndimage.gaussian_filter(cub, (0, sig_beam, sig_beam), mode="constant") * beam_area
    # clip to the cube
    z_a, y_a, x_a = max(c_lo, 0), max(y0, 0), max(x0, 0)
    z_b, y_b, x_b = min(c_hi, freqs.size), min(y0 + n, ny_cube), min(x0 + n, nx_cube)
    if z_a >= z_b or y_a >= y_b or x_a >= x_b:
        return DiscModel(np.zeros((0, 0, 0), np.float32), (0, 0, 0), w20, v_flat)
    cub = cub[z_a - c_lo:z_b - c_lo, y_a - y0:y_b - y0, x_a - x0:x_b - x0].astype(np.float32)
    return DiscModel(cub, (z_a, y_a, x_a), w20, v_flat)


# ---------------------------------------------------------------------------------------------------- cube I/O
def make_cube_header(shape: tuple[int, int, int], freq_start: float, channel_hz: float = CHANNEL_HZ,
                     center: tuple[float, float] = (180.0, -30.0)) -> fits.Header:
    """FITS header of an SDC2-like cube.

    Parameters
    ----------
    shape : tuple of int
        (X, Y, Z) in voxels (FITS axis order).
    freq_start : float
        Frequency of channel 0 [Hz] (ascending axis).
    channel_hz : float, optional
        Channel width [Hz].
    center : tuple of float, optional
        (RA, Dec) of the reference pixel (N/2 + 1 in FITS 1-based pixels) [deg].

    Returns
    -------
    astropy.io.fits.Header
    """
    nx, ny, nz = shape
    h = fits.Header()
    h["SIMPLE"] = True
    h["BITPIX"] = -32
    h["NAXIS"] = 3
    h["NAXIS1"], h["NAXIS2"], h["NAXIS3"] = nx, ny, nz
    h["EXTEND"] = True
    h["BUNIT"] = "JY/BEAM"
    h["BMAJ"] = BEAM_ARCSEC / 3600.0
    h["BMIN"] = BEAM_ARCSEC / 3600.0
    h["BPA"] = 0.0
    h["CTYPE1"], h["CRVAL1"], h["CDELT1"], h["CRPIX1"], h["CUNIT1"] = "RA---SIN", center[0], \
        -PIXEL_ARCSEC / 3600.0, nx / 2 + 1.0, "deg"
    h["CTYPE2"], h["CRVAL2"], h["CDELT2"], h["CRPIX2"], h["CUNIT2"] = "DEC--SIN", center[1], \
        PIXEL_ARCSEC / 3600.0, ny / 2 + 1.0, "deg"
    h["CTYPE3"], h["CRVAL3"], h["CDELT3"], h["CRPIX3"], h["CUNIT3"] = "FREQ", float(freq_start), \
        float(channel_hz), 1.0, "Hz"
    h["RESTFREQ"] = NU0
    h["SPECSYS"] = "BARYCENT"
    h["RADESYS"] = "FK5"
    h["EQUINOX"] = 2000.0
    h["ORIGIN"] = "cianna.sim.hi_cube"
    return h


@dataclass
class HiCubeResult:
    """Output of :func:`simulate_hi_cube`.

    Attributes
    ----------
    cube_path, truth_path, truth_table_path : str
        FITS cube, SDC2 text truth, ECSV truth with extra columns.
    truth : astropy.table.Table
        SDC2 columns plus x, y, z (0-based pixels), m_hi, v_flat, w20_target, n_chan_w20.
    shape : tuple of int
        (X, Y, Z).
    freqs : numpy.ndarray, shape (Z,)
        Channel frequencies [Hz].
    channel_rms : numpy.ndarray, shape (Z,)
        Noise sigma of each channel [Jy/beam] (after the beam convolution).
    header : astropy.io.fits.Header
    """

    cube_path: str
    truth_path: str
    truth_table_path: str
    truth: Table
    shape: tuple
    freqs: np.ndarray
    channel_rms: np.ndarray
    header: fits.Header = field(repr=False, default=None)


def _rfi_gamma(nz: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    gamma = np.ones(nz)
    if fraction <= 0:
        return gamma
    target = int(round(fraction * nz))
    while np.count_nonzero(gamma > 1) < target:
        start = int(rng.integers(0, nz))
        length = int(rng.integers(1, 21))
        gamma[start:start + length] = rng.uniform(1.1, 2.0)
    return gamma


def _noise_kernel_norm(sigma_px: float, truncate: float = 4.0) -> float:
    """Std of white unit noise after scipy's gaussian_filter with ``sigma_px`` on both spatial axes."""
    radius = int(truncate * sigma_px + 0.5)
    x = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (x / sigma_px) ** 2)
    k /= k.sum()
    return float(np.sum(k ** 2))  # per axis variance factor; two axes -> product = this ** 2 -> std = this


def simulate_hi_cube(out_dir: str | os.PathLike, shape: tuple[int, int, int] = (256, 256, 1024), seed: int = 0,
                     *, freq_start: float = 1.05e9, n_sources: int | None = None, flux_boost: float = 0.0,
                     min_flux: float = 0.0, noise_scale: float = 1.0, rfi_fraction: float = 0.0,
                     edge_px: int = 4, edge_channels: int = 8, slab_channels: int = 64,
                     prior: dict | None = None, overwrite: bool = True) -> HiCubeResult:
    """Simulate an SDC2-like HI cube with its SDC2 truth catalogue.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output folder; ``cube.fits``, ``truth.txt`` (SDC2 format) and ``truth.ecsv`` are written there.
    shape : tuple of int, optional
        (X, Y, Z) cube size in voxels (FITS axis order); default (256, 256, 1024) = 11.9' x 11.9' x 30.7 MHz.
    seed : int, optional
        Seed; the same seed and arguments give the same files.
    freq_start : float, optional
        Frequency of channel 0 [Hz]; every channel centre must lie in 950-1150 MHz up to half a channel (the
        real 6668-channel cube starts at 950 MHz and ends at 1150.01 MHz, so its outer channel edges do not).
    n_sources : int, optional
        Number of galaxies (default: the dev-truth density, about 65 for the default shape at 1.05 GHz).
    flux_boost : float, optional
        Exponent of the bright-tail re-weighting ``S^g`` (0 = real distribution; try 1-2 for training sets).
    min_flux : float, optional
        Drop galaxies fainter than this line flux [Jy Hz] after sampling (0 keeps all).
    noise_scale : float, optional
        Multiplies the SDC2 noise (0 = noiseless cube).
    rfi_fraction : float, optional
        Fraction of channels with an RFI noise excess gamma ~ U(1.1, 2) (runs of 1-20 channels).
    edge_px, edge_channels : int, optional
        Margins kept free of galaxy centres [pixels, channels].
    slab_channels : int, optional
        Channels generated and written per slab (bounds memory: about 3 x X x Y x slab x 4 bytes).
    prior : dict, optional
        Source prior (default :data:`DEV_PRIOR`, see :func:`fit_truth_prior`).
    overwrite : bool, optional
        Replace existing output files.

    Returns
    -------
    HiCubeResult
        Paths, truth table (SDC2 columns + pixel positions and model parameters), channel frequencies and rms.
    """
    nx, ny, nz = (int(s) for s in shape)
    if min(nx, ny, nz) < 2:
        raise ValueError(f"simulate_hi_cube: shape must be (X, Y, Z) with every side >= 2, got {shape}")
    if slab_channels < 1:
        raise ValueError(f"simulate_hi_cube: slab_channels must be >= 1, got {slab_channels}")
    freqs = freq_start + np.arange(nz) * CHANNEL_HZ
    tol = CHANNEL_HZ / 2 + 1.0
    if freqs[0] < BAND_HZ[0] - tol or freqs[-1] > BAND_HZ[1] + tol:
        raise ValueError(f"simulate_hi_cube: band {freqs[0] / 1e6:.3f}-{freqs[-1] / 1e6:.3f} MHz (freq_start="
                         f"{freq_start}, Z={nz}) leaves the SDC2 band 950-1150 MHz")
    if 2 * edge_channels >= nz - 1 or 2 * edge_px >= min(nx, ny) - 1:
        raise ValueError("simulate_hi_cube: edge margins leave no room for sources; reduce edge_px/edge_channels")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    cube_path = os.path.join(out_dir, "cube.fits")
    truth_path = os.path.join(out_dir, "truth.txt")
    table_path = os.path.join(out_dir, "truth.ecsv")
    if not overwrite and any(os.path.exists(p) for p in (cube_path, truth_path, table_path)):
        raise FileExistsError(f"simulate_hi_cube: outputs exist in {out_dir} (overwrite=False)")

    header = make_cube_header((nx, ny, nz), freq_start)
    wcs = WCS(header).celestial
    rng = np.random.default_rng([seed, 0])
    src = sample_hi_sources(n_sources, (freqs[edge_channels], freqs[nz - 1 - edge_channels]), rng, prior=prior,
                            flux_boost=flux_boost, area_pix=float(nx * ny))
    if min_flux > 0:
        src = src[np.asarray(src["line_flux_integral"]) >= min_flux]
    n = len(src)
    xs = rng.uniform(edge_px, nx - 1 - edge_px, n)
    ys = rng.uniform(edge_px, ny - 1 - edge_px, n)
    zs = (np.asarray(src["central_freq"]) - freqs[0]) / CHANNEL_HZ
    order = np.argsort(zs, kind="stable")
    log.info("simulating %s cube with %d galaxies -> %s", (nx, ny, nz), n, cube_path)

    # render galaxies lazily (sorted by channel) so only the ones touching the current slab are in memory
    models: dict[int, DiscModel] = {}
    w20 = np.zeros(n)
    vflat = np.zeros(n)
    gamma = _rfi_gamma(nz, rfi_fraction, np.random.default_rng([seed, 1]))
    rms = sdc2_noise_sigma(freqs, gamma) * noise_scale
    sig_beam = BEAM_ARCSEC / PIXEL_ARCSEC / (2 * math.sqrt(2 * math.log(2)))
    knorm = _noise_kernel_norm(sig_beam)
    next_src = 0
    hz_per_kms_max = freqs[-1] ** 2 / (C_KMS * NU0)
    reach = int(math.ceil((VFLAT_MAX + 5 * DISPERSION_KMS + 20.0) * hz_per_kms_max / CHANNEL_HZ)) + 3
    tmp_path = cube_path + ".part"
    shdu = fits.StreamingHDU(tmp_path, header)
    try:
        for z0 in range(0, nz, slab_channels):
            z1 = min(z0 + slab_channels, nz)
            slab = np.empty((z1 - z0, ny, nx), dtype=np.float32)
            for k in range(z0, z1):
                if noise_scale > 0:
                    white = np.random.default_rng([seed, 2, k]).standard_normal((ny, nx), dtype=np.float32)
                    slab[k - z0] = ndimage.gaussian_filter(white, sig_beam, mode="wrap") * (rms[k] / knorm)
                else:
                    slab[k - z0] = 0.0
            # start every galaxy whose emission may reach this slab (centre before z1 + max half-width)
            while next_src < n and zs[order[next_src]] < z1 + reach:
                j = int(order[next_src])
                row = src[j]
                params = {c: float(row[c]) for c in ("line_flux_integral", "hi_size", "i", "pa", "m_hi",
                                                     "w20_target")}
                m = render_disc(xs[j], ys[j], float(row["central_freq"]), params, freqs, (nx, ny))
                models[j] = m
                w20[j], vflat[j] = m.w20, m.v_flat
                next_src += 1
            for j in list(models):
                m = models[j]
                mz0 = m.origin[0]
                mz1 = mz0 + m.cubelet.shape[0]
                if mz1 <= z0:
                    del models[j]
                    continue
                a, b = max(mz0, z0), min(mz1, z1)
                if a < b:
                    _, my0, mx0 = m.origin
                    slab[a - z0:b - z0, my0:my0 + m.cubelet.shape[1], mx0:mx0 + m.cubelet.shape[2]] += \
                        m.cubelet[a - mz0:b - mz0]
            shdu.write(slab)
    except BaseException:
        shdu.close()
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    shdu.close()
    os.replace(tmp_path, cube_path)

    ra, dec = wcs.all_pix2world(xs, ys, 0)
    truth = Table()
    truth["id"] = np.arange(n, dtype=np.int64)
    truth["ra"] = ra * u.deg
    truth["dec"] = dec * u.deg
    truth["hi_size"] = src["hi_size"]
    truth["line_flux_integral"] = src["line_flux_integral"]
    truth["central_freq"] = src["central_freq"]
    truth["pa"] = src["pa"]
    truth["i"] = src["i"]
    truth["w20"] = w20 * u.km / u.s
    truth["x"] = xs
    truth["y"] = ys
    truth["z"] = zs
    truth["m_hi"] = src["m_hi"]
    truth["v_flat"] = vflat * u.km / u.s
    truth["w20_target"] = src["w20_target"]
    truth["n_chan_w20"] = w20 * np.asarray(src["central_freq"]) ** 2 / (C_KMS * NU0) / CHANNEL_HZ
    truth.meta.update({"seed": seed, "shape_xyz": [nx, ny, nz], "freq_start": float(freq_start),
                       "flux_boost": flux_boost, "noise_scale": noise_scale, "rfi_fraction": rfi_fraction})
    from cianna.scoring.sdc2 import write_sdc2_catalog

    write_sdc2_catalog(truth, truth_path)
    truth.write(table_path, format="ascii.ecsv", overwrite=True)
    return HiCubeResult(cube_path, truth_path, table_path, truth, (nx, ny, nz), freqs, rms.astype(np.float64),
                        header)
