"""Tests of cianna.io.fits.read_image (2-D FITS images: layouts, beams, WCS, errors)."""
import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from cianna.io.fits import Beam, FitsImageError, read_beam, read_image


def _wcs_header(nx=20, ny=10):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [0.0, -30.0]
    w.wcs.crpix = [nx / 2 + 0.5, ny / 2 + 0.5]
    w.wcs.cdelt = [-1.67847e-4, 1.67847e-4]
    return w.to_header()


def _write(path, data, header=None):
    fits.PrimaryHDU(data=data, header=header).writeto(path, overwrite=True)
    return str(path)


def test_2d_image_beam_and_wcs(tmp_path):
    data = np.arange(200, dtype=np.float32).reshape(10, 20)
    hdr = _wcs_header()
    hdr["BMAJ"], hdr["BMIN"], hdr["BPA"] = 4.1666667e-4, 2e-4, 30.0
    path = _write(tmp_path / "a.fits", data, hdr)
    img, header, wcs, beam = read_image(path)
    assert img.shape == (10, 20)
    np.testing.assert_array_equal(img, data)
    assert wcs.naxis == 2 and wcs.wcs.ctype[0] == "RA---SIN"
    ra, dec = wcs.all_pix2world(9.5, 4.5, 0)
    assert abs(dec + 30.0) < 1e-9 and abs(((ra + 180) % 360) - 180) < 1e-9
    assert beam.major == pytest.approx(1.5, rel=1e-6) and beam.minor == pytest.approx(0.72)
    assert beam.pa == 30.0
    assert beam.as_degrees()[0] == pytest.approx(4.1666667e-4)
    assert beam.area_pixels(0.6043) == pytest.approx(np.pi / (4 * np.log(2)) * 1.5 * 0.72 / 0.6043**2)


def test_4d_sdc1_layout_memmap_and_missing_bpa(tmp_path):
    """SDC1 maps: (1, 1, Y, X) with FREQ/STOKES axes and BMAJ/BMIN but no BPA."""
    data = np.random.default_rng(0).normal(size=(1, 1, 12, 16)).astype(np.float32)
    hdr = _wcs_header(16, 12)
    hdr["CTYPE3"], hdr["CRVAL3"], hdr["CDELT3"], hdr["CRPIX3"] = "FREQ", 5.6e8, 1e6, 1.0
    hdr["CTYPE4"], hdr["CRVAL4"], hdr["CDELT4"], hdr["CRPIX4"] = "STOKES", 1.0, 1.0, 1.0
    hdr["BMAJ"] = hdr["BMIN"] = 4.16666676756e-4
    path = _write(tmp_path / "sdc1.fits", data, hdr)
    img, header, wcs, beam = read_image(path)
    assert img.shape == (12, 16)
    np.testing.assert_array_equal(img, data[0, 0])
    assert img.base is not None            # a view, not a copy
    assert wcs.naxis == 2
    assert beam == Beam(pytest.approx(1.5, rel=1e-6), pytest.approx(1.5, rel=1e-6), 0.0)
    assert header["NAXIS"] == 4


def test_aips_history_beam_and_no_beam(tmp_path):
    hdr = _wcs_header()
    hdr.add_history("AIPS   CLEAN BMAJ=  1.2500E-03 BMIN=  8.3333E-04 BPA=  45.00")
    beam = read_beam(hdr)
    assert beam.major == pytest.approx(4.5) and beam.minor == pytest.approx(3.0, rel=1e-4) and beam.pa == 45.0
    path = _write(tmp_path / "nobeam.fits", np.zeros((10, 20), np.float32), _wcs_header())
    assert read_image(path)[3] is None


def test_nan_fill(tmp_path):
    data = np.ones((10, 20), np.float32)
    data[2, 3] = np.nan
    path = _write(tmp_path / "nan.fits", data, _wcs_header())
    img = read_image(path)[0]
    assert np.isnan(img[2, 3])                      # NaNs left in place by default
    filled = read_image(path, fill_nan=0.0)[0]
    assert filled[2, 3] == 0.0 and np.isfinite(filled).all()


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.fits"):
        read_image(tmp_path / "missing.fits")
    txt = tmp_path / "notfits.fits"
    txt.write_text("this is not a FITS file\n" * 10)
    with pytest.raises(FitsImageError, match="notfits.fits"):
        read_image(txt)
    # no image data: empty primary + a table
    tab = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.zeros(3))])
    fits.HDUList([fits.PrimaryHDU(), tab]).writeto(tmp_path / "table.fits")
    with pytest.raises(FitsImageError, match="table.fits.*no image data"):
        read_image(tmp_path / "table.fits")
    # no celestial WCS
    path = _write(tmp_path / "nowcs.fits", np.zeros((10, 20), np.float32))
    with pytest.raises(FitsImageError, match="nowcs.fits.*celestial"):
        read_image(path)
    # genuine 3-D cube where 2-D is needed
    hdr = _wcs_header()
    hdr["CTYPE3"] = "FREQ"
    path = _write(tmp_path / "cube.fits", np.zeros((3, 10, 20), np.float32), hdr)
    with pytest.raises(FitsImageError, match="cube.fits.*2-D"):
        read_image(path)
    # empty image
    path = _write(tmp_path / "empty.fits", np.zeros((0, 20), np.float32), _wcs_header())
    with pytest.raises(FitsImageError, match="empty.fits"):
        read_image(path)
