"""Classical SDC1 peer: PyBDSF source finding converted to the SDC1 catalogue format.

:func:`run_baseline` = :func:`run_pybdsf` (``bdsf.process_image`` on a FITS image, explicit beam when the header
lacks ``BPA`` as the real SDC1 maps do) + :func:`srl_to_sdc1` (``sdc1.md`` §6.4) + optional primary-beam
correction (:func:`pb_at`, linear interpolation of a PB image in its own WCS) + writing the SDC1 text.

Conversion, one row per PyBDSF source (``srl``):

* ``id`` = Source_id + 1; ``ra_core, dec_core`` = RA_max, DEC_max (peak); ``ra_cent, dec_cent`` = RA, DEC;
* ``flux`` = Total_flux / PB (intrinsic); sources where PB < ``pb_min`` are dropped;
* ``b_maj, b_min`` = DC_Maj, DC_Min in arcsec (deconvolved Gaussian FWHM), at least ``size_floor`` (0.1");
* ``pa`` = ``(90 - DC_PA)`` wrapped to [-90, 90): PyBDSF angles are east of north, SDC1 angles are "clockwise
  from due west" on a north-up/east-left display (see :mod:`cianna.sim.continuum`); the PyBDSF test
  ``tests/test_sdc1_baseline.py`` checks this on simulated elliptical sources. For unresolved sources
  (DC_Maj == 0) the convolved PA is used;
* ``core_frac`` = 0, ``size`` = 2 (Gaussian), ``class`` = 3 (SFG): PyBDSF does not classify.

PyBDSF's own log file goes to a temporary directory (``outdir``), never next to the image.
"""
from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import tempfile
import time

import numpy as np
from astropy import units as u
from astropy.table import Table

from cianna.io.fits import read_image
from cianna.scoring.sdc1 import CAT_COLUMNS, write_sdc1_catalog

__all__ = ["run_pybdsf", "srl_to_sdc1", "run_baseline", "pb_at", "pa_eofn_to_sdc1", "pa_sdc1_to_eofn",
           "write_catalog"]

log = logging.getLogger(__name__)


def pa_eofn_to_sdc1(pa_eofn):
    """Convert an east-of-north PA (deg) to the SDC1 convention, wrapped to [-90, 90).

    ``PA_SDC1 = 90 - PA_EofN`` (mod 180): west (+x on a north-up, east-left image) is PA_EofN = 270 = 90 mod 180.
    """
    return (90.0 - np.asarray(pa_eofn, float) + 90.0) % 180.0 - 90.0


def pa_sdc1_to_eofn(pa_sdc1):
    """Inverse of :func:`pa_eofn_to_sdc1`, east-of-north PA in [0, 180)."""
    return (90.0 - np.asarray(pa_sdc1, float)) % 180.0


def pb_at(pb_path: str | os.PathLike, ra, dec) -> np.ndarray:
    """Primary-beam value at sky positions, by linear interpolation of a PB image in its own WCS.

    Parameters
    ----------
    pb_path : str or os.PathLike
        PB FITS image (2-D or degenerate 4-D, values in [0, 1]; NaNs treated as 0).
    ra, dec : array_like, shape (N,)
        Positions in deg.

    Returns
    -------
    numpy.ndarray, shape (N,)
        PB values; 0 outside the PB image.
    """
    from scipy.interpolate import RegularGridInterpolator

    data, _, wcs, _ = read_image(pb_path, memmap=False)
    data = np.nan_to_num(np.asarray(data, float), nan=0.0)
    x, y = wcs.all_world2pix(np.asarray(ra, float) % 360.0, np.asarray(dec, float), 0)
    interp = RegularGridInterpolator((np.arange(data.shape[0]), np.arange(data.shape[1])), data,
                                     method="linear", bounds_error=False, fill_value=0.0)
    return interp(np.column_stack([np.atleast_1d(y), np.atleast_1d(x)]))


def run_pybdsf(image: str | os.PathLike, *, beam: tuple[float, float, float] | None = None,
               thresh_isl: float = 3.0, thresh_pix: float = 5.0, ncores: int = 1, frequency: float | None = None,
               **bdsf_kwargs) -> Table:
    """Run ``bdsf.process_image`` and return its source list (``srl``) as a Table.

    Parameters
    ----------
    image : str or os.PathLike
        FITS image (Jy/beam).
    beam : (float, float, float), optional
        ``(bmaj, bmin, bpa)`` in deg. Default: from the header; if the header has BMAJ/BMIN but no BPA (real
        SDC1 maps), BPA = 0 is passed explicitly.
    thresh_isl, thresh_pix : float, optional
        Island and peak thresholds in sigma.
    ncores : int, optional
        Cores PyBDSF may use.
    frequency : float, optional
        Hz; default from the header (``FREQ`` keyword or spectral axis), else 560 MHz.
    **bdsf_kwargs
        Passed to ``bdsf.process_image`` (e.g. ``rms_box``).

    Returns
    -------
    astropy.table.Table
        PyBDSF srl columns (RA, DEC, RA_max, DEC_max, Total_flux, DC_Maj, DC_Min, DC_PA, ... in deg / Jy).
    """
    image = os.fspath(image)
    _, header, _, hbeam = read_image(image)
    if beam is None:
        if hbeam is None:
            raise ValueError(f"{image}: no beam in the header; pass beam=(bmaj_deg, bmin_deg, bpa_deg)")
        beam = hbeam.as_degrees()
    if frequency is None:
        frequency = float(header.get("FREQ", header.get("RESTFRQ", 560e6)))
        if any(str(header.get(f"CTYPE{i}", "")).startswith("FREQ") for i in range(3, 5)):
            frequency = None   # PyBDSF reads the spectral axis itself
    try:
        import bdsf
    except ImportError as exc:  # pragma: no cover
        raise ImportError("the SDC1 baseline needs PyBDSF: pip install bdsf==1.14.1") from exc
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cianna_pybdsf_") as tmp:
        kwargs = dict(beam=tuple(float(b) for b in beam), thresh_isl=thresh_isl, thresh_pix=thresh_pix,
                      quiet=True, ncores=ncores, outdir=tmp)
        if frequency is not None:
            kwargs["frequency"] = frequency
        kwargs.update(bdsf_kwargs)
        # PyBDSF calls gc.collect() after every step (~0.5 s each in a large interpreter); freezing the
        # objects that exist already makes those collections scan only PyBDSF's own objects.
        gc.freeze()
        try:
            img = bdsf.process_image(image, **kwargs)
        finally:
            gc.unfreeze()
        cat_path = os.path.join(tmp, "srl.fits")
        n = getattr(img, "nsrc", None)
        if not n:
            log.info("PyBDSF found no source in %s", image)
            return Table(names=["Source_id", "RA", "DEC", "RA_max", "DEC_max", "Total_flux", "Peak_flux",
                                "Maj", "Min", "PA", "DC_Maj", "DC_Min", "DC_PA"], dtype=[int] + [float] * 12)
        with contextlib.redirect_stdout(io.StringIO()):   # PyBDSF prints "--> Wrote FITS file ..."
            img.write_catalog(outfile=cat_path, format="fits", catalog_type="srl", clobber=True)
        srl = Table.read(cat_path)
    log.info("PyBDSF: %d sources in %s (%.1f s)", len(srl), image, time.perf_counter() - t0)
    return srl


def _deg(col) -> np.ndarray:
    unit = getattr(col, "unit", None)
    values = np.asarray(col, float)
    if unit is not None and unit != u.deg and u.Unit(unit).is_equivalent(u.deg):
        values = (values * u.Unit(unit)).to_value(u.deg)
    return values


def srl_to_sdc1(srl: Table, *, pb: str | os.PathLike | None = None, pb_min: float = 0.05,
                size_floor: float = 0.1, core_frac: float = 0.0, size_class: int = 2, cls: int = 3) -> Table:
    """Convert a PyBDSF source list to the SDC1 12-column catalogue (with units).

    Parameters
    ----------
    srl : astropy.table.Table
        Output of :func:`run_pybdsf` (N rows).
    pb : str or os.PathLike, optional
        Primary-beam image; fluxes are divided by the PB at (RA, DEC). Default: no correction.
    pb_min : float, optional
        Sources where the PB is below this value are dropped.
    size_floor : float, optional
        Minimum b_maj / b_min in arcsec (unresolved sources have DC sizes 0).
    core_frac, size_class, cls : optional
        Constant values written for every source.

    Returns
    -------
    astropy.table.Table
        :data:`~cianna.scoring.sdc1.CAT_COLUMNS` (deg, Jy, arcsec, deg) plus ``pb`` and ``flux_app`` [Jy].
    """
    n = len(srl)
    ra, dec = _deg(srl["RA"]), _deg(srl["DEC"])
    ra_max, dec_max = _deg(srl["RA_max"]), _deg(srl["DEC_max"])
    flux_app = np.asarray(srl["Total_flux"], float)
    pbv = pb_at(pb, ra, dec) if (pb is not None and n) else np.ones(n)
    keep = pbv >= pb_min
    if (~keep).any():
        log.info("dropping %d source(s) with PB < %g", int((~keep).sum()), pb_min)
    dc_maj, dc_min = _deg(srl["DC_Maj"]) * 3600.0, _deg(srl["DC_Min"]) * 3600.0
    pa_src = np.where(dc_maj > 0, np.asarray(srl["DC_PA"], float), np.asarray(srl["PA"], float))
    out = Table()
    out["id"] = np.asarray(srl["Source_id"], np.int64)[keep] + 1
    wrap = lambda a: np.where(a > 180.0, a - 360.0, a)  # noqa: E731
    out["ra_core"] = wrap(ra_max[keep]) * u.deg
    out["dec_core"] = dec_max[keep] * u.deg
    out["ra_cent"] = wrap(ra[keep]) * u.deg
    out["dec_cent"] = dec[keep] * u.deg
    out["flux"] = (flux_app[keep] / np.where(keep, pbv, 1.0)[keep]) * u.Jy
    out["core_frac"] = np.full(int(keep.sum()), float(core_frac))
    out["b_maj"] = np.maximum(dc_maj[keep], size_floor) * u.arcsec
    out["b_min"] = np.maximum(dc_min[keep], size_floor) * u.arcsec
    out["pa"] = pa_eofn_to_sdc1(pa_src[keep]) * u.deg
    out["size"] = np.full(int(keep.sum()), int(size_class), np.int64)
    out["class"] = np.full(int(keep.sum()), int(cls), np.int64)
    out["pb"] = pbv[keep]
    out["flux_app"] = flux_app[keep] * u.Jy
    return out


def write_catalog(table: Table, path: str | os.PathLike, *, overwrite: bool = True) -> str:
    """Write a catalogue: ``.txt`` -> SDC1 12-column text; other extensions -> astropy by extension.

    Parameters
    ----------
    table : astropy.table.Table
    path : str or os.PathLike
        ``.txt`` (SDC1 format), ``.ecsv``, ``.fits``, ``.vot``/``.xml``, ``.csv``, ...

    Returns
    -------
    str
        The path written.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".txt":
        return write_sdc1_catalog(table[CAT_COLUMNS], path, overwrite=overwrite)
    fmt = {".ecsv": "ascii.ecsv", ".csv": "ascii.csv", ".vot": "votable", ".xml": "votable",
           ".fits": "fits", ".fit": "fits"}.get(ext)
    if fmt is None:
        raise ValueError(f"{path}: unknown catalogue extension {ext!r} (use .txt, .ecsv, .fits, .vot, .csv)")
    table.write(path, format=fmt, overwrite=overwrite)
    return path


def run_baseline(image: str | os.PathLike, *, pb: str | os.PathLike | None = None,
                 out: str | os.PathLike | None = None, beam: tuple[float, float, float] | None = None,
                 thresh_isl: float = 3.0, thresh_pix: float = 5.0, ncores: int = 1, **bdsf_kwargs) -> Table:
    """PyBDSF on an image, converted to the SDC1 format (optionally PB-corrected and written).

    Parameters
    ----------
    image : str or os.PathLike
        FITS image (Jy/beam, not PB-corrected, as SDC1).
    pb : str or os.PathLike, optional
        Primary-beam image for the flux correction.
    out : str or os.PathLike, optional
        Output catalogue (see :func:`write_catalog`).
    beam, thresh_isl, thresh_pix, ncores, **bdsf_kwargs
        See :func:`run_pybdsf`.

    Returns
    -------
    astropy.table.Table
        SDC1 catalogue with units (see :func:`srl_to_sdc1`); ``meta`` records the settings.
    """
    srl = run_pybdsf(image, beam=beam, thresh_isl=thresh_isl, thresh_pix=thresh_pix, ncores=ncores,
                     **bdsf_kwargs)
    cat = srl_to_sdc1(srl, pb=pb)
    # short upper-case keys: they become FITS header cards when the table is written as .fits
    cat.meta.update(IMAGE=os.fspath(image), PBIMAGE="" if pb is None else os.fspath(pb), THRISL=thresh_isl,
                    THRPIX=thresh_pix, FINDER="PyBDSF")
    if out is not None:
        write_catalog(cat, out)
    return cat
