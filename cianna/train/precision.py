"""Device selection and CIANNA's mixed-precision modes mapped to PyTorch (``framework.md`` §4.9).

=============== ===================================================================
CIANNA mode     PyTorch
=============== ===================================================================
FP32C_FP32A     float32, TF32 disabled on CUDA ("off")
TF32C_FP32A     float32 with TF32 tensor-core matmuls/convolutions (CUDA, Ampere+)
FP16C_FP32A     ``torch.autocast(float16)`` + loss scaling ("on")
FP16C_FP16A     same as FP16C_FP32A (PyTorch accumulates matmuls in FP32; documented difference)
BF16C_FP32A     ``torch.autocast(bfloat16)``
=============== ===================================================================
"""
from __future__ import annotations

import contextlib
import logging
import warnings

import torch

__all__ = ["PRECISIONS", "resolve_precision", "resolve_device", "precision_context", "CiannaUserWarning"]

log = logging.getLogger(__name__)

PRECISIONS = ("FP32C_FP32A", "TF32C_FP32A", "FP16C_FP32A", "FP16C_FP16A", "BF16C_FP32A")
_ALIASES = {"off": "FP32C_FP32A", "fp32": "FP32C_FP32A", "on": "FP16C_FP32A", "fp16": "FP16C_FP32A",
            "tf32": "TF32C_FP32A", "bf16": "BF16C_FP32A"}


class CiannaUserWarning(UserWarning):
    """Warning category of the cianna package (fallbacks, ignored options)."""


def resolve_precision(precision: str) -> str:
    """Canonical CIANNA precision name from a name or alias ("off", "on", "fp16", "bf16", "tf32").

    Raises
    ------
    ValueError
        Unknown name.
    """
    name = _ALIASES.get(str(precision).lower(), str(precision).upper())
    if name not in PRECISIONS:
        raise ValueError(f"unknown mixed precision {precision!r}: expected one of {', '.join(PRECISIONS)} "
                         f"or {', '.join(_ALIASES)}")
    return name


def resolve_device(device="cpu") -> torch.device:
    """Return a usable device; ``"cuda"`` falls back to the CPU with a warning when no GPU is present.

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).
    """
    text = str(device).lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn("CUDA was requested but no GPU is available: falling back to the CPU", CiannaUserWarning,
                      stacklevel=2)
        log.warning("CUDA requested but not available: running on the CPU")
        return torch.device("cpu")
    try:
        return torch.device(text)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'") from None


def autocast_dtype(precision: str):
    """torch dtype of autocast for a precision mode, or None for FP32/TF32."""
    return {"FP16C_FP32A": torch.float16, "FP16C_FP16A": torch.float16,
            "BF16C_FP32A": torch.bfloat16}.get(resolve_precision(precision))


@contextlib.contextmanager
def precision_context(device: torch.device, precision: str):
    """Context manager running the enclosed forward pass in the requested precision on ``device``."""
    precision = resolve_precision(precision)
    if device.type == "cpu" and precision in ("FP32C_FP32A", "TF32C_FP32A"):
        yield  # nothing to switch on the CPU
        return
    dtype = autocast_dtype(precision)
    saved = None
    if device.type == "cuda":
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        tf32 = precision == "TF32C_FP32A"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    try:
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                yield
    finally:
        if saved is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
