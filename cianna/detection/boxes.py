"""Pure box geometry for YOLO-CIANNA (``yolo.md`` §5, §6).

Boxes are float tensors of **corners** with the last dimension

* ``6``: ``[xmin, ymin, zmin, xmax, ymax, zmax]`` (3D, the canonical form),
* ``4``: ``[xmin, ymin, xmax, ymax]`` (2D; :func:`as_3d` adds ``zmin = 0, zmax = 1``),
* ``2``: ``[xmin, xmax]`` (1D; :func:`as_3d` adds ``y`` and ``z`` in ``[0, 1]``),

in any length unit (CIANNA uses input pixels). Centre/size boxes are ``[cx, cy, cz, w, h, d]``.
All functions broadcast over leading dimensions and are differentiable (float arithmetic, as
CIANNA's CUDA path; the integer ``abs()`` of the CPU path, quirk 8, is not reproduced).

Degenerate boxes (zero or negative extent) never produce NaN: a ratio whose denominator is not
strictly positive is defined as 0. Hence the IoU of two zero-volume boxes is 0 (even if identical),
the GIoU penalty ``(E − U)/E`` is 0 when the enclosing volume ``E`` is 0, and the DIoU penalty ``ρ/c``
is 0 when the enclosing diagonal ``c`` is 0 (both boxes reduced to the same point).
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "IOU_TYPES", "as_3d", "corners_to_centers", "centers_to_corners", "volume",
    "iou", "pairwise_iou", "prior_distance", "PRIOR_DIST_TYPES",
]

#: Accepted ``IoU_type`` names.
IOU_TYPES = ("IoU", "GIoU", "DIoU", "DIoU2")
#: Accepted ``prior_dist_type`` names (``"IOU"`` is an alias of ``"IoU"``).
PRIOR_DIST_TYPES = ("IoU", "SIZE", "OFFSET")


def as_3d(boxes: torch.Tensor) -> torch.Tensor:
    """Return corner boxes in the 3D form ``(..., 6)``.

    Parameters
    ----------
    boxes : torch.Tensor, shape (..., 2), (..., 4) or (..., 6)
        1D ``[xmin, xmax]``, 2D ``[xmin, ymin, xmax, ymax]`` or 3D corners.

    Returns
    -------
    torch.Tensor, shape (..., 6)
        ``[xmin, ymin, zmin, xmax, ymax, zmax]``; missing dims span ``[0, 1]`` (CIANNA's convention
        for 2D targets, depth 1 matching the forced depth-1 prior).
    """
    boxes = torch.as_tensor(boxes)
    if not boxes.is_floating_point():
        boxes = boxes.float()
    n = boxes.shape[-1]
    if n == 6:
        return boxes
    if n not in (2, 4):
        raise ValueError(f"boxes must have 2, 4 or 6 corner coordinates in the last dim, got {n}")
    dims = n // 2
    zeros = boxes.new_zeros(boxes.shape[:-1] + (3 - dims,))
    ones = torch.ones_like(zeros)
    return torch.cat([boxes[..., :dims], zeros, boxes[..., dims:], ones], dim=-1)


def corners_to_centers(boxes: torch.Tensor) -> torch.Tensor:
    """Corners ``(..., 6)`` → centres and sizes ``[cx, cy, cz, w, h, d]`` (2D/1D input accepted)."""
    boxes = as_3d(boxes)
    lo, hi = boxes[..., :3], boxes[..., 3:]
    return torch.cat([(lo + hi) * 0.5, hi - lo], dim=-1)


def centers_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """Centres and sizes ``[cx, cy, cz, w, h, d]`` → corners ``(..., 6)``."""
    boxes = torch.as_tensor(boxes)
    if not boxes.is_floating_point():
        boxes = boxes.float()
    if boxes.shape[-1] != 6:
        raise ValueError(f"centre boxes must be (..., 6) [cx, cy, cz, w, h, d], got {tuple(boxes.shape)}")
    c, s = boxes[..., :3], boxes[..., 3:]
    return torch.cat([c - s * 0.5, c + s * 0.5], dim=-1)


def volume(boxes: torch.Tensor) -> torch.Tensor:
    """Signed-extent product ``w·h·d`` of corner boxes, shape ``(...)`` (absolute value, as CIANNA)."""
    boxes = as_3d(boxes)
    return (boxes[..., 3:] - boxes[..., :3]).prod(dim=-1).abs()


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num/den`` where ``den > 0``, else 0, with finite gradients everywhere."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def iou(a: torch.Tensor, b: torch.Tensor, kind: str = "IoU") -> torch.Tensor:
    """Element-wise IoU variant between corner boxes (``yolo.md`` §6.1).

    Parameters
    ----------
    a, b : torch.Tensor, shape (..., 6) or (..., 4) or (..., 2)
        Corner boxes; broadcast against each other (2D/1D boxes are lifted with :func:`as_3d`).
    kind : {"IoU", "GIoU", "DIoU", "DIoU2"}
        ``IoU = I/U``; ``GIoU = I/U − (E − U)/E``; ``DIoU = I/U − ρ/c`` (CIANNA's **non-squared**
        ratio); ``DIoU2 = I/U − ρ²/c²`` (classical DIoU). ``I``, ``U``, ``E``: intersection, union and
        enclosing-box volumes; ``ρ``: distance between centres; ``c``: enclosing-box diagonal.

    Returns
    -------
    torch.Tensor, shape (...)
        Broadcast shape of the leading dims. Ratios with a non-positive denominator are 0.
    """
    if kind == "IOU":
        kind = "IoU"
    if kind not in IOU_TYPES:
        raise ValueError(f"unknown IoU kind {kind!r}; expected one of {IOU_TYPES}")
    a, b = as_3d(a), as_3d(b)
    a, b = torch.broadcast_tensors(a, b)
    a_lo, a_hi, b_lo, b_hi = a[..., :3], a[..., 3:], b[..., :3], b[..., 3:]
    inter = (torch.minimum(a_hi, b_hi) - torch.maximum(a_lo, b_lo)).clamp(min=0).prod(dim=-1)
    vol_a = (a_hi - a_lo).prod(dim=-1).abs()
    vol_b = (b_hi - b_lo).prod(dim=-1).abs()
    union = vol_a + vol_b - inter
    ratio = _safe_div(inter, union)
    if kind == "IoU":
        return ratio
    enc = torch.maximum(a_hi, b_hi) - torch.minimum(a_lo, b_lo)
    if kind == "GIoU":
        e = enc.prod(dim=-1)
        return ratio - _safe_div(e - union, e)
    rho2 = ((a_lo + a_hi - b_lo - b_hi) * 0.5).pow(2).sum(dim=-1)
    c2 = enc.pow(2).sum(dim=-1)
    if kind == "DIoU2":
        return ratio - _safe_div(rho2, c2)
    # DIoU (non-squared): ρ/c = sqrt(ρ²/c²); sqrt of the ratio keeps the gradient finite except at 0
    q = _safe_div(rho2, c2)
    ok = q > 0
    return ratio - torch.where(ok, torch.sqrt(torch.where(ok, q, torch.ones_like(q))), torch.zeros_like(q))


def pairwise_iou(a: torch.Tensor, b: torch.Tensor, kind: str = "IoU") -> torch.Tensor:
    """All-pairs IoU variant.

    Parameters
    ----------
    a : torch.Tensor, shape (N, 6) (or (N, 4), (N, 2))
    b : torch.Tensor, shape (M, 6) (or (M, 4), (M, 2))
    kind : {"IoU", "GIoU", "DIoU", "DIoU2"}

    Returns
    -------
    torch.Tensor, shape (N, M)
    """
    a, b = as_3d(a), as_3d(b)
    return iou(a[..., :, None, :], b[..., None, :, :], kind)


def prior_distance(sizes: torch.Tensor, priors: torch.Tensor, dist_type: str = "SIZE", *,
                   iou_type: str = "IoU", log_min: float = -1.6, log_max: float = 1.6) -> torch.Tensor:
    """Distance between target sizes and priors (``yolo.md`` §6.2).

    Parameters
    ----------
    sizes : torch.Tensor, shape (..., 3)
        Target sizes ``[w, h, d]`` (input pixels).
    priors : torch.Tensor, shape (K, 3)
        Prior sizes (input pixels, clamped ≥ 1 for training).
    dist_type : {"IoU", "SIZE", "OFFSET"}
        ``IoU``: ``1 − IoUfn`` of the two boxes centred at 0 (``iou_type`` variant); ``SIZE``: Euclidean
        ``‖ts − p‖``; ``OFFSET``: ``Σ_d |log(clamp(ts_d/p_d, e^{log_min}, e^{log_max}))|``.
    iou_type : str
        IoU variant of the ``IoU`` distance.
    log_min, log_max : float
        Size-part min/max of the ``OFFSET`` distance.

    Returns
    -------
    torch.Tensor, shape (..., K)
    """
    sizes = torch.as_tensor(sizes)
    s = sizes[..., None, :]
    p = priors.to(sizes.dtype)
    if dist_type.upper() == "IOU":
        zero = torch.zeros_like(s)
        bs = torch.cat([zero - s * 0.5, s * 0.5], dim=-1)
        zp = torch.zeros_like(p)
        bp = torch.cat([zp - p * 0.5, p * 0.5], dim=-1)
        return 1.0 - iou(bp, bs, iou_type)
    if dist_type.upper() == "SIZE":
        return (s - p).pow(2).sum(dim=-1).sqrt()
    if dist_type.upper() == "OFFSET":
        r = (s / p).clamp(min=math.exp(log_min), max=math.exp(log_max))
        return torch.log(r).abs().sum(dim=-1)
    raise ValueError(f"unknown prior_dist_type {dist_type!r}; expected one of {PRIOR_DIST_TYPES}")
