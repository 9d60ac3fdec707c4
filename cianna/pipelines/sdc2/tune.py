"""Choice of the detection threshold of the SDC2 detector on a validation cube (never on the test cube).

:func:`tune_threshold` scores the catalogues obtained from one set of candidates
(:func:`~cianna.pipelines.sdc2.detect.detect_candidates`, low ``pre_threshold``) for a grid of final score
thresholds with the official SDC2 scorer and returns the best one.
"""
from __future__ import annotations

import logging

import numpy as np

__all__ = ["tune_threshold", "tune_reliability", "pool_scores", "fit_calibration", "export_model",
           "average_checkpoints"]

log = logging.getLogger(__name__)


def _as_list(value):
    """``[value]`` for a single item, ``list(value)`` for a list or tuple."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def pool_scores(scores):
    """Combine the official scores of several validation cubes into one :class:`~cianna.scoring.sdc2.Sdc2Score`.

    Counts and the score value add up; purity and completeness are recomputed from the sums; per-property
    accuracies are averaged with the number of matches as weights; match tables are concatenated.
    """
    import math

    from cianna.scoring.sdc2 import PROPERTIES, Sdc2Score

    scores = list(scores)
    if len(scores) == 1:
        return scores[0]
    out = Sdc2Score()
    for name in ("value", "n_det", "n_match", "n_false", "n_bad", "n_true"):
        setattr(out, name, sum(getattr(sc, name) for sc in scores))
    out.purity = out.n_match / out.n_det if out.n_det else 0.0
    out.completeness = out.n_match / out.n_true if out.n_true else 0.0
    w = [sc.n_match for sc in scores]
    for name in ("acc_pc",) + tuple(PROPERTIES):
        vals = [(getattr(sc, name), k) for sc, k in zip(scores, w) if k and not math.isnan(getattr(sc, name))]
        setattr(out, name, sum(v * k for v, k in vals) / sum(k for _, k in vals) if vals else math.nan)
    dfs = [sc.match_df for sc in scores if sc.match_df is not None]
    if dfs:
        import pandas as pd

        out.match_df = pd.concat(dfs, ignore_index=True)
    return out


def _pooled_score(cubes, cands, truths, *, detail=False, **catalog_kw):
    """Official score of the catalogues of several cubes, pooled (:func:`pool_scores`)."""
    from cianna.pipelines.sdc2.detect import candidates_to_catalog
    from cianna.scoring.sdc2 import score_sdc2

    return pool_scores(score_sdc2(candidates_to_catalog(cb, cd, **catalog_kw), tr, detail=detail)
                       for cb, cd, tr in zip(cubes, cands, truths))


def _operating_point(points, min_purity: float, what: str, nonempty: bool = False):
    """Key of the best-scoring ``(key, Sdc2Score)`` point whose purity reaches ``min_purity`` (the purest point,
    with a warning, when none does); ``nonempty`` also requires detections."""
    eligible = [p for p in points if p[1].purity >= min_purity and (p[1].n_det > 0 or not nonempty)]
    if not eligible:
        log.warning("no %s reaches a validation purity of %.3f; taking the purest", what, min_purity)
        eligible = [max(points, key=lambda p: (p[1].purity, p[1].value))]
    return max(eligible, key=lambda p: p[1].value)[0]


def tune_threshold(cube_path, candidates, truth, thresholds=None, nms_thresholds=(-0.2,),
                   min_purity: float = 0.0):
    """Grid search of the final score (and NMS) threshold that maximises the official SDC2 score.

    Parameters
    ----------
    cube_path : str, os.PathLike or list of them
        Validation cube(s). With several cubes the scores are pooled (:func:`pool_scores`): the values add up
        and the purity is that of all detections together.
    candidates : dict or list of dict
        :func:`~cianna.pipelines.sdc2.detect.detect_candidates` output for each cube.
    truth : str, os.PathLike, astropy.table.Table or list of them
        Validation truth of each cube (SDC2 columns).
    thresholds : sequence of float, optional
        Score thresholds to try (default 0.10, 0.15, ..., 0.95).
    nms_thresholds : sequence of float
        DIoU thresholds of the second NMS stage to try.
    min_purity : float
        Only grid points whose validation purity reaches this value compete (an operating point with a
        purity requirement); when none does, the purest point is taken and a warning logged.

    Returns
    -------
    best : dict
        ``threshold``, ``nms_threshold``, ``score`` (:class:`cianna.scoring.sdc2.Sdc2Score`).
    table : list of dict
        One entry per grid point (threshold, nms_threshold, value, n_det, n_match, purity).
    """
    from dataclasses import replace

    cubes, cands, truths = _as_list(cube_path), _as_list(candidates), _as_list(truth)
    if not len(cubes) == len(cands) == len(truths):
        raise ValueError(f"tune_threshold: {len(cubes)} cubes, {len(cands)} candidate sets and {len(truths)} "
                         "truth catalogues: one of each per validation cube is needed")
    if thresholds is None:
        thresholds = np.round(np.arange(0.1, 0.951, 0.05), 3)
    # the PA does not take part in the matching: measure it (kinematics, slow) only for the final choice
    grid_cands = [dict(c, settings=replace(c["settings"], pa_mode="network")) for c in cands]
    rows, points = [], []
    for nthr in nms_thresholds:
        for thr in thresholds:
            sc = _pooled_score(cubes, grid_cands, truths, threshold=float(thr), nms_threshold=float(nthr))
            rows.append({"threshold": float(thr), "nms_threshold": float(nthr), "value": sc.value,
                         "n_det": sc.n_det, "n_match": sc.n_match, "purity": sc.purity})
            points.append(((float(thr), float(nthr)), sc))
    thr, nthr = _operating_point(points, min_purity, "threshold")
    sc = _pooled_score(cubes, cands, truths, threshold=thr, nms_threshold=nthr)
    best = {"threshold": thr, "nms_threshold": nthr, "score": sc}
    log.info("best validation threshold %.3g (nms %.3g, purity >= %.3f): score %.2f, purity %.3f", thr, nthr,
             min_purity, sc.value, sc.purity)
    return best, rows


def tune_reliability(cube_path, candidates, truth, *, min_purity: float = 0.0, base_threshold: float = 0.2,
                     thresholds=None, l2: float = 1.0):
    """Fit the reliability model on validation cubes and choose its threshold with the official scorer.

    The catalogues at ``base_threshold`` (score) of all cubes are labelled by the official scorer
    (:func:`~cianna.pipelines.sdc2.reliability.match_labels`), one logistic model is fitted on all of them
    together, and the reliability threshold that maximises the pooled official score at a pooled purity
    ``>= min_purity`` is chosen. A leave-one-cube-out check (label-based) is returned with it.

    Parameters
    ----------
    cube_path, candidates, truth
        As in :func:`tune_threshold` (lists pool several cubes). The candidates' settings supply the NMS
        threshold and the property calibration.
    min_purity : float
        Pooled validation purity the operating point must reach.
    base_threshold : float
        Score threshold below which no detection is considered.
    thresholds : sequence of float, optional
        Reliability thresholds to try (default 0.30, 0.325, ..., 0.975).
    l2 : float
        Ridge penalty of the logistic fit.

    Returns
    -------
    dict
        ``model`` (reliability dict), ``threshold`` (chosen reliability), ``score`` (pooled
        :class:`~cianna.scoring.sdc2.Sdc2Score` of the chosen cut with the candidates' own settings, PA mode
        included), ``grid`` (per threshold: value with the network's PA, n_det, n_match, purity) and
        ``leave_one_out`` (:func:`~cianna.pipelines.sdc2.reliability.leave_one_out`).
    """
    from dataclasses import replace

    from cianna.pipelines.sdc2.detect import candidates_to_catalog
    from cianna.pipelines.sdc2.reliability import (fit_reliability, leave_one_out, match_labels,
                                                   predict_reliability, reliability_features)
    from cianna.scoring.sdc2 import score_sdc2

    cubes, cands, truths = _as_list(cube_path), _as_list(candidates), _as_list(truth)
    if not len(cubes) == len(cands) == len(truths):
        raise ValueError(f"tune_reliability: {len(cubes)} cubes, {len(cands)} candidate sets and {len(truths)} "
                         "truth catalogues: one of each per validation cube is needed")
    plain = [dict(c, settings=replace(c["settings"], pa_mode="network", reliability={})) for c in cands]
    tables = [candidates_to_catalog(cb, cd, threshold=base_threshold) for cb, cd in zip(cubes, plain)]
    labels = [match_labels(t, tr) for t, tr in zip(tables, truths)]
    model = fit_reliability(np.vstack([reliability_features(t) for t in tables]), np.concatenate(labels), l2=l2)
    for t in tables:
        t["reliability"] = predict_reliability(model, t)
    if thresholds is None:
        thresholds = np.round(np.arange(0.3, 0.976, 0.025), 3)
    grid, points = [], []
    for thr in thresholds:
        sc = pool_scores(score_sdc2(t[t["reliability"] >= thr], tr) for t, tr in zip(tables, truths))
        grid.append({"threshold": float(thr), "value": sc.value, "n_det": sc.n_det, "n_match": sc.n_match,
                     "purity": sc.purity})
        points.append((float(thr), sc))
    thr = _operating_point(points, min_purity, "reliability threshold", nonempty=True)
    # the grid ran with the network's PA (fast; the PA takes no part in the matching): score the chosen cut
    # with the candidates' own settings (kinematic PA), comparable with tune_threshold's final score
    final = [dict(c, settings=replace(c["settings"], threshold=base_threshold, reliability=model,
                                      min_reliability=thr)) for c in cands]
    sc = _pooled_score(cubes, final, truths)
    loo = leave_one_out(tables, labels, min_purity=min_purity, l2=l2)
    log.info("reliability threshold %.3f (base score %.2f, purity >= %.3f): validation score %.2f, purity %.3f; "
             "leave-one-cube-out purity %s", thr, base_threshold, min_purity, sc.value, sc.purity,
             " ".join(f"{d['purity']:.3f}" for d in loo))
    return {"model": model, "threshold": thr, "base_threshold": float(base_threshold), "score": sc, "grid": grid,
            "leave_one_out": loo}


def fit_calibration(match_df, min_matches: int = 20) -> dict:
    """Linear corrections of the regressed properties from matched (submission, truth) pairs.

    Parameters
    ----------
    match_df : pandas.DataFrame
        The official scorer's match table (``score_sdc2(..., detail=True).match_df``): submitted columns and
        their ``*_t`` truth counterparts.
    min_matches : int
        No calibration with fewer matches.

    Returns
    -------
    dict
        ``{name: [a, b]}`` (see :attr:`~cianna.pipelines.sdc2.detect.DetectSettings.calibration`); slopes are
        limited to [0.5, 1.5].
    """
    if match_df is None or len(match_df) < min_matches:
        return {}
    out = {}
    for name in ("line_flux_integral", "hi_size", "w20", "i"):
        x = np.asarray(match_df[name], float)
        y = np.asarray(match_df[name + "_t"], float)
        if name != "i":
            x, y = np.log10(np.maximum(x, 1e-6)), np.log10(np.maximum(y, 1e-6))
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < min_matches or np.std(x[ok]) == 0:
            continue
        b, a = np.polyfit(x[ok], y[ok], 1)
        b = float(np.clip(b, 0.5, 1.5))
        a = float(np.median(y[ok] - b * x[ok]))
        out[name] = [a, b]
    return out


def export_model(checkpoints, cube_path, truth, out_path, *, settings=None, info=None, min_purity: float = 0.0,
                 reliability: bool = False, reliability_base: float = 0.2):
    """Pick the checkpoint with the best validation score, tune its threshold and save it as a detector.

    Parameters
    ----------
    checkpoints : sequence of str or os.PathLike
        Training checkpoints (or models) to compare.
    cube_path, truth
        Validation cube(s) and their truth (never the test cube); lists pool several cubes
        (:func:`tune_threshold`).
    out_path : str or os.PathLike
        Model file to write (:func:`~cianna.pipelines.sdc2.detect.save_model`).
    settings : DetectSettings, optional
        Base inference settings (default :class:`~cianna.pipelines.sdc2.detect.DetectSettings`).
    info : dict, optional
        Provenance stored with the model.
    min_purity : float
        Validation purity the chosen threshold must reach (see :func:`tune_threshold`).
    reliability : bool
        Also fit a reliability model (:func:`tune_reliability`, same purity requirement); it replaces the plain
        score threshold when it raises the pooled validation score.
    reliability_base : float
        Score threshold under the reliability cut.

    Returns
    -------
    dict
        ``checkpoint``, ``threshold``, ``score`` (validation :class:`~cianna.scoring.sdc2.Sdc2Score` as dict) and
        ``all`` (per-checkpoint best values).
    """
    from dataclasses import replace

    from cianna.pipelines.sdc2.detect import DetectSettings, detect_candidates, load_model, save_model

    cubes, truths = _as_list(cube_path), _as_list(truth)
    base = settings or DetectSettings()
    results, best = [], None
    for ck in checkpoints:
        model = load_model(ck)
        cand = [detect_candidates(cb, model=model, settings=replace(base, pre_threshold=0.05), progress=False)
                for cb in cubes]
        b, grid = tune_threshold(cubes, cand, truths, min_purity=min_purity)
        entry = {"checkpoint": str(ck), "threshold": b["threshold"], "value": b["score"].value,
                 "voxels_per_s": float(np.mean([c["stats"]["voxels_per_s"] for c in cand]))}
        results.append(entry)
        log.info("%s: best validation score %.2f at threshold %.2f", ck, b["score"].value, b["threshold"])
        if best is None or b["score"].value > best["score"].value:
            best = {"checkpoint": str(ck), "threshold": b["threshold"], "nms_threshold": b["nms_threshold"],
                    "score": b["score"], "network": model[0], "grid": grid, "candidates": cand}
    final = replace(base, threshold=best["threshold"], nms_threshold=best["nms_threshold"])
    # property calibration on the validation matches, kept only if it raises the validation score
    def pooled(settings_, detail=False):
        cands = [dict(c, settings=settings_) for c in best["candidates"]]
        return _pooled_score(cubes, cands, truths, detail=detail)

    sc0 = pooled(final, detail=True)
    calib = fit_calibration(sc0.match_df)
    if calib:
        sc1 = pooled(replace(final, calibration=calib))
        log.info("calibration %s: validation score %.2f -> %.2f", calib, sc0.value, sc1.value)
        if sc1.value > sc0.value:
            final = replace(final, calibration=calib)
            best["score"] = sc1
    rel_info = None
    if reliability:
        rel = tune_reliability(cubes, [dict(c, settings=final) for c in best["candidates"]], truths,
                               min_purity=min_purity, base_threshold=reliability_base)
        rel_info = {"threshold": rel["threshold"], "base_threshold": rel["base_threshold"],
                    "validation_score": rel["score"].as_dict(), "grid": rel["grid"],
                    "leave_one_out": rel["leave_one_out"], "adopted": rel["score"].value > best["score"].value}
        log.info("reliability: validation score %.2f (purity %.3f) vs score threshold %.2f (purity %.3f)%s",
                 rel["score"].value, rel["score"].purity, best["score"].value, best["score"].purity,
                 "" if rel_info["adopted"] else ": not adopted")
        if rel_info["adopted"]:
            final = replace(final, threshold=rel["base_threshold"], reliability=rel["model"],
                            min_reliability=rel["threshold"])
            best["score"] = rel["score"]
    meta = dict(info or {})
    meta.update({"checkpoint": best["checkpoint"], "validation_score": best["score"].as_dict(),
                 "min_purity": min_purity, "reliability": rel_info,
                 "calibration": final.calibration,
                 "validation_grid": best["grid"], "checkpoints_compared": results})
    save_model(out_path, best["network"], final, meta)
    return {"checkpoint": best["checkpoint"], "threshold": final.threshold, "score": best["score"].as_dict(),
            "calibration": final.calibration, "min_reliability": final.min_reliability if final.reliability else None,
            "reliability": rel_info,
            "all": results}


def average_checkpoints(checkpoints, out_path, *, info=None):
    """Average the weights of several checkpoints of one training run into one model file.

    Averaging the last checkpoints of a run (a "stochastic weight average") smooths the iteration-to-iteration
    noise of SGD; the result is a model file that :func:`export_model` can compare with single checkpoints.

    Parameters
    ----------
    checkpoints : sequence of str or os.PathLike
        Two or more checkpoints (or models) with the same architecture.
    out_path : str or os.PathLike
        Model file to write (atomic).
    info : dict, optional
        Provenance stored with the model (the list of checkpoints is added).

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    ValueError
        Fewer than two checkpoints, or a checkpoint whose tensors differ in name or shape from the first.
    """
    import torch

    from cianna.pipelines.sdc2.detect import load_model, save_model

    checkpoints = [str(c) for c in checkpoints]
    if len(checkpoints) < 2:
        raise ValueError(f"average_checkpoints needs at least two checkpoints, got {checkpoints}")
    net, _, settings, _ = load_model(checkpoints[0])
    ref = net.state_dict()
    acc = {k: v.detach().to(torch.float64).clone() for k, v in ref.items() if v.is_floating_point()}
    for ck in checkpoints[1:]:
        other = load_model(ck)[0].state_dict()
        if other.keys() != ref.keys() or any(other[k].shape != ref[k].shape for k in ref):
            raise ValueError(f"{ck}: tensors differ from {checkpoints[0]} (not the same architecture)")
        for k in acc:
            acc[k] += other[k].to(torch.float64)
        for k in ref:
            if k not in acc and not torch.equal(other[k], ref[k]):
                raise ValueError(f"{ck}: non-float tensor {k!r} differs from {checkpoints[0]}")
    n = len(checkpoints)
    net.load_state_dict({k: (acc[k] / n).to(ref[k].dtype) if k in acc else ref[k] for k in ref})
    meta = dict(info or {})
    meta["averaged_checkpoints"] = checkpoints
    log.info("averaged %d checkpoints -> %s", n, out_path)
    return save_model(out_path, net, settings, meta)
