"""CIANNA dense (fully connected) layer with the constant-input bias (``framework.md`` §4.3)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cianna.nn.layer import BiasInput, Layer

__all__ = ["Dense"]


class Dense(BiasInput, Layer):
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
        self._init_bias_input(bias_value)
        self.weight = nn.Parameter(torch.zeros(self.out_features, self.in_features))
        self.bias_weight = nn.Parameter(torch.zeros(self.out_features))

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
        if x.dim() != 2:
            x = x.reshape(x.shape[0], -1)
        return F.linear(x, self.weight, self.bias_term())

    def config(self) -> dict:
        return {"out_features": self.out_features, "bias_value": self.bias_value, **self._common_config()}
