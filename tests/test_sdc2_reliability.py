"""Tests of the SDC2 reliability model (cianna.pipelines.sdc2.reliability, tune.tune_reliability) and of the
reliability cut in the catalogue stage."""
from dataclasses import replace

import numpy as np
import pytest
from astropy.table import Table

from cianna.pipelines.sdc2.detect import DetectSettings, candidates_to_catalog, detect_candidates, load_model
from cianna.pipelines.sdc2.reliability import (RELIABILITY_FEATURES, choose_threshold, fit_reliability,
                                               leave_one_out, match_labels, predict_reliability,
                                               reliability_features)
from cianna.sim.hi_cube import simulate_hi_cube


def _synthetic_table(n, rng):
    return Table({"score": rng.uniform(0.05, 0.95, n), "line_flux_integral": 10 ** rng.normal(1.5, 0.4, n),
                  "hi_size": 10 ** rng.normal(1.2, 0.2, n), "w20": 10 ** rng.normal(2.5, 0.15, n)})


def test_fit_recovers_a_known_logistic_model():
    """Labels drawn from a known logistic law of the features: the fit finds its slopes (signs and sizes) and
    its probabilities; a model with the true law ranks better than the score alone."""
    rng = np.random.default_rng(0)
    t = _synthetic_table(6000, rng)
    X = reliability_features(t)
    true_w = np.array([1.5, 2.0, 0.0, -3.0])  # per raw feature: logit(score), log flux, log size, log w20
    z = 0.5 + (X - X.mean(0)) @ true_w
    y = rng.random(len(t)) < 1 / (1 + np.exp(-z))
    model = fit_reliability(X, y, l2=0.1)
    assert model["features"] == list(RELIABILITY_FEATURES)
    # slopes of the standardised features (their sampling error is ~0.03 here)
    np.testing.assert_allclose(model["coef"], true_w * np.asarray(model["scale"]), atol=0.15)
    r = predict_reliability(model, t)
    assert r.shape == (len(t),) and np.all((r > 0) & (r < 1))
    # calibrated: mean predicted = observed rate in the top and bottom halves
    hi = r > np.median(r)
    assert abs(r[hi].mean() - y[hi].mean()) < 0.03 and abs(r[~hi].mean() - y[~hi].mean()) < 0.03
    # ranking by reliability beats ranking by the score alone (false ones among the top 1000)
    false_r = (~y[np.argsort(-r)[:1000]]).sum()
    false_s = (~y[np.argsort(-np.asarray(t["score"]))[:1000]]).sum()
    assert false_r < 0.7 * false_s


def test_fit_and_features_reject_bad_input():
    rng = np.random.default_rng(1)
    t = _synthetic_table(50, rng)
    X = reliability_features(t)
    with pytest.raises(ValueError, match="both matched and false"):
        fit_reliability(X, np.ones(len(X)))
    with pytest.raises(ValueError, match="shape"):
        fit_reliability(X, np.ones(len(X) - 1))
    del t["w20"]
    with pytest.raises(KeyError, match="'w20'"):
        reliability_features(t)
    with pytest.raises(ValueError, match="min_reliability"):
        DetectSettings(min_reliability=1.5)


def test_choose_threshold_is_the_best_cut_at_the_purity_floor():
    rng = np.random.default_rng(2)
    r = rng.random(400)
    y = rng.random(400) < r ** 0.5  # higher reliability, more often real
    for floor in (0.0, 0.8, 0.9):
        thr = choose_threshold(r, y, min_purity=floor, match_value=0.8)
        best = None
        for cut in np.unique(r):  # brute force over all cuts
            keep = r >= cut
            m, n = y[keep].sum(), keep.sum()
            if m / n >= floor and (best is None or 0.8 * m - (n - m) > best[0]):
                best = (0.8 * m - (n - m), cut)
        assert thr == pytest.approx(best[1])
        keep = r >= thr
        assert y[keep].mean() >= floor


@pytest.fixture(scope="module")
def two_cubes(tmp_path_factory):
    """Two small simulated cubes and the packaged model's candidates on them (matched and false ones)."""
    out = tmp_path_factory.mktemp("sdc2rel")
    model = load_model()
    cubes, truths, cands = [], [], []
    for seed, f0 in ((11, 1.0e9), (12, 1.08e9)):
        res = simulate_hi_cube(out / f"sim{seed}", shape=(64, 64, 384), seed=seed, n_sources=25, flux_boost=1.5,
                               freq_start=f0)
        cubes.append(res.cube_path)
        truths.append(res.truth_path)
        cands.append(detect_candidates(res.cube_path, model=model, progress=False,
                                       settings=replace(model[2], pre_threshold=0.05, pa_mode="network",
                                                        reliability={})))
    return cubes, truths, cands


def test_tune_reliability_and_the_catalogue_cut(two_cubes):
    """tune_reliability fits on labelled validation candidates and picks the best pooled official score at the
    purity floor; the catalogue stage then applies exactly that cut."""
    from cianna.pipelines.sdc2.tune import tune_reliability

    from cianna.pipelines.sdc2.tune import pool_scores
    from cianna.scoring.sdc2 import score_sdc2

    cubes, truths, cands = two_cubes
    kin = [dict(c, settings=replace(c["settings"], pa_mode="kinematic")) for c in cands]
    res = tune_reliability(cubes, kin, truths, min_purity=0.8, base_threshold=0.1)
    grid = res["grid"]
    eligible = [g for g in grid if g["n_det"] and g["purity"] >= 0.8]
    assert eligible, "the packaged model should reach 80 % purity somewhere on these cubes"
    assert res["threshold"] == max(eligible, key=lambda g: g["value"])["threshold"]
    assert res["score"].purity >= 0.8
    # the reported score is that of the chosen cut with the candidates' own settings (kinematic PA)
    direct = pool_scores(score_sdc2(candidates_to_catalog(cb, dict(c, settings=replace(
        c["settings"], threshold=0.1, reliability=res["model"], min_reliability=res["threshold"]))), tr)
        for cb, c, tr in zip(cubes, kin, truths))
    assert res["score"].value == pytest.approx(direct.value) and res["score"].n_det == direct.n_det
    assert len(res["leave_one_out"]) == 2 and all(d["n_det"] >= 0 for d in res["leave_one_out"])
    # higher reliability thresholds never keep more detections
    n_det = [g["n_det"] for g in grid]
    assert all(a >= b for a, b in zip(n_det, n_det[1:]))

    settings = replace(cands[0]["settings"], threshold=0.1, reliability=res["model"],
                       min_reliability=res["threshold"])
    cand = dict(cands[0], settings=settings)
    cut = candidates_to_catalog(cubes[0], cand)
    full = candidates_to_catalog(cubes[0], cand, min_reliability=0.0)
    assert "reliability" in cut.colnames and len(full) >= len(cut)
    np.testing.assert_allclose(full["reliability"], predict_reliability(res["model"], full))
    assert np.all(cut["reliability"] >= res["threshold"])
    assert sorted(cut["id"]) == list(range(len(cut)))  # ids renumbered after the cut
    assert len(cut) == int((full["reliability"] >= res["threshold"]).sum())
    with pytest.raises(ValueError, match="min_reliability"):
        candidates_to_catalog(cubes[0], cand, min_reliability=1.2)
    # labels come from the official scorer's match table
    lab = match_labels(full, truths[0])
    assert lab.dtype == bool and lab.shape == (len(full),) and 0 < lab.sum() < len(full)


def test_leave_one_out_holds_out_each_cube(two_cubes):
    cubes, truths, cands = two_cubes
    tables = [candidates_to_catalog(cb, cd, threshold=0.1) for cb, cd in zip(cubes, cands)]
    labels = [match_labels(t, tr) for t, tr in zip(tables, truths)]
    loo = leave_one_out(tables, labels, min_purity=0.0)
    assert [d["n_det"] <= len(t) for d, t in zip(loo, tables)] == [True, True]
    for d, lab in zip(loo, labels):
        assert d["n_match"] <= min(d["n_det"], lab.sum())
