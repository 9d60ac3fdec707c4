"""``cianna sdc2 ...`` sub-commands: simulate, score, baseline (SKA SDC2 HI cubes).

Extending the group from another module
---------------------------------------
Other modules (e.g. the 3D detector's ``train`` and ``detect``) add commands to the same ``sdc2`` group with
:func:`get_sdc2_subparsers`, which creates the group on first use and returns the same sub-subparsers object
afterwards (it is cached on the top-level ``subparsers`` object)::

    from cianna.cli.sdc2 import get_sdc2_subparsers

    def register(subparsers):
        sdc2 = get_sdc2_subparsers(subparsers)
        p = sdc2.add_parser("detect", help="...")
        p.set_defaults(func=_detect)

Registration order does not matter: :func:`register` below also goes through :func:`get_sdc2_subparsers`.
"""
from __future__ import annotations

import argparse
import logging
import os

__all__ = ["register", "get_sdc2_subparsers"]

log = logging.getLogger(__name__)

_ATTR = "_cianna_sdc2_subparsers"


def get_sdc2_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Return the sub-subparsers of the ``sdc2`` command group, creating the group once.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The top-level ``cianna`` sub-parsers (as passed to ``register``).

    Returns
    -------
    argparse._SubParsersAction
        Sub-parsers of ``cianna sdc2``; call ``add_parser(name, ...)`` and set ``func`` on the new parser.
    """
    existing = getattr(subparsers, _ATTR, None)
    if existing is not None:
        return existing
    group = subparsers.add_parser("sdc2", help="SKA SDC2 HI cubes: simulate, score, classical baseline",
                                  description="SKA Science Data Challenge 2 (3D HI cube) tools.")
    sub = group.add_subparsers(dest="sdc2_command", metavar="SDC2_COMMAND")
    group.set_defaults(func=lambda args: (group.print_help(), 2)[1])
    setattr(subparsers, _ATTR, sub)
    return sub


def _simulate(args: argparse.Namespace) -> int:
    from cianna.sim.hi_cube import simulate_hi_cube

    res = simulate_hi_cube(args.out, shape=tuple(args.shape), seed=args.seed, freq_start=args.freq_start,
                           n_sources=args.n_sources, flux_boost=args.flux_boost, noise_scale=args.noise_scale,
                           rfi_fraction=args.rfi_fraction)
    print(f"cube:  {res.cube_path}  shape (X, Y, Z) = {res.shape}, "
          f"{res.freqs[0] / 1e6:.3f}-{res.freqs[-1] / 1e6:.3f} MHz")
    print(f"truth: {res.truth_path}  ({len(res.truth)} galaxies)")
    return 0


def _score(args: argparse.Namespace) -> int:
    from cianna.scoring.sdc2 import score_sdc2

    score = score_sdc2(args.catalog, args.truth)
    print(score.summary())
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from cianna.pipelines.sdc2.baseline import find_sources
    from cianna.scoring.sdc2 import write_sdc2_catalog

    overrides = {}
    if args.threshold is not None:
        overrides["threshold"] = args.threshold
    if args.chunk_channels is not None:
        overrides["chunk_channels"] = args.chunk_channels
    if args.rel_threshold is not None:
        overrides["rel_threshold"] = args.rel_threshold
    if args.tile_xy is not None:
        overrides["tile_xy"] = args.tile_xy or None  # 0 = whole channel plane
    if args.overlap_xy is not None:
        overrides["overlap_xy"] = args.overlap_xy
    table = find_sources(args.cube, **overrides)
    out = args.out
    if os.path.exists(out) and not args.overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite)")
    if out.lower().endswith(".txt"):
        write_sdc2_catalog(table, out)
    else:
        if not out.lower().endswith(".ecsv"):  # nested config dicts only survive in ECSV headers
            table.meta.pop("config", None)
        table.write(out, overwrite=True)
    print(f"{len(table)} sources -> {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``cianna sdc2 simulate|score|baseline`` to the top-level sub-parsers."""
    sub = get_sdc2_subparsers(subparsers)

    p = sub.add_parser("simulate", help="simulate an SDC2-like HI cube (cube.fits + truth.txt)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--shape", type=int, nargs=3, default=(256, 256, 1024), metavar=("X", "Y", "Z"),
                   help="cube size in voxels (default 256 256 1024)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--freq-start", type=float, default=1.05e9, help="frequency of channel 0 in Hz")
    p.add_argument("--n-sources", type=int, default=None, help="number of galaxies (default: dev density)")
    p.add_argument("--flux-boost", type=float, default=0.0, help="bright-tail re-weighting exponent")
    p.add_argument("--noise-scale", type=float, default=1.0)
    p.add_argument("--rfi-fraction", type=float, default=0.0)
    p.set_defaults(func=_simulate)

    p = sub.add_parser("score", help="score an SDC2 catalogue with the official scorer")
    p.add_argument("catalog", help="submission (SDC2 text format)")
    p.add_argument("truth", help="truth catalogue (SDC2 text format)")
    p.set_defaults(func=_score)

    p = sub.add_parser("baseline", help="classical smooth-and-clip source finder on a FITS cube")
    p.add_argument("cube", help="FITS cube (X, Y, FREQ)")
    p.add_argument("--out", required=True, help="catalogue: .txt = SDC2 format, else by extension "
                                                "(.ecsv, .fits, .csv, .vot)")
    p.add_argument("--threshold", type=float, default=None, help="clip level in sigma (default 4)")
    p.add_argument("--rel-threshold", type=float, default=None, help="minimum reliability")
    p.add_argument("--chunk-channels", type=int, default=None, help="channels per slab")
    p.add_argument("--tile-xy", type=int, default=None,
                   help="spatial tile core side in pixels (default 512; 0 = whole plane, no tiling)")
    p.add_argument("--overlap-xy", type=int, default=None, help="spatial tile overlap in pixels (default 32)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_baseline)
