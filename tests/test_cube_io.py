"""Tests of cianna.io.cube.open_cube (shared FITS cube reader)."""
import numpy as np
import pytest
from astropy.io import fits

from cianna.io.cube import CubeError, open_cube


def _header(ctype3="FREQ", naxis=3):
    h = fits.Header()
    h["CTYPE1"], h["CDELT1"], h["CRVAL1"], h["CRPIX1"], h["CUNIT1"] = "RA---SIN", -2.8 / 3600, 180.0, 5.0, "deg"
    h["CTYPE2"], h["CDELT2"], h["CRVAL2"], h["CRPIX2"], h["CUNIT2"] = "DEC--SIN", 2.8 / 3600, -30.0, 4.0, "deg"
    h["CTYPE3"], h["CDELT3"], h["CRVAL3"], h["CRPIX3"] = ctype3, 30e3, 1.05e9, 1.0
    h["CUNIT3"] = "Hz" if ctype3 == "FREQ" else "m/s"
    if naxis == 4:
        h["CTYPE4"], h["CDELT4"], h["CRVAL4"], h["CRPIX4"] = "STOKES", 1.0, 1.0, 1.0
    h["BMAJ"] = h["BMIN"] = 7.0 / 3600
    h["BPA"] = 0.0
    h["BUNIT"] = "JY/BEAM"
    return h


@pytest.fixture
def cube_file(tmp_path):
    data = np.arange(5 * 6 * 8, dtype=np.float32).reshape(5, 6, 8)  # (Z, Y, X)
    path = tmp_path / "cube.fits"
    fits.writeto(path, data, _header())
    return path, data


def test_open_cube_view_wcs_beam(cube_file):
    path, data = cube_file
    with open_cube(path) as cube:
        assert cube.shape == (5, 6, 8)
        np.testing.assert_array_equal(cube.data[2], data[2])
        np.testing.assert_allclose(cube.freqs, 1.05e9 + 30e3 * np.arange(5))
        assert cube.channel_width == pytest.approx(30e3)
        assert cube.beam == pytest.approx((7.0, 7.0, 0.0))
        assert cube.pixel_size == pytest.approx(2.8)
        assert cube.beam_area_pix == pytest.approx(np.pi * 2.5 ** 2 / (4 * np.log(2)))
        ra, dec = cube.celestial.all_pix2world([4.0], [3.0], 0)  # CRPIX (1-based) 5, 4
        assert ra[0] == pytest.approx(180.0) and dec[0] == pytest.approx(-30.0)
        assert cube.bunit == "JY/BEAM"


def test_open_cube_drops_degenerate_stokes(tmp_path):
    data = np.random.default_rng(0).standard_normal((1, 4, 6, 7)).astype(np.float32)
    path = tmp_path / "stokes.fits"
    fits.writeto(path, data, _header(naxis=4))
    with open_cube(path, memmap=False) as cube:
        assert cube.shape == (4, 6, 7)
        np.testing.assert_array_equal(cube.data, data[0])
        assert cube.freqs.shape == (4,)


def test_two_d_image_is_refused(tmp_path):
    path = tmp_path / "image.fits"
    h = _header()
    for key in ("CTYPE3", "CDELT3", "CRVAL3", "CRPIX3", "CUNIT3"):
        del h[key]
    fits.writeto(path, np.zeros((6, 8), np.float32), h)
    with pytest.raises(CubeError, match="image.fits.*2-D image"):
        open_cube(path)


def test_no_spectral_axis_is_refused(tmp_path):
    path = tmp_path / "vrad.fits"
    fits.writeto(path, np.zeros((3, 6, 8), np.float32), _header(ctype3="VRAD"))
    with pytest.raises(CubeError, match="vrad.fits.*no spectral FREQ axis"):
        open_cube(path)


@pytest.mark.parametrize("memmap", [True, False])
def test_truncated_fits_is_refused(cube_file, tmp_path, memmap):
    path, _ = cube_file
    raw = path.read_bytes()
    bad = tmp_path / "truncated.fits"
    bad.write_bytes(raw[:2880 + 100])
    with pytest.raises(CubeError, match="truncated.fits.*truncated"):
        open_cube(bad, memmap=memmap)


def test_not_fits_and_missing(tmp_path):
    bad = tmp_path / "notes.fits"
    bad.write_text("not a fits file\n")
    with pytest.raises(CubeError, match="notes.fits.*not a FITS file"):
        open_cube(bad)
    with pytest.raises(FileNotFoundError, match="missing.fits"):
        open_cube(tmp_path / "missing.fits")
