"""Confusion matrix and its CIANNA display modes (``framework.md`` §5.5)."""
from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "format_confusion"]


def confusion_matrix(target_class, predicted_class, nb_class: int) -> np.ndarray:
    """Counts with row = true class, column = predicted class.

    Parameters
    ----------
    target_class, predicted_class : array_like of int, shape (N,)
    nb_class : int

    Returns
    -------
    numpy.ndarray of int64, shape (nb_class, nb_class)
    """
    t = np.asarray(target_class, dtype=np.int64)
    p = np.asarray(predicted_class, dtype=np.int64)
    cm = np.zeros((nb_class, nb_class), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def format_confusion(cm: np.ndarray, mode: int = 1) -> str:
    """Text display of a confusion matrix.

    Parameters
    ----------
    cm : numpy.ndarray, shape (K, K)
    mode : {1, 2, 3}
        1: full matrix, per-row recall, per-column precision and accuracy; 2: recall/precision lines and
        accuracy; 3: accuracy only.
    """
    if mode not in (1, 2, 3):
        raise ValueError(f"confmat mode {mode} must be 1, 2 or 3 (0 = off)")
    total = cm.sum()
    accuracy = 100.0 * np.trace(cm) / total if total else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = 100.0 * np.diag(cm) / cm.sum(axis=1)
        precision = 100.0 * np.diag(cm) / cm.sum(axis=0)
    lines = []
    if mode == 1:
        header = "        " + "".join(f"{j:>8d}" for j in range(cm.shape[0])) + "   Recall"
        lines.append(header)
        for i, row in enumerate(cm):
            lines.append(f"{i:>8d}" + "".join(f"{v:>8d}" for v in row) + f"  {recall[i]:6.2f}%")
        lines.append(" Precis." + "".join(f"{v:7.2f}%" for v in precision))
    elif mode == 2:
        lines.append("Recall    " + " ".join(f"{v:6.2f}%" for v in recall))
        lines.append("Precision " + " ".join(f"{v:6.2f}%" for v in precision))
    lines.append(f"Correct : {accuracy:.2f}%")
    return "\n".join(lines)
