"""`bareboat bench NAME`: each benchmark's flags reach its script's main() as given, with the
CLI's defaults; the scripts' runs themselves are tested where they are slow (test_bench_pull)."""

from __future__ import annotations

import pytest

from bareboat.cli import bench
from bareboat.cli.main import build_parser

DEFAULTS = {
    "pull": ["--runs", "3", "--big-mb", "100.0"],
    "run": ["--runs", "15", "--out", "bench/results"],
    "wasm": ["--runs", "40", "--seconds", "3.0", "--out", "bench/results"],
    "microvm": ["--runs", "7", "--out", "bench/results"],
    "runtime": ["--runs", "10", "--out", "bench/results"],
    "template": ["--runs", "10", "--out", "bench/results"],
    "kernel": ["--runs", "7", "--out", "bench/results"],
}
GIVEN = {
    "pull": (["--runs", "2", "--big-mb", "5", "--out", "o"],
             ["--runs", "2", "--big-mb", "5.0", "--out", "o"]),
    "run": (["--runs", "1", "--out", "o"], ["--runs", "1", "--out", "o"]),
    "wasm": (["--seconds", "0.5", "--runs", "2"],
             ["--runs", "2", "--seconds", "0.5", "--out", "bench/results"]),
    "microvm": (["--out", "o"], ["--runs", "7", "--out", "o"]),
    "runtime": (["--runs", "4"], ["--runs", "4", "--out", "bench/results"]),
    "template": (["--runs", "4", "--out", "o"], ["--runs", "4", "--out", "o"]),
    "kernel": (["--kernel", "k", "--runs", "3"],
               ["--runs", "3", "--kernel", "k", "--out", "bench/results"]),
}  # fmt: skip


def _argv(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[str, list[str]]:
    called: list[tuple[str, list[str]]] = []

    def run_script(name: str, argv: list[str]) -> int:
        called.append((name, argv))
        return 0

    monkeypatch.setattr(bench, "run_script", run_script)
    ns = build_parser().parse_args(["bench", *args])
    assert ns.func(ns) == 0
    (got,) = called
    return got


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_each_benchmark_gets_its_flags(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    assert _argv(monkeypatch, [name]) == (name, DEFAULTS[name])
    given, passed = GIVEN[name]
    assert _argv(monkeypatch, [name, *given]) == (name, passed)
