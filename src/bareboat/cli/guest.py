"""`bareboat` commands: `guest build`, `guest info` and the host-wide `info`.

The kernel build takes minutes, so it shows progress: a rich bar on a terminal, plain lines
otherwise (logs, CI). The guest and the accelerator are the engine's (engine/guest.py); rich
and the engine are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from bareboat.cli.common import roots

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


class RichProgress:
    """The kernel build's steps as a spinner, the compile as a bar (rich, lazily imported)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress: Progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=False,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()
        self._progress.stop()

    def _finish(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, total=task.total or 1, completed=task.total or 1)
            self._task = None

    def step(self, text: str) -> None:
        self._finish()
        self._task = self._progress.add_task(text, total=None)

    def advance(self, done: int, total: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=done, total=total)


def _stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _build(args: argparse.Namespace) -> int:
    from bareboat.engine import guest

    r = roots(args)
    if sys.stderr.isatty():
        with RichProgress() as progress:
            vmlinux = guest.build_kernel(r, force=args.force, jobs=args.jobs, progress=progress)
    else:
        vmlinux = guest.build_kernel(
            r, force=args.force, jobs=args.jobs, progress=guest.plain_progress(_stderr_line)
        )
    print(f"kernel: {vmlinux}")
    _stderr_line("bareboat: building the guest init")
    print(f"init:   {guest.build_init(r)}")
    return 0


def _print_tree(data: dict[str, Any], indent: int = 0) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            print(f"{' ' * indent}{key}:")
            _print_tree(value, indent + 2)
        else:
            shown = "-" if value is None else value
            print(f"{' ' * indent}{key}: {shown}")


def _guest_info_cmd(args: argparse.Namespace) -> int:
    from bareboat.engine import guest

    info = guest.guest_info(roots(args))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_tree(info)
    return 0


def tool_version(argv: list[str]) -> str | None:
    """The first line a tool prints for its version, or None if it is not installed."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].strip() if lines else None


def _info_cmd(args: argparse.Namespace) -> int:
    from bareboat import __version__
    from bareboat.engine import guest

    r = roots(args)
    accel, reason = guest.accelerator(r, args.accel)
    info: dict[str, Any] = {
        "version": __version__,
        "roots": {"root": str(r.root), "state": str(r.state), "cache": str(r.cache)},
        "microvm": {
            "accelerator": accel,
            "reason": reason,
            **guest.guest_info(r),
        },
        "tools": {
            "qemu": tool_version(["qemu-system-x86_64", "--version"]),
            "runc": tool_version(["runc", "--version"]),
            "crun": tool_version(["crun", "--version"]),
        },
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_tree(info)
    return 0


def register(sub: argparse._SubParsersAction[Any], only: str | None = None) -> None:
    """Add this group's commands, or only the command `only`, to the `bareboat` parser."""
    if only in (None, "guest"):
        _add_guest(sub)
    if only in (None, "info"):
        _add_info(sub)


def _add_guest(sub: argparse._SubParsersAction[Any]) -> None:
    guest = sub.add_parser("guest", help="build and show the microVM guest kernel and init")
    gsub = guest.add_subparsers(dest="guest_command", metavar="COMMAND")
    guest.set_defaults(func=lambda a: (guest.print_help(sys.stderr), 125)[1])

    p = gsub.add_parser("build", help="build the guest kernel and init (cached by their inputs)")
    p.add_argument("--force", action="store_true", help="rebuild the kernel even if cached")
    p.add_argument("--jobs", "-j", type=int, default=None, help="parallel compile jobs")
    p.set_defaults(func=_build)

    p = gsub.add_parser("info", help="show the guest kernel and init: paths, keys, sizes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_guest_info_cmd)


def _add_info(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("info", help="show bareboat's set-up: roots, accelerator, guest, tools")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--accel", choices=["auto", "kvm", "tcg"], default=None, help="accelerator to report"
    )
    p.set_defaults(func=_info_cmd)
