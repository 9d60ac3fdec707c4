"""Tests of the 3D YOLO-CIANNA SDC2 pipeline (cianna.pipelines.sdc2 data/model/detect, ``cianna sdc2 detect``).

Plumbing tests use a tiny cube and a freshly initialised network with small tiles, so that several tiles and
chunks are exercised in a few seconds; the pretrained model is only loaded, not evaluated, here
(``benchmarks/sdc2.py`` measures its quality).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits

from cianna.pipelines.sdc2 import data as sdata
from cianna.pipelines.sdc2.detect import (DEFAULT_MODEL, DetectSettings, detect, detect_candidates, load_model,
                                          parse_memory, plan_chunks, save_model, tile_starts)
from cianna.pipelines.sdc2.model import CELL, build_network, make_yolo_config
from cianna.sim.hi_cube import simulate_hi_cube

SHAPE = (48, 40, 176)  # X, Y, Z
SETTINGS = DetectSettings(tile=[64, 32, 32], margin=[16, 8, 8], score="obj_x_prob", pre_threshold=0.2,
                          threshold=0.26, nms_threshold=-0.2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(cube path, truth path, tiny model path) — a 48 x 40 x 176 cube and an untrained network."""
    out = tmp_path_factory.mktemp("sdc2yolo")
    res = simulate_hi_cube(out / "sim", shape=SHAPE, seed=5, n_sources=6, flux_boost=1.5)
    net = build_network((1, 64, 32, 32), make_yolo_config(), seed=3)
    model = save_model(out / "tiny.safetensors", net, SETTINGS, {"note": "untrained, tests only"})
    return Path(res.cube_path), Path(res.truth_path), Path(model)


def _same(t1, t2):
    assert len(t1) == len(t2)
    for c in ("ra", "dec", "central_freq", "line_flux_integral", "hi_size", "pa", "i", "w20", "score"):
        np.testing.assert_array_equal(np.asarray(t1[c]), np.asarray(t2[c]))


# --------------------------------------------------------------------------------------------- data / geometry
def test_param_roundtrip_and_pa_flips():
    rng = np.random.default_rng(0)
    n = 50
    flux, hi, w20 = 10 ** rng.uniform(0, 2.5, n), rng.uniform(2, 40, n), rng.uniform(40, 700, n)
    incl, pa, sig = rng.uniform(0, 90, n), rng.uniform(0, 360, n), rng.uniform(2e-5, 5e-5, n)
    p = sdata.encode_params(flux, sig, 3e4, hi, w20, incl, pa)
    assert p.shape == (n, 6) and (p > -0.2).all() and (p < 1.2).all()
    back = sdata.decode_params(p, sig, 3e4)
    np.testing.assert_allclose(back["line_flux_integral"], flux, rtol=1e-4)
    np.testing.assert_allclose(back["hi_size"], hi, rtol=1e-4)
    np.testing.assert_allclose(back["w20"], w20, rtol=1e-4)
    np.testing.assert_allclose(back["i"], incl, atol=1e-3)
    np.testing.assert_allclose(np.cos(np.deg2rad(back["pa"] - pa)), 1.0, atol=1e-6)
    # each flip is an involution; PA direction vector (east = -x, north = +y) transforms like the pixels
    for kw in ({"flip_x": True}, {"flip_y": True}, {"transpose": True}, {"flip_z": True}):
        np.testing.assert_allclose(sdata.flip_pa(sdata.flip_pa(pa, **kw), **kw), np.mod(pa, 360), atol=1e-9)
    d = np.stack([-np.sin(np.deg2rad(pa)), np.cos(np.deg2rad(pa))], 1)  # (dx, dy) in pixels
    for kw, fn in (({"flip_x": True}, lambda v: v * [-1, 1]), ({"flip_y": True}, lambda v: v * [1, -1]),
                   ({"transpose": True}, lambda v: v[:, ::-1])):
        q = np.deg2rad(sdata.flip_pa(pa, **kw))
        np.testing.assert_allclose(np.stack([-np.sin(q), np.cos(q)], 1), fn(d), atol=1e-9)


def test_sampler_targets_inside_and_augmented(tiny):
    cube, _, _ = tiny
    tc = sdata.TrainingCube.from_files(cube, cube.parent / "truth.ecsv")
    s = sdata.SubCubeSampler([tc], crop=(64, 32, 32), n_per_iter=32, snr_min=0.0, snr_difficult=0.0,
                             source_fraction=1.0)
    x, y = s(1, np.random.default_rng(1))
    assert x.shape == (32, 1, 64, 32, 32) and x.dtype == np.float32 and np.isfinite(x).all()
    assert y.shape == (32, s.row_len) and (y[:, 0] >= 1).all()
    obj = y[:, 1:15]
    centre = (obj[:, 1:4] + obj[:, 4:7]) / 2
    assert ((centre >= 0) & (centre <= [32, 32, 64])).all()
    assert ((obj[:, 4:7] - obj[:, 1:4]) > 0).all()


def test_tile_and_chunk_plan():
    starts, bounds = tile_starts(176, 64, 16)
    assert starts == [0, 32, 64, 96, 112] and bounds[0] == -np.inf and bounds[-1] == np.inf
    assert all(s <= b - 0.5 for s, b in zip(starts[1:], bounds[1:-1]))
    assert tile_starts(20, 64, 16) == ([0], [-np.inf, np.inf])
    tiles = plan_chunks((176, 40, 48), (64, 32, 32), (16, 8, 8), 0)
    assert len(tiles) == 5 and all(len(c["tiles"]) == 4 for c in tiles)
    small = plan_chunks((176, 40, 48), (64, 32, 32), (16, 8, 8), 64 * 32 * 32 * 12)
    assert len(small) == 20 and sorted(t for c in small for t in c["tiles"]) == sorted(
        t for c in tiles for t in c["tiles"])
    assert parse_memory("512M") == 512 << 20 and parse_memory("1.5G") == int(1.5 * (1 << 30))
    with pytest.raises(ValueError, match="max-memory"):
        parse_memory("lots")


# --------------------------------------------------------------------------------------------- detection
def test_chunked_equals_in_memory(tiny):
    cube, _, model = tiny
    full = detect(cube, model=model, progress=False)
    assert full.meta["stats"]["chunks"] == 5 and len(full) > 0
    chunked = detect(cube, model=model, progress=False, chunk_bytes=64 * 32 * 32 * 12)
    assert chunked.meta["stats"]["chunks"] == 20
    _same(full, chunked)
    # memory budget through max_memory (process RSS + one tile at least)
    mem = detect(cube, model=model, progress=False, max_memory="4G")
    _same(full, mem)
    with pytest.raises(ValueError, match="too small"):
        detect(cube, model=model, progress=False, max_memory="10M")


def test_interrupted_run_resumes(tiny, tmp_path):
    cube, _, model = tiny
    ref = detect(cube, tmp_path / "ref.ecsv", model=model, progress=False, chunk_bytes=64 * 32 * 32 * 12)

    class Stop(Exception):
        pass

    def stop_at_7(i, n):
        if i == 7:
            raise Stop

    out = tmp_path / "cat.ecsv"
    with pytest.raises(Stop):
        detect(cube, out, model=model, progress=False, chunk_bytes=64 * 32 * 32 * 12, on_chunk=stop_at_7)
    state = Path(str(out) + ".partial.json")
    assert state.exists() and not out.exists()
    assert len(json.loads(state.read_text())["tiles"]) == 8
    res = detect(cube, out, model=model, progress=False, chunk_bytes=64 * 32 * 32 * 12)
    assert res.meta["stats"]["tiles_computed"] == 20 - 8
    assert out.exists() and not state.exists()
    _same(ref, res)


def test_cli_detect_scored_by_official_scorer(tiny, tmp_path, monkeypatch):
    from cianna import cli
    from cianna.scoring.sdc2 import SDC2_COLUMNS, read_sdc2_catalog, score_sdc2

    if "sdc2_yolo" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", list(cli.COMMAND_MODULES) + ["sdc2_yolo"])
    cube, truth, model = tiny
    out = tmp_path / "sub.txt"
    rc = cli.main(["sdc2", "detect", str(cube), "--model", str(model), "--out", str(out), "--no-progress",
                   "--max-memory", "4G"])
    assert rc == 0
    assert out.read_text().splitlines()[0].split() == list(SDC2_COLUMNS)
    sub = read_sdc2_catalog(out)
    assert len(sub) > 0 and all(np.isfinite(np.asarray(sub[c], float)).all() for c in SDC2_COLUMNS)
    score = score_sdc2(out, truth)
    assert score.n_det == len(sub)
    # other extensions: an Astropy table
    rc = cli.main(["sdc2", "detect", str(cube), "--model", str(model), "--out", str(tmp_path / "c.fits"),
                   "--no-progress"])
    assert rc == 0 and len(fits.getdata(tmp_path / "c.fits")) == len(sub)
    # existing output is refused without --overwrite
    assert cli.main(["sdc2", "detect", str(cube), "--model", str(model), "--out", str(out),
                     "--no-progress"]) == 1


def test_stokes_nan_and_small_cubes(tiny, tmp_path):
    cube, _, model = tiny
    data = fits.getdata(cube).astype(np.float32)
    header = fits.getheader(cube)
    # degenerate 4th Stokes axis gives the same catalogue
    h4 = header.copy()
    h4["NAXIS"] = 4
    h4["NAXIS4"], h4["CTYPE4"], h4["CRPIX4"], h4["CRVAL4"], h4["CDELT4"] = 1, "STOKES", 1.0, 1.0, 1.0
    fits.PrimaryHDU(data[None], h4).writeto(tmp_path / "stokes.fits")
    _same(detect(cube, model=model, progress=False), detect(tmp_path / "stokes.fits", model=model, progress=False))
    # NaN-blanked half: no detection centred there
    blank = data.copy()
    blank[:, :, :24] = np.nan
    fits.PrimaryHDU(blank, header).writeto(tmp_path / "nan.fits")
    t = detect(tmp_path / "nan.fits", model=model, progress=False)
    assert (np.asarray(t["x"]) >= 23.5).all()
    # cube smaller than one tile in every axis
    small = data[:40, :20, :24]
    hs = header.copy()
    fits.PrimaryHDU(small, hs).writeto(tmp_path / "small.fits")
    t = detect(tmp_path / "small.fits", tmp_path / "small.txt", model=model, progress=False)
    assert t.meta["stats"]["tiles"] == 1 and (tmp_path / "small.txt").exists()


def test_bad_inputs_give_clear_errors(tiny, tmp_path):
    from cianna import cli
    from cianna.io.cube import CubeError

    cube, _, model = tiny
    img = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((30, 30), np.float32)).writeto(img)
    with pytest.raises(CubeError, match="image.fits.*2-D"):
        detect(img, model=model, progress=False)
    velo = tmp_path / "velo.fits"
    h = fits.getheader(cube)
    h["CTYPE3"] = "VRAD"
    h["CUNIT3"] = "m/s"
    fits.PrimaryHDU(np.zeros((10, 12, 12), np.float32), h).writeto(velo)
    with pytest.raises(CubeError, match="no spectral FREQ axis"):
        detect(velo, model=model, progress=False)
    trunc = tmp_path / "trunc.fits"
    raw = cube.read_bytes()
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CubeError, match="trunc.fits"):
        detect(trunc, model=model, progress=False)
    with pytest.raises(FileNotFoundError, match="nothere"):
        load_model(tmp_path / "nothere.safetensors")
    if "sdc2_yolo" in cli.COMMAND_MODULES:
        assert cli.main(["sdc2", "detect", str(img), "--model", str(model), "--out", str(tmp_path / "x.txt"),
                         "--no-progress"]) == 1


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="packaged SDC2 model not built yet")
def test_packaged_model_loads():
    net, cfg, settings, digest = load_model()
    assert cfg.fit_dim == 3 and cfg.nb_param == 6 and len(digest) == 16
    assert all(t % c == 0 for t, c in zip(settings.tile, CELL))


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="packaged SDC2 model not built yet")
def test_detect_without_model_argument_uses_packaged_model(tiny, tmp_path):
    from cianna.scoring.sdc2 import score_sdc2

    cube, truth, _ = tiny
    t = detect(cube, tmp_path / "default.txt", progress=False)
    assert t.meta["stats"]["tiles"] == 1 and (tmp_path / "default.txt").exists()
    score_sdc2(tmp_path / "default.txt", truth)  # accepted by the official scorer


def test_calibration_fit_and_apply():
    import pandas as pd

    from cianna.pipelines.sdc2.detect import apply_calibration
    from cianna.pipelines.sdc2.tune import fit_calibration

    rng = np.random.default_rng(2)
    true = {"line_flux_integral": 10 ** rng.uniform(0.5, 2.5, 80), "hi_size": rng.uniform(4, 30, 80),
            "w20": rng.uniform(80, 500, 80), "i": rng.uniform(20, 85, 80)}
    pred = {"line_flux_integral": true["line_flux_integral"] * 0.5, "hi_size": true["hi_size"] * 1.3,
            "w20": true["w20"] * 0.9, "i": true["i"] - 5.0}
    df = pd.DataFrame({**pred, **{k + "_t": v for k, v in true.items()}})
    cal = fit_calibration(df)
    assert set(cal) == set(true)
    out = apply_calibration(pred, cal)
    for k in true:
        np.testing.assert_allclose(out[k], np.clip(true[k], 0, 90) if k == "i" else true[k], rtol=1e-6, atol=1e-6)
    assert fit_calibration(df.iloc[:5]) == {}
    same = apply_calibration(pred, {})
    np.testing.assert_array_equal(same["w20"], pred["w20"])


def test_tune_cli_exports_model_with_purity_constraint(tiny, tmp_path, capsys):
    """``cianna sdc2 tune`` picks a threshold on the validation cube under a purity floor and writes a model
    whose stored settings the detector then uses."""
    from cianna.cli import main
    from cianna.pipelines.sdc2.tune import tune_threshold

    cube, truth, model = tiny
    cand = detect_candidates(cube, model=model, settings=SETTINGS, progress=False)
    free, rows = tune_threshold(cube, cand, truth)
    strict, rows2 = tune_threshold(cube, cand, truth, min_purity=1.0)
    assert rows == rows2 and len(rows) == 18
    top = max(r["value"] for r in rows)
    assert free["score"].value == pytest.approx(top)  # unconstrained = best grid score
    assert strict["score"].purity >= free["score"].purity
    pure = [r for r in rows if r["n_det"] and r["purity"] >= 1.0]
    if pure:  # the constrained choice is the best of the pure points
        assert strict["score"].value == pytest.approx(max(r["value"] for r in pure))
    # two validation cubes are pooled: the same cube twice doubles every count, keeps every ratio
    both, rows_b = tune_threshold([cube, cube], [cand, cand], [truth, truth])
    for r1, r2 in zip(rows, rows_b):
        assert r2["value"] == pytest.approx(2 * r1["value"]) and r2["n_det"] == 2 * r1["n_det"]
        assert r2["purity"] == pytest.approx(r1["purity"])
    assert both["threshold"] == free["threshold"]
    assert both["score"].pa == pytest.approx(free["score"].pa, nan_ok=True)
    with pytest.raises(ValueError, match="one of each"):
        tune_threshold([cube, cube], [cand], [truth, truth])

    out = tmp_path / "tuned.safetensors"
    assert main(["sdc2", "tune", str(model), "--cube", str(cube), str(cube), "--truth", str(truth), str(truth),
                 "--out", str(out), "--min-purity", "0.5"]) == 0
    net, cfg, settings, _ = load_model(out)
    assert settings.threshold in [r["threshold"] for r in rows] and settings.pa_mode == "kinematic"
    assert "model ->" in capsys.readouterr().out
    # missing inputs and an unknown PA mode are named
    assert main(["sdc2", "average", str(model), str(tmp_path / "nope.safetensors"), "--out",
                 str(tmp_path / "a.safetensors")]) == 1
    assert "nope.safetensors" in capsys.readouterr().err
    assert main(["sdc2", "tune", str(tmp_path / "gone.safetensors"), "--cube", str(cube), "--truth", str(truth),
                 "--out", str(tmp_path / "t.safetensors")]) == 1
    assert "gone.safetensors" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pa_mode"):
        DetectSettings(pa_mode="sideways")
    # an existing model is not overwritten without --overwrite (CLI error, exit code 1)
    assert main(["sdc2", "tune", str(model), "--cube", str(cube), "--truth", str(truth), "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err


def test_average_checkpoints(tiny, tmp_path):
    """The averaged model holds the mean of the weights; other architectures are refused."""
    from cianna.cli import main

    _, _, model = tiny
    net_a = load_model(model)[0]
    net_b = build_network((1, 64, 32, 32), make_yolo_config(), seed=4)
    other = save_model(tmp_path / "b.safetensors", net_b, SETTINGS)
    out = tmp_path / "avg.safetensors"
    assert main(["sdc2", "average", str(model), str(other), "--out", str(out)]) == 0
    avg = load_model(out)[0].state_dict()
    a, b = net_a.state_dict(), net_b.state_dict()
    for k in a:
        torch.testing.assert_close(avg[k], (a[k] + b[k]) / 2)
    assert load_model(out)[2] == SETTINGS
    wrong = save_model(tmp_path / "w.safetensors",
                       build_network((1, 64, 32, 32), make_yolo_config(), seed=4, norm=True), SETTINGS)
    from cianna.pipelines.sdc2.tune import average_checkpoints

    with pytest.raises(ValueError, match="not the same architecture"):
        average_checkpoints([model, wrong], tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([model], tmp_path / "bad.safetensors")

