"""`bareboat` commands: bench.

Benchmarks live in `bench/` of a source checkout (they need matplotlib and build their own
fixtures); each is a script with `main(argv) -> int`. `bareboat bench NAME ...` loads it from
the checkout this package runs from, so nothing of it is imported at CLI start-up.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any


def _script(name: str) -> ModuleType:
    from bareboat.errors import UsageError

    path = Path(__file__).resolve().parents[3] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    if not path.is_file() or spec is None or spec.loader is None:
        raise UsageError(f"benchmark {name!r} not found: run it from a source checkout ({path})")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wasm(bsub: argparse._SubParsersAction[Any]) -> None:
    p = bsub.add_parser("wasm", help="Wasm cold/warm/raw wasmtime start and tasks per second")
    p.add_argument("--runs", default="40", help="samples per mode (default 40)")
    p.add_argument("--seconds", default="3", help="seconds per throughput mode (default 3)")
    p.add_argument("--out", default="bench/results", help="where wasm.json/.png go")

    def run(args: argparse.Namespace) -> int:
        argv = ["--runs", args.runs, "--seconds", args.seconds, "--out", args.out]
        code: int = _script("wasm").main(argv)
        return code

    p.set_defaults(func=run)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this group's commands to the `bareboat` parser."""
    p = sub.add_parser("bench", help="run a benchmark from bench/ (source checkout)")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(p))
    _wasm(bsub)
