"""`--log-opt`: a container's log is rotated and bounded, and `logs` (and `logs -f`) read it
back in order across the rotated files. Real containers through the real CLI; the disk is
checked afterwards."""

from __future__ import annotations

import json

import pytest

from bareboat.paths import Roots
from tests.cli.conftest import Run, leftovers


def log_files(roots: Roots, cid: str) -> dict[str, int]:
    d = roots.containers / cid
    return {p.name: p.stat().st_size for p in d.glob("log.jsonl*")}


def cid_of(bb: Run, name: str) -> str:
    r = bb("inspect", name)
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)[0]["id"])


def test_a_chatty_workload_leaves_at_most_size_times_files(
    bb: Run, image: str, roots: Roots
) -> None:
    """100,000 lines (about 6 MB of log) with max-size=16k and max-file=3: at most 48 KiB on
    disk, and `logs` shows the newest lines, in order, across the rotation."""
    r = bb(
        "run", "--name", "chatty", "--log-opt", "max-size=16k", "--log-opt", "max-file=3",
        image, "seq", "1", "100000",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "100000"  # the attached run saw everything
    files = log_files(roots, cid_of(bb, "chatty"))
    assert sorted(files) == ["log.jsonl", "log.jsonl.1", "log.jsonl.2"]
    assert all(size <= 16 << 10 for size in files.values())
    # The oldest kept entry may begin in the middle of a line: the tail starts after it.
    shown = [int(x) for x in bb("logs", "chatty").stdout.split()[1:]]
    assert shown[-1] == 100000 and len(shown) > (16 << 10) // 40  # more than one file's worth
    assert shown == list(range(100001 - len(shown), 100001))


def test_logs_follow_reads_across_rotations(bb: Run, image: str, roots: Roots) -> None:
    pad = "." * 30
    script = f"sleep 1; i=0; while [ $i -lt 3000 ]; do echo $i {pad}; i=$((i+1)); done"
    cid = bb(
        "run", "-d", "--log-opt", "max-size=8k", "--log-opt", "max-file=60", image,
        "sh", "-c", script,
    ).stdout.strip()  # fmt: skip
    follow = bb("logs", "-f", cid, timeout=120)
    assert follow.returncode == 0, follow.stderr
    assert [int(x.split()[0]) for x in follow.stdout.splitlines()] == list(range(3000))
    assert len(log_files(roots, cid)) >= 4  # it was read across several rotations
    assert bb("logs", cid).stdout == follow.stdout


def test_bad_log_opt_is_one_line_and_makes_nothing(bb: Run, image: str, roots: Roots) -> None:
    r = bb("run", "--rm", "--log-opt", "max-file=0", image, "true")
    assert r.returncode == 125
    assert r.stderr.strip() == "bareboat: error: invalid log option max-file=0: from 1 to 100"
    assert bb("ps", "-aq").stdout == ""
    assert leftovers(roots) == []


@pytest.mark.slow
def test_a_vm_writing_without_end_is_bounded(bb: Run, image: str, roots: Roots) -> None:
    """`yes` in a VM wrote 492 MB of log in 20 s; it now rotates within max-size x max-file."""
    from tests.microvm.test_backend import kernel_or_skip

    kernel_or_skip(roots)
    r = bb(
        "run", "-d", "--isolation", "microvm", "--no-template", "--log-opt", "max-size=256k",
        "--log-opt", "max-file=2", image, "sh", "-c", "yes | head -c 20000000; echo END",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert bb("wait", cid, timeout=300).stdout.strip() == "0"
    files = log_files(roots, cid)
    assert sorted(files) == ["log.jsonl", "log.jsonl.1"]
    assert sum(files.values()) <= 512 << 10
    assert bb("logs", cid).stdout.endswith("y\nEND\n")
