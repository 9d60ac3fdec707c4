"""CIANNA activations and the output losses they imply.

CIANNA attaches an activation to every layer; the activation of the *last* layer also fixes the loss
(``framework.md`` §4.4, §5.1). Every activation here is an :class:`Activation` module that

* maps a pre-activation tensor to its output (``forward``),
* writes itself back as a CIANNA activation string (``to_string``), and
* computes the output loss when it is the last layer (``loss``).

Losses follow CIANNA's conventions: the loss of one example is a **sum over all its outputs**, and the
batch loss is that sum over examples divided by ``norm`` (the nominal batch size).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "Activation", "Linear", "Relu", "Logistic", "Softmax", "LossResult",
    "parse_activation", "register_activation", "ACTIVATION_DEFAULT_BIAS",
]

#: Default constant bias input of a layer, by activation name (``framework.md`` §2.4).
ACTIVATION_DEFAULT_BIAS = {"LIN": 0.5, "RELU": 0.1, "LOGI": -1.0, "SMAX": 0.1, "YOLO": 0.5}


@dataclass
class LossResult:
    """Output loss of one batch.

    Attributes
    ----------
    loss : torch.Tensor
        Scalar to back-propagate. Its *value* is the displayed loss (sum over outputs, summed over the
        batch, divided by ``norm``); its *gradient* is CIANNA's output delta divided by ``norm``.
    total : float
        Summed (not normalised) display loss over the examples of the batch.
    parts : dict of str to float
        Optional named loss parts, summed over the batch (YOLO: pos, size, prob, obj, class, param).
    monitors : dict of str to float
        Optional monitors (YOLO: IoU sum, objectness sum, number of good matches, number of targets).
    """

    loss: torch.Tensor
    total: float
    parts: dict = field(default_factory=dict)
    monitors: dict = field(default_factory=dict)


def surrogate(value: torch.Tensor, preact: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Scalar whose value is ``value`` and whose gradient w.r.t. ``preact`` is ``delta``.

    Used where CIANNA defines the output delta directly instead of through a differentiable loss
    (softmax cross-entropy with clamped log, YOLO with gradients that ignore clamps).
    """
    lin = (preact * delta.detach()).sum()
    return value.detach() + lin - lin.detach()


class Activation(nn.Module):
    """Base class of CIANNA activations.

    Subclasses implement :meth:`forward` (shape-preserving, any shape ``(N, ...)``) and
    :meth:`to_string`. The default :meth:`loss` is CIANNA's ``½(o−t)²`` summed over outputs.
    """

    #: CIANNA name prefix ("LIN", "RELU", "LOGI", "SMAX", "YOLO").
    name = "LIN"
    #: True when the activation may only be used on the output layer.
    output_only = False
    #: True when :meth:`forward_inplace` overwrites its input instead of allocating (inference only).
    supports_inplace = False

    def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        """Like ``forward`` but may overwrite ``x`` (used without autograd on fresh pre-activations)."""
        return self.forward(x)

    def to_string(self) -> str:  # pragma: no cover - overridden
        """Return the CIANNA activation string (e.g. ``"RELU_S800.00_L0.05"``)."""
        return self.name

    def config(self) -> dict:
        """JSON-serialisable description; ``parse_activation(config)`` rebuilds the activation."""
        return {"string": self.to_string()}

    @property
    def default_bias(self) -> float:
        """Default constant bias input of a layer carrying this activation."""
        return ACTIVATION_DEFAULT_BIAS[self.name]

    def loss(self, preact: torch.Tensor, output: torch.Tensor, target: torch.Tensor, *,
             norm: float, context: dict | None = None) -> LossResult:
        """Sum-of-squares output loss ``½ Σ (o − t)²`` (LIN, RELU and LOGI outputs).

        Parameters
        ----------
        preact, output : torch.Tensor, shape (N, ...)
            Pre-activation and activated output of the last layer.
        target : torch.Tensor, shape (N, ...) or (N, F)
            Targets; reshaped to the output shape.
        norm : float
            Divisor of the summed loss (CIANNA: the nominal batch size, even for a partial batch).
        context : dict, optional
            Training context (unused here; see the YOLO activation).
        """
        target = target.reshape(output.shape).to(output.dtype)
        total = 0.5 * ((output.float() - target.float()) ** 2).sum()
        return LossResult(loss=total / norm, total=float(total.detach()))


class Linear(Activation):
    """Identity activation (CIANNA ``LIN``)."""

    name = "LIN"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def to_string(self) -> str:
        return "LIN"


class Relu(Activation):
    """CIANNA saturated leaky ReLU (``RELU``).

    ``y = L·x`` for ``x ≤ 0``; ``y = x`` for ``0 < x ≤ S``; ``y = S + (x − S)·L`` for ``x > S``;
    derivative ``L`` where ``y ≤ 0`` or ``y > S``, else 1 (CUDA behaviour of CIANNA).

    Parameters
    ----------
    saturation : float, default 800
        Soft saturation level ``S``.
    leaking : float, default 0.05
        Leak factor ``L`` (CIANNA's RELU is leaky by default; ``leaking=0`` gives a true ReLU).
    """

    name = "RELU"

    def __init__(self, saturation: float = 800.0, leaking: float = 0.05):
        super().__init__()
        self.saturation = float(saturation)
        self.leaking = float(leaking)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            # on accelerators avoid the host sync of the saturation test: y = min(leaky(x), S + L·(x − S)) is
            # exact (the second branch is below the first only above S) and autograd gives L there
            y = nn.functional.leaky_relu(x, self.leaking)
            if not math.isfinite(self.saturation):
                return y
            return torch.minimum(y, self.saturation * (1.0 - self.leaking) + self.leaking * x)
        # on the CPU a host-side test is cheap: one fused leaky_relu (native autograd: derivative 1 where
        # x > 0, L elsewhere), plus the saturated branch only when some value exceeds S (autograd gives L there).
        y = nn.functional.leaky_relu(x, self.leaking)
        if self._saturates(y):
            y = torch.where(x > self.saturation, self.saturation + (x - self.saturation) * self.leaking, y)
        return y

    supports_inplace = True

    def _saturates(self, y: torch.Tensor) -> bool:
        """True when some output exceeds the (finite) saturation: the host-side test of the CPU paths."""
        return bool(math.isfinite(self.saturation) and y.numel() and y.amax().item() > self.saturation)

    def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        """In-place variant for inference (no autograd): ``x`` is overwritten with the output (CPU; on
        accelerators the branch-free :meth:`forward`, which needs no host synchronisation)."""
        if x.device.type != "cpu":
            return self.forward(x)
        y = nn.functional.leaky_relu_(x, self.leaking)
        if self._saturates(y):
            over = y > self.saturation  # y = x there
            y[over] = self.saturation + (y[over] - self.saturation) * self.leaking
        return y

    def to_string(self) -> str:
        return f"RELU_S{self.saturation:.2f}_L{self.leaking:.2f}"


class _StraightThroughClampSigmoid(torch.autograd.Function):
    """σ(β·x) with β·x lower-clamped at −S, whose derivative ignores the clamp (``β·y·(1−y)``)."""

    @staticmethod
    def forward(ctx, x, beta, saturation):
        y = torch.sigmoid(torch.clamp(beta * x, min=-saturation))
        ctx.save_for_backward(y)
        ctx.beta = beta
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * ctx.beta * y * (1.0 - y), None, None


class Logistic(Activation):
    """CIANNA clamped logistic (``LOGI``): ``y = 1 / (1 + exp(min(−β·x, S)))``.

    The backward pass uses ``β·y·(1−y)`` everywhere, including the clamped region, as CIANNA does
    (``framework.md`` §10 quirk 19, reproduced).

    Parameters
    ----------
    saturation : float, default 6
        Clamp ``S`` of ``−β·x`` (the output never goes below ``σ(−S)``).
    beta : float, default 1
        Steepness ``β``.
    """

    name = "LOGI"

    def __init__(self, saturation: float = 6.0, beta: float = 1.0):
        super().__init__()
        self.saturation = float(saturation)
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _StraightThroughClampSigmoid.apply(x, self.beta, self.saturation)

    def to_string(self) -> str:
        return f"LOGI_S{self.saturation:.2f}_B{self.beta:.2f}"


class Softmax(Activation):
    """CIANNA softmax (``SMAX``), output layer only.

    On a dense output ``(N, F)`` it normalises each row; on a convolutional output ``(N, C, *spatial)`` it
    normalises over **all channels and positions of an example** (``framework.md`` §4.4).
    The loss is ``−Σ t·log(max(o, 1e−6))`` with delta ``o − t``.
    """

    name = "SMAX"
    output_only = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return torch.softmax(x, dim=1)
        return torch.softmax(x.flatten(1), dim=1).reshape(x.shape)

    def to_string(self) -> str:
        return "SMAX"

    def loss(self, preact, output, target, *, norm, context=None):
        target = target.reshape(output.shape).to(output.dtype)
        loss, total = _SoftmaxCrossEntropy.apply(preact, output.detach(), target, float(norm))
        return LossResult(loss=loss, total=float(total))


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """CIANNA's softmax loss in one autograd node: value ``−Σ t·log(max(o, 1e−6)) / norm``, gradient w.r.t.
    the pre-activation ``(o − t) / norm`` (second output: the un-normalised sum, not differentiable)."""

    @staticmethod
    def forward(ctx, preact, output, target, norm):
        total = -(target * torch.log(output.clamp_min(1e-6))).sum()
        ctx.save_for_backward((output - target).div_(norm))
        ctx.mark_non_differentiable(total)
        return total / norm, total

    @staticmethod
    def backward(ctx, grad, _grad_total):
        (delta,) = ctx.saved_tensors
        return delta * grad, None, None, None


_REGISTRY: dict[str, type] = {"LIN": Linear, "RELU": Relu, "LOGI": Logistic, "SMAX": Softmax}
_LAZY = {"YOLO": ("cianna.detection.yolo_activation", "YoloActivation")}


def register_activation(name: str, cls: type) -> None:
    """Register an :class:`Activation` subclass under a CIANNA name prefix."""
    _REGISTRY[name.upper()] = cls


def _lookup(name: str) -> type:
    if name not in _REGISTRY and name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        _REGISTRY[name] = getattr(importlib.import_module(module), attr)
    return _REGISTRY[name]


_PARAM_RE = re.compile(r"_([A-Z])(-?[0-9.eE+-]+)")


def parse_activation(spec, **kwargs) -> Activation:
    """Build an activation from a CIANNA string, a config dict or an :class:`Activation`.

    Accepted strings are CIANNA's (``"RELU"``, ``"RELU_S800.00_L0.05"``, ``"LOGI_S6.00_B1.00"``,
    ``"LIN"``, ``"SMAX"``, ``"YOLO"``) and the long aliases ``"LINEAR"``, ``"LOGISTIC"``, ``"SOFTMAX"``
    (case-insensitive). Unlike CIANNA V-1.0, an unknown name raises instead of silently becoming linear.

    Parameters
    ----------
    spec : str, dict or Activation
        What to build.
    **kwargs
        Extra constructor arguments (e.g. the YOLO configuration).

    Raises
    ------
    ValueError
        If the name is unknown or a sub-parameter does not parse.
    """
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, dict):
        spec = dict(spec)
        string = spec.pop("string")
        return parse_activation(string, **spec, **kwargs)
    if not isinstance(spec, str):
        raise TypeError(f"activation must be a string, dict or Activation, got {type(spec).__name__}")
    text = spec.strip().upper()
    aliases = {"LINEAR": "LIN", "LOGISTIC": "LOGI", "SOFTMAX": "SMAX", "SIGMOID": "LOGI"}
    head = text.split("_", 1)[0]
    head = aliases.get(head, head)
    if head not in _REGISTRY and head not in _LAZY:
        known = ", ".join(sorted(set(_REGISTRY) | set(_LAZY)))
        raise ValueError(f"unknown activation {spec!r}: expected one of {known} "
                         "(optionally with CIANNA sub-parameters such as 'RELU_S800_L0.05')")
    cls = _lookup(head)
    params = {}
    rest = text[len(text.split("_", 1)[0]):]
    for letter, value in _PARAM_RE.findall(rest):
        try:
            params[letter] = float(value)
        except ValueError:
            raise ValueError(f"cannot parse parameter {letter}{value!r} in activation {spec!r}") from None
    if head == "RELU":
        kwargs.setdefault("saturation", params.get("S", 800.0))
        kwargs.setdefault("leaking", params.get("L", 0.05))
    elif head == "LOGI":
        kwargs.setdefault("saturation", params.get("S", 6.0))
        kwargs.setdefault("beta", params.get("B", 1.0))
    return cls(**kwargs)
