"""Training of the YOLO-CIANNA SDC1 network on simulated fields (resumable, checkpointed).

Usage::

    cianna sdc1 train --config configs/sdc1_train.json     # or: python -m cianna.pipelines.sdc1.train CONFIG

Each iteration draws ``images_per_iter`` fresh augmented patches from the training fields (background thread,
:class:`cianna.train.StreamingDataset`); the data of iteration ``n`` depend only on ``(seed, n)``, so a resumed
run sees the same data. Checkpoints (network + optimiser + RNG state, bit-for-bit resumable) go to
``out_dir/checkpoints/iter_NNNN.safetensors`` every ``save_every`` iterations and when the time budget
``max_minutes`` runs out or a file ``out_dir/STOP`` appears. Re-running the same command resumes from the
newest checkpoint. ``out_dir/train_log.jsonl`` holds one JSON record per iteration.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path


__all__ = ["DEFAULT_CONFIG", "load_config", "ensure_fields", "train"]

log = logging.getLogger(__name__)

DEFAULT_CONFIG = {
    "train_fields": [{"seed": 101, "size": 2048}, {"seed": 102, "size": 2048}, {"seed": 103, "size": 2048}],
    "valid_field": {"seed": 201, "size": 2048},
    "fields_dir": "runs/sdc1/fields", "out_dir": "runs/sdc1/train",
    "patch_size": 128, "max_nb_obj": 100, "images_per_iter": 256, "empty_prob": 0.03,
    "nb_iter": 200, "max_minutes": 70.0, "batch_size": 16, "learning_rate": 1e-3, "end_learning_rate": 1e-4,
    "lr_decay": 0.02, "momentum": 0.8, "weight_decay": 0.0, "rand_startup_iters": 5, "save_every": 4,
    "valid_grid": 4, "seed": 0, "threads": 1, "faint_sources": False, "dirty_psf": False,
    "init_weights": None, "param_limits": None,
}


def load_config(path: str | os.PathLike | None = None, **overrides) -> dict:
    """Training configuration: :data:`DEFAULT_CONFIG` updated by a JSON file and keyword overrides.

    Raises
    ------
    ValueError
        Unknown keys (naming the file).
    """
    cfg = dict(DEFAULT_CONFIG)
    if path is not None:
        with open(path) as fh:
            data = json.load(fh)
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        unknown = set(data) - set(DEFAULT_CONFIG)
        if unknown:
            raise ValueError(f"{path}: unknown training option(s) {sorted(unknown)}")
        cfg.update(data)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def _field_dir(cfg: dict, kind: str, spec: dict) -> str:
    tag = ("_faint" if cfg.get("faint_sources") else "") + ("_dirty" if cfg.get("dirty_psf") else "")
    return os.path.join(cfg["fields_dir"], f"{kind}_s{spec['seed']}_{spec['size']}{tag}")


def ensure_fields(cfg: dict) -> tuple[list[str], str]:
    """Simulate the training and validation fields that do not exist yet; return their directories."""
    from cianna.sim.continuum import simulate_continuum_field

    out = []
    for kind, specs in (("train", cfg["train_fields"]), ("valid", [cfg["valid_field"]])):
        for spec in specs:
            d = _field_dir(cfg, kind, spec)
            if not os.path.exists(os.path.join(d, "truth.txt")):
                log.info("simulating %s field seed %d size %d -> %s", kind, spec["seed"], spec["size"], d)
                simulate_continuum_field(d, size=int(spec["size"]), seed=int(spec["seed"]),
                                         faint_sources=bool(cfg.get("faint_sources")),
                                         dirty_psf=bool(cfg.get("dirty_psf")))
            out.append(d)
    return out[:-1], out[-1]


def _latest_checkpoint(out_dir: Path) -> Path | None:
    ckpts = sorted((out_dir / "checkpoints").glob("iter_*.safetensors"))
    return ckpts[-1] if ckpts else None


def _load_initial_weights(net, path) -> None:
    """Warm start: copy the network weights of a model or checkpoint file (same architecture) into ``net``."""
    from cianna.train.checkpoint import read_checkpoint

    _, _, tensors = read_checkpoint(path)
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        net.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(f"init_weights {path}: not the weights of this network ({exc})") from None
    log.info("initial weights from %s", path)


def train(cfg: dict) -> Path:
    """Train (or resume) the SDC1 network; return the last checkpoint path.

    Parameters
    ----------
    cfg : dict
        See :data:`DEFAULT_CONFIG` and ``configs/sdc1_train.json``.
    """
    import torch

    from cianna.pipelines.sdc1.data import grid_patches, load_field, param_limits, sample_patches
    from cianna.pipelines.sdc1.model import build_network, yolo_config
    from cianna.train import StreamingDataset, Trainer

    torch.set_num_threads(int(cfg["threads"]))
    out_dir = Path(cfg["out_dir"])
    (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    with open(out_dir / "config.json", "w") as fh:
        json.dump(cfg, fh, indent=1)
    train_dirs, valid_dir = ensure_fields(cfg)
    limits = param_limits(cfg.get("param_limits"))
    fields = [load_field(d, limits=limits) for d in train_dirs]
    valid_field = load_field(valid_dir, limits=limits)
    size, mno = int(cfg["patch_size"]), int(cfg["max_nb_obj"])
    n_img = int(cfg["images_per_iter"])
    ycfg = yolo_config(max_nb_obj=mno, rand_startup=int(cfg["rand_startup_iters"]) * n_img)
    net = build_network(size, ycfg, seed=int(cfg["seed"]))
    trainer = Trainer(net, learning_rate=cfg["learning_rate"], end_learning_rate=cfg["end_learning_rate"],
                      lr_decay=cfg["lr_decay"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                      batch_size=int(cfg["batch_size"]), control_interv=int(cfg["save_every"]), silent=2,
                      out_dir=out_dir, seed=int(cfg["seed"]))
    # stored in every checkpoint, so that load_model() decodes the parameters with the training's bounds
    trainer.extra_state = {"sdc1": {"param_limits": {k: list(v) for k, v in limits.items()}}}
    last = _latest_checkpoint(out_dir)
    if last is not None:
        trainer.load_checkpoint(last)
        log.info("resumed from %s (iteration %d)", last, trainer.iteration)
    elif cfg.get("init_weights"):
        _load_initial_weights(net, cfg["init_weights"])

    def make(iteration, rng):
        return sample_patches(fields, n_img, size, rng, max_nb_obj=mno, empty_prob=float(cfg["empty_prob"]))

    stream = StreamingDataset(make, seed=int(cfg["seed"]), size=n_img)
    valid = grid_patches(valid_field, size, int(cfg["valid_grid"]), max_nb_obj=mno)
    t_start, budget = time.perf_counter(), float(cfg["max_minutes"]) * 60.0
    stop_file = out_dir / "STOP"
    path = last
    with open(out_dir / "train_log.jsonl", "a") as logf:
        while trainer.iteration < int(cfg["nb_iter"]):
            rec = trainer.fit(stream, valid, nb_iter=1)[0]
            rec["wall_s"] = time.perf_counter() - t_start
            logf.write(json.dumps(rec) + "\n")
            logf.flush()
            log.info("iter %d loss %.3f valid %s (%.0f s)", rec["iteration"], rec["train_loss"],
                     rec.get("valid_loss"), rec["wall_s"])
            done = (trainer.iteration >= int(cfg["nb_iter"]) or rec["wall_s"] > budget or stop_file.exists())
            if trainer.iteration % int(cfg["save_every"]) == 0 or done:
                path = out_dir / "checkpoints" / f"iter_{trainer.iteration:04d}.safetensors"
                trainer.save_checkpoint(path)
            if done:
                break
    return path


def main(argv=None) -> int:
    """``python -m cianna.pipelines.sdc1.train CONFIG``: train from a JSON config (same as ``cianna sdc1
    train --config CONFIG``); returns the exit code."""
    import argparse

    p = argparse.ArgumentParser(description="train the YOLO-CIANNA SDC1 network")
    p.add_argument("config", nargs="?", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train(load_config(args.config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
