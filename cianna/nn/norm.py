"""CIANNA normalisation layers: group normalisation and cross-channel LRN (``framework.md`` §4.5, §4.6)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cianna.nn.layer import Layer

__all__ = ["GroupNorm", "LRN"]


class GroupNorm(Layer):
    """CIANNA group normalisation: one γ and one β per *group*, ε = 1e-3, biased variance.

    Channels are split into consecutive groups of ``group_size`` (the last group may be smaller);
    ``nb_group = ceil(C / group_size)``. Per example and group ``y = γ_g (x − μ)/sqrt(σ² + ε) + β_g``.
    The last ``set_off`` groups pass through unchanged. Batch-independent (no running statistics).

    Parameters
    ----------
    in_shape : tuple of int
        ``(C, *spatial)`` of one example.
    group_size : int, default 8
        Channels per group (``C`` → layer norm, 1 → instance norm).
    set_off : int, default 0
        Number of trailing groups left untouched.
    activation : default "LIN"
    eps : float, default 1e-3
    """

    kind = "norm"

    def __init__(self, in_shape, group_size: int = 8, set_off: int = 0, activation="LIN", eps: float = 1e-3):
        super().__init__(in_shape, activation, 0.0)
        if len(self.in_shape) < 2:
            raise ValueError(f"GroupNorm needs a (C, *spatial) input (after conv or pool), got {self.in_shape}")
        if int(group_size) < 1:
            raise ValueError(f"group_size={group_size} must be >= 1")
        channels = self.in_shape[0]
        self.group_size = int(group_size)
        self.nb_group = math.ceil(channels / self.group_size)
        if not 0 <= int(set_off) <= self.nb_group:
            raise ValueError(f"set_off={set_off} must be between 0 and the number of groups {self.nb_group}")
        self.set_off = int(set_off)
        self.eps = float(eps)
        self.gamma = nn.Parameter(torch.ones(self.nb_group))
        self.beta = nn.Parameter(torch.zeros(self.nb_group))

    @property
    def out_shape(self) -> tuple:
        return self.in_shape

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tensor, same shape as ``x`` (N, C, *spatial)."""
        channels = self.in_shape[0]
        active_groups = self.nb_group - self.set_off
        active_ch = min(channels, active_groups * self.group_size)
        if active_groups == 0:
            return x
        xa = x[:, :active_ch] if active_ch < channels else x
        if active_ch % self.group_size == 0:
            gamma = self.gamma[:active_groups].repeat_interleave(self.group_size)
            beta = self.beta[:active_groups].repeat_interleave(self.group_size)
            y = F.group_norm(xa, active_groups, gamma.to(xa.dtype), beta.to(xa.dtype), self.eps)
        else:
            y = self._uneven(xa, active_groups)
        if active_ch < channels:
            y = torch.cat([y, x[:, active_ch:]], dim=1)
        return y

    def _uneven(self, x, groups):
        # last group shorter than group_size: pad channels with copies is wrong, so compute explicitly
        outs = []
        for g in range(groups):
            part = x[:, g * self.group_size:(g + 1) * self.group_size]
            dims = tuple(range(1, part.dim()))
            mean = part.mean(dim=dims, keepdim=True)
            var = part.var(dim=dims, unbiased=False, keepdim=True)
            outs.append(self.gamma[g] * (part - mean) / torch.sqrt(var + self.eps) + self.beta[g])
        return torch.cat(outs, dim=1)

    def config(self) -> dict:
        return {"group_size": self.group_size, "set_off": self.set_off, "eps": self.eps,
                "activation": self.activation.config()}


class LRN(Layer):
    """Cross-channel local response normalisation ``y_c = x_c / (k + α/r Σ_j x_j²)^β``.

    The window of ``range`` channels centred on ``c`` is clipped to valid channels (``framework.md`` §4.6).
    No parameters.
    """

    kind = "lrn"

    def __init__(self, in_shape, range: int = 5, k: float = 1.0, alpha: float = 1.0, beta: float = 0.5,
                 activation="LIN"):
        super().__init__(in_shape, activation, 0.0)
        if len(self.in_shape) < 2:
            raise ValueError(f"LRN needs a (C, *spatial) input, got {self.in_shape}")
        if int(range) < 1:
            raise ValueError(f"range={range} must be >= 1")
        self.range, self.k, self.alpha, self.beta = int(range), float(k), float(alpha), float(beta)

    @property
    def out_shape(self) -> tuple:
        return self.in_shape

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tensor, same shape as ``x`` (N, C, *spatial)."""
        half = self.range // 2
        sq = x.pow(2).reshape(x.shape[0], 1, x.shape[1], -1)
        # window c-half .. c+half clipped to valid channels = zero padding of the channel axis
        window_sum = F.avg_pool2d(sq, (2 * half + 1, 1), stride=1, padding=(half, 0),
                                  count_include_pad=True) * (2 * half + 1)
        scale = self.k + self.alpha / self.range * window_sum.reshape(x.shape)
        return x / scale.pow(self.beta)

    def config(self) -> dict:
        return {"range": self.range, "k": self.k, "alpha": self.alpha, "beta": self.beta,
                "activation": self.activation.config()}
