"""The supervisor against scripted plans: its phases in order, its ready report, and its two
modes (the OCI gate, a child that waits on the fifo; the engine's detached monitor). Each plan
writes what it is asked to do to a pipe the test reads, so the order is the supervisor's, not
a guess."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bareboat.errors import BareboatError, CommandNotFound, ContainerError
from bareboat.sandbox.supervisor import (
    SupervisorPlan,
    await_ready,
    failure,
    fork_gate,
    open_gate,
    spawn_detached,
)


class Script:
    """A plan whose phases note their names (and the process they ran in) on a pipe."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    def step(self, name: str, then: Callable[[], object] | None = None) -> Callable[[], None]:
        def run() -> None:
            os.write(self.w, f"{name}:{os.getpid()}:{os.getsid(0)}\n".encode())
            if then is not None:
                then()

        return run

    def steps(self, timeout: float = 10.0) -> list[tuple[str, int, int]]:
        """The steps noted until every writer closed the pipe."""
        os.close(self.w)
        data = b""
        deadline = time.monotonic() + timeout
        while chunk := os.read(self.r, 4096):
            data += chunk
            assert time.monotonic() < deadline
        os.close(self.r)
        return [(n, int(p), int(s)) for n, p, s in (x.split(":") for x in data.decode().split())]


@pytest.fixture
def script() -> Iterator[Script]:
    s = Script()
    yield s
    for fd in (s.r, s.w):
        with contextlib.suppress(OSError):
            os.close(fd)


def _fail(e: BaseException) -> Callable[[], None]:
    def raise_it() -> None:
        raise e

    return raise_it


def test_the_engine_mode_reports_ready_once_the_workload_started(
    script: Script, tmp_path: Path
) -> None:
    started = tmp_path / "started"

    def start() -> None:
        time.sleep(0.2)
        started.touch()

    plan = SupervisorPlan(
        script.step("setup"), run=lambda: (script.step("run")(), 0)[1],
        start=script.step("start", start), what="the monitor",
    )  # fmt: skip
    spawn_detached(plan)
    assert started.exists()  # the report came after the start, not before
    steps = script.steps()
    assert [n for n, _, _ in steps] == ["setup", "start", "run"]
    # Detached: one process, in a session of its own that it does not lead (the double fork:
    # it can never take a controlling terminal), not this process's child.
    pids, sids = {p for _, p, _ in steps}, {s for _, _, s in steps}
    assert len(pids) == 1 and len(sids) == 1 and pids != {os.getpid()}
    assert sids != {os.getsid(0)} and sids != pids


def test_the_engine_mode_waits_for_its_go_after_reporting_ready(
    script: Script, tmp_path: Path
) -> None:
    go_file = tmp_path / "go"

    def go() -> None:  # the first client attaching, in the monitor
        deadline = time.monotonic() + 10
        while not go_file.exists():
            if time.monotonic() > deadline:
                raise ContainerError("no go: ready was not reported before it")
            time.sleep(0.005)

    plan = SupervisorPlan(
        script.step("setup"), run=lambda: 0, start=script.step("start"),
        go=script.step("go", go),
    )  # fmt: skip
    spawn_detached(plan)  # returns before the go: a client may attach now
    go_file.touch()
    assert [n for n, _, _ in script.steps()] == ["setup", "go", "start"]


@pytest.mark.parametrize("phase", ["setup", "start"])
def test_an_engine_mode_failure_is_cleaned_up_and_reported_with_its_code(
    script: Script, phase: str
) -> None:
    err = CommandNotFound("exec: sh: not found")

    def failed(e: BaseException) -> tuple[int, str]:
        script.step(f"failed-{type(e).__name__}")()
        return e.exit_code if isinstance(e, BareboatError) else 125, f"cleaned up: {e}"

    plan = SupervisorPlan(
        script.step("setup", _fail(err) if phase == "setup" else None),
        run=lambda: (script.step("run")(), 0)[1],
        start=script.step("start", _fail(err) if phase == "start" else None),
        failed=failed,
    )
    with pytest.raises(ContainerError, match=r"^cleaned up: exec: sh: not found$") as caught:
        spawn_detached(plan)
    assert caught.value.exit_code == 127
    names = [n for n, _, _ in script.steps()]
    assert names == ["setup", *(["start"] if phase == "start" else []), "failed-CommandNotFound"]


def test_a_supervisor_that_dies_in_setup_is_named(script: Script) -> None:
    plan = SupervisorPlan(lambda: os._exit(3), run=lambda: 0, what="the container monitor")
    with pytest.raises(ContainerError, match=r"^the container monitor died$"):
        spawn_detached(plan)


def test_the_gate_waits_for_start_and_exits_with_the_workload(
    script: Script, tmp_path: Path
) -> None:
    fifo = str(tmp_path / "exec.fifo")
    os.mkfifo(fifo, 0o600)
    plan = SupervisorPlan(
        script.step("setup"), run=lambda: (script.step("run")(), 7)[1], start=script.step("start")
    )
    pid = fork_gate(plan, fifo, None, None)
    time.sleep(0.1)
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # set up, blocked on the fifo
    open_gate(fifo, lambda: True, "container t", timeout=10)
    assert not os.path.exists(fifo)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7
    steps = script.steps()
    assert [n for n, _, _ in steps] == ["setup", "start", "run"]
    assert {p for _, p, _ in steps} == {pid}  # the gate is the caller's child


def test_a_gate_setup_error_fails_create_and_the_gate_is_reaped(tmp_path: Path) -> None:
    fifo = str(tmp_path / "exec.fifo")
    os.mkfifo(fifo, 0o600)
    plan = SupervisorPlan(_fail(BareboatError("no network namespace")), run=lambda: 0,
                          error_prefix="process isolation: ")  # fmt: skip
    with pytest.raises(ContainerError, match=r"^process isolation: no network namespace$"):
        fork_gate(plan, fifo, None, None)
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # reaped: no child left


def test_a_start_error_reaches_start_in_the_words_clients_look_for(tmp_path: Path) -> None:
    fifo = str(tmp_path / "exec.fifo")
    os.mkfifo(fifo, 0o600)
    plan = SupervisorPlan(lambda: None, run=lambda: 0, start=_fail(CommandNotFound("exec: nope")))
    pid = fork_gate(plan, fifo, None, None)
    with pytest.raises(ContainerError, match=r"^exec: nope: no such file or directory$"):
        open_gate(fifo, lambda: True, "container t", timeout=10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 127


def test_open_gate_gives_up_on_a_gate_that_died(tmp_path: Path) -> None:
    fifo = str(tmp_path / "exec.fifo")
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ContainerError, match=r"^container t died before it started$"):
        open_gate(fifo, lambda: False, "container t", timeout=10)


def test_the_ready_report_carries_the_exit_code() -> None:
    for message, code, text in (
        (failure(126, "exec: /x: permission denied"), 126, "exec: /x: permission denied"),
        (b"", 125, "the gate died"),
        (b"not a code", 125, "not a code"),
    ):
        r, w = os.pipe()
        os.write(w, message)
        os.close(w)
        with pytest.raises(ContainerError) as caught:
            await_ready(None, r, None, "the gate")
        assert (caught.value.exit_code, str(caught.value)) == (code, text)
