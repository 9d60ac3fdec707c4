"""Datasets for training and inference: in-memory arrays and streamed (regenerated) data.

CIANNA trains by "iterations": one pass over the current TRAIN set, which large examples regenerate with
fresh augmentation at every iteration in a background thread (double buffering, ``framework.md`` §2.2).
:class:`ArrayDataset` holds arrays in memory; :class:`StreamingDataset` calls a user function once per
iteration, in a background thread one iteration ahead, to produce either a fresh in-memory set or an
iterator of batches (for data larger than memory).
"""
from __future__ import annotations

import logging
import math
import threading
from typing import Callable, Iterable

import numpy as np
import torch

__all__ = ["ArrayDataset", "StreamingDataset", "as_dataset"]

log = logging.getLogger(__name__)


def _to_tensor(array, name: str, what: str, check_finite: bool) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        t = array.detach()
    else:
        a = np.asarray(array)
        if a.dtype == object:
            raise TypeError(f"{what} of dataset {name} must be numeric, got an object array")
        t = torch.from_numpy(np.ascontiguousarray(a))
    if not torch.is_floating_point(t):
        t = t.to(torch.float32)
    elif t.dtype != torch.float32:
        t = t.to(torch.float32)
    if check_finite:
        bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1) if t.dim() > 1 else ~torch.isfinite(t)
        if bool(bad.any()):
            first = int(torch.nonzero(bad)[0])
            raise ValueError(f"{what} of dataset {name} contain NaN or inf ({int(bad.sum())} examples, "
                             f"first at index {first}); clean or mask them before training")
    return t


class ArrayDataset:
    """Inputs and targets held in memory.

    Parameters
    ----------
    inputs : array_like, shape (N, *input_shape) or (N, prod(input_shape))
        Input examples (converted to float32 without copy when already float32 and contiguous).
    targets : array_like, shape (N, ...)
        Targets (one-hot rows for classification, regression values, YOLO target rows, maps).
    name : str
        Used in error messages (e.g. "TRAIN").
    check_finite : bool, default True
        Reject NaN/inf in inputs and targets with a clear error.

    Raises
    ------
    ValueError
        Different numbers of examples, empty data, or non-finite values.
    """

    def __init__(self, inputs, targets, *, name: str = "dataset", check_finite: bool = True):
        self.name = name
        self.inputs = _to_tensor(inputs, name, "inputs", check_finite)
        self.targets = _to_tensor(targets, name, "targets", check_finite)
        if self.inputs.dim() < 2:
            raise ValueError(f"inputs of dataset {name} must have shape (N, ...), got {tuple(self.inputs.shape)}")
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise ValueError(f"dataset {name}: {self.inputs.shape[0]} inputs but {self.targets.shape[0]} targets")
        if self.inputs.shape[0] == 0:
            raise ValueError(f"dataset {name} is empty")
        self.order = torch.arange(self.inputs.shape[0])

    @classmethod
    def from_labels(cls, inputs, labels, nb_class: int, **kwargs) -> "ArrayDataset":
        """Build a classification set from integer labels ``0 … nb_class−1`` (one-hot targets)."""
        labels = np.asarray(labels).astype(np.int64)
        if labels.min() < 0 or labels.max() >= nb_class:
            raise ValueError(f"labels must be in [0, {nb_class - 1}], got range [{labels.min()}, {labels.max()}]")
        onehot = np.zeros((labels.size, nb_class), dtype=np.float32)
        onehot[np.arange(labels.size), labels] = 1.0
        return cls(inputs, onehot, **kwargs)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def shuffle(self, generator: torch.Generator) -> None:
        """Permute the example order in place (persists, as CIANNA's in-place shuffle does)."""
        self.order = self.order[torch.randperm(len(self), generator=generator)]

    def batches(self, batch_size: int, *, sgd_generator: torch.Generator | None = None) -> Iterable:
        """Yield ``(inputs, targets)`` batches in the current order; the last batch may be partial.

        With ``sgd_generator`` (CIANNA's ``b_size = 1`` "SGD mode") yields ``len(self)`` single random examples.
        """
        n = len(self)
        if sgd_generator is not None:
            for _ in range(n):
                i = torch.randint(0, n, (1,), generator=sgd_generator)
                yield self.inputs[i], self.targets[i]
            return
        identity = bool(torch.equal(self.order, torch.arange(n)))
        for start in range(0, n, batch_size):
            if identity:
                yield self.inputs[start:start + batch_size], self.targets[start:start + batch_size]
            else:
                idx = self.order[start:start + batch_size]
                yield self.inputs[idx], self.targets[idx]

    def num_batches(self, batch_size: int) -> int:
        """``ceil(N / batch_size)``."""
        return math.ceil(len(self) / batch_size)

    def for_iteration(self, iteration: int) -> "ArrayDataset":
        """The data of one iteration (an in-memory set does not change)."""
        return self


class StreamingDataset:
    """Data regenerated every iteration by a user function, prepared one iteration ahead in a thread.

    Parameters
    ----------
    make_data : callable ``(iteration: int, rng: numpy.random.Generator) -> data``
        Returns the data of one iteration: a tuple ``(inputs, targets)`` of arrays (held in memory for
        that iteration), an :class:`ArrayDataset`, or an iterable of ``(inputs, targets)`` batches (never
        held in memory at once: data larger than memory). ``rng`` is seeded from ``(seed, iteration)``, so
        a resumed run regenerates exactly the same data.
    seed : int, default 0
    size : int, optional
        Examples per iteration, when known (CIANNA's random start-up counter uses it).
    prefetch : bool, default True
        Build the next iteration's data in a background thread while the current one trains.
    """

    def __init__(self, make_data: Callable, *, seed: int = 0, size: int | None = None, prefetch: bool = True):
        if not callable(make_data):
            raise TypeError("make_data must be callable (iteration, rng) -> data")
        self.make_data = make_data
        self.seed = int(seed)
        self.size = size
        self.prefetch = prefetch
        self._pending: dict[int, tuple[threading.Thread, list]] = {}

    def _build(self, iteration: int):
        rng = np.random.default_rng([self.seed, iteration])
        data = self.make_data(iteration, rng)
        if isinstance(data, tuple) and len(data) == 2:
            data = ArrayDataset(*data, name=f"stream[{iteration}]")
        return data

    def _start(self, iteration: int) -> None:
        box: list = []

        def run():
            try:
                box.append(("ok", self._build(iteration)))
            except BaseException as exc:  # re-raised in the training thread
                box.append(("error", exc))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._pending[iteration] = (thread, box)

    def for_iteration(self, iteration: int):
        """Return the data of ``iteration`` (1-based) and start preparing the next one."""
        if iteration in self._pending:
            thread, box = self._pending.pop(iteration)
            thread.join()
            status, data = box[0]
            if status == "error":
                raise data
        else:
            data = self._build(iteration)
        if self.prefetch and iteration + 1 not in self._pending:
            self._start(iteration + 1)
        if isinstance(data, ArrayDataset) and self.size is None:
            self.size = len(data)
        return data

    def __len__(self) -> int:
        if self.size is None:
            raise TypeError("size of this StreamingDataset is unknown until its first iteration")
        return self.size


def as_dataset(data, name: str):
    """Accept an :class:`ArrayDataset`, :class:`StreamingDataset` or an ``(inputs, targets)`` tuple."""
    if data is None or isinstance(data, (ArrayDataset, StreamingDataset)):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return ArrayDataset(*data, name=name)
    raise TypeError(f"{name} must be an ArrayDataset, a StreamingDataset or an (inputs, targets) tuple, "
                    f"got {type(data).__name__}")
