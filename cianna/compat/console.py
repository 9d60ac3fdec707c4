"""Console output of the CIANNA interface: progress bars, control-step lines, confusion matrices.

Everything goes to ``sys.stdout`` (as the original's ``printf``), so scripts that parse or tee their output
keep working. The line formats follow ``framework.md`` §5.4–§5.7.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from cianna.train.confusion import format_confusion

__all__ = ["ProgressBar", "say", "control_line", "forward_line", "confusion_display", "yolo_lines"]


def say(text: str = "") -> None:
    """Print one line to stdout and flush."""
    print(text, file=sys.stdout, flush=True)


class ProgressBar:
    """CIANNA-style progress bar, redrawn in place with ``\\r``.

    ``Iter: N [####------] b / nb | B.Loss: x | B.perf.: y it/s`` (training) or
    ``Fwd : [####------] b / nb | B.perf.: y it/s`` (forward).

    Parameters
    ----------
    label : str
        Text before the bar (``"Iter: 3"`` or ``"Fwd :"``).
    total : int or None
        Number of steps (None: no bar, only counts).
    width : int
        Bar width (``init(adv_size=...)``).
    enabled : bool
        Draw nothing when False (``silent >= 1``).
    min_interval : float
        Minimum seconds between two redraws (the last step is always drawn).
    """

    def __init__(self, label: str, total: int | None, width: int = 30, enabled: bool = True,
                 min_interval: float = 0.2):
        self.label, self.total, self.width, self.enabled = label, total, int(width), enabled
        self.min_interval = min_interval
        self._last = 0.0
        self._drawn = False

    def update(self, step: int, *, loss: float | None = None, perf: float | None = None) -> None:
        """Redraw after ``step`` steps (1-based)."""
        if not self.enabled:
            return
        now = time.perf_counter()
        final = self.total is not None and step >= self.total
        if not final and now - self._last < self.min_interval:
            return
        self._last = now
        if self.total:
            done = int(round(self.width * min(step, self.total) / self.total))
            bar = f"[{'#' * done}{'-' * (self.width - done)}] {step} / {self.total}"
        else:
            bar = f"{step}"
        text = f"{self.label} {bar}"
        if loss is not None:
            text += f" | B.Loss: {loss:f}"
        if perf is not None:
            text += f" | B.perf.: {perf:.2f} it/s"
        sys.stdout.write("\r" + text)
        sys.stdout.flush()
        self._drawn = True

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled and self._drawn:
            sys.stdout.write("\n")
            sys.stdout.flush()


def control_line(perf: float, mean_loss: float, lr: float, momentum: float, weight_decay: float) -> str:
    """Line printed at a control step, before the validation."""
    return (f"Average Training perf: {perf:.2f} it/s | Mean Loss: {mean_loss:g} | Learning rate: {lr:g} | "
            f"Momentum: {momentum:g} | Weight decay: {weight_decay:g}")


def forward_line(perf: float, mean_loss: float | None) -> str:
    """Summary line of a forward pass (validation or ``forward()``)."""
    text = f"Average forward perf: {perf:.2f} it/s"
    if mean_loss is not None:
        text += f" | Mean Loss: {mean_loss:g}"
    return text


def confusion_display(cm: np.ndarray, mode: int) -> str:
    """Confusion matrix text for ``confmat`` mode 1 (full), 2 (recall/precision) or 3 (accuracy only)."""
    return "ConfMat (row = target class, column = predicted class)\n" + format_confusion(cm, mode) \
        if mode == 1 else format_confusion(cm, mode)


def yolo_lines(parts: dict, monitors: dict, n_examples: int) -> list:
    """YOLO loss breakdown and monitors (``yolo.md`` §10), per image."""
    n = max(n_examples, 1)
    names = ("pos", "size", "prob", "obj", "class", "param")
    lines = ["Loss dist. ||" + "|".join(f"{k.capitalize():s} {parts.get(k, 0.0) / n:g}" for k in names)]
    matched = monitors.get("nb_match", 0.0)
    if matched:
        lines.append(f"M IoU: {monitors.get('iou_sum', 0.0) / matched:.4f} | "
                     f"M Obj: {monitors.get('obj_sum', 0.0) / matched:.4f} | "
                     f"P Good: {monitors.get('nb_good', 0.0) / matched:.4f}")
    return lines
