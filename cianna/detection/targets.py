"""YOLO-CIANNA target encoding (``yolo.md`` §9).

Two representations:

* **CIANNA target rows** ``(N, 1 + max_obj·(7 + nb_param + diff_flag))``: per image ``[n, obj_0, obj_1,
  …, zero padding]`` with each object ``[class (1-based), xmin, ymin, zmin, xmax, ymax, zmax, param_1 …
  param_P, difficult]`` in CIANNA pixel coordinates (pixel ``i`` covers ``[i, i+1)``). ``n = 0``: empty
  image; ``n = −1``: class-only example with one box.
* :class:`YoloTargets`: padded tensors used by the association and the loss.

:func:`encode_targets` builds CIANNA rows from a friendlier per-image catalogue (astropy ``Table`` or
mapping of arrays) in **0-based pixel coordinates** (pixel centres at integers, FITS/astropy), adding the
+0.5 CIANNA convention.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["YoloTargets", "targets_from_rows", "rows_from_targets", "encode_targets", "row_length"]


def row_length(max_nb_obj: int, nb_param: int, diff_flag: bool) -> int:
    """Length of a CIANNA target row, ``1 + max_obj·(7 + nb_param + diff_flag)``."""
    return 1 + max_nb_obj * (7 + nb_param + int(bool(diff_flag)))


@dataclass
class YoloTargets:
    """Padded per-image targets.

    Attributes
    ----------
    boxes : torch.Tensor, shape (B, T, 6), float
        Corners in CIANNA input pixels.
    classes : torch.Tensor, shape (B, T), int64
        **0-based** class index (CIANNA class − 1; 0 when there are no classes).
    params : torch.Tensor, shape (B, T, nb_param), float
    difficult : torch.Tensor, shape (B, T), int64
        Difficult code 0–3 (0 when ``diff_flag`` is off).
    valid : torch.Tensor, shape (B, T), bool
        Real (non-padding) targets.
    class_only : torch.Tensor, shape (B,), bool
        Images whose row had ``n = −1``.
    """

    boxes: torch.Tensor
    classes: torch.Tensor
    params: torch.Tensor
    difficult: torch.Tensor
    valid: torch.Tensor
    class_only: torch.Tensor

    @property
    def count(self) -> torch.Tensor:
        """Number of targets per image, shape (B,)."""
        return self.valid.sum(dim=1)

    def to(self, device) -> "YoloTargets":
        return YoloTargets(*(getattr(self, f).to(device) for f in
                             ("boxes", "classes", "params", "difficult", "valid", "class_only")))


def targets_from_rows(rows: torch.Tensor, nb_param: int, diff_flag: bool = False) -> YoloTargets:
    """Parse CIANNA target rows into :class:`YoloTargets`.

    Parameters
    ----------
    rows : torch.Tensor or array, shape (B, 1 + max_obj·(7 + nb_param + diff_flag))
    nb_param : int
    diff_flag : bool
        Rows carry a trailing difficult flag per object (after the parameters).

    Returns
    -------
    YoloTargets
        With ``T = max_obj``.
    """
    rows = torch.as_tensor(rows)
    if rows.dim() != 2:
        raise ValueError(f"target rows must be (N, F), got shape {tuple(rows.shape)}")
    rows = rows.float() if not rows.is_floating_point() else rows
    stride = 7 + nb_param + int(bool(diff_flag))
    if (rows.shape[1] - 1) % stride:
        raise ValueError(f"target row length {rows.shape[1]} is not 1 + max_obj·{stride} "
                         f"(7 + nb_param={nb_param} + diff_flag={int(bool(diff_flag))})")
    b, t = rows.shape[0], (rows.shape[1] - 1) // stride
    n = rows[:, 0].round().long()
    if ((n < -1) | (n > t)).any():
        raise ValueError(f"target counts must be in [-1, {t}], got {n[(n < -1) | (n > t)].tolist()}")
    if t == 0 and (n == -1).any():
        raise ValueError("class-only rows (n = -1) need room for one object")
    objs = rows[:, 1:].reshape(b, t, stride)
    class_only = n == -1
    count = torch.where(class_only, torch.ones_like(n), n)
    valid = torch.arange(t, device=rows.device)[None, :] < count[:, None]
    classes = (objs[..., 0].round().long() - 1).clamp(min=0)
    difficult = objs[..., 7 + nb_param].round().long() if diff_flag else torch.zeros_like(classes)
    zero = torch.zeros((), dtype=rows.dtype, device=rows.device)
    return YoloTargets(boxes=torch.where(valid[..., None], objs[..., 1:7], zero),
                       classes=torch.where(valid, classes, 0),
                       params=torch.where(valid[..., None], objs[..., 7:7 + nb_param], zero),
                       difficult=torch.where(valid, difficult, 0),
                       valid=valid, class_only=class_only)


def rows_from_targets(targets: YoloTargets, max_nb_obj: int | None = None, *,
                      diff_flag: bool = False) -> torch.Tensor:
    """Inverse of :func:`targets_from_rows` (valid targets must come first in each image).

    Returns
    -------
    torch.Tensor, shape (B, 1 + max_obj·(7 + nb_param + diff_flag)), float32
    """
    b, t = targets.valid.shape
    max_nb_obj = t if max_nb_obj is None else max_nb_obj
    count = targets.count
    if (count > max_nb_obj).any():
        raise ValueError(f"an image has {int(count.max())} targets > max_nb_obj = {max_nb_obj}")
    p = targets.params.shape[-1]
    parts = [(targets.classes + 1).unsqueeze(-1).float(), targets.boxes.float(), targets.params.float()]
    if diff_flag:
        parts.append(targets.difficult.unsqueeze(-1).float())
    objs = torch.cat(parts, dim=-1) * targets.valid[..., None]
    stride = 7 + p + int(bool(diff_flag))
    out = torch.zeros(b, max_nb_obj, stride)
    m = min(t, max_nb_obj)
    out[:, :m] = objs[:, :m]
    n = torch.where(targets.class_only, -torch.ones_like(count), count).float()
    return torch.cat([n[:, None], out.reshape(b, -1)], dim=1)


def _column(cat, names, required=True):
    for name in names:
        try:
            value = cat[name]
        except (KeyError, IndexError, ValueError):
            continue
        return np.asarray(getattr(value, "value", value), dtype=np.float64)
    if required:
        raise KeyError(f"catalogue needs one of the columns {names}")
    return None


def _centres_sizes(cat, ndim):
    axes = ("x", "y", "z")[:ndim]
    sizes = ("w", "h", "d")[:ndim]
    centres = _column(cat, ("centers", "centres"), required=False)
    if centres is None:
        centres = np.stack([_column(cat, (a,)) for a in axes], axis=-1)
    size = _column(cat, ("sizes",), required=False)
    if size is None:
        alt = {"w": ("w", "width"), "h": ("h", "height"), "d": ("d", "depth")}
        size = np.stack([_column(cat, alt[s]) for s in sizes], axis=-1)
    return centres.reshape(-1, ndim), size.reshape(-1, ndim)


def encode_targets(catalogs, *, ndim: int, max_nb_obj_per_image: int, nb_param: int = 0,
                   diff_flag: bool = False, class_only: bool | list = False) -> torch.Tensor:
    """Build CIANNA target rows from per-image catalogues in 0-based pixel coordinates.

    Parameters
    ----------
    catalogs : sequence of astropy Table or mapping
        One per image. Columns: centres ``x, y[, z]`` (or ``centers`` (M, ndim)) in 0-based pixels
        (pixel centre at integer coordinates); sizes ``w, h[, d]`` (aliases ``width, height, depth``; or
        ``sizes`` (M, ndim)) in pixels; optional ``class`` (0-based, default 0); ``params`` (M, nb_param)
        when ``nb_param > 0``; optional ``difficult`` (codes 0–3).
    ndim : {1, 2, 3}
        Spatial dims of the data. Missing dims get CIANNA's ``[0, 1]`` extent.
    max_nb_obj_per_image : int
        Padding length; more objects raise ``ValueError``.
    nb_param : int
    diff_flag : bool
        Append the difficult code to every object.
    class_only : bool or list of bool
        Write ``n = −1`` (class-only example, exactly one object) for these images.

    Returns
    -------
    torch.Tensor, shape (N, 1 + max_obj·(7 + nb_param + diff_flag)), float32
    """
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim}")
    stride = 7 + nb_param + int(bool(diff_flag))
    rows = np.zeros((len(catalogs), 1 + max_nb_obj_per_image * stride), dtype=np.float32)
    flags = class_only if isinstance(class_only, (list, tuple)) else [class_only] * len(catalogs)
    for i, cat in enumerate(catalogs):  # per-image catalogues of variable length
        centres, sizes = _centres_sizes(cat, ndim)
        m = len(centres)
        if m > max_nb_obj_per_image:
            raise ValueError(f"image {i} has {m} objects > max_nb_obj_per_image = {max_nb_obj_per_image}")
        if flags[i] and m != 1:
            raise ValueError(f"class-only image {i} must have exactly one object, got {m}")
        if m == 0:
            continue  # empty image: n = 0, background loss only
        lo = np.zeros((m, 3))
        hi = np.ones((m, 3))
        lo[:, :ndim] = centres + 0.5 - sizes / 2
        hi[:, :ndim] = centres + 0.5 + sizes / 2
        cls = _column(cat, ("class", "classes"), required=False)
        cls = np.zeros(m) if cls is None else cls.reshape(m)
        obj = [cls[:, None] + 1, lo, hi]
        if nb_param:
            par = _column(cat, ("params", "parameters"))
            obj.append(par.reshape(m, nb_param))
        if diff_flag:
            dif = _column(cat, ("difficult",), required=False)
            obj.append((np.zeros(m) if dif is None else dif.reshape(m))[:, None])
        obj = np.concatenate(obj, axis=1)
        rows[i, 0] = -1 if flags[i] else m
        rows[i, 1:1 + m * stride] = obj.reshape(-1)
    return torch.from_numpy(rows)
