"""`kill --all` and `delete` of a `process` container end the container's processes and
nothing else, in every state.

Every call runs in a PID namespace of the test's own (`unshare --pid --mount-proc`), with a
bystander process beside the container: a runtime that picked processes by a property host
processes share (their root, before `start`) would kill every process in sight, and here that
is the namespace, never this machine's."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Runtime, make_bundle
from .pidns import PidNamespace

PROCESS = {"io.bareboat.isolation": "process"}


def procs(match: Callable[[bytes], bool]) -> list[int]:
    """Host pids of the live processes whose NUL-separated command line matches."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline and match(cmdline):  # a zombie's is empty
                found.append(int(entry.name))
    return found


def running(argv: list[str]) -> list[int]:
    want = b"\0".join(a.encode() for a in argv) + b"\0"
    return procs(lambda cmdline: cmdline == want)


def wait_for(cond: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("op", ["delete --force", "kill --all"])
@pytest.mark.parametrize("state", ["created", "running", "paused", "stopped"])
def test_only_the_containers_processes_die(
    ns_runtime: tuple[Runtime, PidNamespace], tmp_path: Path, state: str, op: str
) -> None:
    rt, ns = ns_runtime
    n = str(10**6 + secrets.randbelow(10**6))  # sleep lengths that name our processes
    workload, daemon, execd, other = (["sleep", f"{n}{i}"] for i in range(4))
    script = f"(sleep {daemon[1]} &); exec sleep {workload[1]}"  # the daemon double-forks
    bundle = make_bundle(tmp_path / "b", ["sh", "-c", script], annotations=PROCESS)
    bystander = ns.spawn(other)
    assert wait_for(lambda: bool(running(other)))

    rt("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "k1")
    rt.ids.append("k1")
    cgroup = json.loads((rt.root / "bareboat" / "k1" / "state.json").read_text()).get("cgroup")
    ours = []
    if state != "created":
        rt("start", "k1")
        rt("exec", "--detach", "k1", *execd)
        ours = [workload, daemon, execd]
        assert wait_for(lambda: all(running(p) for p in ours)), "the container did not start"
        # ps names the container's processes, the double-forked daemon too
        assert len(json.loads(rt("ps", "--format", "json", "k1").stdout)) == 3
    if state == "paused":
        rt("pause", "k1")
        assert rt.state("k1")["status"] == "paused"
    if state == "stopped":
        rt("kill", "k1", "KILL")  # the workload (the gate) alone: its exec dies with it,
        assert rt.wait_state("k1", "stopped")["status"] == "stopped"
        ours = [daemon]  # its daemon lives on
        assert wait_for(lambda: not running(execd))
        assert running(daemon)

    res = rt(*op.split(), "k1", *(["KILL"] if op == "kill --all" else []), check=False)

    time.sleep(0.2)  # signals sent to the bystander would have landed by now
    assert bystander.poll() is None, "a process outside the container was killed"
    assert running(other)
    assert res.returncode == 0, res.stderr
    assert wait_for(lambda: not any(running(p) for p in ours)), "a container process lives"
    # the gate, before start: bareboat-runtime's own fork, named by the runtime root
    assert wait_for(lambda: not procs(lambda c: str(rt.root).encode() in c))
    if op == "kill --all":
        assert rt.wait_state("k1", "stopped")["status"] == "stopped"
        rt("delete", "k1")
    assert not (rt.root / "bareboat" / "k1").exists()
    if cgroup is not None:
        assert not Path(cgroup).exists()  # the cgroup goes with the container
