"""Entry point of `bareboat`.

Each command group lives in its own module with a `register(subparsers, only)` function that
adds its commands (or only the one named) and sets `func` on them. Handlers import the engine
and other heavy modules inside their bodies, so `bareboat --help` and the hot paths stay cheap
to start. A call that
names its command imports only the group that has it and builds only that command's parser:
argparse's tree of every command (each subparser with its gettext lookups) cost a `run`
milliseconds it never used.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bareboat import __version__
from bareboat.errors import BareboatError

TYPE_CHECKING = False  # typing costs import time on every `run`; mypy treats this as true
if TYPE_CHECKING:
    from types import ModuleType
    from typing import NoReturn

# The groups, in the order their commands are listed, and which of them registers each
# command (`inspect` is both the images' and, taking it over, the containers').
GROUPS = ("images", "containers", "guest", "templates", "bench")
COMMANDS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("pull", "images", "rmi", "tag", "load", "save", "image"), ("images",)),
    "inspect": ("images", "containers"),
    **dict.fromkeys(
        ("run", "create", "start", "ps", "logs", "exec", "stop", "kill", "rm", "wait"),
        ("containers",),
    ),
    "guest": ("guest",),
    "info": ("guest",),
    "template": ("templates",),
    "bench": ("bench",),
}
# The global options that take a value (the next argument, unless given as --opt=value).
_VALUED = ("--root", "--state")


class Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit code 125, as docker does."""

    def error(self, message: str) -> NoReturn:
        self.exit(125, f"{self.prog}: error: {message}\n")


def _first_word(argv: Sequence[str]) -> str | None:
    """What `argv` has first after the global options that take a value, and --debug."""
    args = iter(argv)
    for arg in args:
        if arg in _VALUED:
            next(args, None)
        elif arg != "--debug" and not arg.startswith(tuple(f"{v}=" for v in _VALUED)):
            return arg
    return None


def command_of(argv: Sequence[str]) -> str | None:
    """The command `argv` names after the global options; None for none (or `--help`,
    `--version`, or anything not understood: then every group is built)."""
    word = _first_word(argv)
    return word if word in COMMANDS else None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: with only the command it names (`command_of`), none for
    `--version` (which ends the parse before any command), or every command when it names
    none or `argv` is None."""
    from importlib import import_module

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
    command = command_of(argv) if argv is not None else None
    if command:
        names = COMMANDS[command]
    elif argv is not None and _first_word(argv) == "--version":
        names = ()
    else:
        names = GROUPS
    for name in names:
        group: ModuleType = import_module(f"bareboat.cli.{name}")
        group.register(sub, only=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
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
