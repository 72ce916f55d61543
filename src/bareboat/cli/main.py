"""Entry point of `bareboat`.

Each command group lives in its own module with a `register(subparsers)` function that adds
its commands and sets `func` on them. Handlers import the engine and other heavy modules
inside their bodies, so `bareboat --help` and the hot paths stay cheap to start.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from bareboat import __version__
from bareboat.errors import BareboatError

from . import bench, containers, guest, images, templates


class Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit code 125, as docker does."""

    def error(self, message: str) -> NoReturn:
        self.exit(125, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bareboat",
        description="Run OCI images as microVMs, containers, Wasm sandboxes or processes.",
    )
    parser.add_argument("--version", action="version", version=f"bareboat {__version__}")
    parser.add_argument("--root", help="store root (default $BAREBOAT_ROOT or /var/lib/bareboat)")
    parser.add_argument(
        "--state", help="runtime state root (default $BAREBOAT_STATE or /run/bareboat)"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for group in (images, containers, guest, templates, bench):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 125
    try:
        code: int = args.func(args)
        return code
    except BareboatError as err:
        if args.debug:
            raise
        print(f"bareboat: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
