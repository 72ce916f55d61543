"""A sandbox's supervisor: one process per sandbox that sets it up, starts its workload, lives
as long as it and ends with it. Its life has the same shape under both front ends and is
written here once (`SupervisorPlan`):

1. `setup`: what may fail in a way the caller must report (mounts, the network namespace,
   booting a VM, the engine's control socket). Its error goes back over the ready pipe and the
   forking call fails with it (`await_ready`).
2. The go: under the OCI contract the gate blocks on the sandbox's `exec.fifo` until `start`
   opens it (`open_gate`); under the engine, `go` (when given) waits for the first client to
   attach, and otherwise the workload starts at once.
3. `start`: the workload's start (a microVM's START, the engine's backend `start`).
4. `run`: the workload's whole life, whose result is the supervisor's exit status; `failed`
   cleans up after an error in any phase and says what to report.

Two modes fork it:
- `fork_gate` (the OCI contract, bareboat-runtime): the *gate* is the pid in `--pid-file`, a
  child of `create` that the client's subreaper (conmon, the containerd shim) inherits and
  waits on. It reports ready after `setup`; the start's outcome goes to `start` over the fifo
  (`b"0"`, or the error). `run` may also never return (process isolation execs the workload:
  the gate becomes it); the start is then reported through a descriptor that closes at that
  exec, so `start` returns once the workload runs.
- `spawn_detached` (the engine): the *monitor*, detached from the caller (setsid and a double
  fork), holds stdio and logs; it reports ready once the workload runs (or, with `go`, once
  set up, so that a client can attach before the start).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bareboat.errors import BareboatError, ContainerError

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from collections.abc import Callable

GATE_OK = b"0"


@dataclass
class SupervisorPlan:
    setup: Callable[[], None]
    run: Callable[[], int]
    start: Callable[[], None] | None = None
    # The engine's mode: what the supervisor waits for between setup and start (the first
    # client to attach), and the clean-up after a failure, which gives the (code, message)
    # to report. Under the OCI contract the fifo is the go, and `create` cleans up.
    go: Callable[[], None] | None = None
    failed: Callable[[BaseException], tuple[int, str]] | None = None
    # True: the start is reported without closing the fifo, which closes at the workload's
    # exec (process isolation), so `start` returns once the workload runs.
    report_at_exec: bool = False
    # Close every descriptor inherited from `create` beyond stdio once set up: a client may
    # wait for EOF on a pipe it gave `create`, as it would after runc's exec (wasm: the gate
    # runs the workload itself, no exec closes them).
    close_inherited: bool = False
    # How the caller names a supervisor that died in setup, and what it puts before its error.
    what: str = "the gate process"
    error_prefix: str = ""


def fork_gate(
    plan: SupervisorPlan,
    fifo: str,
    master: int | None,
    slave: int | None,
    *,
    after_fork: Callable[[int], None] | None = None,
) -> int:
    """Fork the gate and wait until its setup is done; its pid. On a failed setup the gate is
    reaped, the pty master closed, and ContainerError raised with the gate's words
    (`await_ready`)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the gate never returns into create
        os.close(ready_r)
        if master is not None:
            os.close(master)
        _gate(plan, fifo, ready_w)
    os.close(ready_w)
    if slave is not None:
        os.close(slave)
    try:
        if after_fork is not None:
            after_fork(pid)
    finally:
        await_ready(pid, ready_r, master, plan.what, prefix=plan.error_prefix)
    return pid


def _gate(plan: SupervisorPlan, fifo: str, ready_w: int) -> None:
    code = 125
    try:
        try:
            plan.setup()
        except BaseException as e:  # noqa: BLE001 - every failure in setup is create's
            os.write(ready_w, failure(_code_of(e), str(e) or repr(e)))
            os._exit(1)
        if plan.close_inherited:
            os.closerange(3, ready_w)
            os.closerange(ready_w + 1, _max_fd())
        os.write(ready_w, READY)
        os.close(ready_w)
        fd = wait_for_start(fifo)
        if plan.start is not None:
            try:
                plan.start()
            except BareboatError as e:
                report_start(fd, start_error(e))
                os._exit(e.exit_code)
        if plan.report_at_exec:
            os.write(fd, GATE_OK)  # the fd closes at the workload's exec
        else:
            report_start(fd)
        code = plan.run()
    except BaseException as e:  # noqa: BLE001 - the gate must never return into create
        try:  # noqa: SIM105 - contextlib costs import time here
            os.write(2, f"bareboat-runtime: {plan.what} failed: {e}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(code)


def _max_fd() -> int:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if 0 < soft < 1 << 20 else 1 << 16


def start_error(e: BareboatError) -> str:
    """A start's error as clients read it: podman and the containerd shim look for these
    words to answer 127 and 126."""
    from bareboat.errors import CommandNotExecutable, CommandNotFound

    msg = str(e)
    if isinstance(e, CommandNotFound) and "no such file or directory" not in msg.lower():
        msg += ": no such file or directory"
    elif isinstance(e, CommandNotExecutable) and "permission denied" not in msg.lower():
        msg += ": permission denied"
    return msg


# --- the fifo between the gate and `start` ----------------------------------------------------


def make_fifo(path: str) -> str:
    """The gate's fifo, made before the gate is forked."""
    os.mkfifo(path, 0o600)
    return path


def wait_for_start(fifo: str) -> int:
    """In the gate: block until `start` opens the fifo; the fd to report on."""
    return os.open(fifo, os.O_WRONLY | os.O_CLOEXEC)


def report_start(fd: int, error: str = "") -> None:
    """In the gate: tell `start` the workload runs (or why it does not)."""
    try:  # noqa: SIM105 - contextlib costs import time here
        os.write(fd, error.encode()[:4000] if error else GATE_OK)
    except OSError:
        pass
    os.close(fd)


def open_gate(fifo: str, alive: Callable[[], bool], what: str, timeout: float) -> None:
    """`start`: release the gate blocked on `fifo` and wait for its report; the fifo is gone
    after. ContainerError with the gate's words when the workload did not start, or when the
    gate died or said nothing in `timeout` seconds."""
    import time

    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    got = b""
    try:
        # Opening released the writer blocked in its open(); read until it closes its end.
        deadline = time.monotonic() + timeout
        while True:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                data = None
            if data:
                got += data
            elif data == b"" and got:
                break
            if not alive():
                if got:
                    break
                raise ContainerError(f"{what} died before it started")
            if time.monotonic() > deadline:
                raise ContainerError(f"{what} did not start in {timeout:g}s")
            if not data:
                time.sleep(0.0005)
    finally:
        os.close(fd)
    os.unlink(fifo)
    if got != GATE_OK:
        raise ContainerError(got.decode(errors="replace"))


def spawn_detached(plan: SupervisorPlan) -> None:
    """The engine's mode: fork the supervisor detached from the caller (its own session, not
    its child); return once it reports ready, or raise its error with its exit code."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(ready_r)
            os.setsid()
            if os.fork() == 0:
                _supervise(plan, ready_w)
            code = 0
        except BaseException:  # noqa: BLE001 - a forked child must never return to the caller
            try:
                import traceback

                traceback.print_exc()
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(code)
    os.close(ready_w)
    try:
        await_ready(None, ready_r, None, plan.what, prefix=plan.error_prefix)
    finally:
        # Reaped after the report: the middle child's exit (unmapping its copy of this
        # process: 3-8 ms here) then runs beside the supervisor's set-up, not before it.
        os.waitpid(pid, 0)


def _supervise(plan: SupervisorPlan, ready_w: int) -> None:
    """The detached supervisor's whole life; it never returns."""
    code = 125
    ready = [ready_w]

    def report(message: bytes = READY) -> None:
        if ready:
            fd = ready.pop()
            os.write(fd, message)
            os.close(fd)

    try:
        try:
            plan.setup()
            if plan.go is not None:
                report()
                plan.go()
            if plan.start is not None:
                plan.start()
            report()
            code = plan.run()
        except BaseException as e:  # noqa: BLE001 - the supervisor must always clean up
            code, message = plan.failed(e) if plan.failed else (_code_of(e), str(e))
            report(failure(code, message))
    finally:
        os._exit(code)


# --- the ready pipe: b"ok", or the failure's exit code and message ---------------------------

READY = b"ok"


def failure(code: int, message: str) -> bytes:
    return f"{code} {message}".encode()[:65536]


def _code_of(e: BaseException) -> int:
    return e.exit_code if isinstance(e, BareboatError) else 125


def await_ready(
    pid: int | None, ready_r: int, master: int | None, what: str, *, prefix: str = ""
) -> None:
    """In the caller of a forked supervisor: wait for its ready report. A failure is raised as
    ContainerError after `prefix`, with the supervisor's exit code, once the supervisor (`pid`,
    when it is the caller's child) is reaped and the pty master closed."""
    with os.fdopen(ready_r, "rb") as r:
        ready = r.read()
    if ready == READY:
        return
    if pid is not None:
        os.waitpid(pid, 0)
    if master is not None:
        os.close(master)
    text = ready.decode(errors="replace")
    code, _, message = text.partition(" ")
    if not code.isdigit():  # no code: the whole report is the error
        code, message = "125", text
    err = ContainerError(prefix + (message or f"{what} died"))
    err.exit_code = int(code)
    raise err
