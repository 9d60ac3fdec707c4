"""N-dimensional CIANNA pooling (``framework.md`` §4.2).

Output size ``(size + 2·pad − p) // stride + 1``. Padding is *virtual*: padded positions are ignored
(max over valid positions, mean over valid positions), and a window lying entirely in the padding outputs 0.
``global_pool`` pools the whole map of each channel to one value.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cianna.nn.layer import Layer, as_tuple

__all__ = ["Pool", "POOL_TYPES"]

POOL_TYPES = ("MAX", "AVG")
_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class Pool(Layer):
    """Max or average pooling with CIANNA's virtual padding.

    Parameters
    ----------
    in_shape : tuple of int
        ``(C, *spatial)`` of one example.
    kernel_size : int or tuple of int, default 2
        Pool size per spatial dimension (torch order).
    stride : int or tuple of int, optional
        Defaults to ``kernel_size``. Must not exceed it.
    padding : int or tuple of int, default 0
        Virtual padding, at most ``kernel_size``.
    pool_type : {"MAX", "AVG"}
    global_pool : bool
        Pool each channel's whole map (kernel = spatial size, stride 1, padding 0).
    activation : default "LIN"
    drop_rate : float
    full_window_avg_grad : bool
        Compatibility switch: average-pool backward divides by the full window volume instead of the
        number of valid positions (CIANNA V-1.0 quirk 3; identical without padding).
    """

    kind = "pool"

    def __init__(self, in_shape, kernel_size=2, stride=None, padding=0, pool_type: str = "MAX",
                 global_pool: bool = False, activation="LIN", drop_rate: float = 0.0,
                 full_window_avg_grad: bool = False):
        super().__init__(in_shape, activation, drop_rate)
        ndim = len(self.in_shape) - 1
        if ndim not in (1, 2, 3):
            raise ValueError(f"Pool needs a (C, *spatial) input with 1-3 spatial dims, got {self.in_shape}")
        pool_type = str(pool_type).upper()
        if pool_type not in POOL_TYPES:
            raise ValueError(f"pool_type={pool_type!r}: expected 'MAX' or 'AVG'")
        self.pool_type = pool_type
        self.global_pool = bool(global_pool)
        if self.global_pool:
            self.kernel_size = tuple(self.in_shape[1:])
            self.stride = (1,) * ndim
            self.padding = (0,) * ndim
        else:
            self.kernel_size = as_tuple(kernel_size, ndim, "kernel_size", minimum=1)
            self.stride = as_tuple(self.kernel_size if stride is None else stride, ndim, "stride", minimum=1)
            self.padding = as_tuple(padding, ndim, "padding")
            if any(s > k for s, k in zip(self.stride, self.kernel_size)):
                raise ValueError(f"pool stride={self.stride} larger than kernel_size={self.kernel_size}")
            if any(p > k for p, k in zip(self.padding, self.kernel_size)):
                raise ValueError(f"pool padding={self.padding} larger than kernel_size={self.kernel_size}")
        self.full_window_avg_grad = bool(full_window_avg_grad)
        if any(s < 1 for s in self.out_shape[1:]):
            raise ValueError(f"pool kernel {self.kernel_size} does not fit the input {self.in_shape}")
        self._ndim = ndim
        # PyTorch pools accept padding <= kernel/2 only; larger virtual paddings take an explicit path
        self._native_padding = all(2 * p <= k for p, k in zip(self.padding, self.kernel_size))

    @property
    def out_shape(self) -> tuple:
        spatial = [(s + 2 * p - k) // st + 1 for s, k, st, p in
                   zip(self.in_shape[1:], self.kernel_size, self.stride, self.padding)]
        return (self.in_shape[0], *spatial)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled map, shape (N, C, *out_spatial)."""
        if x.dim() == 2:
            x = x.reshape(x.shape[0], *self.in_shape)
        if self.pool_type == "MAX":
            return self._max(x)
        return self._avg(x)

    def _explicit_pad(self, x, value):
        pads = []
        for p in reversed(self.padding):
            pads += [p, p]
        return F.pad(x, pads, value=value)

    def _max(self, x):
        if self._native_padding:
            return _MAX[self._ndim](x, self.kernel_size, self.stride, self.padding)
        out = _MAX[self._ndim](self._explicit_pad(x, float("-inf")), self.kernel_size, self.stride)
        return torch.where(torch.isinf(out), torch.zeros_like(out), out)

    def _avg(self, x):
        if not any(self.padding):
            return _AVG[self._ndim](x, self.kernel_size, self.stride)
        if self._native_padding:
            valid = _AVG[self._ndim](x, self.kernel_size, self.stride, self.padding, count_include_pad=False)
        else:
            summed = _AVG[self._ndim](self._explicit_pad(x, 0.0), self.kernel_size, self.stride)
            ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
            count = _AVG[self._ndim](self._explicit_pad(ones, 0.0), self.kernel_size, self.stride)
            valid = torch.where(count > 0, summed / count.clamp_min(1e-12), torch.zeros_like(summed))
        if self.full_window_avg_grad:
            full = _AVG[self._ndim](self._explicit_pad(x, 0.0), self.kernel_size, self.stride)
            return full + (valid - full).detach()
        return valid

    def config(self) -> dict:
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "pool_type": self.pool_type, "global_pool": self.global_pool,
                "full_window_avg_grad": self.full_window_avg_grad, **self._common_config()}

    @property
    def window_volume(self) -> int:
        """Number of positions in one pooling window."""
        return math.prod(self.kernel_size)
