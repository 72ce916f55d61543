"""`bareboat`'s parser: a call that names its command builds only that command's parser, from
the groups that register it (cli/main.py's COMMANDS), and reads every argv as the parser of
all commands does."""

from __future__ import annotations

import argparse
import functools
import importlib
from typing import Any

import pytest

from bareboat.cli.main import COMMANDS, GROUPS, Parser, build_parser, command_of


def _commands_of(group: str) -> set[str]:
    parser = Parser(prog="bareboat")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    importlib.import_module(f"bareboat.cli.{group}").register(sub)
    return set(sub.choices)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, Any]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_table_names_each_commands_groups() -> None:
    registered: dict[str, set[str]] = {}
    for group in GROUPS:
        for command in _commands_of(group):
            registered.setdefault(command, set()).add(group)
    assert {c: set(g) for c, g in COMMANDS.items()} == registered
    assert set(_subparsers(build_parser())) == set(COMMANDS)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["run", "--rm", "img", "true"], "run"),
        (["--root", "/r", "--state=/s", "--debug", "ps", "-a"], "ps"),
        (["--root=/r", "image", "ls"], "image"),
        (["--state", "run", "ps"], "ps"),  # `run` is --state's value here
        (["--help"], None),
        (["--version"], None),
        ([], None),
        (["nosuch"], None),
        (["--root"], None),
    ],
)
def test_command_of(argv: list[str], command: str | None) -> None:
    assert command_of(argv) == command


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--rm", "--isolation", "container", "-e", "A=1", "img", "sh", "-c", "x"],
        ["--root", "/r", "create", "--name", "n", "-v", "/a:/b:ro", "img"],
        ["inspect", "a", "b"],
        ["image", "ls", "-q"],
        ["pull", "-q", "img"],
        ["guest", "info"],
        ["template", "ls"],
        ["bench", "run", "--runs", "2"],
        ["exec", "-it", "c", "sh"],
    ],
)
def test_one_group_parses_as_all_do(argv: list[str]) -> None:
    lean = build_parser(argv)
    assert set(_subparsers(lean)) == {argv_command(argv)}
    assert _plain(lean.parse_args(argv)) == _plain(build_parser().parse_args(argv))


def _plain(ns: argparse.Namespace) -> dict[str, Any]:
    """The namespace's values, a handler made by functools.partial as what it calls."""
    out = vars(ns)
    func = out.get("func")
    if isinstance(func, functools.partial):
        out["func"] = (func.func, func.args, func.keywords)
    return out


def argv_command(argv: list[str]) -> str:
    command = command_of(argv)
    assert command is not None
    return command


def test_version_builds_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    from bareboat import __version__

    for argv in (["--version"], ["--root", "/r", "--version"]):
        parser = build_parser(argv)
        assert _subparsers(parser) == {}
        with pytest.raises(SystemExit) as done:
            parser.parse_args(argv)
        assert done.value.code == 0
        assert capsys.readouterr().out == f"bareboat {__version__}\n"
