"""Tests of the SDC2-like HI cube simulator (cianna.sim.hi_cube)."""
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from cianna.sim.hi_cube import (BEAM_ARCSEC, PIXEL_ARCSEC, measure_w20, render_disc, sample_hi_sources,
                                sdc2_noise_sigma, simulate_hi_cube)

TRUTH = Path("/work/shared/sdc2/sky_dev_truthcat_v2.txt")
if not TRUTH.exists():
    TRUTH = Path(__file__).resolve().parents[2] / "shared" / "sdc2" / "sky_dev_truthcat_v2.txt"
BEAM_AREA = math.pi * (BEAM_ARCSEC / PIXEL_ARCSEC) ** 2 / (4 * math.log(2))
FREQS = 1.05e9 + 30e3 * np.arange(160)


@pytest.mark.skipif(not TRUTH.exists(), reason="SDC2 dev truth catalogue not available")
def test_sampled_marginals_match_dev_truth():
    from scipy.stats import ks_2samp

    from cianna.scoring.sdc2 import read_sdc2_catalog

    truth = read_sdc2_catalog(TRUTH)
    src = sample_hi_sources(4000, (950e6, 1150e6), np.random.default_rng(1))
    for ours, theirs in (("central_freq", "central_freq"), ("line_flux_integral", "line_flux_integral"),
                         ("hi_size", "hi_size"), ("i", "i"), ("w20_target", "w20")):
        stat = ks_2samp(np.asarray(src[ours]), np.asarray(truth[theirs])).statistic
        assert stat < (0.08 if ours == "hi_size" else 0.05), (ours, stat)
    # flux and size stay correlated through the size-mass relation (dev truth: 0.81)
    r = np.corrcoef(np.log10(src["line_flux_integral"]), src["hi_size"])[0, 1]
    assert r > 0.6
    # M = 49.8 D_L^2 S and the size-mass relation hold by construction
    assert np.all(np.asarray(src["m_hi"]) > 1e8)


def test_flux_boost_and_band_conditioning():
    rng = np.random.default_rng(2)
    plain = sample_hi_sources(500, (1.00e9, 1.03e9), rng)
    boosted = sample_hi_sources(500, (1.00e9, 1.03e9), rng, flux_boost=1.5)
    assert np.median(boosted["line_flux_integral"]) > 2 * np.median(plain["line_flux_integral"])
    for t in (plain, boosted):
        assert np.all((np.asarray(t["central_freq"]) >= 1.00e9) & (np.asarray(t["central_freq"]) <= 1.03e9))
    # the default count follows the dev-cube density (2684 sources in 643^2 px over the band)
    n = len(sample_hi_sources(None, (950e6, 1150e6), rng, area_pix=643.0 ** 2))
    assert n == 2684


def test_noise_formula():
    sig = sdc2_noise_sigma([0.95e9, 1.15e9])
    np.testing.assert_allclose(sig * 1e6, [26.63, 30.05], atol=0.05)


def test_edge_on_disc_double_horn_and_w20():
    p = dict(line_flux_integral=50.0, hi_size=20.0, i=88.0, pa=90.0, m_hi=1e10, v_flat=200.0)
    m = render_disc(30.3, 30.1, FREQS[80], p, FREQS, (64, 64))
    spec = m.cubelet.sum(axis=(1, 2))
    peak = spec.max()
    k1, k2 = np.argmax(spec[:spec.size // 2]), spec.size // 2 + np.argmax(spec[spec.size // 2:])
    assert spec[k1] > 0.8 * peak and spec[k2] > 0.8 * peak
    assert spec[(k1 + k2) // 2] < 0.7 * peak  # central dip between the horns
    # w20 of a flat rotation curve seen edge-on ~ 2 v_flat sin i + a few dispersion widths
    assert 2 * 200 * math.sin(math.radians(88)) < m.w20 < 2 * 200 + 60
    # the measured spectrum width agrees with the reported truth w20
    w_cube = measure_w20(spec, FREQS[m.origin[0]:m.origin[0] + spec.size], FREQS[80])
    assert w_cube == pytest.approx(m.w20, rel=0.08)
    # flux conservation: sum(Jy/beam) x channel / beam area = line flux
    assert spec.sum() * 30e3 / BEAM_AREA == pytest.approx(50.0, rel=1e-3)
    # PA 90 deg = receding side to the east (-x): low-frequency channels sit at smaller x
    xs = np.arange(m.cubelet.shape[2])
    lo = m.cubelet[:spec.size // 3].sum(axis=(0, 1))
    hi = m.cubelet[-(spec.size // 3):].sum(axis=(0, 1))
    assert (lo * xs).sum() / lo.sum() < (hi * xs).sum() / hi.sum() - 2


def test_face_on_disc_single_peak():
    p = dict(line_flux_integral=20.0, hi_size=10.0, i=5.0, pa=0.0, m_hi=5e9, v_flat=150.0)
    m = render_disc(20.0, 20.0, FREQS[80], p, FREQS, (40, 40))
    spec = m.cubelet.sum(axis=(1, 2))
    assert m.w20 < 60.0
    assert np.argmax(spec) in range(spec.size // 2 - 2, spec.size // 2 + 3)


def test_w20_solved_to_target():
    freqs = 1.0e9 + 30e3 * np.arange(300)
    for target, incl in ((120.0, 30.0), (300.0, 60.0), (450.0, 80.0)):
        p = dict(line_flux_integral=10.0, hi_size=8.0, i=incl, pa=45.0, m_hi=3e9, w20_target=target)
        m = render_disc(20.0, 20.0, freqs[150], p, freqs, (40, 40))
        assert m.w20 == pytest.approx(target, rel=0.03)


@pytest.fixture(scope="module")
def small_cube(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return simulate_hi_cube(out, shape=(48, 40, 160), seed=7, n_sources=5, slab_channels=64)


def test_cube_header_and_truth(small_cube):
    res = small_cube
    with fits.open(res.cube_path) as hdul:
        h = hdul[0].header
        assert hdul[0].data.shape == (160, 40, 48)
    assert (h["CTYPE1"], h["CTYPE2"], h["CTYPE3"], h["CUNIT3"]) == ("RA---SIN", "DEC--SIN", "FREQ", "Hz")
    assert h["BMAJ"] * 3600 == pytest.approx(7.0) and h["BMIN"] == h["BMAJ"] and h["BPA"] == 0
    assert h["CDELT1"] * 3600 == pytest.approx(-2.8) and h["CDELT3"] == 30e3
    assert h["BUNIT"] == "JY/BEAM" and h["RESTFREQ"] == pytest.approx(1.420405752e9) and h["SPECSYS"]
    lines = Path(res.truth_path).read_text().splitlines()
    assert lines[0] == "id ra dec hi_size line_flux_integral central_freq pa i w20"
    assert len(lines) == 1 + 5
    t = res.truth
    assert np.all((t["ra"] > 179.9) & (t["ra"] < 180.1) & (t["dec"] > -30.1) & (t["dec"] < -29.9))
    assert np.all((t["pa"] >= 0) & (t["pa"] < 360) & (t["i"] >= 0) & (t["i"] <= 90))
    # truth w20 was measured on the model and follows the sampled target
    np.testing.assert_allclose(t["w20"], t["w20_target"], rtol=0.15)


def test_reproducible_and_slab_independent(small_cube, tmp_path):
    again = simulate_hi_cube(tmp_path, shape=(48, 40, 160), seed=7, n_sources=5, slab_channels=13)
    a = fits.getdata(small_cube.cube_path)
    b = fits.getdata(again.cube_path)
    np.testing.assert_array_equal(a, b)
    assert Path(small_cube.truth_path).read_text() == Path(again.truth_path).read_text()
    other = simulate_hi_cube(tmp_path / "o", shape=(48, 40, 160), seed=8, n_sources=5)
    assert not np.array_equal(a, fits.getdata(other.cube_path))


def test_noise_level_and_flux_conservation(tmp_path):
    noise = simulate_hi_cube(tmp_path / "n", shape=(64, 64, 40), seed=1, n_sources=0, freq_start=0.951e9)
    d = fits.getdata(noise.cube_path)
    np.testing.assert_allclose(d.std(), sdc2_noise_sigma(0.951e9 + 20 * 30e3), rtol=0.05)
    clean = simulate_hi_cube(tmp_path / "c", shape=(64, 64, 200), seed=2, n_sources=4, noise_scale=0.0,
                             edge_px=20, edge_channels=60)
    total = fits.getdata(clean.cube_path).sum() * 30e3 / BEAM_AREA
    assert total == pytest.approx(float(np.sum(clean.truth["line_flux_integral"])), rel=0.02)


def test_rfi_channels_and_bad_band(tmp_path):
    res = simulate_hi_cube(tmp_path, shape=(32, 32, 100), seed=3, n_sources=0, rfi_fraction=0.2)
    base = sdc2_noise_sigma(res.freqs)
    excess = res.channel_rms / base
    assert np.count_nonzero(excess > 1.05) >= 20 and excess.max() <= 2.0 + 1e-9
    with pytest.raises(ValueError, match="950-1150 MHz"):
        simulate_hi_cube(tmp_path, shape=(32, 32, 100), freq_start=1.149e9)
    # the real cube's first channel is centred on 950.000 MHz: accepted; half a channel lower is not
    low = simulate_hi_cube(tmp_path / "low", shape=(16, 16, 24), seed=3, n_sources=0, freq_start=950e6)
    assert low.freqs[0] == 950e6
    with pytest.raises(ValueError, match="950-1150 MHz"):
        simulate_hi_cube(tmp_path / "lower", shape=(16, 16, 24), n_sources=0, freq_start=950e6 - 16e3)


def test_cli_simulate(tmp_path):
    from cianna.cli import main

    assert main(["sdc2", "simulate", "--out", str(tmp_path), "--shape", "32", "32", "64", "--seed", "4"]) == 0
    assert (tmp_path / "cube.fits").exists() and (tmp_path / "truth.txt").exists()


@pytest.mark.skipif(not TRUTH.exists(), reason="SDC2 dev truth catalogue not available")
def test_embedded_prior_is_the_fit_of_the_dev_truth():
    from cianna.sim.hi_cube import DEV_PRIOR, fit_truth_prior

    fitted = fit_truth_prior(TRUTH)
    assert fitted["n_sources"] == DEV_PRIOR["n_sources"] == 2684
    np.testing.assert_allclose(fitted["quantiles"], DEV_PRIOR["quantiles"], rtol=2e-3, atol=2e-3)
    # the size offsets take few distinct values (atlas galaxies): their rank correlations are sensitive to
    # the distance interpolation used in the fit, hence the looser tolerance
    np.testing.assert_allclose(fitted["corr"], DEV_PRIOR["corr"], atol=0.03)
