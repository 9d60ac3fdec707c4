"""The ``cianna`` command line: one entry point with sub-commands.

Each sub-command group lives in its own module ``cianna/cli/<name>.py`` that defines
``register(subparsers)``; it adds its parser(s) and sets ``func`` (a callable taking the parsed
``argparse.Namespace`` and returning an exit code). Imports of heavy libraries happen inside ``func``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

__all__ = ["main", "build_parser"]

#: sub-command modules, registered in this order
COMMAND_MODULES = ["demo", "sdc1", "sdc2", "sdc2_yolo"]


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level argument parser with every available sub-command."""
    from cianna import __version__

    parser = argparse.ArgumentParser(prog="cianna", description="CIANNA on PyTorch: networks, YOLO-CIANNA, "
                                     "SKA science pipelines.")
    parser.add_argument("--version", action="version", version=f"cianna {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"cianna.cli.{name}")
        except ModuleNotFoundError as exc:  # a sub-command module not written yet
            if exc.name == f"cianna.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("cianna")
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run the ``cianna`` command; returns the exit code (tests call ``main([...])``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, OSError) as exc:
        logging.getLogger("cianna").error("%s", exc)
        print(f"cianna: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
