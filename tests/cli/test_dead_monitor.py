"""A container whose monitor is killed (kill -9) leaves nothing running: the next command that
looks at it (here `ps`) ends what the monitor left (the workload and what it started, crun, the
VM) and unmounts its root, and only then says Exited. Checked on the host: processes, mounts.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from bareboat.paths import Roots
from bareboat.proc import start_time, wait_exit
from tests.cli.conftest import Run, leftovers
from tests.microvm.test_backend import kernel_or_skip


def _running(needle: str) -> list[str]:
    """The command lines of the live (not zombie) processes whose command line has `needle`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or start_time(int(proc.name)) is None:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            found.append(f"{proc.name}: {cmdline[:100]}")
    return found


def _sleeps(token: str) -> list[str]:
    """This test's workload processes: `sleep <token>N` (the monitor, a fork of the CLI, has
    the workload's command line among its own arguments, so only the whole argv tells)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or start_time(int(proc.name)) is None:
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:1] == [b"sleep"] and argv[1:2] and argv[1].startswith(token.encode()):
            found.append(proc.name)
    return found


def _mounted(needle: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if needle in line.split()[4]]


def _inspect(bb: Run, cid: str) -> dict[str, object]:
    data: list[dict[str, object]] = json.loads(bb("inspect", cid).stdout)
    return data[0]


def _until(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.parametrize(
    "isolation",
    ["process", "container", pytest.param("microvm", marks=pytest.mark.slow)],
)
def test_a_killed_monitor_leaves_nothing_running(
    bb: Run, image: str, roots: Roots, isolation: str
) -> None:
    if isolation == "microvm":
        kernel_or_skip(roots)
    token = str(random.randrange(10**6, 10**7))  # names this test's sleeps among the host's
    cid = bb(
        "run", "-d", "--isolation", isolation, "--no-template", image,
        "sh", "-c", f"sleep {token}1 & sleep {token}2", timeout=120,
    ).stdout.strip()  # fmt: skip
    rec = _inspect(bb, cid)
    monitor = int(rec["monitor_pid"])  # type: ignore[call-overload]
    if isolation == "microvm":
        qemu = int(rec["pid"])  # type: ignore[call-overload]
        qemu_start = start_time(qemu)
        _until("the VM's workload never ran", lambda: bb("exec", cid, "pidof", "sleep").stdout)
    else:
        _until("the workload never ran", lambda: len(_sleeps(token)) == 2)
    assert _mounted(cid), "the container's root is not mounted"

    os.kill(monitor, signal.SIGKILL)
    assert wait_exit(monitor, int(rec["monitor_start"]), 10)  # type: ignore[call-overload]

    ps = bb("ps", "-a")
    assert "Exited (255)" in ps.stdout, ps.stdout
    # By the time `ps` says so, nothing of the container runs and its root is unmounted.
    assert _sleeps(token) == []
    assert _running(cid) == []  # crun (its argv names the container), QEMU (its sockets)
    if isolation == "microvm":
        assert start_time(qemu) != qemu_start
    assert _mounted(cid) == []
    rec = _inspect(bb, cid)
    assert (rec["state"], rec["exit_code"]) == ("exited", 255)
    assert "monitor died" in str(rec["error"]) and "ended" in str(rec["error"])
    # The record is the truth now: stop has nothing to do, kill nothing to signal, rm no -f.
    assert bb("stop", cid).returncode == 0
    assert bb("kill", cid).returncode == 125
    assert bb("rm", cid).returncode == 0
    assert leftovers(roots) == []


def test_rm_f_after_the_monitor_died_ends_everything(bb: Run, image: str, roots: Roots) -> None:
    token = str(random.randrange(10**6, 10**7))
    cid = bb(
        "run", "-d", "--isolation", "process", image, "sh", "-c", f"sleep {token}1 & sleep {token}2"
    ).stdout.strip()
    _until("the workload never ran", lambda: len(_sleeps(token)) == 2)
    rec = _inspect(bb, cid)
    os.kill(int(rec["monitor_pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    assert wait_exit(int(rec["monitor_pid"]), int(rec["monitor_start"]), 10)  # type: ignore[call-overload]
    assert bb("rm", "-f", cid).returncode == 0  # the first command after the kill
    assert _sleeps(token) == []
    assert leftovers(roots) == []


def test_a_process_containers_daemons_end_with_it(bb: Run, image: str, roots: Roots) -> None:
    """With its monitor alive too: what the workload started does not outlive the container
    (it would run on in a root unmounted under it, owned by nobody)."""
    token = str(random.randrange(10**6, 10**7))
    cid = bb(
        "run", "-d", "--isolation", "process", image, "sh", "-c", f"sleep {token}1 & sleep {token}2"
    ).stdout.strip()
    _until("the workload never ran", lambda: len(_sleeps(token)) == 2)
    assert bb("rm", "-f", cid).returncode == 0
    assert _sleeps(token) == []
    # A workload that leaves a daemon behind and exits: the daemon ends with the container.
    r = bb("run", "--rm", "--isolation", "process", image, "sh", "-c", f"sleep {token}3 &")
    assert r.returncode == 0, r.stderr
    assert _sleeps(token) == []
    assert leftovers(roots) == []
