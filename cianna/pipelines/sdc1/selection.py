"""Detection selection on two features: network objectness and the refinement's peak S/N.

Per-prior objectness thresholds (:mod:`cianna.pipelines.sdc1.tune`) use the network's confidence alone. The
Gaussian refinement measures an independent, classical quantity for every detection: the peak signal-to-noise
ratio of its free fit or, for faint sources, of its fixed-shape (matched-filter) fit. On the realistic validation
sky the two disagree usefully: a low-objectness detection with a matched-filter S/N of 5–8 is a true source 85–90 %
of the time, a high-objectness one below S/N 3 much less often.

A :class:`SelectionTable` holds, per prior, a keep / drop decision for each cell of a fixed grid of objectness
× S/N bins. :func:`fit_selection` fills it from the detections of a validation field taken at a low objectness
threshold, with every detection's gain (its match score, or −1 if unmatched): a cell is kept when its summed gain
is positive, each false detection costing ``1 + λ`` with ``λ`` the smallest cost meeting a purity floor
(:func:`cianna.pipelines.sdc1.tune.purity_cost`). Cells without validation detections fall back to the per-prior
thresholds given. At inference (:func:`cianna.pipelines.sdc1.detect.detect_image`) the network runs at the
lowest objectness any kept cell admits, the whole catalogue is refined (as during the fit, so the refinement's
neighbour masks match), then :func:`apply_selection` keeps the detections whose cell is kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SelectionTable", "OBJECTNESS_EDGES", "SNR_EDGES", "detection_snr", "fit_selection",
           "apply_selection"]

#: Default objectness bin edges (the last edge is above 1).
OBJECTNESS_EDGES = (0.0, 0.03, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.01)
#: Default peak S/N bin edges (the last bin is open).
SNR_EDGES = (0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 20.0)


@dataclass
class SelectionTable:
    """Keep / drop decision per (prior, objectness bin, S/N bin).

    Attributes
    ----------
    objectness_edges : tuple of float, shape (n_o + 1,)
    snr_edges : tuple of float, shape (n_s,)
        Lower edges of the S/N bins (the last bin is open-ended).
    keep : numpy.ndarray of bool, shape (nb_box, n_o, n_s)
    min_objectness : float
        Objectness threshold of the validation run the table was fitted on; the network never runs below it.
    """

    objectness_edges: tuple
    snr_edges: tuple
    keep: np.ndarray
    min_objectness: float = 0.0

    def __post_init__(self):
        self.objectness_edges = tuple(float(v) for v in self.objectness_edges)
        self.snr_edges = tuple(float(v) for v in self.snr_edges)
        self.keep = np.asarray(self.keep, dtype=bool)
        self.min_objectness = float(self.min_objectness)
        n_o, n_s = len(self.objectness_edges) - 1, len(self.snr_edges)
        if self.keep.ndim != 3 or self.keep.shape[1:] != (n_o, n_s):
            raise ValueError(f"selection table: keep has shape {self.keep.shape}, expected (nb_box, {n_o}, {n_s})")
        if np.any(np.diff(self.objectness_edges) <= 0) or np.any(np.diff(self.snr_edges) <= 0):
            raise ValueError("selection table: bin edges must increase")

    @property
    def nb_box(self) -> int:
        return self.keep.shape[0]

    def network_thresholds(self) -> np.ndarray:
        """Per prior, the lowest objectness any kept cell admits, never below :attr:`min_objectness`
        (shape (nb_box,); the top edge where no cell is kept)."""
        lo = np.asarray(self.objectness_edges[:-1])
        out = np.full(self.nb_box, self.objectness_edges[-1])
        for k in range(self.nb_box):
            rows = np.nonzero(self.keep[k].any(axis=1))[0]
            if len(rows):
                out[k] = max(lo[rows[0]], self.min_objectness)
        return out

    def to_dict(self) -> dict:
        return {"objectness_edges": list(self.objectness_edges), "snr_edges": list(self.snr_edges),
                "keep": self.keep.astype(int).tolist(), "min_objectness": self.min_objectness}

    @classmethod
    def from_dict(cls, d) -> "SelectionTable":
        try:
            return cls(d["objectness_edges"], d["snr_edges"], d["keep"], d.get("min_objectness", 0.0))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"selection table: needs objectness_edges, snr_edges and keep ({exc})") from None


def detection_snr(table) -> np.ndarray:
    """Peak S/N of each refined detection: the larger of the free fit's and the fixed-shape fit's (shape (N,)).

    Raises
    ------
    ValueError
        The catalogue was not refined (no ``fit_snr`` / ``beam_snr`` columns).
    """
    miss = [c for c in ("fit_snr", "beam_snr") if c not in table.colnames]
    if miss:
        raise ValueError(f"selection needs a refined catalogue (columns {miss} missing; use refine='gauss')")
    snr = np.maximum(np.asarray(table["fit_snr"], float), np.asarray(table["beam_snr"], float))
    return np.nan_to_num(snr, nan=0.0, posinf=0.0, neginf=0.0)


def _cells(table: SelectionTable, objectness, snr):
    n_o = len(table.objectness_edges) - 1
    i = np.clip(np.searchsorted(table.objectness_edges, objectness, side="right") - 1, 0, n_o - 1)
    j = np.clip(np.searchsorted(table.snr_edges, snr, side="right") - 1, 0, len(table.snr_edges) - 1)
    return i, j


def apply_selection(table: SelectionTable, objectness, prior, snr) -> np.ndarray:
    """Boolean keep mask, shape (N,), of detections with the given objectness, prior index and peak S/N."""
    objectness, prior = np.asarray(objectness, float), np.asarray(prior, int)
    if len(prior) and (prior.min() < 0 or prior.max() >= table.nb_box):
        raise ValueError(f"selection table has {table.nb_box} priors; detections use prior {prior.max()}")
    i, j = _cells(table, objectness, np.asarray(snr, float))
    return table.keep[prior, i, j] if len(prior) else np.zeros(0, bool)


def fit_selection(objectness, prior, snr, gains, nb_box: int, fallback_thresholds, low: float, *,
                  min_purity: float | None = None, objectness_edges=OBJECTNESS_EDGES,
                  snr_edges=SNR_EDGES) -> tuple[SelectionTable, dict]:
    """Fill a :class:`SelectionTable` from validation detections and their gains.

    Parameters
    ----------
    objectness, prior, snr, gains : array_like, shape (N,)
        Detections of a validation field at a low objectness threshold; gains as
        :func:`cianna.pipelines.sdc1.tune.detection_gains` (match score in [0, 1], −1 if unmatched).
    nb_box : int
    fallback_thresholds : array_like, shape (nb_box,)
        Per-prior objectness thresholds deciding the cells without validation detections.
    low : float
        Objectness threshold of the validation run (stored as :attr:`SelectionTable.min_objectness`).
    min_purity : float, optional
        Purity floor of the kept detections.

    Returns
    -------
    table : SelectionTable
    summary : dict
        ``expected_score``, ``expected_purity``, ``kept``, ``lambda``.
    """
    from cianna.pipelines.sdc1.tune import _check_min_purity, purity_cost

    _check_min_purity(min_purity)
    obj, prior = np.asarray(objectness, float), np.asarray(prior, int)
    snr, gains = np.asarray(snr, float), np.asarray(gains, float)
    empty = SelectionTable(objectness_edges, snr_edges,
                           np.zeros((nb_box, len(objectness_edges) - 1, len(snr_edges)), bool), low)
    i, j = _cells(empty, obj, snr)
    flat = (prior * empty.keep.shape[1] + i) * empty.keep.shape[2] + j
    size = empty.keep.size
    count = np.bincount(flat, minlength=size)
    fb = np.asarray(fallback_thresholds, float).reshape(-1)
    lower = np.asarray(objectness_edges[:-1])
    default = (lower[None, :, None] >= fb[:, None, None]) & np.ones(empty.keep.shape, bool)

    def solve(lam):
        cell_gain = np.bincount(flat, np.where(gains < 0, gains - lam, gains), minlength=size)
        keep_cells = np.where(count > 0, cell_gain > 0, default.reshape(-1))
        keep = keep_cells[flat]
        purity = float((gains[keep] > -1).mean()) if keep.any() else 1.0
        return keep_cells, keep, purity

    lam = purity_cost(solve, min_purity)
    keep_cells, keep, purity = solve(lam)
    table = SelectionTable(objectness_edges, snr_edges, keep_cells.reshape(empty.keep.shape), low)
    return table, {"expected_score": float(gains[keep].sum()), "expected_purity": purity,
                   "kept": int(keep.sum()), "lambda": float(lam)}
