"""YOLO-CIANNA loss: per-part output deltas and displayed losses (``yolo.md`` §8, §10).

:class:`YoloLoss` runs two associations per batch (``associate``):

* the **training** association (random options, ``mode="train"``) gives CIANNA's output delta δ w.r.t.
  the pre-activation, with the gradients ignoring the activation clamps (quirk 19, reproduced);
* the **display** association (``config.error_type``: ``"natural"`` or ``"complete"``, never random)
  gives the displayed loss parts and the monitors (M IoU, M Obj, P Good).

One method per part (:meth:`YoloLoss.position`, ``size``, ``probability``, ``objectness``, ``classes``,
``parameters``) returns ``(delta, loss)`` for a given association; parts are summed over the batch,
not normalised.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from cianna.detection.association import Association, associate, good_box_lock
from cianna.detection.config import YoloConfig
from cianna.detection.decode import box_view, cell_coordinates, grid_geometry, predicted_boxes, unview
from cianna.detection.targets import YoloTargets

__all__ = ["YoloLoss", "YoloLossOutput", "PART_NAMES", "MONITOR_NAMES"]

#: Names of the loss parts, CIANNA order.
PART_NAMES = ("pos", "size", "prob", "obj", "class", "param")
#: Names of the monitors summed over the batch.
MONITOR_NAMES = ("iou_sum", "obj_sum", "nb_good", "nb_match", "nb_targets")


@dataclass
class YoloLossOutput:
    """Result of :meth:`YoloLoss.forward`.

    Attributes
    ----------
    delta : torch.Tensor, shape like the output (N, C, *spatial)
        CIANNA output delta w.r.t. the pre-activation (not divided by the batch size).
    total : float
        Displayed loss summed over the batch.
    parts : dict of str to float
        Displayed loss per part (``PART_NAMES``), summed over the batch.
    monitors : dict of str to float
        ``iou_sum`` (Σ IoU* of matched targets), ``obj_sum`` (Σ objectness of matched boxes), ``nb_good``
        (matches with IoU* ≥ good_IoU_lim), ``nb_match``, ``nb_targets`` (targets given).
        M IoU = iou_sum/nb_match, M Obj = obj_sum/nb_match, P Good = nb_good/nb_match.
    association : Association
        The training association (the display one when ``training`` is false).
    """

    delta: torch.Tensor
    total: float
    parts: dict = field(default_factory=dict)
    monitors: dict = field(default_factory=dict)
    association: Association | None = None


class _Encoded:
    """Targets gathered onto boxes for one association (all (B, S, K, ...))."""

    def __init__(self, view, targets: YoloTargets, assoc: Association, priors, grid, cell_size):
        dev = view.device
        self.taken = assoc.taken
        idx = assoc.target_index.clamp(min=0)
        b = torch.arange(view.shape[0], device=dev)[:, None, None].expand_as(idx)
        tb = targets.boxes.to(dev).float()[b, idx]                          # (B, S, K, 6)
        cells = cell_coordinates(grid, dev).float()[None, :, None, :]
        cs = cell_size.to(dev).float()
        self.pos = (0.5 * (tb[..., :3] + tb[..., 3:]) - cells * cs) / cs
        self.size_ratio = (tb[..., 3:] - tb[..., :3]) / priors.to(dev)
        self.classes = targets.classes.to(dev)[b, idx]
        self.params = targets.params.to(dev).float()[b, idx]
        self.class_only = targets.class_only.to(dev)[:, None, None].expand_as(idx)
        self.iou = assoc.iou
        self.difficult = assoc.difficult
        self.background = assoc.locked == 0


class YoloLoss:
    """CIANNA YOLO loss for one configuration.

    Parameters
    ----------
    config : YoloConfig

    Notes
    -----
    The displayed position loss with ``fit_parts.position = 0`` uses the neutral target 0.5 (the
    delta's target); V-1.0's display kernel uses 0 there.
    """

    def __init__(self, config: YoloConfig):
        self.config = config
        self.limits = config.iou_limits()
        self.fit = config.resolved_fit_parts()
        self.scales = config.error_scales.as_tuple()
        self.sm = config.slopes_and_maxes

    # ------------------------------------------------------------------ entry point
    def forward(self, output: torch.Tensor, targets: YoloTargets, input_spatial, *, training: bool = True,
                iteration: int | None = None, train_size: int = 1,
                generator: torch.Generator | None = None) -> YoloLossOutput:
        """Compute delta, displayed loss parts and monitors.

        Parameters
        ----------
        output : torch.Tensor, shape (N, C, [D,] [H,] W)
            Activated YOLO output.
        targets : YoloTargets
        input_spatial : sequence of int
            Network input spatial shape (tensor order), giving ``cell_size = in_dims // grid``.
        training : bool
            Compute the delta from the training (random) association; otherwise from the display one.
        iteration, train_size, generator
            See :func:`cianna.detection.association.associate`.
        """
        cfg = self.config
        output = output.detach()
        output = output if output.dtype == torch.float64 else output.float()
        grid, cell = grid_geometry(output.shape[2:], input_spatial)
        view = box_view(output, cfg)
        priors = cfg.prior_tensor(clamped=True).to(output.device)
        boxes = predicted_boxes(view, priors, grid, cell)
        obj = view[..., 7]
        lock = good_box_lock(boxes, targets.boxes.to(boxes), targets.valid.to(boxes.device), cfg.IoU_type,
                             self.limits.good_IoU_lim)
        display = associate(boxes, obj, targets, cfg, grid, cell, mode=cfg.error_type, lock=lock)
        disp_terms = self.terms(view, _Encoded(view, targets, display, priors, grid, cell),
                                natural=cfg.error_type == "natural")
        if training:
            assoc = associate(boxes, obj, targets, cfg, grid, cell, mode="train", iteration=iteration,
                              train_size=train_size, generator=generator, lock=lock)
            terms = self.terms(view, _Encoded(view, targets, assoc, priors, grid, cell), natural=False)
        else:
            assoc, terms = display, disp_terms
        delta = torch.zeros_like(view)
        for name, (sl, d, _) in terms.items():
            delta[..., sl] += d
        parts = {name: float(loss) for name, (_, _, loss) in disp_terms.items()}
        taken = display.taken
        monitors = {
            "iou_sum": float(display.iou[taken].sum()),
            "obj_sum": float(obj[taken].sum()),
            "nb_good": float((display.iou[taken] >= self.limits.good_IoU_lim).sum()),
            "nb_match": float(taken.sum()),
            "nb_targets": float(targets.valid.sum()),
        }
        return YoloLossOutput(delta=unview(delta, output.shape[2:]), total=sum(parts.values()), parts=parts,
                              monitors=monitors, association=assoc)

    __call__ = forward

    def terms(self, view: torch.Tensor, enc: _Encoded, natural: bool) -> dict:
        """All parts: name → (channel slice, delta (N, S, K, len), displayed loss scalar)."""
        return {"pos": self.position(view, enc), "size": self.size(view, enc),
                "prob": self.probability(view, enc, natural), "obj": self.objectness(view, enc, natural),
                "class": self.classes(view, enc, natural), "param": self.parameters(view, enc, natural)}

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _sigmoid_delta(o, t, weight, slope):
        """δ = s·w·o(1−o)(o−t) and loss ½·w(o−t)² (weights broadcast, 0 where masked)."""
        return slope * weight * o * (1 - o) * (o - t), 0.5 * weight * (o - t) ** 2

    def _dims_mask(self, view):
        d = torch.arange(3, device=view.device) < self.config.fit_dim
        return d

    # ------------------------------------------------------------------ parts
    def position(self, view, enc):
        """Centre offsets, channels 0–2: ``s₀·S₀·o(1−o)(o − t_pos)``."""
        o, fit, S, s = view[..., 0:3], self.fit.position, self.scales[0], self.sm.position.slope
        dims = self._dims_mask(view)
        if fit == 1:
            mask = enc.taken & ~enc.class_only & (enc.difficult < 3)
            w = S * (mask[..., None] & dims).float()
            d, l = self._sigmoid_delta(o, enc.pos, w, s)
        elif fit == 0:
            w = S * (enc.taken[..., None] & dims).float()
            d, l = self._sigmoid_delta(o, 0.5, w, s)
        else:
            d, l = torch.zeros_like(o), torch.zeros_like(o)
        return slice(0, 3), d, l.sum()

    def size(self, view, enc):
        """Log size ratios, channels 3–5: ``s₁·S₁·(o − t_size)``, ``t_size = clamp_log(ts/prior)``."""
        o, fit, S, sm = view[..., 3:6], self.fit.size, self.scales[1], self.sm.size
        dims = self._dims_mask(view)
        if fit == 1:
            mask = enc.taken & ~enc.class_only & (enc.difficult < 3)
            t = torch.log(enc.size_ratio.clamp(min=math.exp(sm.min), max=math.exp(sm.max)))
            w = S * (mask[..., None] & dims).float()
        elif fit == 0:
            t, w = 0.0, S * (enc.taken[..., None] & dims).float()
        else:
            return slice(3, 6), torch.zeros_like(o), o.new_zeros(())
        return slice(3, 6), sm.slope * w * (o - t), (0.5 * w * (o - t) ** 2).sum()

    def _presence(self, view, enc, natural, channel, p, lim, positive_target):
        o = view[..., channel]
        fit, S, s = getattr(self.fit, ("probability", "objectness")[p - 2]), self.scales[p], self.sm.part(p).slope
        if fit == -1:
            return slice(channel, channel + 1), torch.zeros_like(o)[..., None], o.new_zeros(())
        lam = torch.tensor(self.config.prior_noobj_prob, device=o.device)
        bg_t = 0.02 if fit == 1 else 0.5
        if fit == 1:
            pos = enc.taken & ((enc.iou > lim) | natural)
            t = torch.where(pos, positive_target, torch.full_like(o, bg_t))
        else:
            pos = enc.taken
            t = torch.full_like(o, 0.5)
        w = S * (pos.float() + enc.background.float() * lam)
        d, l = self._sigmoid_delta(o, t, w, s)
        return slice(channel, channel + 1), d[..., None], l.sum()

    def probability(self, view, enc, natural=False):
        """Probability, channel 6: target 0.98 (matched, IoU* > min_prob_IoU_lim), 0.02·λ_k background."""
        return self._presence(view, enc, natural, 6, 2, self.limits.min_prob_IoU_lim,
                              torch.full_like(view[..., 6], 0.98))

    def objectness(self, view, enc, natural=False):
        """Objectness, channel 7: target (1 + IoU*)/2 (matched, IoU* > min_obj_IoU_lim), 0.02·λ_k background."""
        return self._presence(view, enc, natural, 7, 3, self.limits.min_obj_IoU_lim, 0.5 * (1 + enc.iou))

    def classes(self, view, enc, natural=False):
        """Classes: sigmoid + MSE with 0.98/0.02 targets, or softmax + cross-entropy (``class_softmax``)."""
        nc = self.config.nb_class
        sl = slice(8, 8 + nc)
        o = view[..., sl]
        fit, S, s = self.fit.classes, self.scales[4], self.sm.classes.slope
        if fit == -1 or nc == 0 or (fit == 0 and self.config.class_softmax):
            return sl, torch.zeros_like(o), o.new_zeros(())
        if fit == 0:
            w = S * enc.taken[..., None].float()
            d, l = self._sigmoid_delta(o, 0.5, w, s)
            return sl, d, l.sum()
        mask = enc.taken & (((enc.iou > self.limits.min_class_IoU_lim) & (enc.difficult < 2)) | natural)
        if bool((enc.classes[enc.taken] >= nc).any()):
            raise ValueError(f"target class index ≥ nb_class = {nc} (CIANNA rows use 1-based classes 1..{nc})")
        onehot = torch.nn.functional.one_hot(enc.classes.clamp(max=nc - 1), nc).to(o.dtype)
        w = S * mask[..., None].float()
        if self.config.class_softmax:
            p_true = (o * onehot).sum(dim=-1).clamp(min=1e-7)
            return sl, w * (o - onehot), (S * mask.float() * -torch.log(p_true)).sum()
        d, l = self._sigmoid_delta(o, 0.02 + 0.96 * onehot, w, s)
        return sl, d, l.sum()

    def parameters(self, view, enc, natural=False):
        """Extra parameters: ``ind_k·s₅·S₅·(o − t_param)``."""
        nc, npar = self.config.nb_class, self.config.nb_param
        sl = slice(8 + nc, 8 + nc + npar)
        o = view[..., sl]
        fit, S, s = self.fit.parameters, self.scales[5], self.sm.parameters.slope
        if fit == -1 or npar == 0:
            return sl, torch.zeros_like(o), o.new_zeros(())
        ind = torch.tensor(self.config.param_ind_scales, device=o.device, dtype=o.dtype)
        if fit == 1:
            mask = enc.taken & (((enc.iou > self.limits.min_param_IoU_lim) & (enc.difficult < 2)) | natural)
            t = enc.params
        else:
            mask, t = enc.taken, 0.5
        w = S * ind * mask[..., None].float()
        return sl, s * w * (o - t), (0.5 * w * (o - t) ** 2).sum()
