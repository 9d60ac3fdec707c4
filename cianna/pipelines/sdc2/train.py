"""Training of the SDC2 3D YOLO-CIANNA detector on simulated cubes, with checkpoints and resume.

The configuration is a JSON file (``configs/sdc2_train.json``) read into :class:`TrainConfig`; command-line
overrides come on top (``cianna sdc2 train --config C --nb-iter N``). Every ``save_every`` iterations the
:class:`cianna.train.Trainer` writes ``out_dir/checkpoints/iter_NNNN.safetensors`` (weights, momentum, RNG
states); a new call with the same ``out_dir`` resumes from the newest checkpoint and, because the streamed
sub-cubes are seeded by ``(seed, iteration)``, continues exactly as an uninterrupted run would.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

__all__ = ["TrainConfig", "train", "latest_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training configuration (JSON keys = field names).

    Attributes
    ----------
    train_cubes : list of [cube.fits, truth]
        Simulated training cubes with their truth (``truth.ecsv`` of :func:`cianna.sim.hi_cube.simulate_hi_cube`).
    valid_cube : [cube.fits, truth] or None
        Validation cube (another seed), used for the validation loss.
    out_dir : str
        Run folder (checkpoints, logs, resolved config).
    crop : list of int
        Training sub-cube (D, H, W).
    n_per_iter : int
        Sub-cubes regenerated per iteration. n_valid : int, validation sub-cubes (fixed).
    source_fraction, snr_min, snr_difficult : float
        See :class:`cianna.pipelines.sdc2.data.SubCubeSampler`.
    nb_iter, batch_size, save_every, control_interv : int
    learning_rate, end_learning_rate, lr_decay, momentum, weight_decay : float
        CIANNA optimiser settings (:class:`cianna.train.Trainer`).
    seed : int
    threads : int
        ``torch.set_num_threads`` (1 on shared machines).
    init_from : str or None
        Network or checkpoint whose weights initialise a fresh run (ignored when resuming).
    yolo_overrides : dict
        Changes to the YOLO head settings (:func:`cianna.pipelines.sdc2.model.make_yolo_config`).
    """

    train_cubes: list = field(default_factory=list)
    valid_cube: list | None = None
    out_dir: str = "runs/sdc2/train"
    crop: list = field(default_factory=lambda: [128, 32, 32])
    n_per_iter: int = 128
    n_valid: int = 128
    source_fraction: float = 0.7
    snr_min: float = 5.0
    snr_difficult: float = 3.0
    nb_iter: int = 400
    batch_size: int = 16
    save_every: int = 5
    control_interv: int = 5
    learning_rate: float = 2e-3
    end_learning_rate: float = 2e-4
    lr_decay: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    threads: int = 1
    init_from: str | None = None
    yolo_overrides: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, path, **overrides) -> "TrainConfig":
        """Read a JSON config; ``overrides`` (non-None values) replace its keys."""
        with open(path) as fh:
            data = json.load(fh)
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names - {"comment"}
        if unknown:
            raise ValueError(f"{path}: unknown training config keys {sorted(unknown)}")
        data = {k: v for k, v in data.items() if k in names}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)


def latest_checkpoint(out_dir) -> Path | None:
    """Newest ``iter_NNNN.safetensors`` in ``out_dir/checkpoints`` (None if there is none)."""
    ck = Path(out_dir) / "checkpoints"
    if not ck.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in ck.glob("iter_*.safetensors")
             if (m := re.fullmatch(r"iter_(\d+)\.safetensors", p.name))]
    return max(found)[1] if found else None


def train(config: TrainConfig, *, resume: bool = True):
    """Train (or resume) the SDC2 detector.

    Parameters
    ----------
    config : TrainConfig
    resume : bool
        Continue from the newest checkpoint of ``config.out_dir`` when there is one.

    Returns
    -------
    cianna.train.Trainer
        The trainer after ``config.nb_iter`` iterations.
    """
    import torch

    from cianna.pipelines.sdc2.data import SubCubeSampler, TrainingCube
    from cianna.pipelines.sdc2.model import build_network, make_yolo_config
    from cianna.train import StreamingDataset, Trainer

    torch.set_num_threads(int(config.threads))
    if not config.train_cubes:
        raise ValueError("training config: train_cubes is empty")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "config.json", "w") as fh:
        json.dump(asdict(config), fh, indent=1)
    cubes = []
    for pair in config.train_cubes:
        if len(pair) != 2:
            raise ValueError(f"training config: train_cubes entries are [cube, truth], got {pair}")
        log.info("loading training cube %s", pair[0])
        cubes.append(TrainingCube.from_files(*pair))
    kw = dict(crop=config.crop, source_fraction=config.source_fraction, snr_min=config.snr_min,
              snr_difficult=config.snr_difficult)
    sampler = SubCubeSampler(cubes, n_per_iter=config.n_per_iter, **kw)
    for c, t in zip(config.train_cubes, sampler.targets):
        log.info("%s: %d targets (snr >= %g)", c[0], len(t), config.snr_min)
    valid = None
    if config.valid_cube:
        vs = SubCubeSampler([TrainingCube.from_files(*config.valid_cube)], n_per_iter=config.n_valid, **kw)
        valid = vs(0, np.random.default_rng([config.seed, 999]))
    yolo = make_yolo_config(**{"rand_startup": 4 * config.n_per_iter, **config.yolo_overrides})
    net = build_network((1,) + tuple(config.crop), yolo, seed=config.seed)
    trainer = Trainer(net, learning_rate=config.learning_rate, end_learning_rate=config.end_learning_rate,
                      lr_decay=config.lr_decay, momentum=config.momentum, weight_decay=config.weight_decay,
                      batch_size=config.batch_size, control_interv=config.control_interv if valid else 0,
                      save_every=config.save_every, out_dir=out, silent=2, seed=config.seed + 1)
    ck = latest_checkpoint(out) if resume else None
    if ck is not None:
        trainer.load_checkpoint(ck)
        log.info("resumed from %s (iteration %d)", ck, trainer.iteration)
    elif config.init_from:
        from cianna.train.checkpoint import read_checkpoint

        _, _, tensors = read_checkpoint(config.init_from)
        net.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        log.info("initial weights from %s", config.init_from)
    stream = StreamingDataset(sampler, seed=config.seed, size=config.n_per_iter)
    remaining = int(config.nb_iter) - trainer.iteration
    if remaining > 0:
        trainer.fit(stream, valid, nb_iter=remaining)
    final = out / "final.safetensors"
    net.save(final)
    log.info("training done: %d iterations, network saved to %s", trainer.iteration, final)
    return trainer
