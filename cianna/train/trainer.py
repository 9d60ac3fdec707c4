"""Training loop with CIANNA's semantics (``framework.md`` §5).

One *iteration* is one pass over the current training set (which a :class:`StreamingDataset` regenerates
every iteration). At the start of an iteration the learning rate follows CIANNA's exponential decay, the
global iteration counter is incremented and the set is shuffled when ``(iteration + 1) % shuffle_every == 0``
(CIANNA evaluates this after the increment; reproduced). Every ``control_interv`` iterations the validation
set is evaluated (confusion matrix for classification) and a line is appended to ``error.txt``; every
``save_every`` iterations a checkpoint is written. Losses are sums over outputs divided by the nominal batch
size, so a partial last batch gets a proportionally smaller update, as in CIANNA.

Logs written in ``out_dir``: ``error.txt`` (CIANNA columns: iteration, mean validation loss and, for YOLO,
the six part losses), ``train_log.txt`` (one line per iteration: iteration, learning rate, mean training
loss, seconds, mean validation loss or nan, accuracy or nan) and ``checkpoints/iter_NNNN.safetensors``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cianna.train.checkpoint import read_checkpoint, save_checkpoint
from cianna.train.confusion import confusion_matrix, format_confusion
from cianna.train.data import ArrayDataset, as_dataset
from cianna.train.optim import CiannaSGD, cianna_learning_rate
from cianna.train.precision import precision_context, resolve_device, resolve_precision

__all__ = ["Trainer", "Evaluation", "DivergenceError", "YOLO_PARTS"]

log = logging.getLogger(__name__)

YOLO_PARTS = ("pos", "size", "prob", "obj", "class", "param")


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss (CIANNA exits the process; cianna raises instead)."""


@dataclass
class Evaluation:
    """Result of evaluating a dataset.

    Attributes
    ----------
    mean_loss : float
        Summed loss divided by the number of examples (and by ``repeat``).
    parts : dict
        Per-part mean losses (YOLO), per example.
    monitors : dict
        Summed monitors (YOLO: IoU, objectness, good matches, targets).
    confusion : numpy.ndarray or None
        Confusion matrix (row = true class) for classification outputs.
    accuracy : float or None
        Fraction of correct arg-max predictions for classification outputs.
    """

    mean_loss: float
    parts: dict = field(default_factory=dict)
    monitors: dict = field(default_factory=dict)
    confusion: np.ndarray | None = None
    accuracy: float | None = None


class Trainer:
    """Train a :class:`~cianna.nn.Network` with CIANNA's optimiser, schedule and conventions.

    Parameters
    ----------
    network : cianna.nn.Network
    learning_rate : float
        Initial learning rate ``lr0``.
    end_learning_rate : float, default 0
    lr_decay : float, default 0
        ``lr = end + (lr0 − end)·exp(−lr_decay·iteration)`` at the start of each iteration.
    momentum, weight_decay : float, default 0
        CIANNA momentum (learning rate inside the buffer) and weight decay inside the momentum update.
    batch_size : int, default 16
        ``1`` is CIANNA's "SGD mode": one random example per step, no shuffling.
    shuffle_every : int, default 1
        Shuffle the training set when ``(iteration + 1) % shuffle_every == 0``; 0 never.
    control_interv : int, default 1
        Evaluate the validation set every N iterations (0: never).
    confmat : {0, 1, 2, 3}, default 0
        Confusion-matrix display mode at validation (classification outputs).
    save_every : int, default 0
        Write a checkpoint every N iterations into ``out_dir/checkpoints`` (0: never).
    out_dir : str or pathlib.Path, optional
        Folder of ``error.txt``, ``train_log.txt`` and checkpoints (nothing written when None).
    device : str, default "cpu"
        ``"cpu"``, ``"cuda"`` (falls back to CPU with a warning when absent) or ``"auto"``.
    precision : str, default "FP32C_FP32A"
        CIANNA mixed-precision mode (:mod:`cianna.train.precision`).
    loss_scale : float or "dynamic", default 1
        Static loss scale (CIANNA ``TC_scale_factor``) for the FP16 modes, or PyTorch's dynamic scaler.
    silent : int, default 0
        0 progress bars and control output; 1 nothing (no log files either, as CIANNA); 2 control output only.
    seed : int, optional
        Seed of the trainer generator (shuffling, SGD mode, YOLO random association options).
    """

    def __init__(self, network, *, learning_rate: float, end_learning_rate: float = 0.0, lr_decay: float = 0.0,
                 momentum: float = 0.0, weight_decay: float = 0.0, batch_size: int = 16, shuffle_every: int = 1,
                 control_interv: int = 1, confmat: int = 0, save_every: int = 0, out_dir=None, device="cpu",
                 precision: str = "FP32C_FP32A", loss_scale=1.0, silent: int = 0, seed: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if learning_rate < 0:
            raise ValueError(f"learning_rate={learning_rate} must be >= 0")
        if confmat not in (0, 1, 2, 3):
            raise ValueError(f"confmat={confmat} must be 0, 1, 2 or 3")
        self.network = network
        self.device = resolve_device(device)
        self.network.to(self.device)
        self.precision = resolve_precision(precision)
        self.learning_rate, self.end_learning_rate, self.lr_decay = learning_rate, end_learning_rate, lr_decay
        self.momentum, self.weight_decay = momentum, weight_decay
        self.batch_size, self.shuffle_every = int(batch_size), int(shuffle_every)
        self.control_interv, self.confmat, self.save_every = int(control_interv), int(confmat), int(save_every)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.silent = int(silent)
        self.seed = int(seed) if seed is not None else network.seed + 2
        self.generator = torch.Generator().manual_seed(self.seed)
        self.iteration = 0
        #: Extra JSON-serialisable entries written into every checkpoint's state (e.g. a pipeline's target
        #: encoding), so that a checkpoint can be decoded without its training configuration.
        self.extra_state: dict = {}
        self.history: list[dict] = []
        self.optimizer = CiannaSGD(self._param_groups(), lr=learning_rate, momentum=momentum,
                                   weight_decay=weight_decay)
        self.loss_scale = loss_scale
        self._scaler = None
        if loss_scale == "dynamic":
            self._scaler = torch.amp.GradScaler(self.device.type)
        elif float(loss_scale) != 1.0 and self.precision not in ("FP16C_FP32A", "FP16C_FP16A"):
            log.warning("loss_scale=%s ignored outside the FP16 modes (CIANNA forces it to 1)", loss_scale)
            self.loss_scale = 1.0
        self._pending_order = None
        self._train_data = None  # data of the current iteration (its order goes into checkpoints)
        self._stream_size = None  # examples per iteration measured on a stream of batches

    # ------------------------------------------------------------------ set-up
    def _param_groups(self):
        decay, no_decay = [], []
        for layer in self.network.layers:
            for name, p in layer.named_parameters():
                (no_decay if layer.kind == "norm" else decay).append(p)
        groups = [{"params": decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        return groups

    @property
    def current_learning_rate(self) -> float:
        """Learning rate of the next iteration."""
        return cianna_learning_rate(self.iteration, self.learning_rate, self.end_learning_rate, self.lr_decay)

    def _log_file(self, name: str):
        if self.out_dir is None or self.silent == 1:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir / name

    # ------------------------------------------------------------------ core steps
    def _context(self, size: int, training: bool) -> dict:
        return {"iteration": self.iteration, "train_size": size, "training": training,
                "generator": self.generator, "input_shape": self.network.input_shape}

    def _loss(self, x, y, size: int, training: bool):
        with precision_context(self.device, self.precision):
            preact, out = self.network(x, return_preact=True)
        activation = self.network.layers[-1].activation
        return activation.loss(preact.float(), out.float(), y, norm=self.batch_size,
                               context=self._context(size, training)), out

    def _step(self, x, y, size: int):
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        result, _ = self._loss(x, y, size, training=True)
        if not math.isfinite(result.total):
            raise DivergenceError(f"non-finite training loss at iteration {self.iteration} "
                                  "(network divergence): lower the learning rate or check the data")
        if self._scaler is not None:
            self._scaler.scale(result.loss).backward()
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            scale = float(self.loss_scale)
            (result.loss * scale if scale != 1.0 else result.loss).backward()
            if scale != 1.0:
                grads = [p.grad for p in self.network.parameters() if p.grad is not None]
                torch._foreach_div_(grads, scale)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return result

    def _iteration_data(self, train):
        data = train.for_iteration(self.iteration)
        if self._pending_order is not None and isinstance(data, ArrayDataset):
            if len(self._pending_order) == len(data):
                data.order = self._pending_order.clone()
            self._pending_order = None
        return data

    def train_one_iteration(self, train) -> dict:
        """Run one CIANNA iteration over ``train`` and return its record."""
        lr = self.current_learning_rate
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.iteration += 1
        data = self._iteration_data(train)
        sgd_mode = self.batch_size == 1
        if (isinstance(data, ArrayDataset) and not sgd_mode and self.shuffle_every > 0
                and (self.iteration + 1) % self.shuffle_every == 0):
            data.shuffle(self.generator)
        self._train_data = data
        # examples per iteration (YOLO's random start-up counts iteration × size); for a stream of batches of
        # unknown length, the size measured in the previous iteration (or the running count in the first)
        known = len(data) if isinstance(data, ArrayDataset) else (getattr(train, "size", None)
                                                                 or self._stream_size)
        batches = (data.batches(self.batch_size, sgd_generator=self.generator if sgd_mode else None)
                   if isinstance(data, ArrayDataset) else iter(data))
        total = data.num_batches(self.batch_size) if isinstance(data, ArrayDataset) and not sgd_mode else None
        self.network.train()
        start, loss_sum, n_examples, parts = time.perf_counter(), 0.0, 0, {}
        bar = self._progress(batches, total, f"Iter {self.iteration}")
        for x, y in bar:
            result = self._step(x, y, known or n_examples + x.shape[0])
            loss_sum += result.total
            n_examples += x.shape[0]
            for k, v in result.parts.items():
                parts[k] = parts.get(k, 0.0) + v
            if hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(f"B.Loss {result.total / max(x.shape[0], 1):.5g}", refresh=False)
        elapsed = time.perf_counter() - start
        if not isinstance(data, ArrayDataset):
            self._stream_size = n_examples
        record = {"iteration": self.iteration, "learning_rate": lr,
                  "train_loss": loss_sum / max(n_examples, 1), "seconds": elapsed,
                  "images_per_s": n_examples / elapsed if elapsed > 0 else float("nan")}
        record.update({f"train_{k}": v / max(n_examples, 1) for k, v in parts.items()})
        return record

    def _progress(self, iterable, total, desc):
        if self.silent != 0:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, unit="batch", dynamic_ncols=True)

    # ------------------------------------------------------------------ public API
    def fit(self, train, valid=None, nb_iter: int = 1) -> list[dict]:
        """Train for ``nb_iter`` iterations (the iteration counter persists across calls).

        Parameters
        ----------
        train : ArrayDataset, StreamingDataset or (inputs, targets)
        valid : ArrayDataset or (inputs, targets), optional
            Needed when ``control_interv > 0`` for validation output.
        nb_iter : int

        Returns
        -------
        list of dict
            One record per iteration: iteration, learning_rate, train_loss, seconds, images_per_s and, at
            control steps, valid_loss (and accuracy for classification).
        """
        train = as_dataset(train, "TRAIN")
        valid = as_dataset(valid, "VALID")
        if train is None:
            raise ValueError("fit() needs a training set")
        if self.network.layers[-1].out_shape is None:
            raise ValueError("the network has no output layer")
        records = []
        for _ in range(int(nb_iter)):
            record = self.train_one_iteration(train)
            if self.control_interv > 0 and self.iteration % self.control_interv == 0 and valid is not None:
                ev = self.evaluate(valid, confmat=self.confmat)
                record["valid_loss"] = ev.mean_loss
                if ev.accuracy is not None:
                    record["accuracy"] = ev.accuracy
                record.update({f"valid_{k}": v for k, v in ev.parts.items()})
                self._write_error_line(ev)
                self._print_control(record, ev)
            self._write_train_line(record)
            if self.save_every > 0 and self.iteration % self.save_every == 0 and self.out_dir is not None:
                self.save_checkpoint(self.out_dir / "checkpoints" / f"iter_{self.iteration:04d}.safetensors")
            records.append(record)
            self.history.append(record)
        return records

    @torch.no_grad()
    def evaluate(self, dataset, *, confmat: int = 0, batch_size: int | None = None) -> Evaluation:
        """Mean loss (and classification metrics) on a dataset in inference mode (AVG_MODEL dropout).

        Raises
        ------
        DivergenceError
            If the mean loss is NaN (CIANNA: "Network divergence detected").
        """
        dataset = as_dataset(dataset, "VALID")
        data = dataset.for_iteration(self.iteration)
        self.network.eval()
        drop_mode = self.network.drop_mode
        self.network.drop_mode = "AVG_MODEL"
        bs = batch_size or self.batch_size
        total, n, parts, monitors = 0.0, 0, {}, {}
        preds, trues = [], []
        classify = self.network.layers[-1].activation.name == "SMAX"
        try:
            for x, y in data.batches(bs):
                x, y = x.to(self.device), y.to(self.device)
                result, out = self._loss(x, y, len(data), training=False)
                total += result.total
                n += x.shape[0]
                for k, v in result.parts.items():
                    parts[k] = parts.get(k, 0.0) + v
                for k, v in result.monitors.items():
                    monitors[k] = monitors.get(k, 0.0) + v
                if classify:
                    preds.append(out.reshape(out.shape[0], -1).argmax(1).cpu())
                    trues.append(y.reshape(y.shape[0], -1).argmax(1).cpu())
        finally:
            self.network.drop_mode = drop_mode
        mean = total / max(n, 1)
        if math.isnan(mean):
            raise DivergenceError(f"NaN evaluation loss on {getattr(data, 'name', 'dataset')} at iteration "
                                  f"{self.iteration}: network divergence detected")
        ev = Evaluation(mean_loss=mean, parts={k: v / max(n, 1) for k, v in parts.items()}, monitors=monitors)
        if classify:
            p, t = torch.cat(preds).numpy(), torch.cat(trues).numpy()
            nb_class = int(np.prod(self.network.output_shape))
            ev.confusion = confusion_matrix(t, p, nb_class)
            ev.accuracy = float((p == t).mean())
            if confmat and self.silent != 1:
                log.info("confusion matrix (iteration %d):\n%s", self.iteration, format_confusion(ev.confusion, confmat))
        return ev

    def _write_error_line(self, ev: Evaluation) -> None:
        path = self._log_file("error.txt")
        if path is None:
            return
        cols = [f"{self.iteration}", f"{ev.mean_loss:g}"]
        if ev.parts:
            cols += [f"{ev.parts.get(k, 0.0):g}" for k in YOLO_PARTS]
        with open(path, "a") as f:
            f.write(" ".join(cols) + "\n")

    def _write_train_line(self, record: dict) -> None:
        path = self._log_file("train_log.txt")
        if path is None:
            return
        new = not path.exists()
        with open(path, "a") as f:
            if new:
                f.write("# iteration learning_rate train_loss seconds valid_loss accuracy\n")
            f.write(f"{record['iteration']} {record['learning_rate']:.6g} {record['train_loss']:.6g} "
                    f"{record['seconds']:.3f} {record.get('valid_loss', float('nan')):.6g} "
                    f"{record.get('accuracy', float('nan')):.6g}\n")

    def _print_control(self, record: dict, ev: Evaluation) -> None:
        if self.silent == 1:
            return
        msg = (f"Iter {record['iteration']}: train loss {record['train_loss']:.5g} | valid loss {ev.mean_loss:.5g}"
               f" | lr {record['learning_rate']:.3g} | {record['images_per_s']:.0f} img/s")
        if ev.accuracy is not None:
            msg += f" | accuracy {100 * ev.accuracy:.2f}%"
        log.info(msg)

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """JSON-serialisable training state (plus :attr:`extra_state`, e.g. how the targets were encoded)."""
        return {**self.extra_state, "iteration": self.iteration, "learning_rate": self.learning_rate,
                "end_learning_rate": self.end_learning_rate, "lr_decay": self.lr_decay,
                "momentum": self.momentum, "weight_decay": self.weight_decay, "batch_size": self.batch_size,
                "shuffle_every": self.shuffle_every, "seed": self.seed, "precision": self.precision}

    def save_checkpoint(self, path):
        """Write weights, momentum buffers, RNG states, data order and iteration counter atomically."""
        names = {id(p): n for n, p in self.network.named_parameters()}
        tensors = {}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    tensors[f"optim.{names[id(p)]}"] = buf
        tensors["rng.trainer"] = self.generator.get_state()
        for key, gen in self.network._drop_generators.items():
            if key == "cpu":
                tensors["rng.dropout.cpu"] = gen.get_state()
        data = self._train_data
        if isinstance(data, ArrayDataset):
            tensors["data.train_order"] = data.order
        path = save_checkpoint(path, self.network, state=self.state(), tensors=tensors)
        log.info("checkpoint written: %s", path)
        return path

    def load_checkpoint(self, path) -> "Trainer":
        """Restore weights, momentum buffers, RNG states, data order and iteration counter from ``path``.

        Training continued after this is bit-for-bit identical (on CPU) to an uninterrupted run.
        """
        _, state, tensors = read_checkpoint(path)
        weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.network.load_state_dict(weights)
        self.network.to(self.device)
        params = dict(self.network.named_parameters())
        self.optimizer.state.clear()
        for key, value in tensors.items():
            if key.startswith("optim."):
                p = params[key[len("optim."):]]
                self.optimizer.state[p]["momentum_buffer"] = value.to(p.device).clone()
        if "rng.trainer" in tensors:
            self.generator.set_state(tensors["rng.trainer"])
        if "rng.dropout.cpu" in tensors:
            self.network._drop_generator(torch.device("cpu")).set_state(tensors["rng.dropout.cpu"])
        self._pending_order = tensors.get("data.train_order")
        if state:
            self.iteration = int(state["iteration"])
        return self
