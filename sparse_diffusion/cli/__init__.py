"""`sparse-diffusion` command line: demo, generate, compare, bench attention, bench quality, bench dlm, bench
dlm-accuracy."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import SparseDiffusionError
from . import bench, compare, demo, generate
from .args import HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="sparse-diffusion", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version", action="version", version=f"sparse-diffusion {__version__}", help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (demo, generate, compare, bench):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except SparseDiffusionError as exc:
        print(f"sparse-diffusion: error: {exc}", file=sys.stderr)
        return 2
