"""Inference: batched prediction with CIANNA's dropout modes and Monte-Carlo dropout (``framework.md`` §5.7)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cianna.train.precision import precision_context, resolve_device, resolve_precision

__all__ = ["predict", "Prediction"]


@dataclass
class Prediction:
    """Network outputs.

    Attributes
    ----------
    mean : numpy.ndarray, shape (N, *output_shape)
        Output (AVG_MODEL) or the mean over the Monte-Carlo repeats (MC_MODEL).
    samples : numpy.ndarray, shape (repeat, N, *output_shape), or None
        Per-repeat outputs (MC_MODEL with ``return_samples=True``).
    std : numpy.ndarray, shape (N, *output_shape), or None
        Standard deviation over repeats (MC_MODEL, ``repeat > 1``).
    """

    mean: np.ndarray
    samples: np.ndarray | None = None
    std: np.ndarray | None = None


@torch.no_grad()
def predict(network, inputs, *, batch_size: int = 64, drop_mode: str = "AVG_MODEL", repeat: int = 1,
            device=None, precision: str = "FP32C_FP32A", return_samples: bool = False) -> Prediction:
    """Run a network on inputs.

    Parameters
    ----------
    network : cianna.nn.Network
    inputs : array_like, shape (N, *input_shape) or (N, prod(input_shape))
    batch_size : int, default 64
        Inference batch size (not tied to the training batch size).
    drop_mode : {"AVG_MODEL", "MC_MODEL"}
        Dropout scaling (``×(1−p)``) or Monte-Carlo dropout (random masks).
    repeat : int, default 1
        Number of Monte-Carlo passes; only the layers from the first dropout layer on are re-run.
    device : str, optional
        Defaults to the device of the network's weights.
    precision : str
        Mixed-precision mode.
    return_samples : bool
        Keep every repeat's output.

    Returns
    -------
    Prediction
    """
    if repeat < 1:
        raise ValueError(f"repeat={repeat} must be >= 1")
    precision = resolve_precision(precision)
    if device is None:
        first = next(network.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = resolve_device(device)
    network.to(device)
    x_all = torch.as_tensor(np.asarray(inputs, dtype=np.float32)) if not isinstance(inputs, torch.Tensor) \
        else inputs.float()
    if not torch.isfinite(x_all).all():
        raise ValueError("prediction inputs contain NaN or inf: replace or mask them first")
    x_all = network.check_input(x_all)
    was_training, old_mode = network.training, network.drop_mode
    network.eval()
    network.drop_mode = drop_mode
    mc = network.drop_mode == "MC_MODEL"
    split = network.first_dropout_layer() if mc else None
    outs = []
    try:
        for start in range(0, x_all.shape[0], batch_size):
            x = x_all[start:start + batch_size].to(device)
            with precision_context(device, precision):
                if split is None:
                    reps = [network(x).float()]
                    reps = reps * repeat if (repeat > 1 and not mc) else reps
                else:
                    h = network.head(x, split) if split > 0 else network.check_input(x)
                    reps = [network(h, start=split).float() for _ in range(repeat)]
            outs.append(torch.stack(reps).cpu())
    finally:
        network.train(was_training)
        network.drop_mode = old_mode
    samples = torch.cat(outs, dim=1).numpy()
    mean = samples.mean(axis=0)
    std = samples.std(axis=0) if samples.shape[0] > 1 else None
    return Prediction(mean=mean, samples=samples if return_samples else None, std=std)
