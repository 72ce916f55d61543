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


def _add_run(bench: argparse._SubParsersAction[Any]) -> None:
    p = bench.add_parser("run", help="run --rm IMAGE true: bareboat vs podman vs bare runtimes")
    p.add_argument("--runs", type=int, default=15, help="samples per case (default 15)")
    p.add_argument("--out", default="bench/results", help="results directory")

    def run(args: argparse.Namespace) -> int:
        return run_script("run", ["--runs", str(args.runs), "--out", args.out])

    p.set_defaults(func=run)


def _add_wasm(bench: argparse._SubParsersAction[Any]) -> None:
    p = bench.add_parser("wasm", help="Wasm cold/warm/raw wasmtime start and tasks per second")
    p.add_argument("--runs", type=int, default=40, help="samples per mode (default 40)")
    p.add_argument("--seconds", type=float, default=3.0, help="per throughput mode (default 3)")
    p.add_argument("--out", default="bench/results", help="results directory")

    def run(args: argparse.Namespace) -> int:
        argv = ["--runs", str(args.runs), "--seconds", str(args.seconds), "--out", args.out]
        return run_script("wasm", argv)

    p.set_defaults(func=run)


def _add_microvm(bench: argparse._SubParsersAction[Any]) -> None:
    p = bench.add_parser("microvm", help="microVM run --rm IMAGE true vs raw QEMU; phases; PSS")
    p.add_argument("--runs", type=int, default=7, help="samples per case (default 7)")
    p.add_argument("--out", default="bench/results", help="results directory")

    def run(args: argparse.Namespace) -> int:
        return run_script("microvm", ["--runs", str(args.runs), "--out", args.out])

    p.set_defaults(func=run)


def _add_runtime(bench: argparse._SubParsersAction[Any]) -> None:
    p = bench.add_parser(
        "runtime", help="podman run --rm IMAGE true: bareboat-runtime against plain runc"
    )
    p.add_argument("--runs", type=int, default=10, help="samples per case (default 10)")
    p.add_argument("--out", default="bench/results", help="results directory")

    def run(args: argparse.Namespace) -> int:
        return run_script("runtime", ["--runs", str(args.runs), "--out", args.out])

    p.set_defaults(func=run)


def _add_template(bench: argparse._SubParsersAction[Any]) -> None:
    p = bench.add_parser("template", help="microVM templates: cold vs clone start, clones/s, PSS")
    p.add_argument("--runs", type=int, default=10, help="cold/clone pairs (default 10)")
    p.add_argument("--out", default="bench/results", help="results directory")

    def run(args: argparse.Namespace) -> int:
        return run_script("template", ["--runs", str(args.runs), "--out", args.out])

    p.set_defaults(func=run)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this group's commands to the `bareboat` parser."""
    p = sub.add_parser("bench", help="run a benchmark (from a source checkout)")
    bench = p.add_subparsers(dest="bench", metavar="BENCHMARK")
    _add_pull(bench)
    _add_run(bench)
    _add_wasm(bench)
    _add_microvm(bench)
    _add_runtime(bench)
    _add_template(bench)
