"""CIANNA dense (fully connected) layer with the constant-input bias (``framework.md`` §4.3)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cianna.nn.layer import Layer

__all__ = ["Dense"]


class Dense(Layer):
    """Fully connected layer; inputs of any shape are flattened per example (PyTorch ``flatten(1)``).

    Parameters
    ----------
    in_shape : tuple of int
        Shape of one input example (flattened to ``F_in`` features).
    out_features : int
        Number of neurons.
    activation : str, dict or Activation, default "RELU"
    bias_value : float
        Constant bias input; effective bias = ``bias_weight·bias_value·bias_input_scale``.
    drop_rate : float, default 0

    Notes
    -----
    ``bias_input_scale`` is 1 normally. CIANNA V-1.0 writes 0 into the bias "pivot" of a non-linear dense
    output, so a dense layer that follows a dense layer with RELU/LOGI/SMAX activation has **no bias**
    there (quirk 1). The owning :class:`~cianna.nn.network.Network` sets ``bias_input_scale = 0`` for such
    layers when its ``dense_pivot_zeroing`` compatibility switch is on (``cianna.compat`` turns it on).
    """

    kind = "dense"

    def __init__(self, in_shape, out_features: int, activation="RELU", bias_value: float = 0.1,
                 drop_rate: float = 0.0):
        super().__init__(in_shape, activation, drop_rate)
        if int(out_features) < 1:
            raise ValueError(f"out_features={out_features} must be >= 1")
        self.out_features = int(out_features)
        self.in_features = int(math.prod(self.in_shape))
        self.register_buffer("_bias_scale", torch.tensor(float(bias_value)), persistent=False)
        self._bias_value = float(bias_value)
        self._bias_input_scale = 1.0
        self.weight = nn.Parameter(torch.zeros(self.out_features, self.in_features))
        self.bias_weight = nn.Parameter(torch.zeros(self.out_features))

    @property
    def bias_value(self) -> float:
        """Constant bias input of the layer."""
        return self._bias_value

    @bias_value.setter
    def bias_value(self, value: float) -> None:
        self._bias_value = float(value)
        self._bias_scale.fill_(self._bias_value * self._bias_input_scale)

    @property
    def bias_input_scale(self) -> float:
        """1, or 0 when CIANNA V-1.0 would feed this layer a zeroed pivot (``dense_pivot_zeroing``)."""
        return self._bias_input_scale

    @bias_input_scale.setter
    def bias_input_scale(self, value: float) -> None:
        self._bias_input_scale = float(value)
        self._bias_scale.fill_(self._bias_value * self._bias_input_scale)

    @property
    def fan_in(self) -> int:
        """CIANNA fan-in ``F_in + 1`` (bias input included)."""
        return self.in_features + 1

    @property
    def fan_out(self) -> int:
        return self.out_features

    @property
    def out_shape(self) -> tuple:
        return (self.out_features,)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b`` on ``x`` flattened to (N, F_in)."""
        x = x.reshape(x.shape[0], -1)
        if self._bias_value * self._bias_input_scale == 0.0:
            return F.linear(x, self.weight)
        return F.linear(x, self.weight, self.bias_weight * self._bias_scale)

    def config(self) -> dict:
        return {"out_features": self.out_features, "bias_value": self.bias_value, **self._common_config()}
