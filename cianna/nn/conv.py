"""N-dimensional CIANNA convolution (``framework.md`` §4.1).

Cross-correlation with stride, zero padding and *internal padding* (``int_padding``: zeros inserted
between input pixels, which turns the layer into a transposed / fractionally strided convolution used for
up-sampling). The bias is CIANNA's constant-input bias: a learned weight per filter multiplied by the
layer's ``bias_value`` (``framework.md`` §4.3).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cianna.nn.layer import BiasInput, Layer, as_tuple

__all__ = ["Conv", "insert_zeros", "conv_output_size"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv_output_size(size: int, kernel: int, stride: int, padding: int, int_padding: int) -> int:
    """CIANNA output size of one dimension: ``(size + (size−1)·int_pad + 2·pad − k) // stride + 1``."""
    return (size + (size - 1) * int_padding + 2 * padding - kernel) // stride + 1


def insert_zeros(x: torch.Tensor, int_padding: tuple) -> torch.Tensor:
    """Insert ``int_padding[d]`` zeros between consecutive pixels along each spatial dimension.

    Parameters
    ----------
    x : torch.Tensor, shape (N, C, *spatial)
    int_padding : tuple of int, one per spatial dimension

    Returns
    -------
    torch.Tensor, shape (N, C, *[(s − 1)·(p + 1) + 1 for s, p in zip(spatial, int_padding)])
    """
    if not any(int_padding):
        return x
    spatial = x.shape[2:]
    new = [(s - 1) * (p + 1) + 1 for s, p in zip(spatial, int_padding)]
    out = x.new_zeros((*x.shape[:2], *new))
    index = (slice(None), slice(None)) + tuple(slice(None, None, p + 1) for p in int_padding)
    out[index] = x
    return out


class Conv(BiasInput, Layer):
    """CIANNA convolution layer for 1D, 2D or 3D inputs.

    Parameters
    ----------
    in_shape : tuple of int
        ``(C_in, *spatial)`` of one example (spatial in torch order ``(D, H, W)``).
    out_channels : int
        Number of filters.
    kernel_size, stride, padding, int_padding : int or tuple of int
        Per spatial dimension (torch order). ``stride > kernel_size`` is rejected as in CIANNA.
    activation : str, dict or Activation, default "RELU"
    bias_value : float
        Constant bias input; the effective bias of filter ``f`` is ``bias_weight[f]·bias_value``.
    drop_rate : float, default 0
    """

    kind = "conv"

    def __init__(self, in_shape, out_channels: int, kernel_size=1, stride=1, padding=0, int_padding=0,
                 activation="RELU", bias_value: float = 0.1, drop_rate: float = 0.0):
        super().__init__(in_shape, activation, drop_rate)
        ndim = len(self.in_shape) - 1
        if ndim not in (1, 2, 3):
            raise ValueError(f"Conv needs a (C, *spatial) input with 1-3 spatial dims, got {self.in_shape}")
        if int(out_channels) < 1:
            raise ValueError(f"out_channels={out_channels} must be >= 1")
        self.out_channels = int(out_channels)
        self.kernel_size = as_tuple(kernel_size, ndim, "kernel_size", minimum=1)
        self.stride = as_tuple(stride, ndim, "stride", minimum=1)
        self.padding = as_tuple(padding, ndim, "padding")
        self.int_padding = as_tuple(int_padding, ndim, "int_padding")
        if any(s > k for s, k in zip(self.stride, self.kernel_size)):
            raise ValueError(f"stride={self.stride} larger than kernel_size={self.kernel_size} (CIANNA forbids it)")
        self._init_bias_input(bias_value)
        out = self.out_shape
        if any(s < 1 for s in out[1:]):
            raise ValueError(f"Conv kernel {self.kernel_size} with padding {self.padding} does not fit the "
                             f"input {self.in_shape}: output would be {out}")
        c_in = self.in_shape[0]
        self.weight = nn.Parameter(torch.zeros(self.out_channels, c_in, *self.kernel_size))
        self.bias_weight = nn.Parameter(torch.zeros(self.out_channels))
        self._conv = _CONV[ndim]

    @property
    def fan_in(self) -> int:
        """CIANNA fan-in ``k_vol·C_in + 1`` (bias input included)."""
        return self.weight[0].numel() + 1

    @property
    def fan_out(self) -> int:
        """CIANNA fan-out = number of filters."""
        return self.out_channels

    @property
    def out_shape(self) -> tuple:
        spatial = [conv_output_size(s, k, st, p, ip) for s, k, st, p, ip in
                   zip(self.in_shape[1:], self.kernel_size, self.stride, self.padding, self.int_padding)]
        return (self.out_channels, *spatial)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution; ``x`` of shape (N, C_in, *spatial) or flat (N, C_in·prod(spatial))."""
        if x.dim() == 2:  # dense -> conv reshape
            x = x.reshape(x.shape[0], *self.in_shape)
        x = insert_zeros(x, self.int_padding)
        return self._conv(x, self.weight, self.bias_term(), self.stride, self.padding)

    def config(self) -> dict:
        return {"out_channels": self.out_channels, "kernel_size": list(self.kernel_size),
                "stride": list(self.stride), "padding": list(self.padding),
                "int_padding": list(self.int_padding), "bias_value": self.bias_value, **self._common_config()}
