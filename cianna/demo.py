"""Built-in demonstration: CIANNA's MNIST example network trained on scikit-learn's digits (offline).

The 8×8 digits are up-sampled ×3 (bilinear) to 24×24 and zero-padded to 28×28 so that the exact network of
CIANNA's MNIST example runs on them (``framework.md`` §12): conv 5×5×8 pad 2 → max-pool 2 → conv 5×5×16 pad 2
→ max-pool 2 → dense 256 (dropout 0.5) → dense 128 (dropout 0.2) → dense 10 softmax, all RELU being CIANNA's
leaky saturated ReLU, trained with CIANNA SGD (lr 0.004, momentum 0.8, batch 16).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["load_digits_28", "mnist_example_network", "run_digits_demo", "DemoResult"]

log = logging.getLogger(__name__)


def load_digits_28(seed: int = 0, test_fraction: float = 0.2):
    """scikit-learn digits as 28×28 images in [0, 1], split into train/valid/test.

    Returns
    -------
    dict
        ``{"train": (x, y), "valid": (x, y), "test": (x, y)}`` with ``x`` float32 of shape (N, 1, 28, 28)
        and ``y`` int64 labels of shape (N,).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.images / 16.0).astype(np.float32))[:, None]
    x = torch.nn.functional.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
    x = torch.nn.functional.pad(x, (2, 2, 2, 2)).numpy()
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    n_test = int(round(test_fraction * len(y)))
    n_valid = n_test // 2
    return {"test": (x[:n_test], y[:n_test]), "valid": (x[n_test:n_test + n_valid], y[n_test:n_test + n_valid]),
            "train": (x[n_test + n_valid:], y[n_test + n_valid:])}


def mnist_example_network(seed: int = 0):
    """The network of CIANNA's MNIST example (28×28×1 input, 10 classes)."""
    from cianna.nn import Network

    net = Network((1, 28, 28), bias=0.1, seed=seed)
    net.conv(8, 5, padding=2).pool(2).conv(16, 5, padding=2).pool(2)
    net.dense(256, drop_rate=0.5).dense(128, drop_rate=0.2).dense(10, activation="SMAX")
    return net


@dataclass
class DemoResult:
    """Outcome of :func:`run_digits_demo`."""

    test_accuracy: float
    history: list
    curve_png: Path | None
    model_path: Path | None
    seconds: float


def run_digits_demo(out_dir=None, *, nb_iter: int = 12, seed: int = 0, learning_rate: float = 0.004,
                    device: str = "cpu", silent: int = 0) -> DemoResult:
    """Train and evaluate the MNIST-example network on scikit-learn digits.

    Parameters
    ----------
    out_dir : str or pathlib.Path, optional
        Where ``error.txt``, ``train_log.txt``, ``training_curve.png`` and ``digits_model.safetensors`` go.
    nb_iter : int, default 12
        Training iterations (passes over the 1437 training images).
    seed : int
    learning_rate : float
    device : str
    silent : int
        Trainer verbosity (0 progress bars, 1 nothing, 2 control lines only).
    """
    import time

    from cianna.train import ArrayDataset, Trainer

    torch.manual_seed(seed)
    data = load_digits_28(seed)
    train = ArrayDataset.from_labels(*data["train"], 10, name="TRAIN")
    valid = ArrayDataset.from_labels(*data["valid"], 10, name="VALID")
    net = mnist_example_network(seed)
    out = Path(out_dir) if out_dir is not None else None
    trainer = Trainer(net, learning_rate=learning_rate, momentum=0.8, batch_size=16, control_interv=1,
                      out_dir=out, device=device, silent=silent, seed=seed)
    start = time.perf_counter()
    history = trainer.fit(train, valid, nb_iter=nb_iter)
    seconds = time.perf_counter() - start
    pred = net.predict(data["test"][0], batch_size=256)
    accuracy = float((pred.mean.argmax(1) == data["test"][1]).mean())
    curve = model = None
    if out is not None:
        curve = plot_training_curve(history, out / "training_curve.png", title=f"digits, test acc {accuracy:.3f}")
        model = net.save(out / "digits_model.safetensors")
    return DemoResult(accuracy, history, curve, model, seconds)


def plot_training_curve(history, path, *, title: str = ""):
    """Save train/validation loss (and accuracy) against iteration as a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [h["iteration"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(it, [h["train_loss"] for h in history], "o-", label="train loss")
    if any("valid_loss" in h for h in history):
        ax.plot([h["iteration"] for h in history if "valid_loss" in h],
                [h["valid_loss"] for h in history if "valid_loss" in h], "s-", label="valid loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean loss per example")
    ax.set_yscale("log")
    if any("accuracy" in h for h in history):
        ax2 = ax.twinx()
        ax2.plot([h["iteration"] for h in history if "accuracy" in h],
                 [100 * h["accuracy"] for h in history if "accuracy" in h], "g^--", label="valid accuracy")
        ax2.set_ylabel("validation accuracy [%]")
    ax.legend(loc="center right")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
