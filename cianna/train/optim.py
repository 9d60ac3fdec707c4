"""CIANNA's optimiser and learning-rate schedule (``framework.md`` §5.2, §5.3).

The update, for every weight ``w`` of a non-frozen layer at every batch::

    v ← momentum·v + lr·g + lr·weight_decay·w
    w ← w − v

The momentum buffer contains the learning rate (so with a changing rate it differs slightly from
``torch.optim.SGD``), and weight decay sits inside the momentum update. Group-norm γ/β get no weight decay.
"""
from __future__ import annotations

import math

import torch

__all__ = ["CiannaSGD", "cianna_learning_rate"]


def cianna_learning_rate(iteration: int, learning_rate: float, end_learning_rate: float = 0.0,
                         lr_decay: float = 0.0) -> float:
    """Exponential decay towards an end rate: ``end + (lr0 − end)·exp(−lr_decay·iteration)``.

    Parameters
    ----------
    iteration : int
        Number of completed iterations (the network's global counter, before the increment).
    learning_rate, end_learning_rate, lr_decay : float
        ``lr_decay = 0`` gives a constant rate.
    """
    if lr_decay == 0.0:
        return float(learning_rate)
    return end_learning_rate + (learning_rate - end_learning_rate) * math.exp(-lr_decay * iteration)


class CiannaSGD(torch.optim.Optimizer):
    """SGD with CIANNA's momentum form (learning rate inside the buffer, weight decay inside momentum).

    Parameters
    ----------
    params : iterable
        Parameters or parameter groups (a group may set its own ``weight_decay``, e.g. 0 for γ/β).
    lr : float
    momentum : float, default 0
    weight_decay : float, default 0
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr={lr}, momentum={momentum}, weight_decay={weight_decay} must be >= 0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient."""
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs.append(state["momentum_buffer"])
            if mom != 0.0:
                torch._foreach_mul_(bufs, mom)
                torch._foreach_add_(bufs, grads, alpha=lr)
            else:
                torch._foreach_copy_(bufs, grads)
                torch._foreach_mul_(bufs, lr)
            if wd != 0.0:
                torch._foreach_add_(bufs, params, alpha=lr * wd)
            torch._foreach_sub_(params, bufs)
        return loss
