"""create/start/ps/logs/exec/stop/kill/rm/inspect/wait, and a monitor that dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from bareboat.paths import Roots
from tests.cli.conftest import Run, bareboat_argv, cgroups_of, leftovers, read_pty


def inspect(bb: Run, ref: str) -> dict[str, object]:
    r = bb("inspect", ref)
    assert r.returncode == 0, r.stderr
    data: list[dict[str, object]] = json.loads(r.stdout)
    return data[0]


def test_create_start_wait_ps_rm(bb: Run, image: str, roots: Roots) -> None:
    r = bb("create", "--name", "one", image, "sh", "-c", "echo hello; exit 3")
    cid = r.stdout.strip()
    assert len(cid) == 64
    assert inspect(bb, "one")["state"] == "created"
    assert bb("create", "--name", "one", image, "true").returncode == 125  # name in use
    assert bb("start", "one").returncode == 0
    w = bb("wait", cid[:12])
    assert (w.returncode, w.stdout) == (3, "3\n")
    rec = inspect(bb, "one")
    assert (rec["state"], rec["exit_code"]) == ("exited", 3)
    assert bb("ps", "-q").stdout == ""
    assert bb("ps", "-aq").stdout.split() == [cid[:12]]
    assert "Exited (3)" in bb("ps", "-a").stdout
    logs = bb("logs", "one")
    assert logs.stdout == "hello\n"
    # an exited container starts again, in its own writable layer
    a = bb("start", "-a", "one")
    assert (a.returncode, a.stdout) == (3, "hello\n")
    assert bb("rm", "one").returncode == 0
    assert bb("inspect", "one").returncode == 125
    assert leftovers(roots) == []


def test_logs_follow_keeps_streams_apart(bb: Run, image: str) -> None:
    cid = bb("run", "-d", image, "sh", "-c", "echo a; echo e >&2; sleep 1; echo b").stdout.strip()
    r = bb("logs", "-f", cid)
    assert (r.stdout, r.stderr) == ("a\nb\n", "e\n")
    t = bb("logs", "-t", cid)
    assert t.stdout.splitlines()[0].endswith(" a") and t.stdout.startswith("20")


def test_exec(bb: Run, image: str) -> None:
    cid = bb("run", "-d", image, "sleep", "30").stdout.strip()
    r = bb("exec", cid, "sh", "-c", "echo in; echo err >&2; exit 4")
    assert (r.returncode, r.stdout, r.stderr) == (4, "in\n", "err\n")
    r = bb("exec", "-u", "app", "-w", "/tmp", "-e", "X=1", cid, "sh", "-c", "id -u; pwd; echo $X")
    assert r.stdout.split() == ["1000", "/tmp", "1"], r.stderr
    # -e overrides the container's own variable instead of adding a second one
    r = bb("exec", "-e", "PATH=/bin", cid, "sh", "-c", "env | grep -c ^PATH=; echo $PATH")
    assert r.stdout.split() == ["1", "/bin"], r.stderr
    r = bb("exec", "-i", cid, "cat", input="piped\n")
    assert r.stdout == "piped\n"
    # the exec'd process sees the container's own files
    bb("exec", cid, "sh", "-c", "echo mark > /mark")
    assert bb("exec", cid, "cat", "/mark").stdout == "mark\n"
    assert bb("rm", "-f", cid).returncode == 0


def test_stop_escalates_to_sigkill(bb: Run, image: str, roots: Roots) -> None:
    cid = bb(
        "run", "-d", image, "sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"
    ).stdout.strip()
    time.sleep(0.3)
    t = time.monotonic()
    assert bb("stop", "-t", "1", cid).returncode == 0
    took = time.monotonic() - t
    rec = inspect(bb, cid)
    assert (rec["state"], rec["exit_code"]) == ("exited", 137)
    assert took >= 1.0
    assert bb("rm", cid).returncode == 0
    assert leftovers(roots) == []


def test_stop_with_a_trap_exits_cleanly(bb: Run, image: str) -> None:
    cid = bb(
        "run", "-d", image, "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"
    ).stdout.strip()
    time.sleep(0.3)
    assert bb("stop", cid).returncode == 0
    assert inspect(bb, cid)["exit_code"] == 0


def test_kill_with_a_signal(bb: Run, image: str) -> None:
    cid = bb(
        "run", "-d", image, "sh", "-c", "trap 'exit 9' USR1; while :; do sleep 0.1; done"
    ).stdout.strip()
    time.sleep(0.3)
    assert bb("kill", "-s", "USR1", cid).returncode == 0
    assert bb("wait", cid).stdout == "9\n"
    assert bb("kill", cid).returncode == 125  # not running any more


@pytest.mark.parametrize(("made_with", "removed_with"), [("crun", "runc"), ("runc", "crun")])
def test_rm_refuses_running_and_force_cleans_up(
    bb: Run,
    image: str,
    roots: Roots,
    monkeypatch: pytest.MonkeyPatch,
    made_with: str,
    removed_with: str,
) -> None:
    monkeypatch.setenv("BAREBOAT_OCI_RUNTIME", made_with)
    cid = bb(
        "run", "-d", "--memory", "64m", "--pids-limit", "50", image, "sleep", "30"
    ).stdout.strip()
    deadline = time.monotonic() + 10  # `run -d` returns once the runtime was started
    while not cgroups_of(cid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cgroups_of(cid)
    assert bb("rm", cid).returncode == 125
    # removed by a CLI that would pick the other runtime: the container's own is used
    monkeypatch.setenv("BAREBOAT_OCI_RUNTIME", removed_with)
    assert bb("rm", "-f", cid).returncode == 0
    assert leftovers(roots) == []
    assert cgroups_of(cid) == []


def test_rm_f_right_after_run_d(bb: Run, image: str, roots: Roots) -> None:
    """The runtime may not know the container yet: nothing may be stranded."""
    for _ in range(3):
        cid = bb("run", "-d", image, "sleep", "30").stdout.strip()
        assert bb("rm", "-f", cid).returncode == 0
        assert leftovers(roots) == []
        assert cgroups_of(cid) == []


def test_process_isolation_lifecycle(bb: Run, image: str, roots: Roots) -> None:
    cid = bb("run", "-d", "--isolation", "process", image, "sleep", "30").stdout.strip()
    assert bb("exec", cid, "sh", "-c", "ls /bin/busybox").returncode == 0
    assert bb("stop", "-t", "5", cid).returncode == 0
    assert inspect(bb, cid)["exit_code"] == 143
    assert bb("rm", cid).returncode == 0
    assert leftovers(roots) == []


def test_a_dead_monitor_is_detected_and_rm_f_cleans_up(bb: Run, image: str, roots: Roots) -> None:
    cid = bb("run", "-d", image, "sleep", "30").stdout.strip()
    rec = inspect(bb, cid)
    assert rec["state"] == "running"
    os.kill(int(rec["monitor_pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    time.sleep(0.2)
    rec = inspect(bb, cid)
    assert rec["state"] == "exited" and "monitor died" in str(rec["error"])
    assert "Exited" in bb("ps", "-a").stdout
    assert bb("rm", "-f", cid).returncode == 0
    assert leftovers(roots) == []


def test_run_in_background_survives_the_cli(bb: Run, image: str) -> None:
    proc = subprocess.run(
        bareboat_argv("run", "-d", image, "sh", "-c", "sleep 0.5; echo late"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    cid = proc.stdout.strip()
    assert bb("wait", cid).stdout == "0\n"
    assert bb("logs", cid).stdout == "late\n"


def test_exec_with_a_tty(bb: Run, image: str) -> None:
    import pty

    cid = bb("run", "-d", image, "sleep", "30").stdout.strip()
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(bareboat_argv()[0], bareboat_argv("exec", "-it", cid, "sh", "-c", "tty; exit 3"))
    code, out = read_pty(pid, fd)
    assert code == 3, out
    assert b"/dev/pts/" in out


def test_wait_gets_the_code_of_an_rm_container(bb: Run, image: str, roots: Roots) -> None:
    cid = bb("run", "-d", "--rm", image, "sh", "-c", "sleep 0.5; exit 6").stdout.strip()
    w = bb("wait", cid)
    assert (w.returncode, w.stdout) == (6, "6\n")
    assert leftovers(roots) == []
