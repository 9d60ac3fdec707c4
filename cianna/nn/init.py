"""CIANNA weight initialisers (``framework.md`` §4.8).

CIANNA counts the bias input in the fan-in (conv: ``k_vol·C_in + 1``; dense: ``F_in + 1``) and uses
``fan_out = nb_filters`` for convolutions (not ``nb_filters·k_vol`` as PyTorch does). The laws below are
CIANNA's own, including its documented oddities, because they are what the CIANNA names mean:

========== ====================================================================
name       law (``s`` = ``init_scaling``, default 1)
========== ====================================================================
xavier     N(0, s·sqrt(2/(fan_in+fan_out)))
xavier_U   U(−a, a), a = s·sqrt(12/(fan_in+fan_out))  (twice the Glorot variance)
lecun      N(0, s·sqrt(1/n)); conv n = fan_in, dense n = fan_out (CIANNA V-1.0)
lecun_U    U(−a, a), a = s·sqrt(3/n), same n as lecun
normal     N(0, s), ``init_scaling`` mandatory
uniform    U(−s, s), ``init_scaling`` mandatory
========== ====================================================================

``glorot_U`` (the textbook Glorot/Xavier uniform law, a = s·sqrt(6/(fan_in+fan_out))) is added for users who
want the usual variance.
"""
from __future__ import annotations

import math

import torch

__all__ = ["INITIALISERS", "initialise_"]

INITIALISERS = ("xavier", "xavier_U", "glorot_U", "lecun", "lecun_U", "normal", "uniform")


def initialise_(tensors, name: str, *, fan_in: int, fan_out: int, layer_kind: str,
                scaling: float | None = None, generator: torch.Generator | None = None) -> None:
    """Fill tensors in place with a CIANNA initialisation law.

    Parameters
    ----------
    tensors : sequence of torch.Tensor
        Weights and bias weights of one layer (all drawn from the same law).
    name : str
        One of :data:`INITIALISERS`.
    fan_in, fan_out : int
        CIANNA fans (the bias input counted in ``fan_in``).
    layer_kind : {"conv", "dense"}
        Selects the ``n`` of the lecun laws.
    scaling : float, optional
        ``init_scaling``; multiplies the std/limit (default 1), or *is* the std/half-width for
        ``normal``/``uniform`` (then mandatory).
    generator : torch.Generator, optional
        Random generator for reproducible initialisation.

    Raises
    ------
    ValueError
        Unknown initialiser name, or ``normal``/``uniform`` without ``scaling``.
    """
    if name not in INITIALISERS:
        raise ValueError(f"unknown init {name!r}: expected one of {', '.join(INITIALISERS)}")
    if name in ("normal", "uniform"):
        if scaling is None or scaling <= 0:
            raise ValueError(f"init={name!r} needs init_scaling > 0 (it is the std / half-width)")
        std_or_limit = float(scaling)
    else:
        s = 1.0 if scaling is None or scaling <= 0 else float(scaling)
        n_lecun = fan_in if layer_kind == "conv" else fan_out
        std_or_limit = {
            "xavier": s * math.sqrt(2.0 / (fan_in + fan_out)),
            "xavier_U": s * math.sqrt(12.0 / (fan_in + fan_out)),
            "glorot_U": s * math.sqrt(6.0 / (fan_in + fan_out)),
            "lecun": s * math.sqrt(1.0 / n_lecun),
            "lecun_U": s * math.sqrt(3.0 / n_lecun),
        }[name]
    uniform = name in ("xavier_U", "glorot_U", "lecun_U", "uniform")
    with torch.no_grad():
        for t in tensors:
            if uniform:
                t.uniform_(-std_or_limit, std_or_limit, generator=generator)
            else:
                t.normal_(0.0, std_or_limit, generator=generator)
