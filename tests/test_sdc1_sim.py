"""Tests of cianna.sim.continuum: population statistics vs the real SDC1 B1 truth, rendering, FITS outputs."""
import math
import os

import numpy as np
import pytest
from astropy.io import fits
from scipy.stats import ks_2samp

from cianna.io.fits import read_image
from cianna.scoring.sdc1 import read_sdc1_catalog
from cianna.sim import continuum as cs

DATA = os.path.join(os.path.dirname(__file__), "data", "sdc1", "b1_truth_subset.txt.gz")
#: class counts of the full real catalogue (sdc1.md §1.3); the fixture keeps all classes 1, 2 and 4000 SFGs
REAL_CLASS_COUNTS = {1: 146, 2: 262, 3: 18814}
PIX_ARCSEC = cs.PIXEL_SIZE_DEG * 3600
BEAM_SIGMA_PX = cs.BEAM_FWHM_DEG * cs.FWHM_TO_SIGMA / cs.PIXEL_SIZE_DEG
BEAM_AREA_PX = 2 * math.pi * BEAM_SIGMA_PX**2


@pytest.fixture(scope="module")
def real():
    return read_sdc1_catalog(DATA)


@pytest.fixture(scope="module")
def sample():
    return cs.sample_population(30000, rng=123)


def test_class_and_size_class_fractions(sample):
    n = len(sample)
    total = sum(REAL_CLASS_COUNTS.values())
    for c, count in REAL_CLASS_COUNTS.items():
        p = count / total
        got = np.mean(sample["class"] == c)
        assert abs(got - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-3, (c, got, p)
    # size classes per class as in the real catalogue: SS-AGN LAS/Gaussian, FS-AGN Gaussian, SFG Gaussian/exp
    assert set(np.unique(sample["size"][sample["class"] == 2])) == {2}
    assert set(np.unique(sample["size"][sample["class"] == 1])) == {1, 2}
    sfg = sample[sample["class"] == 3]
    assert set(np.unique(sfg["size"])) == {2, 3}
    assert abs(np.mean(sfg["size"] == 3) - 234 / 18814) < 0.003


@pytest.mark.parametrize("cls", [1, 2, 3])
def test_distributions_match_real_catalogue(real, sample, cls):
    """KS distance of flux, size, axis ratio and core fraction per class vs the real B1 truth."""
    r, s = real[real["class"] == cls], sample[sample["class"] == cls]
    tol = {1: 0.2, 2: 0.15, 3: 0.04}[cls]          # KS 99.9 % critical value ~ 1.95/sqrt(n_real)
    for col in ("flux", "b_maj", "core_frac"):
        d = ks_2samp(np.asarray(r[col]), np.asarray(s[col])).statistic
        assert d < tol, (cls, col, d)
    ratio = lambda t: np.asarray(t["b_min"]) / np.maximum(np.asarray(t["b_maj"]), 1e-9)  # noqa: E731
    assert ks_2samp(ratio(r), ratio(s)).statistic < tol + 0.05
    assert np.median(s["flux"]) == pytest.approx(np.median(r["flux"]), rel=0.25)


def test_pa_ranges_and_flux_size_correlation(real, sample):
    sfg, agn = sample[sample["class"] == 3], sample[sample["class"] < 3]
    assert sfg["pa"].min() >= -90 and sfg["pa"].max() < 90
    assert agn["pa"].min() >= 0 and agn["pa"].max() < 360
    # PA uniform: each quarter of the range holds ~25 %
    counts = np.histogram(sfg["pa"], bins=4, range=(-90, 90))[0] / len(sfg)
    assert np.all(np.abs(counts - 0.25) < 0.02)
    corr = lambda t: np.corrcoef(np.log10(t["flux"]), np.log10(t["b_maj"]))[0, 1]  # noqa: E731
    m_r = (real["class"] == 3) & (real["size"] == 2)
    m_s = (sample["class"] == 3) & (sample["size"] == 2)
    assert corr(sample[m_s]) == pytest.approx(corr(real[m_r]), abs=0.05)
    assert np.all(sample["core_frac"][sample["class"] == 3] == 0)
    assert np.all(sample["core_frac"][sample["class"] == 2] >= 0.5)


def test_sampler_seeded_and_calibration_roundtrip(real):
    a, b = cs.sample_population(500, rng=7), cs.sample_population(500, rng=7)
    assert all(np.array_equal(a[c], b[c]) for c in a.colnames)
    assert not np.array_equal(a["flux"], cs.sample_population(500, rng=8)["flux"])
    model = cs.calibrate_population(real)
    assert {(c.cls, c.size_class) for c in model.components} == {(1, 1), (1, 2), (2, 2), (3, 2), (3, 3)}
    sfg_fit = [c for c in model.components if (c.cls, c.size_class) == (3, 2)][0]
    sfg_def = [c for c in cs.default_population().components if (c.cls, c.size_class) == (3, 2)][0]
    assert sfg_fit.logflux_q[13] == pytest.approx(sfg_def.logflux_q[13], abs=0.03)   # median log flux
    assert sfg_fit.size_coef[1] == pytest.approx(sfg_def.size_coef[1], abs=0.05)      # flux-size slope
    assert cs.default_population().density == pytest.approx(61660, rel=0.01)


def _one(x, y, flux, bmaj, bmin, pa, size=2, cf=0.0, delta=0.0):
    a = lambda v: np.array([v], float)  # noqa: E731
    return {"x": a(x), "y": a(y), "x_core": a(x), "y_core": a(y), "flux_app": a(flux), "b_maj": a(bmaj),
            "b_min": a(bmin), "pa": a(pa), "size": np.array([size]), "core_frac": a(cf), "lobe_delta": a(delta)}


def _moment_angle(img):
    """Orientation of the major axis from image moments, as the SDC1 angle (from +x towards -y), mod 180."""
    yy, xx = np.indices(img.shape)
    w = np.clip(img, 0, None)
    mx, my = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    cxx = (w * (xx - mx) ** 2).sum() / w.sum()
    cyy = (w * (yy - my) ** 2).sum() / w.sum()
    cxy = (w * (xx - mx) * (yy - my)).sum() / w.sum()
    phi = 0.5 * math.degrees(math.atan2(2 * cxy, cxx - cyy))     # from +x towards +y
    return (-phi + 90) % 180 - 90, (mx, my)


@pytest.mark.parametrize("size_class", [2, 3])
@pytest.mark.parametrize("pa", [-60.0, 0.0, 30.0, 75.0])
def test_rendering_pa_flux_and_position(pa, size_class):
    bmaj, bmin = (6.0, 2.0) if size_class == 2 else (2.5, 0.8)
    cat = _one(60.3, 58.7, 1e-3, bmaj, bmin, pa, size=size_class)
    img = cs.render_sources((120, 120), cat)
    angle, (mx, my) = _moment_angle(img)
    diff = (angle - pa + 90) % 180 - 90
    assert abs(diff) < 1.0, (angle, pa)
    assert mx == pytest.approx(60.3, abs=0.05) and my == pytest.approx(58.7, abs=0.05)
    assert img.sum() / BEAM_AREA_PX == pytest.approx(1e-3, rel=0.01)   # Jy/beam -> Jy


def test_point_source_peak_is_flux():
    img = cs.render_sources((40, 40), _one(20.0, 20.0, 2e-4, 0.0, 0.0, 0.0))
    assert img.max() == pytest.approx(2e-4, rel=1e-5)                  # unresolved: peak (Jy/beam) = flux
    assert np.unravel_index(np.argmax(img), img.shape) == (20, 20)


def test_las_source_core_lobes_and_centroid():
    las = 40.0
    cat = _one(100.0, 100.0, 1e-3, las, 0.5 * las, 30.0, size=1, cf=0.2, delta=0.2)
    img = cs.render_sources((200, 200), cat)
    assert img.sum() / BEAM_AREA_PX == pytest.approx(1e-3, rel=0.01)
    angle, (mx, my) = _moment_angle(img)
    assert abs((angle - 30.0 + 90) % 180 - 90) < 1.0
    # centroid moves towards the brighter lobe (+ direction = (cos, -sin)) by 2 delta (1-cf) 0.35 LAS
    shift = 2 * 0.2 * 0.8 * 0.35 * las / PIX_ARCSEC
    assert mx - 100 == pytest.approx(shift * math.cos(math.radians(30)), abs=0.1)
    assert my - 100 == pytest.approx(-shift * math.sin(math.radians(30)), abs=0.1)


def test_primary_beam_profile():
    assert cs.primary_beam(0.0) == pytest.approx(1.0)
    r = np.linspace(0, 3, 301)
    pb = cs.primary_beam(r, 2.75)
    assert np.all((pb >= 0) & (pb <= 1)) and np.all(np.diff(pb[r < 2.75]) <= 1e-12)
    assert pb[r >= 2.75].max() == 0.0
    assert cs.primary_beam(1.0, 2.75) == pytest.approx(0.6, abs=0.1)      # smooth, ~half power near 1.2 deg
    assert np.all(cs.primary_beam(r, None) == 1.0)


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return cs.simulate_continuum_field(out, size=512, seed=11, pb_null_radius=0.12)


def test_field_outputs_header_and_truth(field):
    data, hdr, wcs, beam = read_image(field.image)
    assert data.shape == (512, 512) and data.dtype.kind == "f"
    assert hdr["BUNIT"] == "JY/BEAM" and hdr["BPA"] == 0.0 and hdr["FREQ"] == 560e6
    assert hdr["CDELT1"] == pytest.approx(-1.67847e-4) and hdr["CRPIX1"] == 256.5
    assert tuple(hdr["CRVAL1"] % 360 for _ in [0]) == (0.0,) and hdr["CRVAL2"] == -30.0
    assert beam.major == pytest.approx(1.5, rel=1e-6)
    truth = read_sdc1_catalog(field.truth_path)
    assert truth.meta["n_header_lines"] == 0 and len(truth) == len(field.truth)
    # Poisson count around density x area
    expected = cs.default_population().density * (512 * cs.PIXEL_SIZE_DEG) ** 2
    assert abs(len(truth) - expected) < 5 * math.sqrt(expected)
    # truth positions agree with the WCS
    ra, dec = wcs.all_pix2world(field.truth["x_core"], field.truth["y_core"], 0)
    np.testing.assert_allclose(((ra + 180) % 360) - 180, truth["ra_core"], atol=1e-7)
    np.testing.assert_allclose(dec, truth["dec_core"], atol=1e-7)


def test_field_peaks_at_truth_positions(field):
    data = read_image(field.image)[0]
    t = field.truth
    m = (t["size"] == 2) & (t["peak_app"] > 20e-6) & (t["x"] > 5) & (t["x"] < 506) & (t["y"] > 5) & (t["y"] < 506)
    xs, ys, fa = np.asarray(t["x"]), np.asarray(t["y"]), np.asarray(t["flux_app"])
    checked = 0
    for row in t[m]:
        near = np.hypot(xs - row["x"], ys - row["y"]) < 8
        if fa[near].sum() > 1.05 * row["flux_app"]:       # skip blends
            continue
        ext = (np.asarray(t["size"]) != 2) & (np.hypot(xs - row["x"], ys - row["y"])
                                               < np.asarray(t["b_maj"]) / PIX_ARCSEC + 10)
        if ext.any():                                    # skip sources under a lobe / large disc
            continue
        checked += 1
        x, y = int(round(row["x"])), int(round(row["y"]))
        sub = data[y - 2:y + 3, x - 2:x + 3]
        iy, ix = np.unravel_index(np.argmax(sub), sub.shape)
        assert abs(ix - 2) <= 1 and abs(iy - 2) <= 1
        assert sub.max() == pytest.approx(row["peak_app"], rel=0.3)
    assert checked >= 8


def test_field_pb_applied(field):
    pb_data, _, pb_wcs, _ = read_image(field.pb)
    assert pb_data.min() >= 0 and pb_data.max() <= 1 and pb_data.max() > 0.99
    t = field.truth
    assert t["pb"].min() < 0.6                       # the small null radius makes the PB matter here
    np.testing.assert_allclose(t["flux_app"], t["flux"] * t["pb"], rtol=1e-12)
    from cianna.pipelines.sdc1.baseline import pb_at
    np.testing.assert_allclose(pb_at(field.pb, t["ra_core"], t["dec_core"]), t["pb"], atol=0.01)


def test_noise_level_and_reproducibility(tmp_path):
    kw = dict(size=256, density=0.0, confusion_density=0.0, pb_null_radius=None)
    a = cs.simulate_continuum_field(tmp_path / "a", seed=3, **kw)
    data = read_image(a.image)[0]
    assert len(a.truth) == 0
    assert np.std(data) == pytest.approx(0.36e-6, rel=0.05)
    # beam-correlated: neighbouring pixels strongly correlated
    d = np.asarray(data, float)
    assert np.corrcoef(d[:, :-1].ravel(), d[:, 1:].ravel())[0, 1] > 0.6
    # confusion adds power; same seed -> identical bytes; strips do not matter; another seed differs
    b = cs.simulate_continuum_field(tmp_path / "b", seed=3, strip_rows=64, **kw)
    assert open(a.image, "rb").read() == open(b.image, "rb").read()
    c = cs.simulate_continuum_field(tmp_path / "c", seed=4, **kw)
    assert open(a.image, "rb").read() != open(c.image, "rb").read()
    # confusion alone (no white noise, flat PB): variance = n_per_px <S^2> beam_area^2 sum(K^2)
    dens, (s0, s1), slope = 2e6, (5e-8, 3e-6), -1.7
    conf = cs.simulate_continuum_field(tmp_path / "d", seed=3, **{**kw, "size": 512, "noise_rms": 0.0,
                                       "confusion_density": dens, "confusion_flux_range": (s0, s1),
                                       "confusion_slope": slope})
    k = cs._beam_kernel(BEAM_SIGMA_PX)
    mean_s2 = ((s1 ** (slope + 3) - s0 ** (slope + 3)) / (slope + 3)) / ((s1 ** (slope + 1) - s0 ** (slope + 1))
                                                                          / (slope + 1))
    expected = math.sqrt(dens * cs.PIXEL_SIZE_DEG**2 * mean_s2 * BEAM_AREA_PX**2 * np.sum(k**2) ** 2)
    assert np.std(read_image(conf.image)[0]) == pytest.approx(expected, rel=0.25)


def test_full_field_reproducible_and_4d(tmp_path):
    a = cs.simulate_continuum_field(tmp_path / "a", size=192, seed=5)
    b = cs.simulate_continuum_field(tmp_path / "b", size=192, seed=5, ndim=4, strip_rows=64)
    assert open(a.truth_path).read() == open(b.truth_path).read()
    da, db = fits.getdata(a.image), fits.getdata(b.image)
    assert db.shape == (1, 1, 192, 192) and np.array_equal(da, db[0, 0])
    assert fits.getheader(b.image)["CTYPE3"] == "FREQ"
    assert read_image(b.image)[0].shape == (192, 192)
    c = cs.simulate_continuum_field(tmp_path / "c", size=192, seed=6)
    assert open(a.truth_path).read() != open(c.truth_path).read()
    with pytest.raises(ValueError, match="ndim"):
        cs.simulate_continuum_field(tmp_path / "d", size=64, ndim=3)
    with pytest.raises(FileExistsError):
        cs.simulate_continuum_field(tmp_path / "a", size=64, overwrite=False)


# ------------------------------------------------------------------ faint population (docs/sdc1.md §1.7)
@pytest.fixture(scope="module")
def faint_field(tmp_path_factory):
    d = tmp_path_factory.mktemp("faint")
    return cs.simulate_continuum_field(d, size=768, seed=31, faint_sources=True, pb_null_radius=None)


def test_faint_population_density_and_counts(faint_field):
    t = faint_field.truth
    area = (768 * cs.PIXEL_SIZE_DEG) ** 2
    total = cs.FAINT_DENSITY + 49_265.0            # + the real catalogue's density above 6 uJy
    n = len(t)
    assert abs(n - total * area) < 4 * math.sqrt(total * area) + 0.02 * total * area
    flux = np.asarray(t["flux_app"], float)
    assert flux.min() >= cs.FAINT_FLUX_MIN
    # power law below the break: maximum-likelihood slope of the faint part
    s = flux[flux < cs.FAINT_FLUX_BREAK]
    lo, hi = cs.FAINT_FLUX_MIN, cs.FAINT_FLUX_BREAK
    grid = np.linspace(-2.3, -1.3, 201)
    ll = [g * np.log(s).sum() - s.size * np.log((hi ** (g + 1) - lo ** (g + 1)) / (g + 1)) for g in grid]
    assert abs(grid[int(np.argmax(ll))] - cs.FAINT_SLOPE) < 0.05
    # about 10x more sources than the catalogue population, which keeps its density above the break
    bright = (flux >= cs.FAINT_FLUX_BREAK).sum()
    assert abs(bright - 49_265.0 * area) < 5 * math.sqrt(49_265.0 * area)
    assert n > 8 * bright


def test_faint_population_noise_and_flux_size_relation(faint_field):
    from astropy.stats import sigma_clipped_stats

    data = fits.getdata(faint_field.image)
    _, _, rms = sigma_clipped_stats(data, sigma=3.0)
    assert 0.32e-6 < rms < 0.40e-6            # noise + faint sources ~ the real map's 0.36 uJy/beam
    t = faint_field.truth
    sfg = np.asarray(t["class"]) == 3
    f, b = np.asarray(t["flux"], float)[sfg], np.asarray(t["b_maj"], float)[sfg]
    assert np.median(b[f < 1e-6]) < 0.5 * np.median(b[f > 1e-5])   # the flux-size relation is extrapolated
    assert np.mean(np.asarray(t["class"]) == 3) > 0.95


def test_sample_population_flux_override_checked():
    flux = np.full(500, 2e-6)
    t = cs.sample_population(500, rng=0, flux=flux)
    assert np.allclose(t["flux"], 2e-6)
    with pytest.raises(ValueError, match="flux must be 3 positive"):
        cs.sample_population(3, rng=0, flux=np.array([1e-6, -1.0, 1e-6]))


def test_catalogue_population_unchanged_without_faint_sources(tmp_path):
    a = cs.simulate_continuum_field(tmp_path / "a", size=128, seed=5)
    assert a.meta["faint_sources"] is False and a.meta["confusion_density"] == 1.5e5
    assert np.asarray(a.truth["flux"]).min() > 2e-6       # the catalogue's floor (2.96 uJy)


# ---------------------------------------------------------------- dirty PSF (docs/sdc1.md §1.8)
def test_dirty_psf_model_matches_real_noise_autocorrelation():
    psf = cs.dirty_psf_image(7)
    assert psf[7, 7] == pytest.approx(1.0)
    yy, xx = np.mgrid[-7:8, -7:8]
    r = np.rint(np.hypot(xx, yy))
    measured = [1.0, 0.569, 0.111, -0.060, -0.057, -0.027]      # real B1 1000 h cutout, radial means
    for k, v in enumerate(measured):
        assert psf[r == k].mean() == pytest.approx(v, abs=0.02)
    # white noise through the noise filter has the PSF as autocorrelation
    h = cs._dirty_noise_kernel(cs.DIRTY_PSF)
    from scipy.signal import fftconvolve

    x = fftconvolve(np.random.default_rng(0).standard_normal((600, 600)), h, mode="same")[20:-20, 20:-20]
    for dy, dx in ((0, 1), (1, 0), (0, 2), (2, 0), (0, 3)):
        ac = np.mean(x[dy:, dx:] * x[:x.shape[0] - dy, :x.shape[1] - dx]) / x.var()
        assert ac == pytest.approx(psf[7 + dy, 7 + dx], abs=0.03)


def test_dirty_sources_have_dirty_psf_and_bright_ones_stay_clean(tmp_path):
    f = cs.simulate_continuum_field(tmp_path / "d", size=512, seed=8, dirty_psf=True, noise_rms=1e-12,
                                    confusion_density=0.0, pb_null_radius=None)
    t, img = f.truth, fits.getdata(f.image).astype(float)
    assert f.meta["dirty_psf"] is True
    dirty = np.asarray(t["dirty"])
    peak = np.asarray(t["peak_app"], float)
    assert dirty.any() and (~dirty).any()
    assert np.all(peak[dirty] < cs.CLEAN_LIMIT) and np.all(peak[~dirty & (t["size"] == 2)] >= cs.CLEAN_LIMIT)
    x, y = np.asarray(t["x"]), np.asarray(t["y"])
    psf = cs.dirty_psf_image(7)
    checked = 0
    for i in np.nonzero(dirty & (np.asarray(t["b_maj"]) < 0.3))[0]:
        xi, yi = int(round(x[i])), int(round(y[i]))
        d2 = (x - x[i]) ** 2 + (y - y[i]) ** 2
        if not (10 < xi < 501 and 10 < yi < 501) or np.sort(d2)[1] < 20**2 or abs(x[i] - xi) > 0.15 \
                or abs(y[i] - yi) > 0.15:
            continue
        stamp = img[yi - 7:yi + 8, xi - 7:xi + 8] / float(t["flux_app"][i])
        assert stamp[7, 7] == pytest.approx(1.0, abs=0.08)          # a point source peaks at its flux
        assert stamp.min() < -0.03                                   # negative ring of the dirty PSF
        assert np.abs(stamp - psf).max() < 0.1
        checked += 1
    assert checked >= 1
    clean = np.nonzero(~dirty & (t["size"] == 2) & (np.asarray(t["b_maj"]) < 0.3))[0]
    i = clean[np.argmax(peak[clean])]
    xi, yi = int(round(x[i])), int(round(y[i]))
    assert 10 < xi < 501 and 10 < yi < 501
    yy, xx = np.mgrid[-7:8, -7:8]
    ring = (np.hypot(xx, yy) > 2.5) & (np.hypot(xx, yy) < 4.5)
    stamp = img[yi - 7:yi + 8, xi - 7:xi + 8] / peak[i]
    assert stamp[7, 7] == pytest.approx(1.0, abs=0.1)
    assert stamp[ring].mean() > -0.01 and psf[ring].mean() < -0.04     # restoring beam: no negative ring


def test_dirty_field_noise_statistics(tmp_path):
    from astropy.stats import sigma_clipped_stats

    f = cs.simulate_continuum_field(tmp_path / "n", size=512, seed=9, faint_sources=True, dirty_psf=True,
                                    pb_null_radius=None)
    d = fits.getdata(f.image).astype(float)
    _, med, rms = sigma_clipped_stats(d, sigma=3.0)
    assert 0.33e-6 < rms < 0.40e-6          # real map: 0.36 uJy/beam
    x = np.where(np.abs(d - med) < 3 * rms, d - med, 0.0)
    ac1 = np.mean(x[:, 1:] * x[:, :-1]) / np.mean(x * x)
    assert 0.55 < ac1 < 0.75                # real map 0.65; a restoring-beam noise would give 0.80


def test_cli_simulate_realistic_sky_flags(tmp_path):
    from cianna.cli import main

    out = tmp_path / "r"
    assert main(["-q", "sdc1", "simulate", "--out", str(out), "--size", "256", "--seed", "3", "--faint-sources",
                 "--dirty-psf", "--pb-null-radius", "0"]) == 0
    truth = read_sdc1_catalog(out / "truth.txt")
    area = (256 * cs.PIXEL_SIZE_DEG) ** 2
    n_expected = (cs.FAINT_DENSITY + 49_265.0) * area
    assert abs(len(truth) - n_expected) < 0.1 * n_expected
    assert np.asarray(truth["flux"]).min() >= cs.FAINT_FLUX_MIN
    # short noise correlation of the dirty PSF: 0.57 at one pixel after this clipping (restoring beam: 0.71)
    d = fits.getdata(out / "image.fits").astype(float)
    x = d - np.median(d)
    x = np.where(np.abs(x) < 3 * 0.36e-6, x, 0.0)
    assert np.mean(x[:, 1:] * x[:, :-1]) / np.mean(x * x) < 0.64
