"""Tests of the classical SDC2 smooth-and-clip baseline (cianna.pipelines.sdc2.baseline)."""
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from cianna.pipelines.sdc2.baseline import BaselineConfig, find_sources, reliability
from cianna.scoring.sdc2 import read_sdc2_catalog, write_sdc2_catalog
from sdc2_discs import discs_in_noise

SHAPE = (80, 72, 200)  # X, Y, Z
BRIGHT = [  # x, y, channel, flux [Jy Hz], hi_size ["], i, pa, v_flat [km/s]
    (20.3, 22.6, 50.0, 90.0, 16.0, 50.0, 30.0, 160.0),
    (56.1, 28.2, 105.0, 140.0, 22.0, 65.0, 120.0, 200.0),
    (36.7, 55.4, 150.0, 70.0, 14.0, 40.0, 250.0, 140.0),
]


@pytest.fixture(scope="module")
def bright_cube(tmp_path_factory):
    """Noise cube (SDC2 noise) with three bright discs injected; returns (cube path, truth path, noise path)."""
    out = tmp_path_factory.mktemp("baseline")
    cube_path, header, noise, rendered = discs_in_noise(out, SHAPE, BRIGHT, seed=11)
    wcs = WCS(header).celestial
    rows = []
    for k, ((x, y, z, flux, size, incl, pa, vflat), (nu, m)) in enumerate(zip(BRIGHT, rendered)):
        ra, dec = wcs.all_pix2world([x], [y], 0)
        rows.append((k, ra[0], dec[0], size, flux, nu, pa, incl, m.w20))
    truth = Table(rows=rows, names=("id", "ra", "dec", "hi_size", "line_flux_integral", "central_freq", "pa",
                                    "i", "w20"))
    truth_path = write_sdc2_catalog(truth, out / "truth.txt")
    return str(cube_path), truth_path, noise.cube_path


@pytest.fixture(scope="module")
def catalogue(bright_cube):
    return find_sources(bright_cube[0], chunk_channels=64, overlap=48)


def test_finds_bright_sources_and_scores(bright_cube, catalogue):
    from cianna.scoring.sdc2 import score_sdc2

    truth = read_sdc2_catalog(bright_cube[1])
    assert 3 <= len(catalogue) <= 4
    for col, unit in (("ra", "deg"), ("central_freq", "Hz"), ("line_flux_integral", "Hz Jy"), ("w20", "km / s")):
        assert catalogue[col].unit == unit
    score = score_sdc2(catalogue, truth)
    assert score.n_match == 3
    assert score.value > 2.0
    assert score.position == pytest.approx(100.0) and score.central_freq == pytest.approx(100.0)
    assert score.w20 > 50.0 and score.pa > 40.0  # receding side found from the kinematic gradient


def test_parameters_close_to_truth(bright_cube, catalogue):
    truth = read_sdc2_catalog(bright_cube[1])
    dpas = []
    for row in truth:
        d = np.hypot((catalogue["ra"] - row["ra"]) * np.cos(np.radians(row["dec"])), catalogue["dec"] - row["dec"])
        k = int(np.argmin(d))
        assert d[k] * 3600 < 6.0
        assert abs(catalogue["central_freq"][k] - row["central_freq"]) < 0.2e6
        assert catalogue["line_flux_integral"][k] == pytest.approx(row["line_flux_integral"], rel=0.35)
        assert catalogue["w20"][k] == pytest.approx(row["w20"], rel=0.35)
        dpas.append(abs((catalogue["pa"][k] - row["pa"] + 180.0) % 360.0 - 180.0))
    # PA points to the receding side (a 180 deg flip would give errors near 180)
    assert max(dpas) < 90.0 and np.mean(dpas) < 45.0


def test_chunked_equals_in_memory(bright_cube, catalogue):
    whole = find_sources(bright_cube[0], chunk_channels=10_000)
    assert len(whole) == len(catalogue)
    for col in ("ra", "dec", "central_freq", "line_flux_integral", "hi_size", "pa", "i", "w20", "rel"):
        np.testing.assert_allclose(np.asarray(catalogue[col]), np.asarray(whole[col]), rtol=1e-6, err_msg=col)


def test_noise_only_cube_is_clean(bright_cube):
    assert len(find_sources(bright_cube[2])) <= 1


def test_official_scorer_accepts_text_output(bright_cube, tmp_path):
    import warnings

    from cianna.cli import main

    out = tmp_path / "baseline.txt"
    assert main(["-q", "sdc2", "baseline", bright_cube[0], "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == "id ra dec hi_size line_flux_integral central_freq pa i w20"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from ska_sdc import Sdc2Scorer

        res = Sdc2Scorer.from_txt(str(out), bright_cube[1]).run()
    assert res.n_match == 3
    assert main(["-q", "sdc2", "score", str(out), bright_cube[1]]) == 0
    ecsv = tmp_path / "baseline.ecsv"
    assert main(["-q", "sdc2", "baseline", bright_cube[0], "--out", str(ecsv), "--tile-xy", "40",
                 "--overlap-xy", "24"]) == 0
    tiled = Table.read(ecsv)
    assert tiled.meta["config"]["tile_xy"] == 40 and tiled.meta["config"]["overlap_xy"] == 24
    assert len(tiled) == len(read_sdc2_catalog(out))
    assert main(["-q", "sdc2", "baseline", bright_cube[0], "--out", str(ecsv), "--overwrite", "--tile-xy", "0"]) == 0
    assert Table.read(ecsv).meta["config"]["tile_xy"] is None


def test_reliability_and_config_errors():
    rng = np.random.default_rng(0)
    neg = rng.normal(0.5, 0.1, (200, 3))
    pos = np.vstack([rng.normal(0.5, 0.1, (200, 3)), [[1.5, 2.5, 1.0]]])
    rel = reliability(pos, neg)
    assert rel[-1] > 0.99 and np.median(rel[:-1]) < 0.5
    assert np.all(reliability(pos, neg[:3]) == 1.0)  # too few negatives: no density test
    with pytest.raises(ValueError, match="threshold"):
        find_sources("unused.fits", threshold=-1)
    with pytest.raises(ValueError, match="spectral_kernels"):
        BaselineConfig(spectral_kernels=(2.5,)).validate()


@pytest.fixture(scope="module")
def simulated_cube(tmp_path_factory):
    """96 x 96 x 128 simulated cube (30 galaxies, bright tail boosted): several sources near tile borders."""
    from cianna.sim.hi_cube import simulate_hi_cube

    res = simulate_hi_cube(tmp_path_factory.mktemp("tiles"), shape=(96, 96, 128), seed=2, n_sources=30,
                           flux_boost=1.0)
    return str(res.cube_path)


@pytest.mark.parametrize("tile_xy, overlap_xy", [(32, 16), (40, 96)])
def test_tiled_equals_untiled(simulated_cube, tile_xy, overlap_xy):
    cols = ("ra", "dec", "central_freq", "line_flux_integral", "hi_size", "pa", "i", "w20", "rel", "snr", "x", "y",
            "z", "n_pix")
    whole = find_sources(simulated_cube, tile_xy=None)
    tiled = find_sources(simulated_cube, tile_xy=tile_xy, overlap_xy=overlap_xy)
    assert tiled.meta["config"]["tile_xy"] == tile_xy
    assert len(whole) >= 4 and len(tiled) == len(whole)  # no source lost or duplicated at tile borders
    # sources within a few pixels of a core border (multiples of 32 or 40) exercise the ownership rule
    near = np.minimum(np.asarray(whole["y"]) % tile_xy, tile_xy - np.asarray(whole["y"]) % tile_xy)
    assert near.min() < 3
    for col in cols:
        np.testing.assert_allclose(np.asarray(tiled[col], float), np.asarray(whole[col], float), rtol=1e-9,
                                   atol=0, err_msg=col)


def test_whole_plane_noise_levels_do_not_depend_on_tiles():
    from cianna.pipelines.sdc2.baseline import (_plane_noise, _smooth_stride, _smoothed, _smoothed_noise,
                                                _spans, robust_rms)

    rng = np.random.default_rng(3)
    data = (rng.normal(0.0, 1.0, (24, 50, 70)) * rng.uniform(0.5, 2.0, (24, 1, 1))).astype(np.float32)
    data[3, 5:9, 7:30] = np.nan
    data[5] = np.nan  # blank channel
    ref = np.nan_to_num(data, nan=0.0)
    assert np.array_equal(_plane_noise(data, 2, max_bytes=40_000), robust_rms(ref, axis=(1, 2), stride=2))
    cfg = BaselineConfig(spectral_kernels=(0, 3, 7))
    stride = _smooth_stride(data.shape, cfg)
    zs = _spans(24, None, 0)[0]
    rms = np.array(robust_rms(ref, axis=(1, 2), stride=2), dtype=np.float32)
    rms[rms <= 0] = np.inf
    tiles = [(ys, xs) for ys in _spans(50, 16, 12) for xs in _spans(70, 16, 12)]
    levels = _smoothed_noise(data, zs, rms, tiles, stride, cfg)
    for k, (fwhm, width, sm) in enumerate(_smoothed(ref / rms[:, None, None], cfg)):
        want = np.ones(24) if fwhm <= 0 and width <= 1 else robust_rms(sm, axis=(1, 2), stride=stride)
        assert np.array_equal(levels[k], want.astype(np.float32)), (fwhm, width)
    # the sampling stride depends on the plane size only; capped by smooth_noise_samples
    assert _smooth_stride((1, 512, 512), BaselineConfig()) == 4
    assert _smooth_stride((1, 5851, 5851), BaselineConfig()) == 46


def test_small_tile_overlap_warns(bright_cube, caplog):
    with caplog.at_level("WARNING", logger="cianna.pipelines.sdc2.baseline"):
        find_sources(bright_cube[0], tile_xy=40, overlap_xy=4, spatial_kernels=(0, 3), spectral_kernels=(0, 7))
    assert "overlap_xy=4" in caplog.text


@pytest.mark.parametrize("field, value", [("tile_xy", 0), ("tile_xy", -8), ("tile_xy", 32.5), ("tile_xy", True),
                                          ("overlap_xy", -1), ("overlap_xy", 2.0), ("smooth_noise_samples", 0)])
def test_bad_tile_parameters(field, value):
    with pytest.raises(ValueError, match=f"BaselineConfig.{field}"):
        BaselineConfig(**{field: value}).validate()
    with pytest.raises(ValueError, match=field):
        find_sources("unused.fits", **{field: value})  # checked before the file is opened


def test_bad_cube_input(tmp_path):
    from cianna.io.cube import CubeError

    path = tmp_path / "image.fits"
    fits.writeto(path, np.zeros((8, 8), np.float32))
    with pytest.raises(CubeError, match="image.fits"):
        find_sources(path)
    assert not Path(tmp_path / "missing.fits").exists()
    with pytest.raises(FileNotFoundError):
        find_sources(tmp_path / "missing.fits")


def test_sdc2_group_is_shared_with_other_modules():
    import argparse

    from cianna.cli.sdc2 import get_sdc2_subparsers, register

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    first = get_sdc2_subparsers(sub)  # e.g. a detector module registering before this one
    first.add_parser("detect").set_defaults(func=lambda args: 0)
    register(sub)
    assert get_sdc2_subparsers(sub) is first
    assert parser.parse_args(["sdc2", "detect"]).func(None) == 0
    assert parser.parse_args(["sdc2", "score", "a.txt", "b.txt"]).truth == "b.txt"
