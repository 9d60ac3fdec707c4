"""Per-prior objectness thresholds and checkpoint selection on a **validation** field (``sdc1.md`` §3.12).

The scored (benchmark / test) field is never used here. Procedure:

1. detect on the validation field with low thresholds (``low``, default 0.05 for every prior);
2. score that catalogue with the official scorer (``area="all"``) and give each detection its *gain*: its
   match score (mean of the 7 per-term scores) if matched, −1 otherwise (the SDC1 score is the sum of the
   gains);
3. per prior, sort its detections by objectness and take as threshold the objectness that maximises the
   cumulative gain (the score is additive over detections, so the priors separate), floored at ``low``.

This replaces the spec's 60-bin heuristic by the exact maximiser of the validation score at fixed NMS
(ignoring that a higher threshold can remove a box that would have suppressed another in the first NMS).
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np

__all__ = ["detection_gains", "purity_cost", "tune_thresholds", "evaluate_model", "score_on_field",
           "choose_size_scale", "choose_refine_options", "choose_selection", "export_model"]

log = logging.getLogger(__name__)

_TERMS = ("position", "flux", "b_maj", "b_min", "pa", "core_frac", "class")
#: Fields of an :class:`~cianna.scoring.sdc1.Sdc1Score` kept in tuning records.
_SCORE_KEYS = ("value", "n_det", "n_match", "n_false", "n_truth", "purity", "completeness", "acc_pc")


def _field_paths(valid_dir) -> tuple[str, str, str]:
    """``image.fits``, ``pb.fits`` and ``truth.txt`` of a field directory."""
    return tuple(os.path.join(valid_dir, n) for n in ("image.fits", "pb.fits", "truth.txt"))


def _summary(score) -> dict:
    return {k: getattr(score, k) for k in _SCORE_KEYS}


def score_on_field(model, valid_dir: str | os.PathLike) -> dict:
    """Detect a field with the model's own settings and score it (``area="all"``); the :data:`_SCORE_KEYS`."""
    from cianna.pipelines.sdc1.detect import detect_image
    from cianna.scoring.sdc1 import score_sdc1

    image, pb, truth = _field_paths(valid_dir)
    return _summary(score_sdc1(detect_image(image, pb=pb, model=model, progress=False), truth, area="all"))


def detection_gains(table, truth, *, area: str = "all") -> tuple[np.ndarray, object]:
    """Gain of every detection (match score or −1), in table order, and the :class:`Sdc1Score`.

    Parameters
    ----------
    table : astropy.table.Table
        Detections with the SDC1 columns (ids unique).
    truth : str, os.PathLike or Table
        Truth catalogue.
    """
    from cianna.scoring.sdc1 import score_sdc1

    gains = -np.ones(len(table))
    if not len(table):
        return gains, None
    s = score_sdc1(table, truth, area=area, detail=True)
    if s.matches is not None and len(s.matches):
        m = s.matches
        per = m[[f"score_{t}" for t in _TERMS]].to_numpy().mean(axis=1)
        pos = {int(i): k for k, i in enumerate(np.asarray(table["id"]))}
        for i, g in zip(m["id"].to_numpy(), per):
            gains[pos[int(i)]] = g
    return gains, s


def _check_min_purity(min_purity):
    if min_purity is not None and not 0.0 <= min_purity <= 1.0:
        raise ValueError(f"min_purity must be in [0, 1], got {min_purity}")


def _best_cut(o, g, low):
    """Threshold maximising the cumulative gain of detections sorted by decreasing objectness."""
    order = np.argsort(-o, kind="stable")
    o, g = o[order], g[order]
    cum = np.cumsum(g)
    best = int(np.argmax(cum))
    if cum[best] <= 0:
        return float(o[0]) + 1e-6, 0
    return max(low, float(o[best])), best + 1


def purity_cost(solve, min_purity: float | None) -> float:
    """Smallest extra cost per false detection whose optimum meets a purity floor (bisection).

    ``solve(lam)`` returns a tuple whose last element is the purity of the selection that maximises the summed
    gain when every unmatched detection costs ``1 + lam``; purity grows with ``lam``. Returns 0 without floor or
    when the unconstrained optimum meets it.
    """
    if min_purity is None or solve(0.0)[-1] >= min_purity:
        return 0.0
    lo, hi = 0.0, 1.0
    while solve(hi)[-1] < min_purity and hi < 1e4:
        hi *= 4.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if solve(mid)[-1] >= min_purity:
            hi = mid
        else:
            lo = mid
    return hi


def tune_thresholds(objectness, prior, gains, nb_box: int, *, low: float = 0.05,
                    min_purity: float | None = None) -> tuple[np.ndarray, dict]:
    """Per-prior thresholds maximising the summed gain of the detections kept.

    Parameters
    ----------
    objectness, prior, gains : array_like, shape (N,)
        Gains: match score in [0, 1], or −1 for an unmatched detection.
    nb_box : int
    low : float
        Lowest allowed threshold (the detection run's own threshold).
    min_purity : float, optional
        Maximise the score subject to a purity (matched / kept) of at least this value. Each unmatched
        detection then costs ``1 + lambda``; the smallest ``lambda`` (bisection) whose per-prior optimum meets
        the purity is used, which is the exact constrained optimum on the convex hull of the gain curves.

    Returns
    -------
    thresholds : numpy.ndarray, shape (nb_box,)
    summary : dict
        Per prior: detections, kept, gain kept; the total expected score and purity, and ``lambda``.
    """
    _check_min_purity(min_purity)
    obj, prior, gains = np.asarray(objectness, float), np.asarray(prior, int), np.asarray(gains, float)

    def solve(lam):
        g_eff = np.where(gains < 0, gains - lam, gains)
        thr = np.full(nb_box, max(low, 0.5))
        for k in range(nb_box):
            sel = prior == k
            if sel.any():
                thr[k] = _best_cut(obj[sel], g_eff[sel], low)[0]
        keep = obj >= thr[prior]
        purity = float((gains[keep] > -1).mean()) if keep.any() else 1.0
        return thr, keep, purity

    lam = purity_cost(solve, min_purity)
    thr, keep, purity = solve(lam)
    summary = {}
    for k in range(nb_box):
        sel = prior == k
        kk = sel & keep
        summary[k] = {"n": int(sel.sum()), "kept": int(kk.sum()), "gain": float(gains[kk].sum()),
                      "threshold": float(thr[k])}
    summary["expected_score"] = float(gains[keep].sum())
    summary["expected_purity"] = purity
    summary["lambda"] = lam
    return thr, summary


def evaluate_model(model, valid_dir: str | os.PathLike, *, low: float = 0.05, progress: bool = False,
                   rerun: bool = True, min_purity: float | None = None) -> dict:
    """Detect on a validation field at low thresholds, tune the per-prior thresholds, report the scores.

    Parameters
    ----------
    model : SDC1Model or path
    valid_dir : str or os.PathLike
        Field directory with ``image.fits``, ``pb.fits``, ``truth.txt``.
    min_purity : float, optional
        Purity floor of the tuned thresholds (:func:`tune_thresholds`).

    Returns
    -------
    dict
        ``thresholds`` (list), ``score_low`` (score at the low thresholds), ``score`` (re-run with the tuned
        thresholds: value, n_det, n_match, purity, completeness), ``summary``.
    """
    from cianna.pipelines.sdc1.detect import SDC1Model, detect_image, load_model
    from cianna.scoring.sdc1 import score_sdc1

    _check_min_purity(min_purity)           # before the detection run, not after it
    if not isinstance(model, SDC1Model):
        model = load_model(model)
    image, pb, truth = _field_paths(valid_dir)
    nb = model.config.nb_box
    cat = detect_image(image, pb=pb, model=model, thresholds=[low] * nb, progress=progress)
    gains, s_low = detection_gains(cat, truth)
    thr, summary = tune_thresholds(cat["objectness"], cat["prior"], gains, nb, low=low, min_purity=min_purity)
    out = {"thresholds": [float(v) for v in thr], "summary": summary,
           "score_low": _summary(s_low) if s_low is not None else None, "score": None}
    if rerun:
        tuned = detect_image(image, pb=pb, model=model, thresholds=thr, progress=progress)
        out["score"] = _summary(score_sdc1(tuned, truth, area="all"))
    return out


def choose_size_scale(model, valid_dir: str | os.PathLike, *, b_maj=(1.0, 1.2), b_min=(0.3, 0.4, 0.5, 0.7, 1.0),
                      keep_matches: float = 0.995) -> tuple[tuple[float, float], list]:
    """Choose the (b_maj, b_min) multipliers of the network's regressed sizes on a validation field.

    The regressed sizes are biased (the training targets clip b_maj >= 0.9", b_min >= 0.3", ``sdc1.md`` §3.6).
    Each candidate pair is applied to the network-valued sizes (fitted sizes of the refinement are unbiased and
    not scaled) of one network run with the model's thresholds (or selection table), the catalogue stage is
    redone from them and scored: the same catalogues as ``detect_image`` with that ``size_scale``, for one
    network pass. The best score wins among the
    candidates that keep at least ``keep_matches`` of the matches of (1, 1): the scorer's matching uses the
    sizes, and a scale that trades matches for size terms is not kept.

    Parameters
    ----------
    model : SDC1Model
        Model with tuned thresholds; its ``size_scale`` is not modified.
    valid_dir : str or os.PathLike
        Validation field directory (``image.fits``, ``pb.fits``, ``truth.txt``).
    b_maj, b_min : sequence of float
        Candidate multipliers.

    Returns
    -------
    best : (float, float)
    table : list of dict
        One row per candidate: ``b_maj, b_min, value, n_match, purity``.
    """
    from cianna.io.fits import read_image
    from cianna.pipelines.sdc1.detect import catalog_stage, detect_image
    from cianna.scoring.sdc1 import score_sdc1

    image, pb, truth = _field_paths(valid_dir)
    saved, rows = model.size_scale, []
    # the network runs once, unscaled; each candidate scales the network's sizes and redoes the catalogue stage
    # exactly as detect_image would (refinement from the scaled sizes, then the selection table if any)
    refine = read_image(image, memmap=True)[3] is not None      # detect_image skips it without a beam
    sel = model.selection if refine else None
    try:
        model.size_scale = (1.0, 1.0)
        raw = detect_image(image, pb=pb, model=model, progress=False, refine="none",
                           thresholds=None if sel is None else sel.network_thresholds())
    finally:
        model.size_scale = saved
    for a in b_maj:
        for b in b_min:
            cat = raw.copy()
            cat["b_maj"] = raw["b_maj"] * float(a)
            cat["b_min"] = raw["b_min"] * float(b)
            sc = score_sdc1(catalog_stage(cat, image, model, refine=refine, selection=sel), truth, area="all")
            rows.append({"b_maj": float(a), "b_min": float(b), "value": float(sc.value),
                         "n_match": int(sc.n_match), "purity": float(sc.purity)})
            log.info("size_scale (%.2f, %.2f): score %.1f, %d matches", a, b, sc.value, sc.n_match)
    ref = [r for r in rows if r["b_maj"] == 1.0 and r["b_min"] == 1.0]
    floor = keep_matches * (ref[0]["n_match"] if ref else max(r["n_match"] for r in rows))
    ok = [r for r in rows if r["n_match"] >= floor] or rows
    best = max(ok, key=lambda r: r["value"])
    return (best["b_maj"], best["b_min"]), rows


def choose_refine_options(model, valid_dir: str | os.PathLike, *, position_beam=(math.inf, 0.0),
                          unmeasured_b_maj=(1.0, 0.6, 0.45, 0.3, 0.2), unmeasured_b_min=(1.0, 0.7),
                          min_purity: float | None = None) -> tuple[dict, np.ndarray, list]:
    """Choose the catalogue-stage refinement options of a model, and tighten its thresholds, on a validation field.

    The network runs once (``refine="none"``, the model's thresholds and ``size_scale``); each candidate is then
    only a :func:`~cianna.pipelines.sdc1.refine.refine_catalog` call and a score, so the search costs a few
    seconds per candidate. Candidates: ``min_snr["position_beam"]`` (S/N above which the fixed-shape fit's
    centre replaces the network's where the free fit does not; ``inf`` = off) crossed with
    ``unmeasured_scale`` (multipliers of the network's b_maj, b_min where no fitted size replaces them).

    Each candidate's catalogue gives every detection its gain (:func:`detection_gains`), and the per-prior
    thresholds are then *raised* where that pays (:func:`tune_thresholds` on this catalogue, never below the
    model's thresholds), subject to ``min_purity``. Only detections of the final catalogue are involved, so the
    floor nearly holds on the re-run (a floor set on a low-threshold run does not: there the extra detections
    change the NMS and the neighbour masks of the refinement). It is not exact: a box of a prior whose threshold
    rose no longer suppresses boxes of other priors in the NMS. The best tightened score wins. Smaller submitted sizes
    shrink the scorer's match radius; the score decides whether the better size terms are worth the matches
    lost (the sizes come nearer to the true, mostly sub-beam, sizes).

    Parameters
    ----------
    model : SDC1Model
        Model with tuned thresholds; its ``refine_options`` are the base the candidates are merged into. The
        model is not modified.
    valid_dir : str or os.PathLike
        Validation field directory (``image.fits``, ``pb.fits``, ``truth.txt``).
    position_beam, unmeasured_b_maj, unmeasured_b_min : sequence of float
        Candidate values.
    min_purity : float, optional
        Purity floor of the tightened thresholds.

    Returns
    -------
    options : dict
        The model's refinement options with the best candidate merged in.
    thresholds : numpy.ndarray, shape (nb_box,)
        The tightened per-prior thresholds of that candidate.
    table : list of dict
        One row per candidate: ``position_beam, b_maj, b_min``, its score at the model's thresholds (``value,
        n_match, purity``) and after tightening (``value_tight, purity_tight``).
    """
    from cianna.pipelines.sdc1.detect import detect_image, merge_refine_options
    from cianna.pipelines.sdc1.refine import refine_catalog

    _check_min_purity(min_purity)
    image, pb, truth = _field_paths(valid_dir)
    raw = detect_image(image, pb=pb, model=model, progress=False, refine="none")
    nb = model.config.nb_box
    base = np.asarray(model.thresholds, float)
    rows, best = [], None
    for pbeam in position_beam:
        for a in unmeasured_b_maj:
            for b in unmeasured_b_min:
                cand = merge_refine_options(model.refine_options, {"min_snr": {"position_beam": float(pbeam)},
                                                                   "unmeasured_scale": [float(a), float(b)]})
                table = refine_catalog(raw, image, **cand)
                gains, _ = detection_gains(table, truth)
                obj, prior = np.asarray(table["objectness"], float), np.asarray(table["prior"], int)
                thr, _ = tune_thresholds(obj, prior, gains, nb, low=0.0, min_purity=min_purity)
                thr = np.maximum(thr, base)
                keep = obj >= thr[prior]
                row = {"position_beam": float(pbeam), "b_maj": float(a), "b_min": float(b),
                       "value": float(gains.sum()), "n_match": int((gains > -1).sum()),
                       "purity": float((gains > -1).mean()) if len(gains) else 1.0,
                       "value_tight": float(gains[keep].sum()),
                       "purity_tight": float((gains[keep] > -1).mean()) if keep.any() else 1.0}
                rows.append(row)
                log.info("refine position_beam %g, unmeasured_scale (%.2f, %.2f): score %.1f (purity %.3f), "
                         "tightened %.1f (%.3f)", pbeam, a, b, row["value"], row["purity"], row["value_tight"],
                         row["purity_tight"])
                if best is None or row["value_tight"] > best[0]["value_tight"]:
                    best = (row, cand, thr)
    row, options, thr = best
    if not math.isfinite(options["min_snr"]["position_beam"]):
        options["min_snr"].pop("position_beam")  # off is the default; keep the stored options JSON-clean
        if not options["min_snr"]:
            options.pop("min_snr")
    return options, thr, rows


def choose_selection(model, valid_dir: str | os.PathLike, *, low: float = 0.02,
                     min_purity: float | None = None) -> tuple[object, dict]:
    """Fit a selection table (objectness × refined S/N, :mod:`cianna.pipelines.sdc1.selection`) on a validation
    field and measure it.

    The field is detected at objectness ``low`` for every prior with the model's refinement; each detection gets
    its gain; :func:`~cianna.pipelines.sdc1.selection.fit_selection` fills the table (cells without detections
    follow the model's thresholds); the field is then detected again with the table.

    Returns
    -------
    table : SelectionTable
    report : dict
        ``fit`` (expected score and purity on the low run, ``lambda``) and ``score`` (the re-run with the table:
        value, n_det, n_match, purity, completeness, acc_pc).
    """
    from cianna.pipelines.sdc1.detect import detect_image
    from cianna.pipelines.sdc1.selection import detection_snr, fit_selection

    _check_min_purity(min_purity)
    image, pb, truth = _field_paths(valid_dir)
    nb = model.config.nb_box
    cat = detect_image(image, pb=pb, model=model, thresholds=[low] * nb, progress=False)
    gains, _ = detection_gains(cat, truth)
    table, fit = fit_selection(cat["objectness"], cat["prior"], detection_snr(cat), gains, nb, model.thresholds,
                               low, min_purity=min_purity)
    saved = model.selection
    try:
        model.selection = table
        score = score_on_field(model, valid_dir)
    finally:
        model.selection = saved
    return table, {"fit": fit, "score": score}


def export_model(checkpoint: str | os.PathLike, valid_dir: str | os.PathLike, out: str | os.PathLike, *,
                 meta: dict | None = None, low: float = 0.05) -> dict:
    """Tune a checkpoint's thresholds on the validation field and save it as a deployable model file.

    Returns
    -------
    dict
        The :func:`evaluate_model` result (also stored in the model's metadata under ``tuning``).
    """
    from cianna.pipelines.sdc1.detect import load_model, save_model

    model = load_model(checkpoint)
    res = evaluate_model(model, valid_dir, low=low)
    record = dict(meta or {})
    record["checkpoint"] = os.fspath(checkpoint)
    record["tuning"] = {"valid_field": os.fspath(valid_dir), **res}
    save_model(out, model.network, res["thresholds"], record, size_scale=model.size_scale,
               param_limits=model.param_limits, refine_options=model.refine_options)
    return res
