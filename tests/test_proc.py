"""A process named by pid and start time, and waiting for it to exit."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from bareboat.proc import alive, start_time, wait_child, wait_exit


def test_liveness_uses_start_time() -> None:
    start = start_time(os.getpid())
    assert start is not None and alive(os.getpid(), start)
    assert not alive(os.getpid(), start + 1)  # a reused pid has another start time
    assert not alive(None, None)


def test_a_zombie_has_exited() -> None:
    child = subprocess.Popen(["true"])
    start = start_time(child.pid)
    end = time.monotonic() + 10
    while start_time(child.pid) is not None and time.monotonic() < end:
        time.sleep(0.01)
    assert start_time(child.pid) is None  # exited, not yet reaped
    assert wait_exit(child.pid, start, 0) is True
    child.wait()


def test_wait_exit_ends_when_the_process_does() -> None:
    # Not our child: the pidfd still tells its exit.
    holder = subprocess.Popen(["sh", "-c", "sleep 0.3 & echo $!; wait"], stdout=subprocess.PIPE)
    assert holder.stdout is not None
    pid = int(holder.stdout.readline())
    start = start_time(pid)
    assert wait_exit(pid, start, 0.05) is False  # still sleeping
    t = time.monotonic()
    assert wait_exit(pid, start, 10) is True
    assert time.monotonic() - t < 5
    holder.wait()


def test_wait_child_gives_the_shell_code_and_passes_signals_on() -> None:
    assert wait_child(subprocess.Popen(["sh", "-c", "exit 3"]).pid) == 3
    killed = subprocess.Popen(["sleep", "100"])
    killed.kill()
    assert wait_child(killed.pid) == 137
    # A signal this process gets while waiting reaches the child (it exits 9 on TERM).
    child = subprocess.Popen(["sh", "-c", "trap 'exit 9' TERM; while true; do sleep 0.05; done"])
    time.sleep(0.3)  # let the shell set its trap
    pid = os.getpid()
    sender = subprocess.Popen(["sh", "-c", f"sleep 0.2; kill -TERM {pid}"])
    old = signal.getsignal(signal.SIGTERM)
    try:
        assert wait_child(child.pid, forward=(signal.SIGTERM,)) == 9
    finally:
        signal.signal(signal.SIGTERM, old)
        sender.wait()


def test_parse_signal() -> None:
    import pytest

    from bareboat.errors import UsageError
    from bareboat.proc import parse_signal

    assert [parse_signal(t) for t in ("9", "KILL", "sigterm", " SIGUSR1 ")] == [
        9, signal.SIGKILL, signal.SIGTERM, signal.SIGUSR1,
    ]  # fmt: skip
    with pytest.raises(UsageError, match="unknown signal 'NOPE'"):
        parse_signal("NOPE")
