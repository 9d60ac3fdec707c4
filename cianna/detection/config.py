"""YOLO-CIANNA configuration: nested dataclasses mirroring ``set_yolo_params`` (``yolo.md`` §2).

The groups of CIANNA's interface (error scales, slopes and maxes, IoU limits, fit parts) are nested
dataclasses with the same names. ``None`` in a group means "CIANNA default" (the IoU limits depend on
the IoU type, the class/param fit parts on ``nb_class``/``nb_param``); :meth:`YoloConfig.resolved`
returns the fully explicit values used by the association, loss and decoding code.

Example
-------
>>> cfg = YoloConfig(nb_box=2, nb_param=1, priors=[[6, 12], [6, 9]], IoU_type="DIoU")
>>> cfg.nb_channels
18
>>> cfg.iou_limits().good_IoU_lim
0.3
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace

import torch

__all__ = ["ErrorScales", "SlopeMaxMin", "SlopesAndMaxes", "IoULimits", "FitParts", "YoloConfig",
           "PARTS", "IOU_LIMIT_DEFAULTS"]

#: Loss/activation part names in CIANNA order (index p of ``yolo.md`` §3).
PARTS = ("position", "size", "probability", "objectness", "classes", "parameters")

#: Default IoU limits per IoU type (``yolo.md`` §7.1), in :class:`IoULimits` field order.
IOU_LIMIT_DEFAULTS = {
    "IoU": (0.5, 0.1, 0.0, 0.0, 0.2, 0.2, 0.5, 0.3),
    "GIoU": (0.4, -0.5, -1.0, -1.0, -0.3, -0.3, 0.4, 0.2),
    "DIoU": (0.3, -0.6, -1.0, -1.0, -0.5, -0.5, 0.3, 0.1),
    "DIoU2": (0.3, -0.5, -1.0, -1.0, -0.4, -0.4, 0.3, 0.1),
}


@dataclass
class ErrorScales:
    """Loss weights ``S_p`` per part (CIANNA ``set_error_scales``; defaults ``[2, 2, 1, 2, 1, 1]``)."""

    position: float = 2.0
    size: float = 2.0
    probability: float = 1.0
    objectness: float = 2.0
    classes: float = 1.0
    parameters: float = 1.0

    def as_tuple(self) -> tuple:
        return tuple(float(getattr(self, p)) for p in PARTS)


@dataclass
class SlopeMaxMin:
    """Activation slope ``s`` and output clamp ``[min, max]`` of one part (``yolo.md`` §4)."""

    slope: float = 1.0
    max: float = 6.0
    min: float = -6.0


def _sm(slope, mx, mn):
    return field(default_factory=lambda: SlopeMaxMin(slope, mx, mn))


@dataclass
class SlopesAndMaxes:
    """Per-part :class:`SlopeMaxMin` (CIANNA ``set_slopes_and_maxes``)."""

    position: SlopeMaxMin = _sm(1.0, 6.0, -6.0)
    size: SlopeMaxMin = _sm(1.0, 1.6, -1.6)
    probability: SlopeMaxMin = _sm(1.0, 6.0, -6.0)
    objectness: SlopeMaxMin = _sm(1.0, 6.0, -6.0)
    classes: SlopeMaxMin = _sm(1.0, 6.0, -6.0)
    parameters: SlopeMaxMin = _sm(1.0, 1.2, -0.2)

    def part(self, p: int) -> SlopeMaxMin:
        """Triplet of part index ``p`` (0 = position … 5 = parameters)."""
        return getattr(self, PARTS[p])


@dataclass
class IoULimits:
    """IoU thresholds (CIANNA ``set_IoU_limits``); ``None`` = default of the IoU type (§7.1)."""

    good_IoU_lim: float | None = None
    low_IoU_best_box_assoc: float | None = None
    min_prob_IoU_lim: float | None = None
    min_obj_IoU_lim: float | None = None
    min_class_IoU_lim: float | None = None
    min_param_IoU_lim: float | None = None
    diff_IoU_lim: float | None = None
    diff_obj_lim: float | None = None

    def resolved(self, iou_type: str) -> "IoULimits":
        """Copy with every ``None`` replaced by the default of ``iou_type``."""
        defaults = IOU_LIMIT_DEFAULTS[iou_type]
        return IoULimits(*[d if getattr(self, f.name) is None else float(getattr(self, f.name))
                           for f, d in zip(fields(self), defaults)])


@dataclass
class FitParts:
    """Per part: 1 fit the target, 0 fit a neutral value, −1 no loss; ``None`` = CIANNA default."""

    position: int | None = None
    size: int | None = None
    probability: int | None = None
    objectness: int | None = None
    classes: int | None = None
    parameters: int | None = None

    def resolved(self, nb_class: int, nb_param: int) -> "FitParts":
        """Copy with defaults filled: 1, except classes/parameters −1 when their count is 0."""
        out = {}
        for p in PARTS:
            v = getattr(self, p)
            if v is None:
                v = -1 if (p == "classes" and nb_class == 0) or (p == "parameters" and nb_param == 0) else 1
            out[p] = int(v)
        return FitParts(**out)

    def as_tuple(self) -> tuple:
        return tuple(getattr(self, p) for p in PARTS)


_IOU_ALIASES = {"IOU": "IoU", "GIOU": "GIoU", "DIOU": "DIoU", "DIOU2": "DIoU2"}
_DIST_ALIASES = {"IOU": "IoU", "SIZE": "SIZE", "OFFSET": "OFFSET"}


@dataclass
class YoloConfig:
    """Configuration of a YOLO-CIANNA output layer (``set_yolo_params``, ``yolo.md`` §2).

    Parameters
    ----------
    nb_box, nb_class, nb_param : int
        Boxes (priors) per grid cell, classes (0 allowed), extra regressed parameters.
    priors : list of list of float, shape (rows, nb_box)
        Prior sizes in **input pixels**, CIANNA layout: row 0 widths, row 1 heights, row 2 depths.
        Missing rows are 0; see :meth:`prior_tensor` for the clamped (training) and raw (decoding) forms.
    fit_dim : int, optional
        Fitted spatial dims (1–3); default = number of prior rows.
    prior_noobj_prob : list of float, shape (nb_box,), optional
        Per-prior background weight λ_noobj (default 0.2 each).
    error_scales, slopes_and_maxes, IoU_limits, fit_parts
        Nested groups, see their classes.
    param_ind_scales : list of float, shape (nb_param,), optional
        Extra per-parameter loss weights (default 1).
    IoU_type : {"IoU", "GIoU", "DIoU", "DIoU2"}
    prior_dist_type : {"IoU", "SIZE", "OFFSET"}
    strict_box_size : int
        0 off; k > 0 restricts a target to its k closest priors.
    rand_startup : int
        Images seen during which association is random (−1 → 64000).
    rand_prob_best_box_assoc, rand_prob : float
        Probabilities of the best-theoretical-prior and random associations.
    min_prior_forced_scaling : float
        Targets smaller than this × the smallest prior (all dims) use the smallest prior (0 = off).
    class_softmax, diff_flag, raw_output : bool
    error_type : {"natural", "complete"}
        Display-loss mode (``yolo.md`` §10).
    max_nb_obj_per_image : int
        Maximum targets per image (target row length check when > 0).
    compat_prior_index_quirk, compat_zero_distance_quirk : bool
        Reproduce V-1.0 quirks 9 and 10 of ``framework.md`` §10 (default: fixed).
    """

    nb_box: int = 1
    nb_class: int = 0
    nb_param: int = 0
    priors: list = field(default_factory=list)
    fit_dim: int | None = None
    prior_noobj_prob: list | None = None
    error_scales: ErrorScales = field(default_factory=ErrorScales)
    slopes_and_maxes: SlopesAndMaxes = field(default_factory=SlopesAndMaxes)
    param_ind_scales: list | None = None
    IoU_limits: IoULimits = field(default_factory=IoULimits)
    fit_parts: FitParts = field(default_factory=FitParts)
    IoU_type: str = "GIoU"
    prior_dist_type: str = "SIZE"
    strict_box_size: int = 0
    rand_startup: int = 64000
    rand_prob_best_box_assoc: float = 0.0
    rand_prob: float = 0.0
    min_prior_forced_scaling: float = 0.0
    class_softmax: bool = False
    diff_flag: bool = False
    error_type: str = "natural"
    raw_output: bool = False
    max_nb_obj_per_image: int = 0
    compat_prior_index_quirk: bool = False
    compat_zero_distance_quirk: bool = False

    def __post_init__(self):
        for name, cls in (("error_scales", ErrorScales), ("slopes_and_maxes", SlopesAndMaxes),
                          ("IoU_limits", IoULimits), ("fit_parts", FitParts)):
            value = getattr(self, name)
            if isinstance(value, dict):
                if cls is SlopesAndMaxes:
                    value = SlopesAndMaxes(**{k: v if isinstance(v, SlopeMaxMin) else SlopeMaxMin(**v)
                                              for k, v in value.items()})
                else:
                    value = cls(**value)
                setattr(self, name, value)
            elif not isinstance(value, cls):
                raise TypeError(f"{name} must be a {cls.__name__} or a dict, got {type(value).__name__}")
        if hasattr(self.priors, "tolist"):
            self.priors = self.priors.tolist()
        self.priors = [[float(v) for v in row] for row in self.priors]
        self.IoU_type = _IOU_ALIASES.get(str(self.IoU_type).upper(), self.IoU_type)
        self.prior_dist_type = _DIST_ALIASES.get(str(self.prior_dist_type).upper(), self.prior_dist_type)
        if self.rand_startup == -1:
            self.rand_startup = 64000
        if self.fit_dim is None:
            self.fit_dim = max(len(self.priors), 1)
        if self.prior_noobj_prob is None:
            self.prior_noobj_prob = [0.2] * int(self.nb_box)
        if self.param_ind_scales is None:
            self.param_ind_scales = [1.0] * int(self.nb_param)
        self.prior_noobj_prob = [float(v) for v in list(self.prior_noobj_prob)]
        self.param_ind_scales = [float(v) for v in list(self.param_ind_scales)]
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent parameter."""
        def bad(name, msg):
            raise ValueError(f"YoloConfig.{name}: {msg}")

        for name in ("nb_box", "nb_class", "nb_param", "strict_box_size", "max_nb_obj_per_image"):
            v = getattr(self, name)
            if int(v) != v or v < (1 if name == "nb_box" else 0):
                bad(name, f"must be an integer ≥ {1 if name == 'nb_box' else 0}, got {v!r}")
        if self.fit_dim not in (1, 2, 3):
            bad("fit_dim", f"must be 1, 2 or 3, got {self.fit_dim!r}")
        rows = len(self.priors)
        if rows == 0 or rows > 3:
            bad("priors", f"needs 1 to 3 rows (widths, heights, depths) of nb_box values, got {rows} rows")
        if self.fit_dim > rows:
            bad("fit_dim", f"= {self.fit_dim} exceeds the {rows} prior row(s) given")
        for i, row in enumerate(self.priors):
            if len(row) != self.nb_box:
                bad("priors", f"row {i} has {len(row)} values, expected nb_box = {self.nb_box} "
                              "(CIANNA layout: one row per dimension)")
            if any(v < 0 for v in row):
                bad("priors", "prior sizes must be ≥ 0 pixels")
        if len(self.prior_noobj_prob) != self.nb_box:
            bad("prior_noobj_prob", f"has {len(self.prior_noobj_prob)} values, expected nb_box = {self.nb_box}")
        if len(self.param_ind_scales) != self.nb_param:
            bad("param_ind_scales", f"has {len(self.param_ind_scales)} values, expected nb_param = {self.nb_param}")
        if self.IoU_type not in IOU_LIMIT_DEFAULTS:
            bad("IoU_type", f"must be one of {tuple(IOU_LIMIT_DEFAULTS)}, got {self.IoU_type!r}")
        if self.prior_dist_type not in ("IoU", "SIZE", "OFFSET"):
            bad("prior_dist_type", f"must be 'IoU', 'SIZE' or 'OFFSET', got {self.prior_dist_type!r}")
        if self.error_type not in ("natural", "complete"):
            bad("error_type", f"must be 'natural' or 'complete', got {self.error_type!r}")
        for name in ("rand_prob_best_box_assoc", "rand_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, f"is a probability, got {getattr(self, name)!r}")
        if self.min_prior_forced_scaling < 0:
            bad("min_prior_forced_scaling", "must be ≥ 0 (0 = off)")
        for p in PARTS:
            sm = getattr(self.slopes_and_maxes, p)
            if sm.slope <= 0:
                bad(f"slopes_and_maxes.{p}.slope", f"must be > 0, got {sm.slope}")
            if sm.max <= sm.min:
                bad(f"slopes_and_maxes.{p}", f"max ({sm.max}) must exceed min ({sm.min})")
            if getattr(self.error_scales, p) < 0:
                bad(f"error_scales.{p}", "must be ≥ 0 (use fit_parts=-1 to disable a part)")
            fp = getattr(self.fit_parts, p)
            if fp is not None and fp not in (-1, 0, 1):
                bad(f"fit_parts.{p}", f"must be 1, 0 or -1, got {fp!r}")
        if self.fit_parts.classes not in (None, -1) and self.nb_class == 0:
            bad("fit_parts.classes", "cannot fit classes with nb_class = 0")
        if self.fit_parts.parameters not in (None, -1) and self.nb_param == 0:
            bad("fit_parts.parameters", "cannot fit parameters with nb_param = 0")

    # ------------------------------------------------------------------ derived values
    @property
    def box_stride(self) -> int:
        """Channels per box, ``8 + nb_class + nb_param``."""
        return 8 + self.nb_class + self.nb_param

    @property
    def nb_channels(self) -> int:
        """Filters of the YOLO conv, ``nb_box·(8 + nb_class + nb_param)``."""
        return self.nb_box * self.box_stride

    @property
    def target_stride(self) -> int:
        """Values per object in a CIANNA target row, ``7 + nb_param + diff_flag``."""
        return 7 + self.nb_param + int(bool(self.diff_flag))

    def prior_tensor(self, clamped: bool = True, dtype=torch.float32) -> torch.Tensor:
        """Priors as ``(nb_box, 3)`` pixels; missing dims 0, clamped ≥ 1 when ``clamped`` (training)."""
        p = torch.zeros(self.nb_box, 3, dtype=dtype)
        for d, row in enumerate(self.priors[:3]):
            p[:, d] = torch.tensor(row, dtype=dtype)
        return p.clamp(min=1.0) if clamped else p

    def iou_limits(self) -> IoULimits:
        """IoU limits with the IoU-type defaults filled in."""
        return self.IoU_limits.resolved(self.IoU_type)

    def resolved_fit_parts(self) -> FitParts:
        """Fit parts with the count-dependent defaults filled in."""
        return self.fit_parts.resolved(self.nb_class, self.nb_param)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (nested groups as dicts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "YoloConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown YoloConfig key(s): {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "YoloConfig":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_cianna(cls, *, nb_box: int = 0, nb_class: int = 0, nb_param: int = 0, prior_size=None,
                    prior_noobj_prob=None, error_scales=None, slopes_and_maxes=None, param_ind_scales=None,
                    IoU_limits=None, fit_parts=None, fit_dim: int = 0, rand_startup: int = -1,
                    **kwargs) -> "YoloConfig":
        """Build from CIANNA ``set_yolo_params`` keywords with its "keep default" sentinels.

        Arrays as CIANNA: ``prior_size`` (rows, nb_box); ``error_scales`` (6,) (≤ 0 keeps the default);
        ``slopes_and_maxes`` (6, 3) rows ``[slope, max, min]`` (slope ≤ 0, max ≥ 1e5, min ≤ −1e5 keep
        the default); ``IoU_limits`` (8,) (≤ −1.99 keeps the default); ``fit_parts`` (6,) (≤ −2 keeps
        the default). ``fit_dim = 0`` means "rows of ``prior_size``"; ``rand_startup = −1`` → 64000.
        Other keywords (``IoU_type``, ``strict_box_size``, ``class_softmax``, …) are passed through.
        """
        import numpy as np

        priors = np.zeros((1, nb_box)) if prior_size is None else np.asarray(prior_size, dtype=np.float64)
        if priors.ndim == 1:
            priors = priors[None, :]
        es = ErrorScales()
        if error_scales is not None:
            es = ErrorScales(*[float(v) if v > 0 else d for v, d in zip(np.asarray(error_scales, float), es.as_tuple())])
        sm = SlopesAndMaxes()
        if slopes_and_maxes is not None:
            arr = np.asarray(slopes_and_maxes, dtype=np.float64).reshape(6, 3)
            parts = {}
            for p, (slope, mx, mn) in zip(PARTS, arr):
                d = getattr(sm, p)
                parts[p] = SlopeMaxMin(float(slope) if slope > 0 else d.slope, float(mx) if mx < 1e5 else d.max,
                                       float(mn) if mn > -1e5 else d.min)
            sm = SlopesAndMaxes(**parts)
        lims = IoULimits()
        if IoU_limits is not None:
            lims = IoULimits(*[float(v) if v > -1.99 else None for v in np.asarray(IoU_limits, float)])
        fp = FitParts()
        if fit_parts is not None:
            fp = FitParts(*[int(v) if v > -2 else None for v in np.asarray(fit_parts).astype(int)])
        return cls(nb_box=nb_box, nb_class=nb_class, nb_param=nb_param, priors=priors.tolist(),
                   fit_dim=fit_dim or None, prior_noobj_prob=None if prior_noobj_prob is None
                   else list(np.asarray(prior_noobj_prob, float)), error_scales=es, slopes_and_maxes=sm,
                   param_ind_scales=None if param_ind_scales is None else list(np.asarray(param_ind_scales, float)),
                   IoU_limits=lims, fit_parts=fp, rand_startup=rand_startup, **kwargs)

    def replace(self, **changes) -> "YoloConfig":
        """Validated copy with some fields changed."""
        return replace(self, **changes)
