"""Base class shared by every CIANNA layer: shape bookkeeping, dropout and activation.

A CIANNA layer computes a linear (or pooling / normalising) operation, then applies dropout to the
**pre-activation** output, then its activation (``framework.md`` §4.7). Dropout is CIANNA's
non-inverted kind: kept values are not rescaled in training, and inference either scales by ``1 − p``
(``AVG_MODEL``) or draws random masks (``MC_MODEL``, Monte-Carlo dropout).
"""
from __future__ import annotations

import torch
from torch import nn

from cianna.nn.activations import Activation, parse_activation

__all__ = ["Layer", "BiasInput", "DROP_MODES", "as_tuple"]

#: inference drop modes: weight scaling or Monte-Carlo sampling
DROP_MODES = ("AVG_MODEL", "MC_MODEL")


def as_tuple(value, ndim: int, name: str, *, minimum: int = 0) -> tuple:
    """Expand an int or sequence into a tuple of ``ndim`` ints (torch spatial order ``(D, H, W)``).

    Raises
    ------
    ValueError
        If the length does not match ``ndim`` or a value is below ``minimum``.
    """
    if isinstance(value, int):
        out = (value,) * ndim
    else:
        out = tuple(int(v) for v in value)
        if len(out) != ndim:
            raise ValueError(f"{name}={tuple(value)} has {len(out)} entries; the data are {ndim}-D "
                             f"so {ndim} entries (torch order D, H, W) are expected")
    if any(v < minimum for v in out):
        raise ValueError(f"{name}={out} must be >= {minimum} in every dimension")
    return out


class Layer(nn.Module):
    """A network layer with CIANNA semantics.

    Parameters
    ----------
    in_shape : tuple of int
        Input shape of one example: ``(C, *spatial)`` for spatial layers, ``(F,)`` for dense input.
    activation : str, dict or Activation
        CIANNA activation (``"RELU"``, ``"LOGI_S6_B1"``, ...).
    drop_rate : float
        Dropout probability (active when ``> 0.01``, as in CIANNA).
    """

    kind = "layer"

    def __init__(self, in_shape, activation="LIN", drop_rate: float = 0.0):
        super().__init__()
        self.in_shape = tuple(int(s) for s in in_shape)
        self.activation: Activation = parse_activation(activation)
        if not 0.0 <= float(drop_rate) < 1.0:
            raise ValueError(f"drop_rate={drop_rate} must be in [0, 1)")
        self.drop_rate = float(drop_rate)
        self.frozen = False
        # set by the owning Network: where dropout masks come from and which inference mode applies
        self.drop_mode = "AVG_MODEL"
        self._generator_fn = None

    # -- to implement -------------------------------------------------------------------------------
    @property
    def out_shape(self) -> tuple:
        """Output shape of one example."""
        raise NotImplementedError

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation output (before dropout)."""
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-serialisable constructor arguments (without ``in_shape``)."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------
    @property
    def has_dropout(self) -> bool:
        """True when this layer applies dropout (CIANNA: ``drop_rate > 0.01``)."""
        return self.drop_rate > 0.01

    def dropout(self, pre: torch.Tensor) -> torch.Tensor:
        """Apply CIANNA's non-inverted dropout to a pre-activation tensor."""
        if not self.has_dropout:
            return pre
        keep = 1.0 - self.drop_rate
        if self.training or self.drop_mode == "MC_MODEL":
            gen = self._generator_fn(pre.device) if self._generator_fn is not None else None
            mask = torch.empty_like(pre).bernoulli_(keep, generator=gen)
            return pre * mask
        return pre * self._keep_tensor(pre)

    def _keep_tensor(self, like: torch.Tensor) -> torch.Tensor:
        """Cached 0-dim ``1 − p`` on the device/dtype of ``like`` (avoids a scalar copy per call)."""
        rate, cached = getattr(self, "_keep_cache", (None, None))
        if cached is None or rate != self.drop_rate or cached.device != like.device or cached.dtype != like.dtype:
            cached = torch.tensor(1.0 - self.drop_rate, device=like.device, dtype=like.dtype)
            self._keep_cache = (self.drop_rate, cached)
        return cached

    def forward(self, x: torch.Tensor, return_preact: bool = False):
        """Linear op, dropout, activation.

        Parameters
        ----------
        x : torch.Tensor, shape (N, *in_shape)
        return_preact : bool
            Also return the pre-activation (after dropout), needed by output losses.
        """
        pre = self.dropout(self.linear(x))
        act = self.activation
        if return_preact:
            return pre, act(pre)
        if (act.supports_inplace and not torch.is_grad_enabled() and not act._forward_hooks
                and pre.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()):
            return act.forward_inplace(pre)  # inference: the fresh pre-activation is not needed afterwards
        return act(pre)

    def extra_repr(self) -> str:
        drop = f", drop_rate={self.drop_rate}" if self.has_dropout else ""
        return f"in={self.in_shape}, out={self.out_shape}, act={self.activation.to_string()}{drop}"

    def _common_config(self) -> dict:
        return {"activation": self.activation.config(), "drop_rate": self.drop_rate}


class BiasInput:
    """CIANNA's bias-as-input for conv and dense layers (``framework.md`` §4.3).

    The effective bias of output ``o`` is ``bias_weight[o] · bias_value · bias_input_scale``; the constant is
    also kept as a non-persistent 0-dim buffer so the forward multiplies two tensors (no scalar-to-tensor
    copy per call). ``bias_input_scale`` is 1, or 0 where CIANNA V-1.0 feeds a zeroed dense pivot.
    Call :meth:`_init_bias_input` from ``__init__`` (after ``nn.Module.__init__``).
    """

    def _init_bias_input(self, bias_value: float) -> None:
        self.register_buffer("_bias_scale", torch.tensor(float(bias_value)), persistent=False)
        self._bias_value = float(bias_value)
        self._bias_input_scale = 1.0

    def _refresh_bias_scale(self) -> None:
        self._bias_scale.fill_(self._bias_value * self._bias_input_scale)

    @property
    def bias_value(self) -> float:
        """Constant bias input of the layer."""
        return self._bias_value

    @bias_value.setter
    def bias_value(self, value: float) -> None:
        self._bias_value = float(value)
        self._refresh_bias_scale()

    @property
    def bias_input_scale(self) -> float:
        """1, or 0 when CIANNA V-1.0 would feed this layer a zeroed pivot (``dense_pivot_zeroing``)."""
        return self._bias_input_scale

    @bias_input_scale.setter
    def bias_input_scale(self, value: float) -> None:
        self._bias_input_scale = float(value)
        self._refresh_bias_scale()

    def bias_term(self):
        """Effective bias tensor, shape (out,), or None when the bias input is 0."""
        scale = self._bias_value * self._bias_input_scale
        if scale == 0.0:
            return None
        b = self.bias_weight
        if torch.is_grad_enabled():
            return b * self._bias_scale
        # inference: reuse the product until the bias weights change
        key = (b._version, b.data_ptr(), b.device, scale)
        cached = self.__dict__.get("_bias_cache")
        if cached is None or cached[0] != key:
            cached = (key, b.detach() * self._bias_scale)
            self.__dict__["_bias_cache"] = cached
        return cached[1]
