"""Reading spectral (HI) cubes from FITS files.

:func:`open_cube` is the single entry point used by the SDC2 simulator tests, the classical baseline and the
3D detector. It returns a :class:`Cube` whose ``data`` is a ``(Z, Y, X)`` array view (memory-mapped by
default, so multi-GB cubes are never loaded as a whole), together with the header, the celestial and spectral
WCS, the frequency of every channel, the restoring beam and the pixel size.

Axis convention: FITS ``NAXIS1``/``NAXIS2``/``NAXIS3`` = X (RA-like) / Y (Dec-like) / Z (frequency); numpy
index order is ``data[z, y, x]`` with 0-based pixel indices (add 1 for FITS/DS9 image coordinates). A degenerate
fourth (Stokes) axis of length 1 is dropped, whichever position it has.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

__all__ = ["Cube", "CubeError", "open_cube", "channel_frequencies"]

log = logging.getLogger(__name__)

#: FITS values of CTYPE that count as a spectral frequency axis
_FREQ_CTYPES = ("FREQ",)


class CubeError(ValueError):
    """A FITS file cannot be used as a spectral cube (message names the file and the reason)."""


@dataclass
class Cube:
    """A spectral cube opened by :func:`open_cube`.

    Attributes
    ----------
    path : str
        File the cube was read from.
    data : numpy.ndarray, shape (Z, Y, X)
        Pixel values (``BUNIT``, usually Jy/beam), native FITS dtype; a read-only memory map when opened with
        ``memmap=True``. Slicing channel slabs ``data[z0:z1]`` reads only those channels.
    header : astropy.io.fits.Header
        Primary (or first image) HDU header as found in the file.
    wcs : astropy.wcs.WCS
        3-axis WCS (celestial + spectral), degenerate Stokes axis removed.
    celestial : astropy.wcs.WCS
        2-axis celestial WCS (pixel ``x, y`` -> RA, Dec in deg).
    freqs : numpy.ndarray, shape (Z,)
        Frequency of each channel centre in Hz.
    beam : tuple of float or None
        Restoring beam ``(bmaj, bmin, bpa)`` in (arcsec, arcsec, deg); ``None`` when BMAJ is absent.
    pixel_size : float
        Pixel size in arcsec (geometric mean of the two celestial axes).
    bunit : str
        Value of BUNIT (``""`` when absent).
    """

    path: str
    data: np.ndarray
    header: fits.Header
    wcs: WCS
    celestial: WCS
    freqs: np.ndarray
    beam: tuple | None
    pixel_size: float
    bunit: str = ""
    _hdul: fits.HDUList | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple:
        """``(Z, Y, X)`` shape of the cube."""
        return tuple(self.data.shape)

    @property
    def channel_width(self) -> float:
        """Absolute channel width in Hz (median spacing of :attr:`freqs`; 0 for a single channel)."""
        if self.freqs.size < 2:
            return abs(float(self.wcs.wcs.cdelt[2] * self.wcs.wcs.get_pc()[2, 2]))
        return float(np.median(np.abs(np.diff(self.freqs))))

    @property
    def beam_area_pix(self) -> float:
        """Gaussian beam area in pixels, ``pi * bmaj * bmin / (4 ln 2) / pixel_size**2``."""
        if self.beam is None:
            raise CubeError(f"{self.path}: no BMAJ/BMIN in the header, beam area unknown")
        return float(np.pi * self.beam[0] * self.beam[1] / (4 * np.log(2)) / self.pixel_size ** 2)

    def close(self) -> None:
        """Close the underlying file (the data view becomes invalid)."""
        if self._hdul is not None:
            self._hdul.close()
            self._hdul = None

    def __enter__(self) -> "Cube":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def channel_frequencies(wcs: WCS, nchan: int) -> np.ndarray:
    """Frequencies of the channel centres of a 3-axis (celestial + FREQ) WCS.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        WCS with the spectral axis as third axis, CUNIT3 convertible to Hz.
    nchan : int
        Number of channels Z.

    Returns
    -------
    numpy.ndarray, shape (Z,)
        Channel-centre frequencies in Hz.
    """
    spec = wcs.sub([3])
    z = np.arange(nchan, dtype=float)
    freq = spec.all_pix2world(z, 0)[0]
    unit = (spec.wcs.cunit[0].to_string() or "Hz")
    scale = {"Hz": 1.0, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9}.get(unit)
    if scale is None:  # astropy already normalises units to SI in most cases
        import astropy.units as u
        scale = u.Unit(unit).to(u.Hz)
    return np.asarray(freq, dtype=float) * scale


def _check_fits_file(path: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such FITS cube")
    with open(path, "rb") as fh:
        start = fh.read(80)
    if not start.startswith(b"SIMPLE  ="):
        raise CubeError(f"{path}: not a FITS file (no SIMPLE card at the start)")


def _find_image_hdu(hdul: fits.HDUList, path: str):
    for hdu in hdul:
        if hdu.is_image and hdu.header.get("NAXIS", 0) > 0:
            return hdu
    raise CubeError(f"{path}: no image HDU with data")


def _beam_from_header(header: fits.Header) -> tuple | None:
    if "BMAJ" in header and "BMIN" in header:
        return (float(header["BMAJ"]) * 3600.0, float(header["BMIN"]) * 3600.0, float(header.get("BPA", 0.0)))
    for card in header.get("HISTORY", []):  # AIPS style: "AIPS CLEAN BMAJ= 1.9E-03 BMIN= ... BPA= ..."
        text = str(card)
        if "BMAJ=" in text and "BMIN=" in text:
            try:
                parts = text.replace("=", " ").split()
                bmaj = float(parts[parts.index("BMAJ") + 1]) * 3600.0
                bmin = float(parts[parts.index("BMIN") + 1]) * 3600.0
                bpa = float(parts[parts.index("BPA") + 1]) if "BPA" in parts else 0.0
                return (bmaj, bmin, bpa)
            except (ValueError, IndexError):
                continue
    return None


def open_cube(path: str | os.PathLike, memmap: bool = True) -> Cube:
    """Open a FITS spectral cube as a ``(Z, Y, X)`` view with its WCS, frequencies and beam.

    Parameters
    ----------
    path : str or os.PathLike
        FITS file with a 3-D image (or 4-D with one degenerate Stokes axis) whose third world axis is FREQ.
    memmap : bool, optional
        Memory-map the data (default). With ``False`` the whole cube is read into memory.

    Returns
    -------
    Cube
        ``data`` of shape (Z, Y, X), ``freqs`` (Z,) in Hz, ``beam`` in (arcsec, arcsec, deg) or None,
        ``pixel_size`` in arcsec. Use it as a context manager (or call ``close``) to release the file.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    CubeError
        (a ``ValueError``) the file is not FITS, is truncated, holds a 2-D image, has no FREQ axis, or has a
        non-degenerate fourth axis. The message names the file.
    """
    path = os.fspath(path)
    _check_fits_file(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            hdul = fits.open(path, memmap=memmap, mode="readonly")
            hdul.readall()  # parse every header now so a truncated file is seen here
        except (OSError, ValueError) as exc:
            raise CubeError(f"{path}: cannot read FITS ({exc})") from exc
    for w in caught:
        text = str(w.message)
        if "truncated" in text or "corrupt" in text:
            hdul.close()
            raise CubeError(f"{path}: truncated or corrupt FITS file ({text.splitlines()[0]})")
    try:
        hdu = _find_image_hdu(hdul, path)
        header = hdu.header
        naxis = int(header["NAXIS"])
        dims = [int(header[f"NAXIS{k}"]) for k in range(1, naxis + 1)]  # FITS order (X, Y, Z, ...)
        if naxis < 3 or sum(d > 1 for d in dims) < 3:
            raise CubeError(f"{path}: a spectral cube is needed but the file holds a {naxis}-D image of shape "
                            f"{tuple(dims)} (FITS axis order)")
        ctypes = [str(header.get(f"CTYPE{k}", "")).upper() for k in range(1, naxis + 1)]
        spec_axes = [k for k, c in enumerate(ctypes) if c.split("-")[0] in _FREQ_CTYPES]
        if not spec_axes:
            raise CubeError(f"{path}: no spectral FREQ axis (CTYPEs: {', '.join(ctypes)})")
        drop = [k for k in range(3, naxis)]
        for k in drop:
            if dims[k] != 1:
                raise CubeError(f"{path}: axis {k + 1} ({ctypes[k] or 'unnamed'}) has length {dims[k]}; only a "
                                "degenerate 4th axis is supported")
        if spec_axes[0] != 2:
            raise CubeError(f"{path}: the FREQ axis must be the third FITS axis (found axis {spec_axes[0] + 1})")
        try:
            data = hdu.data
        except (OSError, ValueError, TypeError) as exc:
            raise CubeError(f"{path}: cannot read the data, file truncated? ({exc})") from exc
        if data is None:
            raise CubeError(f"{path}: image HDU holds no data")
        expected = int(np.prod(dims))
        if data.size != expected:
            raise CubeError(f"{path}: truncated FITS data ({data.size} of {expected} values)")
        # numpy order is reversed FITS order: (..., Z, Y, X); drop leading degenerate axes
        while data.ndim > 3:
            data = data[0]
        wcs = WCS(header, naxis=3)
        celestial = wcs.celestial
        if celestial.naxis != 2:
            raise CubeError(f"{path}: no celestial axes in the WCS")
        freqs = channel_frequencies(wcs, data.shape[0])
        from astropy.wcs.utils import proj_plane_pixel_scales
        scales = np.abs(proj_plane_pixel_scales(celestial)) * 3600.0  # deg -> arcsec (celestial CUNIT deg)
        pixel_size = float(np.sqrt(scales[0] * scales[1]))
    except Exception:
        hdul.close()
        raise
    cube = Cube(path=path, data=data, header=header, wcs=wcs, celestial=celestial, freqs=freqs,
                beam=_beam_from_header(header), pixel_size=pixel_size, bunit=str(header.get("BUNIT", "")),
                _hdul=hdul)
    log.debug("opened %s: shape %s, %.6g-%.6g Hz, pixel %.3g arcsec", path, cube.shape, freqs.min(),
              freqs.max(), pixel_size)
    return cube
