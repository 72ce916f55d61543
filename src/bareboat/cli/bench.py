"""`bareboat` commands: bench.

Each benchmark is a script under the repository's `bench/` directory with a
`main(argv) -> int`; `bareboat bench NAME [ARGS...]` runs it in this process. Add one with an
`_add_<name>` function below and a line in `register`.
"""

from __future__ import annotations

import argparse
import runpy
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


def _add_pull(bench: argparse._SubParsersAction[Any]) -> None:
    p = bench.add_parser(
        "pull", help="pull + unpack from a local registry against skopeo copy + umoci unpack"
    )
    p.add_argument("--runs", type=int, default=3, help="repetitions per image (default 3)")
    p.add_argument("--big-mb", type=float, default=100.0, help="size of the big image")
    p.add_argument("--out", help="results directory (default bench/results)")

    def run(args: argparse.Namespace) -> int:
        argv = ["--runs", str(args.runs), "--big-mb", str(args.big_mb)]
        if args.out:
            argv += ["--out", args.out]
        return run_script("pull", argv)

    p.set_defaults(func=run)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this group's commands to the `bareboat` parser."""
    p = sub.add_parser("bench", help="run a benchmark (from a source checkout)")
    bench = p.add_subparsers(dest="bench", metavar="BENCHMARK")
    _add_pull(bench)
