"""Reading 2-D continuum images from FITS files.

:func:`read_image` is the shared entry point for 2-D images (SDC1 simulator outputs, the real SDC1 maps, the
PyBDSF baseline and the 2-D detector). It returns ``(data, header, wcs, beam)`` where

* ``data`` is a 2-D ``(Y, X)`` array **view** (memory-mapped by default, so a 4 GB SDC1 map is not loaded);
  degenerate axes (SDC1's ``(1, 1, 32768, 32768)`` FREQ/STOKES layout, read as ``data[0, 0]``) are dropped;
* ``header`` is the HDU header as found in the file;
* ``wcs`` is the 2-axis **celestial** WCS (pixel ``x, y`` -> RA, Dec in deg, 0-based pixels);
* ``beam`` is a :class:`Beam` (FWHM major/minor axes in arcsec, position angle in deg) or ``None``.

Pixel convention: numpy index ``data[y, x]``, 0-based pixel centres at integers (add 1 for FITS/DS9 image
coordinates). NaNs are left in place (use ``fill_nan=`` to get a copy with NaNs replaced).

Beam lookup order: ``BMAJ``/``BMIN`` (deg) keywords, then the last AIPS ``HISTORY`` card of the form
``AIPS   CLEAN BMAJ=  4.1667E-04 BMIN=  4.1667E-04 BPA=   0.00``. A missing ``BPA`` (the case of the real SDC1
headers) is taken as 0 deg and logged.
"""
from __future__ import annotations

import logging
import os
import re
from typing import NamedTuple

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

__all__ = ["Beam", "FitsImageError", "read_image", "read_beam"]

log = logging.getLogger(__name__)

_AIPS_BEAM = re.compile(
    r"BMAJ\s*=\s*([-+0-9.EeDd]+)\s+BMIN\s*=\s*([-+0-9.EeDd]+)(?:\s+BPA\s*=\s*([-+0-9.EeDd]+))?")


class FitsImageError(ValueError):
    """A FITS file cannot be used as a 2-D image (the message names the file and the reason)."""


class Beam(NamedTuple):
    """Restoring beam (Gaussian PSF) of an image.

    Attributes
    ----------
    major, minor : float
        FWHM of the major and minor axes in arcsec.
    pa : float
        Position angle of the major axis in deg, as written in the header (``BPA``: east of north).
    """

    major: float
    minor: float
    pa: float

    def as_degrees(self) -> tuple[float, float, float]:
        """Return ``(bmaj, bmin, bpa)`` all in deg (the form PyBDSF's ``beam=`` expects)."""
        return (self.major / 3600.0, self.minor / 3600.0, self.pa)

    def area_pixels(self, pixel_size: float) -> float:
        """Beam solid angle ``pi / (4 ln 2) * major * minor`` in pixels, for a pixel size in arcsec."""
        return float(np.pi / (4.0 * np.log(2.0)) * self.major * self.minor / pixel_size**2)


def read_beam(header: fits.Header, *, path: str = "<header>") -> Beam | None:
    """Restoring beam from a FITS header.

    Parameters
    ----------
    header : astropy.io.fits.Header
        Header to inspect.
    path : str, optional
        File name, only used in log messages.

    Returns
    -------
    Beam or None
        ``Beam(major, minor, pa)`` (arcsec, arcsec, deg), or ``None`` when neither ``BMAJ``/``BMIN`` nor an
        AIPS ``HISTORY`` beam card is present.
    """
    if "BMAJ" in header and "BMIN" in header:
        bmaj, bmin = float(header["BMAJ"]), float(header["BMIN"])
        if "BPA" in header:
            bpa = float(header["BPA"])
        else:
            log.info("%s: header has BMAJ/BMIN but no BPA; assuming BPA = 0 deg", path)
            bpa = 0.0
        return Beam(bmaj * 3600.0, bmin * 3600.0, bpa)
    history = header.get("HISTORY", [])
    for card in reversed(list(history)):
        match = _AIPS_BEAM.search(str(card))
        if match:
            bmaj, bmin = (float(match.group(i).replace("D", "E")) for i in (1, 2))
            bpa = float(match.group(3).replace("D", "E")) if match.group(3) else 0.0
            log.info("%s: beam taken from an AIPS HISTORY card", path)
            return Beam(bmaj * 3600.0, bmin * 3600.0, bpa)
    return None


def _first_image_hdu(hdul: fits.HDUList, path: str) -> int:
    for i, h in enumerate(hdul):
        if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) and h.header.get("NAXIS", 0) >= 2:
            return i
    raise FitsImageError(f"{path}: no image data (no HDU with NAXIS >= 2)")


def _squeeze_2d(data: np.ndarray, path: str) -> np.ndarray:
    """Drop degenerate (length-1) axes; keep a view (no copy)."""
    if data.ndim == 2:
        return data
    index = tuple(0 if n == 1 else slice(None) for n in data.shape)
    out = data[index]
    if out.ndim != 2:
        raise FitsImageError(
            f"{path}: image has shape {data.shape}; {out.ndim} non-degenerate axes where 2-D data is needed "
            "(use a cube reader for 3-D data, or cut a plane first)")
    return out


def read_image(path: str | os.PathLike, *, hdu: int | str | None = None, memmap: bool = True,
               fill_nan: float | None = None) -> tuple[np.ndarray, fits.Header, WCS, Beam | None]:
    """Read a 2-D image (data view, header, celestial WCS, beam) from a FITS file.

    Parameters
    ----------
    path : str or os.PathLike
        FITS file.
    hdu : int or str, optional
        HDU index or EXTNAME. Default: the first HDU with ``NAXIS >= 2``.
    memmap : bool, optional
        Memory-map the data (default). The returned array is then a read-only view into the file; slice it to
        read only part of a large image.
    fill_nan : float, optional
        If given, return an in-memory copy with NaNs replaced by this value (reads the whole image).

    Returns
    -------
    data : numpy.ndarray, shape (Y, X)
        Pixel values in ``BUNIT`` (Jy/beam for radio maps), native FITS dtype; degenerate axes removed
        (a 4-D SDC1 map ``(1, 1, Y, X)`` gives ``data[0, 0]``).
    header : astropy.io.fits.Header
        Header of the HDU read.
    wcs : astropy.wcs.WCS
        2-axis celestial WCS (``wcs.pixel_to_world_values(x, y)`` -> RA, Dec in deg, 0-based pixels).
    beam : Beam or None
        Restoring beam (arcsec, arcsec, deg), or ``None`` when the header has none (see :func:`read_beam`).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    FitsImageError
        Not a FITS file, no image data, more than 2 non-degenerate axes, empty image, or no celestial WCS.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such FITS file")
    try:
        hdul = fits.open(path, memmap=memmap, mode="readonly")
    except (OSError, TypeError, ValueError) as exc:
        raise FitsImageError(f"{path}: not a readable FITS file ({exc})") from exc
    try:
        if hdu is None:
            hdu = _first_image_hdu(hdul, path)
        try:
            h = hdul[hdu]
        except (KeyError, IndexError) as exc:
            raise FitsImageError(f"{path}: no HDU {hdu!r}") from exc
        header = h.header
        data = h.data
    finally:
        # the memory map stays valid after closing the HDUList (astropy keeps the mmap alive)
        hdul.close()
    if data is None or data.ndim < 2:
        raise FitsImageError(f"{path}: HDU {hdu!r} holds no image data")
    if data.size == 0:
        raise FitsImageError(f"{path}: image is empty (shape {data.shape})")
    data2d = _squeeze_2d(data, path)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header).celestial
        except Exception as exc:  # noqa: BLE001 - astropy raises many types on bad headers
            raise FitsImageError(f"{path}: cannot parse the WCS ({exc})") from exc
    if wcs.naxis != 2 or not wcs.has_celestial:
        raise FitsImageError(f"{path}: no celestial WCS (CTYPE RA/DEC-like axes) in HDU {hdu!r}")
    beam = read_beam(header, path=path)
    if fill_nan is not None:
        data2d = np.nan_to_num(np.array(data2d), nan=fill_nan)
    return data2d, header, wcs, beam
