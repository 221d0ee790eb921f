"""The ``optreg`` command line."""

from __future__ import annotations

import argparse
from typing import Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    from optreg import __version__

    parser = argparse.ArgumentParser(
        prog="optreg",
        description="optreg: regularization as composable Optax gradient transformations for JAX.",
    )
    parser.add_argument("--version", action="version", version=f"optreg {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    from optreg.demo.command import add_parser as add_demo_parser

    add_demo_parser(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.handler(args))
