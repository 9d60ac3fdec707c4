"""``cianna sdc1 ...`` sub-commands (SKA SDC1, 2-D continuum).

Commands defined here::

    cianna sdc1 simulate --out DIR [--size N] [--seed S] [--pb-null-radius DEG] [--ndim 2|4]
    cianna sdc1 score CATALOG TRUTH [--area test|train|all] [--freq 560] [--mode 0|1]
    cianna sdc1 baseline IMAGE [--pb PB] --out CATALOG      (.txt -> SDC1 text; .ecsv/.fits/.vot/.csv -> astropy)

Extending the ``sdc1`` group from another module (e.g. ``train`` / ``detect`` for YOLO-CIANNA)
-------------------------------------------------------------------------------------------------
The ``sdc1`` parser is created once per top-level parser by :func:`get_sdc1_subparsers`, which returns the
``argparse`` sub-parsers action of the group; calling it again returns the same object. Two ways to add
sub-sub-commands, both without editing this file:

1. a module ``cianna/cli/sdc1_<anything>.py`` defining ``register_sdc1(sdc1_subparsers)`` -- discovered and
   called automatically by :func:`register` below (no change to ``cianna/cli/__init__.py`` needed); or
2. a module listed in ``cianna.cli.COMMAND_MODULES`` whose ``register(subparsers)`` does::

       from cianna.cli.sdc1 import get_sdc1_subparsers
       p = get_sdc1_subparsers(subparsers).add_parser("train", help="...")
       p.set_defaults(func=my_train)

Each sub-command sets ``func`` (takes the parsed namespace, returns an exit code); heavy imports happen inside
``func``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil

__all__ = ["register", "get_sdc1_subparsers"]

log = logging.getLogger(__name__)

_ATTR = "_cianna_sdc1_subparsers"


def get_sdc1_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Return the sub-parsers action of the ``sdc1`` group, creating the group on first use.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The top-level ``cianna`` sub-parsers (``parser.add_subparsers(...)``).

    Returns
    -------
    argparse._SubParsersAction
        Add ``sdc1`` sub-commands with ``.add_parser(name, ...)``.
    """
    parser = subparsers.choices.get("sdc1")
    if parser is None:
        parser = subparsers.add_parser("sdc1", help="SKA SDC1 continuum: simulate, score, classical baseline",
                                       description="SKA Science Data Challenge 1 (560 MHz continuum) tools.")
        parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
    sub = getattr(parser, _ATTR, None)
    if sub is None:
        sub = parser.add_subparsers(dest="sdc1_command", metavar="SDC1_COMMAND")
        setattr(parser, _ATTR, sub)
    return sub


def _cmd_simulate(args: argparse.Namespace) -> int:
    from cianna.sim.continuum import simulate_continuum_field

    pb = None if args.pb_null_radius <= 0 else args.pb_null_radius
    field = simulate_continuum_field(args.out, size=args.size, seed=args.seed, pb_null_radius=pb,
                                     noise_rms=None if args.noise_rms is None else args.noise_rms * 1e-6,
                                     faint_sources=args.faint_sources, dirty_psf=args.dirty_psf, ndim=args.ndim)
    print(f"image  {field.image}\npb     {field.pb}\ntruth  {field.truth_path}  ({len(field.truth)} sources)\n"
          f"time   {field.meta['seconds_total']:.2f} s")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from cianna.scoring.sdc1 import score_sdc1

    score = score_sdc1(args.catalog, args.truth, freq=args.freq, area=args.area, mode=args.mode)
    score.to_table().pprint(max_lines=-1, max_width=-1)
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from cianna.pipelines.sdc1.baseline import run_baseline

    cat = run_baseline(args.image, pb=args.pb, out=args.out, thresh_isl=args.thresh_isl,
                       thresh_pix=args.thresh_pix, ncores=args.ncores)
    print(f"{len(cat)} sources -> {args.out}")
    return 0


def _load_extensions(sdc1_sub: argparse._SubParsersAction) -> None:
    import cianna.cli as cli_pkg

    for info in pkgutil.iter_modules(cli_pkg.__path__):
        if not info.name.startswith("sdc1_"):
            continue
        module = importlib.import_module(f"cianna.cli.{info.name}")
        hook = getattr(module, "register_sdc1", None)
        if hook is not None:
            hook(sdc1_sub)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sdc1`` group (simulate, score, baseline) and any ``cianna/cli/sdc1_*.py`` extensions."""
    sub = get_sdc1_subparsers(subparsers)

    p = sub.add_parser("simulate", help="simulate an SDC1-like field (image.fits, pb.fits, truth.txt)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--size", type=int, default=2048, help="image side in pixels (default 2048)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--pb-null-radius", type=float, default=2.75,
                   help="primary-beam first-null radius in deg (default 2.75 as SDC1 B1; 0 = no PB)")
    p.add_argument("--noise-rms", type=float, default=None,
                   help="white-noise rms in uJy/beam (default 0.36; 0.315 with --faint-sources, "
                        "0.30 with --faint-sources --dirty-psf)")
    p.add_argument("--faint-sources", action="store_true",
                   help="extend the population below the catalogue's completeness limit down to 0.27 uJy, "
                        "as the official full truth (10x more sources, all in the truth)")
    p.add_argument("--dirty-psf", action="store_true",
                   help="convolve sources below 8.6 uJy/beam with the dirty PSF measured on the real map, "
                        "and give the noise its autocorrelation (as SDC1)")
    p.add_argument("--ndim", type=int, choices=(2, 4), default=2, help="2-D image or SDC1 4-D layout")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("score", help="score an SDC1 catalogue with the official scorer")
    p.add_argument("catalog", help="submission (SDC1 text, header line optional)")
    p.add_argument("truth", help="truth catalogue (SDC1 text)")
    p.add_argument("--area", choices=("test", "train", "all"), default="test",
                   help="test = outside the training box (official), train = inside, all = no cut")
    p.add_argument("--freq", type=int, choices=(560, 1400, 9200), default=560, help="MHz (default 560)")
    p.add_argument("--mode", type=int, choices=(0, 1), default=0, help="0 = core positions, 1 = centroids")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("baseline", help="PyBDSF classical baseline -> SDC1 catalogue")
    p.add_argument("image", help="FITS image (Jy/beam, not PB-corrected)")
    p.add_argument("--pb", default=None, help="primary-beam FITS image for the flux correction")
    p.add_argument("--out", required=True,
                   help="output catalogue: .txt = SDC1 12-column text; .ecsv/.fits/.vot/.csv = astropy table")
    p.add_argument("--thresh-isl", type=float, default=3.0, help="island threshold in sigma (default 3)")
    p.add_argument("--thresh-pix", type=float, default=5.0, help="peak threshold in sigma (default 5)")
    p.add_argument("--ncores", type=int, default=1, help="cores for PyBDSF (default 1)")
    p.set_defaults(func=_cmd_baseline)

    _load_extensions(sub)
