"""Reliability of SDC2 detections: a logistic model of P(real galaxy | network outputs).

The detection score alone ranks candidates by how sure the network is that *something* is there. The regressed
properties carry more information: on simulated validation cubes a noise peak that reaches a high score tends
to come with a small line flux, a small size and an unusual line width for that score. A logistic regression on

======================  ============================================
feature                 transform
======================  ============================================
score                   logit
line_flux_integral      log10 [Jy Hz]
hi_size                 log10 [arcsec]
w20                     log10 [km/s]
======================  ============================================

fitted on candidates labelled by the official scorer (matched = 1, else 0) of validation cubes turns these into
a reliability in [0, 1]; the catalogue keeps the detections whose reliability reaches a threshold chosen, like
the score threshold, on the validation cubes only (:func:`cianna.pipelines.sdc2.tune.tune_reliability`).
Leave-one-cube-out tests (:func:`leave_one_out`) measure how well the chosen operating point carries to a cube
that took no part in the fit.

The model is a plain dict (stored in :attr:`~cianna.pipelines.sdc2.detect.DetectSettings.reliability`):
``features``, ``mean``, ``scale`` (standardisation), ``coef``, ``intercept``.
"""
from __future__ import annotations

import logging

import numpy as np

__all__ = ["RELIABILITY_FEATURES", "reliability_features", "fit_reliability", "predict_reliability",
           "match_labels", "choose_threshold", "leave_one_out"]

log = logging.getLogger(__name__)

#: catalogue columns used by the reliability model, in order
RELIABILITY_FEATURES = ("score", "line_flux_integral", "hi_size", "w20")


def _logit(p):
    p = np.clip(np.asarray(p, float), 1e-4, 1.0 - 1e-4)
    return np.log(p / (1.0 - p))


def reliability_features(table, features=RELIABILITY_FEATURES) -> np.ndarray:
    """Feature matrix of a detection catalogue.

    Parameters
    ----------
    table : astropy.table.Table
        Catalogue of :func:`~cianna.pipelines.sdc2.detect.candidates_to_catalog` (needs the named columns).
    features : sequence of str
        Column names (see the module docstring for their transforms).

    Returns
    -------
    numpy.ndarray, shape (N, F)

    Raises
    ------
    KeyError
        A feature column is missing from the table, or the feature name is unknown.
    """
    cols = []
    for name in features:
        if name not in table.colnames:
            raise KeyError(f"reliability feature {name!r} is not a column of the catalogue "
                           f"(columns: {', '.join(table.colnames)})")
        v = np.asarray(table[name], float)
        if name == "score":
            cols.append(_logit(v))
        elif name in ("line_flux_integral", "hi_size", "w20"):
            cols.append(np.log10(np.maximum(v, 1e-6)))
        else:
            raise KeyError(f"unknown reliability feature {name!r}; known: {', '.join(RELIABILITY_FEATURES)}")
    return np.column_stack(cols) if cols else np.zeros((len(table), 0))


def fit_reliability(X, y, *, features=RELIABILITY_FEATURES, l2: float = 1.0, n_iter: int = 50) -> dict:
    """Fit a logistic regression by Newton iterations (L2 penalty on the standardised slopes).

    Parameters
    ----------
    X : array_like, shape (N, F)
        Features (:func:`reliability_features`).
    y : array_like, shape (N,)
        1 for a real (matched) detection, 0 for a false one.
    features : sequence of str
        Names stored with the model.
    l2 : float
        Ridge penalty (in units of the log-likelihood; 1 is mild for a few hundred candidates).
    n_iter : int
        Newton iterations (converges in well under 20 for these sizes).

    Returns
    -------
    dict
        The model (module docstring).

    Raises
    ------
    ValueError
        Mismatched shapes, or labels of one class only (nothing to separate).
    """
    X = np.asarray(X, float)
    y = np.asarray(y, float).ravel()
    if X.ndim != 2 or len(X) != len(y) or X.shape[1] != len(features):
        raise ValueError(f"fit_reliability: X has shape {X.shape}, y {y.shape}, features {list(features)}")
    if y.min(initial=1) == y.max(initial=0):
        raise ValueError("fit_reliability needs both matched and false candidates; the validation labels are "
                         f"all {int(y[0]) if len(y) else 'missing'}")
    mean, scale = X.mean(0), X.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    Z = np.column_stack([np.ones(len(X)), (X - mean) / scale])
    w = np.zeros(Z.shape[1])
    penalty = l2 * np.diag(np.r_[0.0, np.ones(Z.shape[1] - 1)])
    for _ in range(n_iter):
        p = 1.0 / (1.0 + np.exp(-Z @ w))
        hess = Z.T @ (Z * (p * (1 - p))[:, None]) + penalty
        step = np.linalg.solve(hess, Z.T @ (y - p) - penalty @ w)
        w += step
        if np.max(np.abs(step)) < 1e-8:
            break
    return {"features": list(features), "mean": mean.tolist(), "scale": scale.tolist(),
            "intercept": float(w[0]), "coef": w[1:].tolist()}


def predict_reliability(model: dict, table) -> np.ndarray:
    """Reliability (probability of a real galaxy) of each row of a catalogue, shape (N,)."""
    return _logistic(model, reliability_features(table, model["features"]))


def _logistic(model: dict, X) -> np.ndarray:
    """The model's probability for a feature matrix ``X`` (N, F) already built with its features."""
    z = model["intercept"] + ((X - np.asarray(model["mean"])) / np.asarray(model["scale"])) @ np.asarray(model["coef"])
    return 1.0 / (1.0 + np.exp(-z))


def match_labels(table, truth) -> np.ndarray:
    """Which rows of a catalogue the official SDC2 scorer matches to a true galaxy (bool, shape (N,))."""
    from cianna.scoring.sdc2 import score_sdc2

    if len(table) == 0:
        return np.zeros(0, bool)
    sc = score_sdc2(table, truth, detail=True)
    matched = np.asarray(sc.match_df["id"]) if sc.match_df is not None and len(sc.match_df) else []
    return np.isin(np.asarray(table["id"]), matched)


def leave_one_out(tables, labels, *, min_purity: float, match_value: float = 0.8, l2: float = 1.0,
                  features=RELIABILITY_FEATURES):
    """How a reliability operating point chosen on the other cubes fares on each held-out cube.

    For each cube: fit on the others, choose the reliability threshold that maximises the label-based score
    estimate ``match_value * n_match - n_false`` of the others at their pooled purity >= ``min_purity``, then
    apply both to the held-out cube. The official score needs the per-match accuracies, so this is an estimate
    for the operating point, not a replacement for scoring.

    Parameters
    ----------
    tables : list of astropy.table.Table
        Validation catalogues at the base score threshold.
    labels : list of numpy.ndarray
        :func:`match_labels` of each.
    min_purity : float
    match_value : float
        Mean official accuracy of a match (≈ 0.8 for this detector).
    l2 : float
    features : sequence of str
        Model features; ``("score",)`` alone is monotonic in the score, i.e. a plain score threshold, the
        reference to compare with.

    Returns
    -------
    list of dict
        Per held-out cube: ``threshold``, ``n_det``, ``n_match``, ``purity``.
    """
    out = []
    Xs = [reliability_features(t, features) for t in tables]
    for k in range(len(tables)):
        others = [i for i in range(len(tables)) if i != k]
        model = fit_reliability(np.vstack([Xs[i] for i in others]),
                                np.concatenate([labels[i] for i in others]), l2=l2, features=features)
        r_o = np.concatenate([_logistic(model, Xs[i]) for i in others])
        y_o = np.concatenate([labels[i] for i in others])
        thr = choose_threshold(r_o, y_o, min_purity=min_purity, match_value=match_value)
        keep = _logistic(model, Xs[k]) >= thr
        n, m = int(keep.sum()), int(labels[k][keep].sum())
        out.append({"threshold": thr, "n_det": n, "n_match": m, "purity": m / n if n else float("nan")})
    return out


def choose_threshold(reliability, labels, *, min_purity: float, match_value: float = 0.8) -> float:
    """Reliability threshold maximising ``match_value * n_match - n_false`` at purity >= ``min_purity``
    (label-based estimate; the purest non-empty cut when none reaches it)."""
    r = np.asarray(reliability, float)
    y = np.asarray(labels, bool)
    order = np.argsort(-r, kind="stable")
    r, y = r[order], y[order]
    m = np.cumsum(y)
    n = np.arange(1, len(r) + 1)
    value = match_value * m - (n - m)
    purity = m / n
    # only cut between distinct reliabilities
    last = np.r_[r[1:] < r[:-1], True]
    ok = last & (purity >= min_purity)
    if not ok.any():
        k = int(np.argmax(np.where(last, purity, -1)))
    else:
        k = int(np.argmax(np.where(ok, value, -np.inf)))
    return float(r[k])
