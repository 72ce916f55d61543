"""`bareboat` commands: bench.

Each benchmark is a script under the repository's `bench/` directory with a
`main(argv) -> int`; `bareboat bench NAME [ARGS...]` runs it in this process. Add one with a
row in `BENCHMARKS`.
"""

from __future__ import annotations

import argparse
import functools
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bareboat.errors import UsageError


def bench_dir() -> Path:
    """`bench/` beside `src/` in a source checkout (benchmarks are not installed)."""
    return Path(__file__).resolve().parents[3] / "bench"


def run_script(name: str, argv: list[str]) -> int:
    script = bench_dir() / f"{name}.py"
    if not script.is_file():
        raise UsageError(f"benchmark {name!r} needs a source checkout ({script} is missing)")
    namespace = runpy.run_path(str(script), run_name=f"bench_{name}")
    code: int = namespace["main"](argv)
    return code


# name: (help, flags). Each flag is (flag, type, default, help); its value goes to the script
# as `flag value`, in this order, unless it is None.
Flag = tuple[str, Callable[[str], Any], Any, str]
_OUT: Flag = ("--out", str, "bench/results", "results directory")
BENCHMARKS: dict[str, tuple[str, tuple[Flag, ...]]] = {
    "pull": (
        "pull + unpack from a local registry against skopeo copy + umoci unpack",
        (
            ("--runs", int, 3, "repetitions per image (default 3)"),
            ("--big-mb", float, 100.0, "size of the big image"),
            ("--out", str, None, "results directory (default bench/results)"),
        ),
    ),
    "run": (
        "run --rm IMAGE true: bareboat vs podman vs bare runtimes",
        (("--runs", int, 15, "samples per case (default 15)"), _OUT),
    ),
    "wasm": (
        "Wasm cold/warm/raw wasmtime start and tasks per second",
        (
            ("--runs", int, 40, "samples per mode (default 40)"),
            ("--seconds", float, 3.0, "per throughput mode (default 3)"),
            _OUT,
        ),
    ),
    "microvm": (
        "microVM run --rm IMAGE true vs raw QEMU; phases; PSS",
        (("--runs", int, 7, "samples per case (default 7)"), _OUT),
    ),
    "runtime": (
        "podman run --rm IMAGE true: bareboat-runtime against plain runc",
        (("--runs", int, 10, "samples per case (default 10)"), _OUT),
    ),
    "kernel": (
        "guest kernel boot to poweroff: ours vs Debian's cloud kernel; slowest initcalls",
        (
            ("--runs", int, 7, "samples per kernel (default 7)"),
            ("--kernel", str, None, "our vmlinux (default: the built one)"),
            _OUT,
        ),
    ),
    "template": (
        "microVM templates: cold vs clone start, clones/s, PSS",
        (("--runs", int, 10, "cold/clone pairs (default 10)"), _OUT),
    ),
}


def _run(name: str, flags: list[tuple[str, str]], args: argparse.Namespace) -> int:
    argv: list[str] = []
    for flag, dest in flags:
        value = getattr(args, dest)
        if value is not None:
            argv += [flag, str(value)]
    return run_script(name, argv)


def register(sub: argparse._SubParsersAction[Any], only: str | None = None) -> None:
    """Add this group's one command to the `bareboat` parser (the one `only` can name)."""
    p = sub.add_parser("bench", help="run a benchmark (from a source checkout)")
    bench = p.add_subparsers(dest="bench", metavar="BENCHMARK")
    for name, (text, flags) in BENCHMARKS.items():
        b = bench.add_parser(name, help=text)
        dests = [
            (flag, b.add_argument(flag, type=kind, default=default, help=help_).dest)
            for flag, kind, default, help_ in flags
        ]
        b.set_defaults(func=functools.partial(_run, name, dests))
