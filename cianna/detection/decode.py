"""Grid geometry and decoding of YOLO-CIANNA outputs (``yolo.md`` §3, §5, §11).

Layout conventions used throughout :mod:`cianna.detection`:

* network output ``(N, C, [D,] [H,] W)`` with ``C = nb_box·(8 + nb_class + nb_param)``;
* *box view* ``(N, S, K, P)``: ``S = D·H·W`` cells (x fastest), ``K = nb_box`` boxes, ``P = 8 + nb_class +
  nb_param`` parts per box (:func:`box_view`);
* cell coordinates ``(S, 3)`` as ``(x, y, z)`` integers; grid and cell sizes as ``(3,)`` in ``(x, y, z)``
  order (missing dims = 1);
* boxes as corners ``[xmin, ymin, zmin, xmax, ymax, zmax]`` in **CIANNA input pixels** (pixel ``i`` covers
  ``[i, i+1)``, centre ``i + 0.5``). :func:`decode_predictions` converts to 0-based FITS pixel coordinates
  (centre of pixel ``i`` at ``i``) by subtracting 0.5.
"""
from __future__ import annotations

import math

import torch

from cianna.detection.config import YoloConfig

__all__ = ["grid_geometry", "box_view", "unview", "cell_coordinates", "predicted_boxes",
           "cianna_forward_output", "decode_predictions"]


def _spatial(shape) -> tuple:
    """Spatial dims in tensor order ``([D,] [H,] W)`` → ``(x, y, z)`` order padded with 1."""
    dims = [int(s) for s in shape][::-1]
    return tuple(dims + [1] * (3 - len(dims)))


def grid_geometry(output_spatial, input_spatial) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid size and CIANNA cell size ``in_dims // grid`` (``yolo.md`` §1).

    Parameters
    ----------
    output_spatial : sequence of int
        Spatial shape of the YOLO output in tensor order ``([D,] [H,] W)``.
    input_spatial : sequence of int
        Spatial shape of the network input, same order and length.

    Returns
    -------
    grid, cell_size : torch.Tensor, shape (3,), int64
        ``(nx, ny, nz)`` cells and input pixels per cell (missing dims 1).
    """
    if len(output_spatial) != len(input_spatial):
        raise ValueError(f"input spatial shape {tuple(input_spatial)} and YOLO output spatial shape "
                         f"{tuple(output_spatial)} must have the same number of dims")
    grid = torch.tensor(_spatial(output_spatial), dtype=torch.long)
    ins = torch.tensor(_spatial(input_spatial), dtype=torch.long)
    cell = torch.div(ins, grid, rounding_mode="floor")
    if (cell < 1).any():
        raise ValueError(f"input {tuple(input_spatial)} smaller than the output grid {tuple(output_spatial)}")
    return grid, cell


def box_view(output: torch.Tensor, config: YoloConfig) -> torch.Tensor:
    """Reshape ``(N, C, *spatial)`` to ``(N, S, K, P)`` (a permuted view, not a copy)."""
    n, c = output.shape[:2]
    if c != config.nb_channels:
        raise ValueError(f"YOLO output has {c} channels, expected nb_box·(8+nb_class+nb_param) = "
                         f"{config.nb_channels}")
    s = math.prod(output.shape[2:])
    return output.reshape(n, config.nb_box, config.box_stride, s).permute(0, 3, 1, 2)


def unview(view: torch.Tensor, spatial) -> torch.Tensor:
    """Inverse of :func:`box_view`: ``(N, S, K, P)`` → ``(N, K·P, *spatial)``."""
    n, s, k, p = view.shape
    return view.permute(0, 2, 3, 1).reshape(n, k * p, *spatial)


def cell_coordinates(grid: torch.Tensor, device=None) -> torch.Tensor:
    """Integer ``(x, y, z)`` of every cell, shape ``(S, 3)``, x fastest (flat index order)."""
    nx, ny, nz = (int(v) for v in grid)
    s = torch.arange(nx * ny * nz, device=device)
    return torch.stack([s % nx, (s // nx) % ny, s // (nx * ny)], dim=-1)


def predicted_boxes(view: torch.Tensor, priors: torch.Tensor, grid: torch.Tensor,
                    cell_size: torch.Tensor) -> torch.Tensor:
    """Predicted corners in input pixels (``yolo.md`` §5).

    Parameters
    ----------
    view : torch.Tensor, shape (N, S, K, P)
        Activated outputs (:func:`box_view`).
    priors : torch.Tensor, shape (K, 3)
        Prior sizes in pixels (clamped ≥ 1 for training, raw for inference decoding).
    grid, cell_size : torch.Tensor, shape (3,)

    Returns
    -------
    torch.Tensor, shape (N, S, K, 6)
        ``centre = (o_pos + cell)·cell_size``, ``size = prior·exp(o_size)``, as corners.
    """
    cells = cell_coordinates(grid, view.device).to(view.dtype)             # (S, 3)
    cs = cell_size.to(view.device, view.dtype)
    centre = (view[..., 0:3] + cells[None, :, None, :]) * cs
    size = priors.to(view.device, view.dtype) * torch.exp(view[..., 3:6])
    return torch.cat([centre - 0.5 * size, centre + 0.5 * size], dim=-1)


def cianna_forward_output(output: torch.Tensor, config: YoloConfig, input_spatial,
                          raw_output: bool | None = None) -> torch.Tensor:
    """CIANNA ``forward()`` file layout (``yolo.md`` §11).

    Parameters
    ----------
    output : torch.Tensor, shape (N, C, [D,] [H,] W)
        Activated YOLO output.
    config : YoloConfig
    input_spatial : sequence of int
        Network input spatial shape (tensor order).
    raw_output : bool, optional
        Default ``config.raw_output``; when true the activated output is returned unchanged.

    Returns
    -------
    torch.Tensor, same shape as ``output``
        Channels ``j = 0..2`` → ``xmin, ymin, zmin``; ``j = 3..5`` → ``xmax, ymax, zmax`` (CIANNA pixels,
        **un-clamped** priors); other channels as activated.
    """
    if config.raw_output if raw_output is None else raw_output:
        return output.clone()
    grid, cell = grid_geometry(output.shape[2:], input_spatial)
    view = box_view(output, config)
    boxes = predicted_boxes(view, config.prior_tensor(clamped=False), grid, cell)
    new = torch.cat([boxes, view[..., 6:]], dim=-1)
    return unview(new, output.shape[2:])


def decode_predictions(output: torch.Tensor, config: YoloConfig, input_spatial, *,
                       score_threshold: float = 0.0, score: str = "objectness",
                       pixel_convention: str = "fits") -> list[dict]:
    """Decode activated YOLO outputs into per-image detections.

    Parameters
    ----------
    output : torch.Tensor, shape (N, C, [D,] [H,] W)
        Activated YOLO output (``raw_output`` form, i.e. what the activation returns).
    config : YoloConfig
    input_spatial : sequence of int
        Network input spatial shape (tensor order).
    score_threshold : float
        Keep boxes with ``score ≥ score_threshold``.
    score : {"objectness", "probability", "obj_x_prob", "obj_x_class"}
        Ranking score (CIANNA examples use objectness; multi-class sets ``obj × max_class``).
    pixel_convention : {"fits", "cianna"}
        ``"fits"``: 0-based pixel coordinates (pixel centres at integers; CIANNA coordinate − 0.5);
        ``"cianna"``: CIANNA coordinates (pixel centres at ``i + 0.5``).

    Returns
    -------
    list of dict, one per image, each with (M = kept boxes, sorted by decreasing score)
        ``boxes`` (M, 2·fit_dim) corners ``[x..min, x..max]`` of the fitted dims; ``centers`` (M, fit_dim);
        ``sizes`` (M, fit_dim) in pixels; ``scores`` (M,); ``objectness`` (M,); ``probability`` (M,);
        ``class_scores`` (M, nb_class); ``labels`` (M,) 0-based arg-max class (0 if no class);
        ``params`` (M, nb_param); ``cell`` (M, 3) cell ``(x, y, z)``; ``box_index`` (M,) prior index.
    """
    if pixel_convention not in ("fits", "cianna"):
        raise ValueError("pixel_convention must be 'fits' or 'cianna'")
    grid, cell = grid_geometry(output.shape[2:], input_spatial)
    view = box_view(output, config)
    boxes = predicted_boxes(view, config.prior_tensor(clamped=False), grid, cell)
    if pixel_convention == "fits":
        boxes = boxes - 0.5
    nc, fd = config.nb_class, config.fit_dim
    obj, prob = view[..., 7], view[..., 6]
    cls = view[..., 8:8 + nc]
    params = view[..., 8 + nc:]
    if score == "objectness":
        sc = obj
    elif score == "probability":
        sc = prob
    elif score == "obj_x_prob":
        sc = obj * prob
    elif score == "obj_x_class":
        sc = obj * (cls.amax(dim=-1) if nc else torch.ones_like(obj))
    else:
        raise ValueError(f"unknown score {score!r}")
    cells = cell_coordinates(grid, output.device)
    k_idx = torch.arange(config.nb_box, device=output.device)
    results = []
    for b in range(output.shape[0]):  # per-image lists (variable length)
        keep = sc[b] >= score_threshold
        s_idx, kk = keep.nonzero(as_tuple=True)
        order = torch.argsort(sc[b][keep], descending=True)
        s_idx, kk = s_idx[order], kk[order]
        bx = boxes[b, s_idx, kk]
        corners = torch.cat([bx[:, :fd], bx[:, 3:3 + fd]], dim=-1)
        c = cls[b, s_idx, kk]
        results.append({
            "boxes": corners,
            "centers": 0.5 * (bx[:, :fd] + bx[:, 3:3 + fd]),
            "sizes": bx[:, 3:3 + fd] - bx[:, :fd],
            "scores": sc[b, s_idx, kk],
            "objectness": obj[b, s_idx, kk],
            "probability": prob[b, s_idx, kk],
            "class_scores": c,
            "labels": c.argmax(dim=-1) if nc else torch.zeros(len(kk), dtype=torch.long, device=output.device),
            "params": params[b, s_idx, kk],
            "cell": cells[s_idx],
            "box_index": k_idx[kk],
        })
    return results
