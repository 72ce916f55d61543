"""Sizes that cannot work are refused at the edge, for every isolation: one line, exit 125,
nothing made. `-m 99999999999g` reached crun as a number over int64 (crun's raw error, exit 1);
`--cpus 64` booted a 64-vCPU VM on a 2-CPU host, which timed out after 30 s."""

from __future__ import annotations

import os

import pytest

from bareboat.paths import Roots
from tests.cli.conftest import Run, leftovers

ANY_ISOLATION = [
    (["-m", "99999999999g"], "too large"),
    (["--memory", "8193p"], "too large"),
    (["--pids-limit", "99999999999999999999"], "4194304"),
    (["--pids-limit", "4194305"], "4194304"),
    (["--cpus", "1025"], "at most 1024"),
]


def _host_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal")


def _refused(
    bb: Run, roots: Roots, image: str, isolation: str, flags: list[str], words: str
) -> None:
    r = bb("run", "--rm", "--isolation", isolation, "--no-template", *flags, image, "true")
    assert r.returncode == 125, (flags, r.stdout, r.stderr)
    assert r.stderr.startswith("bareboat: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert words in r.stderr
    assert bb("ps", "-aq").stdout == ""
    assert leftovers(roots) == []


@pytest.mark.parametrize("isolation", ["process", "container", "microvm"])
@pytest.mark.parametrize(("flags", "words"), ANY_ISOLATION)
def test_sizes_no_runtime_takes_are_refused(
    bb: Run, roots: Roots, image: str, isolation: str, flags: list[str], words: str
) -> None:
    _refused(bb, roots, image, isolation, flags, words)


def test_a_vm_larger_than_the_host_is_refused_at_create(bb: Run, roots: Roots, image: str) -> None:
    cpus = len(os.sched_getaffinity(0))
    _refused(bb, roots, image, "microvm", ["--cpus", str(cpus + 1)], f"this host has {cpus}")
    _refused(bb, roots, image, "microvm", ["--cpus", "64"], f"this host has {cpus}")
    mib = _host_mib()
    _refused(bb, roots, image, "microvm", ["--memory", f"{2 * mib}m"], f"host's {mib} MiB")


def test_the_largest_sizes_a_container_takes_still_run(bb: Run, image: str) -> None:
    r = bb(
        "run", "--rm", "--memory", "8000000t", "--pids-limit", "4194304", image, "true"
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
