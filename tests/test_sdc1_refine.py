"""Tests of the per-source Gaussian refinement of SDC1 detections (cianna.pipelines.sdc1.refine).

Small simulated fields only (the simulator's renderer and field generator); fast (< 30 s for the file).
"""
import math

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import QTable

from cianna.pipelines.sdc1.refine import beam_covariance, deconvolve, fit_gaussians, refine_catalog
from cianna.sim.continuum import (BEAM_FWHM_DEG, PIXEL_SIZE_DEG, make_header, make_wcs, render_sources,
                                  simulate_continuum_field)

PIX = PIXEL_SIZE_DEG * 3600.0
PAS = np.array([-80.0, -45.0, -20.0, 0.0, 15.0, 30.0, 60.0, 89.0, -60.0])


def _pa_diff(a, b):
    return np.abs((np.asarray(a) - np.asarray(b) + 90.0) % 180.0 - 90.0)


def _catalog(wcs, x, y, flux, bmaj, bmin, pa):
    """A detect_image-like catalogue (PB = 1) with the given 'network' values."""
    n = len(x)
    ra, dec = wcs.pixel_to_world_values(x, y)
    ra = np.where(ra > 180, ra - 360, ra)
    t = QTable()
    t["id"] = np.arange(1, n + 1)
    for c, v in (("ra_core", ra), ("dec_core", dec), ("ra_cent", ra), ("dec_cent", dec)):
        t[c] = v * u.deg
    t["flux"] = np.asarray(flux, float) * u.Jy
    t["core_frac"] = np.zeros(n)
    t["b_maj"] = np.asarray(bmaj, float) * u.arcsec
    t["b_min"] = np.asarray(bmin, float) * u.arcsec
    t["pa"] = np.asarray(pa, float) * u.deg
    t["size"] = np.full(n, 2)
    t["class"] = np.full(n, 3)
    t["x"] = np.asarray(x, float) * u.pix
    t["y"] = np.asarray(y, float) * u.pix
    t["flux_app"] = np.asarray(flux, float) * u.Jy
    t["pb"] = np.ones(n)
    return t


@pytest.fixture(scope="module")
def grid_field(tmp_path_factory):
    """3 x 3 isolated elliptical Gaussians (b_maj 3", b_min 1.5") at known PAs, white noise, a NaN block."""
    size, n = 200, len(PAS)
    rng = np.random.default_rng(5)
    xs = 40.0 + 55.0 * (np.arange(n) % 3) + rng.uniform(-0.5, 0.5, n)
    ys = 40.0 + 55.0 * (np.arange(n) // 3) + rng.uniform(-0.5, 0.5, n)
    flux = np.full(n, 1e-4)
    cat = {"x": xs, "y": ys, "x_core": xs, "y_core": ys, "flux_app": flux, "b_maj": np.full(n, 3.0),
           "b_min": np.full(n, 1.5), "pa": PAS, "size": np.full(n, 2), "core_frac": np.zeros(n),
           "lobe_delta": np.zeros(n)}
    img = render_sources((size, size), cat) + rng.normal(0.0, 2e-7, (size, size)).astype(np.float32)
    img[180:, 180:] = np.nan
    wcs = make_wcs(size)
    path = tmp_path_factory.mktemp("refine") / "grid.fits"
    fits.PrimaryHDU(img, header=make_header(wcs, size)).writeto(path)
    return path, wcs, cat


def test_beam_covariance_and_deconvolution_convention():
    # circular beam: isotropic; elliptical beam with BPA = 0 (north) is elongated along y, BPA = 90 (east) along x
    sxx, sxy, syy = beam_covariance((1.5, 1.5, 0.0), PIX)
    assert sxx == pytest.approx(syy) and sxy == pytest.approx(0.0, abs=1e-12)
    assert sxx == pytest.approx((1.5 / PIX / (2 * math.sqrt(2 * math.log(2)))) ** 2)
    n = beam_covariance((3.0, 1.0, 0.0), 1.0)
    e = beam_covariance((3.0, 1.0, 90.0), 1.0)
    assert n[2] > n[0] and e[0] > e[2]
    # deconvolving the beam from itself: unresolved; a source along SDC1 PA 30 deg (pixel direction (cos, -sin))
    bm, bn, _, res = deconvolve([sxx], [sxy], [syy], (sxx, sxy, syy), PIX)
    assert bm[0] == pytest.approx(0.0, abs=1e-6) and not res[0]
    t = np.deg2rad(30.0)
    s2 = (2.0 / PIX / 2.3548) ** 2
    cov = (s2 * np.cos(t) ** 2 + sxx, -s2 * np.cos(t) * np.sin(t), s2 * np.sin(t) ** 2 + syy)
    bm, bn, pa, res = deconvolve(*[[c] for c in cov], (sxx, sxy, syy), PIX)
    assert res[0] and bm[0] == pytest.approx(2.0, rel=1e-3) and bn[0] == pytest.approx(0.0, abs=1e-4)
    assert pa[0] == pytest.approx(30.0, abs=1e-6)


def test_isolated_sources_flux_sizes_and_pa(grid_field):
    path, wcs, cat = grid_field
    n = len(cat["x"])
    # deliberately poor 'network' values: flux x 1.6, round 2" sources at PA 0, centres off by 0.7 px
    net = _catalog(wcs, cat["x"] + 0.7, cat["y"] - 0.5, np.full(n, 1.6e-4), np.full(n, 2.0), np.full(n, 2.0),
                   np.zeros(n))
    ref = refine_catalog(net, path)
    assert ref["fit_ok"].all()
    assert (ref["refined"] == 31).all()          # position, flux, b_maj, b_min, PA all from the fit
    np.testing.assert_allclose(ref["flux"].to_value(u.Jy), 1e-4, rtol=0.02)
    np.testing.assert_allclose(ref["b_maj"].to_value(u.arcsec), 3.0, rtol=0.04)
    np.testing.assert_allclose(ref["b_min"].to_value(u.arcsec), 1.5, rtol=0.08)
    assert _pa_diff(ref["pa"].to_value(u.deg), PAS).max() < 1.5, ref["pa"]
    # the opposite-sign convention would be far off for the non-degenerate angles
    assert _pa_diff(-ref["pa"].to_value(u.deg), PAS)[np.abs(_pa_diff(PAS, -PAS)) > 20].min() > 15
    np.testing.assert_allclose(ref["x"].to_value(u.pix), cat["x"], atol=0.05)
    np.testing.assert_allclose(ref["y"].to_value(u.pix), cat["y"], atol=0.05)
    ra, dec = wcs.pixel_to_world_values(cat["x"], cat["y"])
    np.testing.assert_allclose(ref["dec_cent"].to_value(u.deg), dec, atol=0.05 * PIXEL_SIZE_DEG)
    # network values are kept alongside
    np.testing.assert_allclose(ref["net_flux"].to_value(u.Jy), 1.6e-4)


def test_fit_gaussians_low_level(grid_field):
    path, wcs, cat = grid_field
    data = fits.getdata(path)
    fw = np.full(len(cat["x"]), 3.0)
    fit = fit_gaussians(data, cat["x"], cat["y"], fw)
    assert fit["ok"].all()
    peak = 1e-4 * (BEAM_FWHM_DEG * 3600) ** 2 / (np.sqrt(3.0**2 + 1.5**2) * np.sqrt(1.5**2 + 1.5**2))
    np.testing.assert_allclose(fit["amp"], peak, rtol=0.02)
    assert fit["npix"].min() > 50


def test_failed_or_faint_fits_keep_network_values(grid_field):
    path, wcs, cat = grid_field
    # row 0: a real source; row 1: all-NaN stamp (fit impossible); row 2: empty sky with a bright network flux
    x = np.array([cat["x"][0], 190.0, 120.0])
    y = np.array([cat["y"][0], 190.0, 15.0])
    net = _catalog(wcs, x, y, [1.6e-4, 5e-5, 5e-5], [2.0, 2.5, 2.5], [2.0, 1.0, 1.0], [0.0, 33.0, -12.0])
    ref = refine_catalog(net, path)
    assert list(ref["fit_ok"]) == [True, False, False]
    assert list(ref["refined"][1:]) == [0, 0]
    for c in ("flux", "b_maj", "b_min", "pa", "x", "y", "ra_cent", "dec_core"):
        np.testing.assert_array_equal(ref[c][1:].value, net[c][1:].value)
    assert ref["flux"][0].to_value(u.Jy) == pytest.approx(1e-4, rel=0.02)
    # a threshold of inf disables every group: the network's values everywhere
    off = refine_catalog(net, path, min_snr={k: math.inf for k in ("position", "flux", "flux_beam", "size", "b_min",
                                                                "pa")})
    assert (off["refined"] == 0).all()
    for c in ("flux", "b_maj", "b_min", "pa", "x", "y"):
        np.testing.assert_array_equal(off[c].value, net[c].value)


def test_simulated_field_bright_isolated_sources(tmp_path):
    f = simulate_continuum_field(tmp_path, size=384, seed=11, pb_null_radius=None, density=2e5)
    tr = f.truth
    x, y = np.asarray(tr["x"], float), np.asarray(tr["y"], float)
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None]) + np.eye(len(x)) * 1e9
    flux = np.asarray(tr["flux_app"], float)
    sel = ((np.asarray(tr["size"]) == 2) & (flux > 1e-5) & (d.min(axis=1) > 12) & (x > 12) & (x < 371)
           & (y > 12) & (y < 371))
    assert sel.sum() >= 20
    t = tr[sel]
    bmaj = np.asarray(t["b_maj"], float)
    net = _catalog(f.wcs, x[sel], y[sel], flux[sel] * 0.7, bmaj * 1.5 + 0.5, np.asarray(t["b_min"], float) + 0.5,
                   np.asarray(t["pa"], float) + 25.0)
    ref = refine_catalog(net, f.image)
    assert ref["fit_ok"].mean() > 0.9
    ratio = ref["flux"].to_value(u.Jy) / flux[sel]
    assert np.median(np.abs(ratio - 1)) < 0.08, ratio      # the "network" input is 30 % off
    beam_shaped = (np.asarray(ref["refined"]) & 32) > 0       # fainter ones: flux from the fixed-shape fit
    assert 0 < beam_shaped.sum() < len(ref)
    assert np.median(np.abs(ratio[beam_shaped] - 1)) < 0.1
    big = bmaj > 2.5
    if big.any():   # well-resolved sources: size and PA close to the truth
        assert np.median(np.abs(ref["b_maj"].to_value(u.arcsec)[big] / bmaj[big] - 1)) < 0.1
        elong = big & (np.asarray(t["b_min"], float) < 0.7 * bmaj)
        if elong.any():
            assert np.median(_pa_diff(ref["pa"].to_value(u.deg)[elong], np.asarray(t["pa"], float)[elong])) < 8


def test_bad_inputs_give_clear_errors(grid_field, tmp_path):
    path, wcs, cat = grid_field
    net = _catalog(wcs, cat["x"][:2], cat["y"][:2], [1e-4] * 2, [2.0] * 2, [2.0] * 2, [0.0] * 2)
    with pytest.raises(ValueError, match="lacks column"):
        refine_catalog(net[["x", "y", "flux"]], path)
    with pytest.raises(ValueError, match="unknown min_snr"):
        refine_catalog(net, path, min_snr={"fluxx": 3})
    hdr = make_header(wcs, 200)
    for k in ("BMAJ", "BMIN", "BPA"):
        hdr.remove(k, ignore_missing=True)
    nobeam = tmp_path / "nobeam.fits"
    fits.PrimaryHDU(fits.getdata(path), header=hdr).writeto(nobeam)
    with pytest.raises(ValueError, match="beam"):
        refine_catalog(net, nobeam)
    assert len(refine_catalog(net, nobeam, beam=(1.5, 1.5, 0.0))) == 2
    with pytest.raises(FileNotFoundError):
        refine_catalog(net, tmp_path / "missing.fits")
    with pytest.raises(ValueError, match="2-D"):
        fit_gaussians(np.zeros(5), [1.0], [1.0], [2.0])
    with pytest.raises(ValueError, match="same length"):
        fit_gaussians(np.zeros((9, 9)), [1.0, 2.0], [1.0], [2.0])
    with pytest.raises(ValueError, match="finite"):
        fit_gaussians(np.zeros((9, 9)), [np.nan], [1.0], [2.0])
    with pytest.raises(ValueError, match="positive"):
        beam_covariance((0.0, 1.0, 0.0), PIX)


def test_detect_image_refine_option(grid_field):
    from cianna.pipelines.sdc1.detect import DEFAULT_MODEL, detect_image

    path, _, _ = grid_field
    with pytest.raises(ValueError, match="refine"):
        detect_image(path, refine="fancy", progress=False)
    if not DEFAULT_MODEL.is_file():
        pytest.skip("bundled SDC1 model not present")
    plain = detect_image(path, refine="none", progress=False, threads=1)
    ref = detect_image(path, progress=False, threads=1, select=False)   # same detections as the plain run
    assert ref.meta["REFINE"] == "gauss" and plain.meta["REFINE"] == "none"
    assert len(ref) == len(plain) > 0 and "fit_snr" in ref.colnames and "fit_snr" not in plain.colnames
    bright = ref["refined"] > 0
    assert bright.any()
    np.testing.assert_allclose(ref["flux"][bright].to_value(u.Jy), 1e-4, rtol=0.05)


def test_matched_filter_positions_and_unmeasured_size_scale(grid_field):
    path, wcs, cat = grid_field
    # 'network' centres 1.2 px off the true ones; free fits disabled for position, size and flux so that only
    # the fixed-shape (matched-filter) fit can move them
    x0, y0 = cat["x"][:4], cat["y"][:4]
    net = _catalog(wcs, x0 + 1.2, y0 - 1.2, [1e-4] * 4, [2.0] * 4, [1.0] * 4, [0.0] * 4)
    off = {"position": math.inf, "flux": math.inf, "size": math.inf, "pa": math.inf}
    plain = refine_catalog(net, path, min_snr=off)
    assert (plain["refined"] & 64 == 0).all()
    np.testing.assert_array_equal(plain["x"].value, net["x"].value)
    moved = refine_catalog(net, path, min_snr={**off, "position_beam": 0.0})
    assert (moved["refined"] & 64 == 64).all()
    err = np.hypot(moved["x"].value - x0, moved["y"].value - y0)
    assert (err < 0.3).all()                                      # back near the true centres (1.7 px before)
    ra, dec = wcs.pixel_to_world_values(moved["x"].value, moved["y"].value)
    np.testing.assert_allclose(moved["dec_core"].to_value(u.deg), dec, atol=1e-9)
    # no fitted size: the network's sizes are multiplied by unmeasured_scale (b_min kept <= b_maj)
    sc = refine_catalog(net, path, min_snr=off, unmeasured_scale=(0.3, 0.5))
    np.testing.assert_allclose(sc["b_maj"].to_value(u.arcsec), 0.6)
    np.testing.assert_allclose(sc["b_min"].to_value(u.arcsec), 0.5)
    fitted = refine_catalog(net, path, unmeasured_scale=(0.3, 0.5))     # bright: the fitted sizes, unscaled
    assert (fitted["refined"] & 4 == 4).all()
    np.testing.assert_allclose(fitted["b_maj"].to_value(u.arcsec), 3.0, rtol=0.1)
    for bad in ((0.0, 1.0), (1.0,), "big", (1.0, math.nan)):
        with pytest.raises(ValueError, match="unmeasured_scale"):
            refine_catalog(net, path, unmeasured_scale=bad)
