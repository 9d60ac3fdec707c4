"""Detection metrics: matching, precision–recall, VOC average precision, completeness and purity.

Matching rule (CIANNA PASCAL example, ``yolo.md`` §12.1): detections are visited by decreasing score;
each takes, among the targets of the same class (when classes are used) that are **not yet matched**,
the one with the highest overlap. If that overlap is ``≥ iou_threshold`` the detection is a true
positive — unless the target is *difficult*: then the detection is ignored (neither TP nor FP) and the
target stays available. Otherwise the detection is a false positive. Difficult targets are not counted
in the number of true objects.

Average precision ``method="voc"``: all-point interpolated precision envelope
``p̂(r) = max_{r' ≥ r} p(r')`` integrated as ``Σ_k (r_k − r_{k−1})·p̂_k`` from ``r_0 = 0`` (VOC 2010+).
``method="trapz"`` reproduces CIANNA's ``np.trapz(envelope, recall)`` over the detection points only
(no point at recall 0; slightly lower).

Boxes are corner boxes ``(N, 6)`` (or ``(N, 4)``, ``(N, 2)``), see :mod:`cianna.detection.boxes`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch

from cianna.detection.boxes import as_3d, iou, pairwise_iou
from cianna.detection.nms import candidate_pairs, interaction_reach

__all__ = [
    "Match", "match_detections", "PRCurve", "precision_recall_curve", "average_precision",
    "mean_average_precision", "DetectionCounts", "completeness_purity",
]

log = logging.getLogger(__name__)

_DENSE_LIMIT = 1 << 22  # pairs: above, candidate pairs come from the spatial grid


@dataclass
class Match:
    """Result of :func:`match_detections`.

    Attributes
    ----------
    pred_to_true : torch.Tensor of int64, shape (N,)
        Matched target index per detection, ``-1`` if none (FP or ignored).
    true_to_pred : torch.Tensor of int64, shape (M,)
        Matching detection per target, ``-1`` if none.
    status : torch.Tensor of int8, shape (N,)
        ``1`` true positive, ``0`` false positive, ``-1`` ignored (matched a difficult target).
    overlap : torch.Tensor, shape (N,)
        Overlap with the chosen target (``nan`` when below the threshold).
    """

    pred_to_true: torch.Tensor
    true_to_pred: torch.Tensor
    status: torch.Tensor
    overlap: torch.Tensor


def _eligible_pairs(pb, tb, thr, kind, pc, tc):
    """(pred, true, overlap) pairs with overlap >= thr (and same class), as numpy arrays."""
    n, m = pb.shape[0], tb.shape[0]
    if n == 0 or m == 0:
        e = np.zeros(0, dtype=np.int64)
        return e, e.copy(), np.zeros(0)
    reach = interaction_reach(kind, thr - 1e-9)
    if n * m <= _DENSE_LIMIT or not math.isfinite(reach):
        ps, ts, vs = [], [], []
        rows = max(1, _DENSE_LIMIT // m)
        for a in range(0, n, rows):
            v = pairwise_iou(pb[a:a + rows], tb, kind)
            ok = v >= thr
            if pc is not None:
                ok &= pc[a:a + rows, None] == tc[None, :]
            p, t = ok.nonzero(as_tuple=True)
            ps.append(p + a)
            ts.append(t)
            vs.append(v[p, t])
        p, t, v = torch.cat(ps), torch.cat(ts), torch.cat(vs)
    else:
        allb = torch.cat([pb, tb.to(pb.dtype)])
        ps, ts = [], []
        for i, j in candidate_pairs(allb, reach):
            a, b = torch.minimum(i, j), torch.maximum(i, j)
            sel = (a < n) & (b >= n)
            ps.append(a[sel])
            ts.append(b[sel] - n)
        p, t = torch.cat(ps), torch.cat(ts)
        if pc is not None:
            same = pc[p] == tc[t]
            p, t = p[same], t[same]
        v = iou(pb[p], tb[t], kind)
        ok = v >= thr
        p, t, v = p[ok], t[ok], v[ok]
    return p.cpu().numpy(), t.cpu().numpy(), v.double().cpu().numpy()


def match_detections(pred_boxes: torch.Tensor, true_boxes: torch.Tensor, iou_threshold: float = 0.5, *,
                     scores: Optional[torch.Tensor] = None, pred_classes: Optional[torch.Tensor] = None,
                     true_classes: Optional[torch.Tensor] = None, true_difficult: Optional[torch.Tensor] = None,
                     kind: str = "IoU") -> Match:
    """Greedy one-to-one matching of detections to targets (rule in the module notes).

    Parameters
    ----------
    pred_boxes : torch.Tensor, shape (N, 6)
        Detected corner boxes (same units as ``true_boxes``, e.g. input pixels).
    true_boxes : torch.Tensor, shape (M, 6)
        Target corner boxes.
    iou_threshold : float
        Minimum overlap (``≥``) for a match.
    scores : torch.Tensor, shape (N,), optional
        Detection scores; detections are visited by decreasing score (input order if ``None``).
    pred_classes, true_classes : torch.Tensor of int, shapes (N,), (M,), optional
        When both are given only same-class pairs can match.
    true_difficult : torch.Tensor of bool/int, shape (M,), optional
        Difficult targets (non-zero): detections matching them are ignored.
    kind : {"IoU", "GIoU", "DIoU", "DIoU2"}
        Overlap measure.

    Returns
    -------
    Match
    """
    pb = _boxes(pred_boxes)
    tb = _boxes(true_boxes).to(pb.device, pb.dtype)
    n, m = pb.shape[0], tb.shape[0]
    pc = tc = None
    if pred_classes is not None and true_classes is not None:
        pc = torch.as_tensor(pred_classes, device=pb.device).reshape(n)
        tc = torch.as_tensor(true_classes, device=pb.device).reshape(m)
    diff = np.zeros(m, dtype=bool) if true_difficult is None else \
        np.asarray(torch.as_tensor(true_difficult).cpu().reshape(m).numpy() != 0)
    if scores is None:
        order = np.arange(n)
    else:
        s = torch.as_tensor(scores).reshape(n)
        order = torch.sort(s, descending=True, stable=True).indices.cpu().numpy()
    p, t, v = _eligible_pairs(pb, tb, float(iou_threshold), kind, pc, tc)
    # candidates of each detection by decreasing overlap (ties: lower target index)
    srt = np.lexsort((t, -v, p))
    p, t, v = p[srt], t[srt], v[srt]
    ptr = np.searchsorted(p, np.arange(n + 1))
    pred_to_true = np.full(n, -1, dtype=np.int64)
    true_to_pred = np.full(m, -1, dtype=np.int64)
    status = np.zeros(n, dtype=np.int8)
    overlap = np.full(n, np.nan)
    for k in order:
        cand = t[ptr[k]:ptr[k + 1]]
        if cand.size == 0:
            continue
        free = np.flatnonzero(true_to_pred[cand] < 0)
        if free.size == 0:
            continue
        j = cand[free[0]]
        overlap[k] = v[ptr[k] + free[0]]
        if diff[j]:
            status[k] = -1
        else:
            status[k] = 1
            pred_to_true[k] = j
            true_to_pred[j] = k
    return Match(torch.from_numpy(pred_to_true), torch.from_numpy(true_to_pred),
                 torch.from_numpy(status), torch.from_numpy(overlap))


@dataclass
class PRCurve:
    """Precision–recall curve over a set of images.

    Attributes
    ----------
    precision, recall : numpy.ndarray, shape (K,)
        After each detection, by decreasing score (ignored detections removed).
    scores : numpy.ndarray, shape (K,)
        Detection scores, decreasing.
    tp : numpy.ndarray of bool, shape (K,)
        True-positive flag per detection.
    n_true : int
        Number of (non-difficult) targets.
    """

    precision: np.ndarray
    recall: np.ndarray
    scores: np.ndarray
    tp: np.ndarray
    n_true: int

    def average_precision(self, method: str = "voc") -> float:
        """AP of this curve (:func:`average_precision`)."""
        return average_precision(self.precision, self.recall, method=method)


Item = Union[Mapping[str, torch.Tensor], Sequence[torch.Tensor]]


def _unpack(item: Item, names: Sequence[str]) -> list:
    if isinstance(item, Mapping):
        return [item.get(k) for k in names]
    item = list(item) + [None] * (len(names) - len(item))
    return item[:len(names)]


def _single_image(item) -> bool:
    """A mapping, or a tuple whose first element is a 2D box array (not a list of images)."""
    return isinstance(item, Mapping) or (len(item) > 0 and getattr(item[0], "ndim", None) == 2)


def _boxes(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.numel() == 0:
        return torch.zeros(0, 6, dtype=x.dtype if x.is_floating_point() else torch.float32)
    return as_3d(x)


def _image_results(predictions, targets, iou_threshold, kind, class_aware):
    """Per-detection (score, status, class) over all images and target counts per class."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} prediction sets for {len(targets)} target sets")
    sc, st, cl, true_cls = [], [], [], []
    for pred, targ in zip(predictions, targets):
        pbx, ps, pcl = _unpack(pred, ("boxes", "scores", "classes"))
        tbx, tcl, tdf = _unpack(targ, ("boxes", "classes", "difficult"))
        pbx, tbx = _boxes(pbx), _boxes(tbx)
        ps = torch.as_tensor(ps, dtype=torch.float64).reshape(-1)
        if class_aware and (pcl is None or tcl is None):
            raise ValueError("class_aware=True needs 'classes' in predictions and targets")
        mt = match_detections(pbx, tbx, iou_threshold, scores=ps, kind=kind,
                              pred_classes=pcl if class_aware else None,
                              true_classes=tcl if class_aware else None, true_difficult=tdf)
        sc.append(ps.double().cpu().numpy())
        st.append(mt.status.numpy())
        n_p, n_t = len(ps), tbx.shape[0]
        cl.append(np.zeros(n_p, np.int64) if pcl is None else torch.as_tensor(pcl).cpu().numpy().reshape(n_p))
        keep_t = np.ones(n_t, bool) if tdf is None else torch.as_tensor(tdf).cpu().numpy().reshape(n_t) == 0
        tcn = np.zeros(n_t, np.int64) if tcl is None else torch.as_tensor(tcl).cpu().numpy().reshape(n_t)
        true_cls.append(tcn[keep_t])
    cat = lambda x, dt: np.concatenate(x).astype(dt) if x else np.zeros(0, dt)  # noqa: E731
    return cat(sc, np.float64), cat(st, np.int8), cat(cl, np.int64), cat(true_cls, np.int64)


def _curve(scores, status, n_true) -> PRCurve:
    keep = status >= 0
    scores, tp = scores[keep], status[keep] == 1
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    ctp = np.cumsum(tp)
    precision = ctp / np.arange(1, len(tp) + 1) if len(tp) else np.zeros(0)
    recall = ctp / n_true if n_true > 0 else np.full(len(tp), np.nan)
    return PRCurve(precision, recall, scores, tp, int(n_true))


def precision_recall_curve(predictions: Sequence[Item], targets: Sequence[Item], iou_threshold: float = 0.5, *,
                           kind: str = "IoU", class_aware: bool = False,
                           class_id: Optional[int] = None) -> PRCurve:
    """Precision–recall curve of detections pooled over images.

    Parameters
    ----------
    predictions : sequence over images
        Each a mapping with ``"boxes"`` (N, 6), ``"scores"`` (N,), optional ``"classes"`` (N,), or a tuple
        ``(boxes, scores[, classes])``.
    targets : sequence over images
        Each a mapping with ``"boxes"`` (M, 6), optional ``"classes"`` (M,) and ``"difficult"`` (M,), or a
        tuple ``(boxes[, classes[, difficult]])``.
    iou_threshold : float
        Minimum overlap for a true positive.
    kind : {"IoU", "GIoU", "DIoU", "DIoU2"}
        Overlap measure.
    class_aware : bool
        Match only same-class pairs (needs classes on both sides).
    class_id : int, optional
        Restrict the curve to detections and targets of this class (implies class-aware matching).

    Returns
    -------
    PRCurve
    """
    aware = class_aware or class_id is not None
    sc, st, cl, tcl = _image_results(predictions, targets, iou_threshold, kind, aware)
    if class_id is not None:
        sel = cl == class_id
        sc, st, tcl = sc[sel], st[sel], tcl[tcl == class_id]
    return _curve(sc, st, len(tcl))


def average_precision(precision: np.ndarray, recall: np.ndarray, method: str = "voc") -> float:
    """Area under the interpolated precision–recall curve.

    Parameters
    ----------
    precision, recall : array-like, shape (K,)
        Curve points by decreasing score (recall non-decreasing).
    method : {"voc", "trapz"}
        ``"voc"``: all-point interpolation ``Σ (r_k − r_{k−1})·p̂_k`` with ``r_0 = 0``; ``"trapz"``:
        CIANNA's trapezoidal integral of the envelope over the detection points.

    Returns
    -------
    float
        AP in [0, 1]; 0 for an empty curve; ``nan`` if recall is undefined (no targets).
    """
    p = np.asarray(precision, dtype=np.float64)
    r = np.asarray(recall, dtype=np.float64)
    if p.size == 0:
        return 0.0
    if np.isnan(r).any():
        return math.nan
    env = np.maximum.accumulate(p[::-1])[::-1]
    if method == "voc":
        dr = np.diff(np.concatenate([[0.0], r]))
        return float(np.sum(dr * env))
    if method == "trapz":
        return float(np.sum(np.diff(r) * (env[1:] + env[:-1]) * 0.5))
    raise ValueError(f"unknown AP method {method!r}; expected 'voc' or 'trapz'")


def mean_average_precision(predictions: Sequence[Item], targets: Sequence[Item], iou_threshold: float = 0.5, *,
                           kind: str = "IoU", method: str = "voc",
                           num_classes: Optional[int] = None) -> tuple[float, dict[int, float]]:
    """Class-aware mAP: mean over classes of the per-class AP (same inputs as
    :func:`precision_recall_curve`, with classes).

    Parameters
    ----------
    num_classes : int, optional
        Classes ``0..num_classes−1``; default: the classes present among non-difficult targets.
        Classes without non-difficult targets are left out of the mean (their AP is ``nan``).

    Returns
    -------
    mAP : float
    per_class : dict of int to float
    """
    sc, st, cl, tcl = _image_results(predictions, targets, iou_threshold, kind, True)
    classes = range(num_classes) if num_classes is not None else np.unique(tcl).tolist()
    per_class = {}
    for c in classes:
        sel = cl == c
        per_class[int(c)] = _curve(sc[sel], st[sel], int((tcl == c).sum())).average_precision(method)
    vals = [v for v in per_class.values() if not math.isnan(v)]
    return (float(np.mean(vals)) if vals else math.nan), per_class


@dataclass
class DetectionCounts:
    """Completeness / purity summary.

    Attributes
    ----------
    completeness : float
        ``n_match / n_true`` (recall); ``nan`` if ``n_true = 0``.
    purity : float
        ``n_match / n_det`` (precision, reliability); ``nan`` if ``n_det = 0``.
    f1 : float
        Harmonic mean of both.
    n_match, n_true, n_det : int
        Matched detections, non-difficult targets, detections not ignored.
    """

    completeness: float
    purity: float
    f1: float
    n_match: int
    n_true: int
    n_det: int


def completeness_purity(predictions: Union[Item, Sequence[Item]], targets: Union[Item, Sequence[Item]],
                        iou_threshold: float = 0.5, *, kind: str = "IoU", class_aware: bool = False,
                        min_score: Optional[float] = None) -> DetectionCounts:
    """Completeness (fraction of targets recovered) and purity (fraction of detections that are real).

    Parameters
    ----------
    predictions, targets
        One image (a mapping / tuple as in :func:`precision_recall_curve`) or a list of them.
    iou_threshold : float
        Minimum overlap for a match.
    kind : {"IoU", "GIoU", "DIoU", "DIoU2"}
        Overlap measure.
    class_aware : bool
        Match only same-class pairs.
    min_score : float, optional
        Only detections with ``score ≥ min_score`` count.

    Returns
    -------
    DetectionCounts
    """
    if _single_image(predictions):
        predictions, targets = [predictions], [targets]
    sc, st, _, tcl = _image_results(predictions, targets, iou_threshold, kind, class_aware)
    if min_score is not None:
        # matching is greedy by score, so dropping low scores afterwards equals matching the high ones
        st = st[sc >= min_score]
    n_match, n_det, n_true = int((st == 1).sum()), int((st >= 0).sum()), len(tcl)
    c = n_match / n_true if n_true else math.nan
    p = n_match / n_det if n_det else math.nan
    f1 = 2 * c * p / (c + p) if n_true and n_det and (c + p) > 0 else (0.0 if n_true and n_det else math.nan)
    return DetectionCounts(c, p, f1, n_match, n_true, n_det)
