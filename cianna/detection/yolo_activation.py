"""The CIANNA ``YOLO`` output activation (``yolo.md`` §3–§4, §8).

:class:`YoloActivation` applies the per-part activations to the YOLO conv output
``(N, nb_box·(8+nb_class+nb_param), [D,] [H,] W)`` and, as the last layer's activation, computes the
YOLO loss through :class:`cianna.detection.loss.YoloLoss`.
"""
from __future__ import annotations

import torch

from cianna.detection.config import YoloConfig
from cianna.detection.decode import box_view, unview
from cianna.detection.loss import YoloLoss
from cianna.detection.targets import YoloTargets, targets_from_rows
from cianna.nn.activations import Activation, LossResult, surrogate

__all__ = ["YoloActivation", "yolo_activate"]


class _ClampedPart(torch.autograd.Function):
    """Clamped sigmoid or linear part whose backward ignores the clamp (quirk 19)."""

    @staticmethod
    def forward(ctx, x, slope, mn, mx, sigmoid):
        if sigmoid:
            y = 1.0 / (1.0 + torch.exp(torch.clamp(-slope * x, mn, mx)))
        else:
            y = torch.clamp(slope * x, mn, mx)
        ctx.save_for_backward(y)
        ctx.slope, ctx.sigmoid = slope, sigmoid
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        local = ctx.slope * y * (1 - y) if ctx.sigmoid else torch.full_like(y, ctx.slope)
        return grad * local, None, None, None, None


def yolo_activate(view: torch.Tensor, config: YoloConfig) -> torch.Tensor:
    """Per-part activations on a box view ``(N, S, K, P)`` (see :func:`cianna.detection.decode.box_view`).

    Sigmoid parts: ``1/(1 + exp(clamp(−s·x, min, max)))``; linear parts: ``clamp(s·x, min, max)``; softmax
    classes when ``class_softmax``. Dims ``≥ fit_dim`` are forced (position 0.5, size 0, zero gradient).
    """
    sm, nc = config.slopes_and_maxes, config.nb_class
    fd = config.fit_dim

    def part(x, p, sigmoid):
        t = sm.part(p)
        return _ClampedPart.apply(x, t.slope, t.min, t.max, sigmoid)

    pieces = [part(view[..., 0:fd], 0, True), torch.full_like(view[..., fd:3], 0.5),
              part(view[..., 3:3 + fd], 1, False), torch.zeros_like(view[..., 3 + fd:6]),
              part(view[..., 6:7], 2, True), part(view[..., 7:8], 3, True)]
    if nc:
        cls = view[..., 8:8 + nc]
        pieces.append(torch.softmax(cls, dim=-1) if config.class_softmax else part(cls, 4, True))
    if config.nb_param:
        pieces.append(part(view[..., 8 + nc:], 5, False))
    return torch.cat(pieces, dim=-1)


class YoloActivation(Activation):
    """CIANNA ``YOLO`` activation and loss.

    Parameters
    ----------
    config : YoloConfig or dict
        YOLO configuration (a dict from :meth:`YoloConfig.to_dict` is accepted).
    input_shape : sequence of int, optional
        Network input shape ``(C, *spatial)`` or spatial shape; needed by :meth:`loss` unless the context
        gives ``input_shape``.

    Notes
    -----
    :meth:`loss` reads from ``context``: ``input_shape`` (network input, ``(C, *spatial)`` or spatial),
    ``iteration`` (completed iterations + 1), ``train_size`` (images per iteration), ``training`` (bool),
    ``generator`` (``torch.Generator`` for the random association options). The targets are CIANNA rows
    ``(N, 1 + max_obj·(7 + nb_param + diff_flag))`` or a :class:`YoloTargets`.
    """

    name = "YOLO"
    output_only = True

    def __init__(self, config: YoloConfig | dict | None = None, input_shape=None):
        super().__init__()
        if isinstance(config, dict):
            config = YoloConfig.from_dict(config)
        if config is not None and not isinstance(config, YoloConfig):
            raise TypeError(f"YoloActivation needs a YoloConfig, got {type(config).__name__}")
        self.yolo_config = config
        self.input_shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        self._loss = YoloLoss(config) if config is not None else None
        #: Last loss output (delta, parts, monitors, association), for inspection.
        self.last = None

    def _cfg(self) -> YoloConfig:
        if self.yolo_config is None:
            raise ValueError("the YOLO activation needs a YoloConfig: use YoloActivation(YoloConfig(...))")
        return self.yolo_config

    def forward(self, preact: torch.Tensor) -> torch.Tensor:
        """Activate ``(N, C, *spatial)``; returns the same shape."""
        cfg = self._cfg()
        return unview(yolo_activate(box_view(preact, cfg), cfg), preact.shape[2:])

    def to_string(self) -> str:
        return "YOLO"

    def config(self) -> dict:
        out = {"string": "YOLO", "config": self._cfg().to_dict()}
        if self.input_shape is not None:
            out["input_shape"] = list(self.input_shape)
        return out

    def _spatial(self, output, context) -> tuple:
        shape = (context or {}).get("input_shape", self.input_shape)
        if shape is None:
            raise ValueError("YOLO loss needs the network input shape: pass context['input_shape'] "
                             "or YoloActivation(..., input_shape=...)")
        shape = tuple(int(s) for s in shape)
        nsp = output.dim() - 2
        if len(shape) == nsp + 1:
            shape = shape[1:]
        if len(shape) != nsp:
            raise ValueError(f"input_shape {shape} does not match a {nsp}-D YOLO output")
        return shape

    def loss(self, preact: torch.Tensor, output: torch.Tensor, target, *, norm: float,
             context: dict | None = None) -> LossResult:
        """YOLO loss: value = displayed loss / norm, gradient = CIANNA delta / norm (``yolo.md`` §8)."""
        cfg = self._cfg()
        ctx = context or {}
        if not isinstance(target, YoloTargets):
            target = targets_from_rows(torch.as_tensor(target).reshape(output.shape[0], -1),
                                       cfg.nb_param, cfg.diff_flag)
        res = self._loss(output, target, self._spatial(output, ctx), training=bool(ctx.get("training", True)),
                         iteration=ctx.get("iteration"), train_size=int(ctx.get("train_size", output.shape[0])),
                         generator=ctx.get("generator"))
        self.last = res
        delta = res.delta.to(preact.dtype) / norm
        value = torch.tensor(res.total / norm, dtype=preact.dtype, device=preact.device)
        return LossResult(loss=surrogate(value, preact, delta), total=res.total, parts=res.parts,
                          monitors=res.monitors)
