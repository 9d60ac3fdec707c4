"""``cianna sdc2 train``, ``detect``, ``tune`` and ``average``: the 3D YOLO-CIANNA SDC2 detector.

Added to the ``sdc2`` command group through :func:`cianna.cli.sdc2.get_sdc2_subparsers` (this module must be
listed in ``cianna.cli.COMMAND_MODULES``).
"""
from __future__ import annotations

import argparse
import logging
import os

__all__ = ["register"]

log = logging.getLogger(__name__)


def _train(args: argparse.Namespace) -> int:
    from cianna.pipelines.sdc2.train import TrainConfig, train

    cfg = TrainConfig.from_json(args.config, nb_iter=args.nb_iter, out_dir=args.out_dir, threads=args.threads)
    trainer = train(cfg, resume=not args.restart)
    print(f"trained {trainer.iteration} iterations -> {cfg.out_dir}/final.safetensors")
    return 0


def _check_paths(out: str, overwrite: bool, inputs=()) -> None:
    """Refuse to replace ``out`` without ``--overwrite`` and name every missing input file."""
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite)")
    missing = [c for c in inputs if not os.path.exists(c)]
    if missing:
        raise FileNotFoundError(f"input file(s) not found: {', '.join(missing)}")


def _detect(args: argparse.Namespace) -> int:
    from cianna.pipelines.sdc2.detect import detect

    out = args.out
    _check_paths(out, args.overwrite)
    table = detect(args.cube, out, model=args.model, max_memory=args.max_memory, resume=not args.no_resume,
                   threshold=args.threshold, min_reliability=args.min_reliability, progress=not args.no_progress)
    st = table.meta.get("stats", {})
    print(f"{len(table)} sources -> {out}  ({st.get('chunks', '?')} chunks, "
          f"{st.get('voxels_per_s', float('nan')) / 1e6:.2f} Mvoxel/s)")
    return 0


def _tune(args: argparse.Namespace) -> int:
    import json

    from cianna.pipelines.sdc2.tune import export_model

    _check_paths(args.out, args.overwrite, args.checkpoints)
    if len(args.cube) != len(args.truth):
        raise ValueError(f"--cube has {len(args.cube)} cubes but --truth {len(args.truth)} catalogues "
                         "(one truth per validation cube)")
    res = export_model(args.checkpoints, args.cube, args.truth, args.out, min_purity=args.min_purity,
                       reliability=args.reliability,
                       info={"command": "cianna sdc2 tune", "validation_cubes": args.cube})
    short = {k: v for k, v in res.items() if k not in ("all", "reliability")}
    if res.get("reliability"):
        short["reliability"] = {k: v for k, v in res["reliability"].items() if k != "grid"}
    print(json.dumps(short, indent=1, default=float))
    print(f"model -> {args.out}")
    return 0


def _average(args: argparse.Namespace) -> int:
    from cianna.pipelines.sdc2.tune import average_checkpoints

    _check_paths(args.out, args.overwrite, args.checkpoints)
    average_checkpoints(args.checkpoints, args.out, info={"command": "cianna sdc2 average"})
    print(f"average of {len(args.checkpoints)} checkpoints -> {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``cianna sdc2 train|detect|tune|average`` to the ``sdc2`` group."""
    from cianna.cli.sdc2 import get_sdc2_subparsers

    sub = get_sdc2_subparsers(subparsers)
    p = sub.add_parser("train", help="train the 3D YOLO-CIANNA detector on simulated cubes (resumable)")
    p.add_argument("--config", default="configs/sdc2_train.json", help="JSON training config")
    p.add_argument("--nb-iter", type=int, default=None, help="total iterations (overrides the config)")
    p.add_argument("--out-dir", default=None, help="run folder (overrides the config)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (overrides the config)")
    p.add_argument("--restart", action="store_true", help="ignore existing checkpoints in the run folder")
    p.set_defaults(func=_train)

    p = sub.add_parser("detect", help="detect HI galaxies in a FITS cube with the 3D YOLO-CIANNA detector")
    p.add_argument("cube", help="FITS cube (X, Y, FREQ[, STOKES])")
    p.add_argument("--out", required=True, help="catalogue: .txt = SDC2 submission format, else an Astropy "
                                                "table by extension (.ecsv, .fits, .csv, .vot)")
    p.add_argument("--model", default=None, help="model file (default: the pretrained model shipped with cianna)")
    p.add_argument("--max-memory", default=None, help="memory budget, e.g. 1G or 512M (default: one slab of "
                                                      "tiles along the spectral axis per chunk)")
    p.add_argument("--threshold", type=float, default=None, help="score threshold (default: the model's)")
    p.add_argument("--min-reliability", type=float, default=None,
                   help="reliability threshold, 0-1 (default: the model's; only for models with a reliability model)")
    p.add_argument("--no-resume", action="store_true", help="do not read/write <out>.partial.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_detect)

    p = sub.add_parser("tune", help="choose checkpoint, threshold and calibration on a validation cube and "
                                    "export a detector model")
    p.add_argument("checkpoints", nargs="+", help="training checkpoints to compare")
    p.add_argument("--cube", required=True, nargs="+",
                   help="validation cube(s), scores pooled (never a cube you will report a score on)")
    p.add_argument("--truth", required=True, nargs="+", help="their truth catalogues, in the same order")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.add_argument("--min-purity", type=float, default=0.0, help="validation purity the threshold must reach")
    p.add_argument("--reliability", action="store_true",
                   help="also fit a reliability model on the validation cubes (kept if it scores higher)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_tune)

    p = sub.add_parser("average", help="average the weights of several checkpoints of one run into a model")
    p.add_argument("checkpoints", nargs="+", help="two or more checkpoints with the same architecture")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_average)
