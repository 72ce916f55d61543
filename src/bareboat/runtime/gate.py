"""The gate process, once for every isolation bareboat runs itself (process, wasm, microvm):
the pid in `--pid-file`, forked by `create`, that lives as long as the workload and ends with
its status (see lifecycle.py for the contract with `start`).

Its life is the same shape whatever it runs, and is written here once:

1. `setup`, before `create` returns: what may fail in a way `create` must report (mounts, the
   network namespace, booting a VM). Its error goes back over a pipe and `create` fails with
   it, the gate reaped.
2. Blocked on `exec.fifo` until `start` opens it.
3. `start`: the workload's start, whose error is `start`'s to report (a microVM's START).
4. The start reported to `start` ("0", or the error), then `run`: the workload's whole life,
   whose result is the gate's exit status. `run` may also never return (process isolation
   execs the workload: the gate becomes it); the start is then reported through a descriptor
   that closes at that exec, so `start` returns once the workload runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bareboat.errors import BareboatError

from . import lifecycle as lc

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass
class GatePlan:
    setup: Callable[[], None]
    run: Callable[[], int]
    start: Callable[[], None] | None = None
    # True: the start is reported without closing the fifo, which closes at the workload's
    # exec (process isolation), so `start` returns once the workload runs.
    report_at_exec: bool = False
    # Close every descriptor inherited from `create` beyond stdio once set up: a client may
    # wait for EOF on a pipe it gave `create`, as it would after runc's exec (wasm: the gate
    # runs the workload itself, no exec closes them).
    close_inherited: bool = False
    # How `create` names a gate that died in setup, and what it puts before its error.
    what: str = "the gate process"
    error_prefix: str = ""


def fork_gate(
    plan: GatePlan,
    fifo: str,
    master: int | None,
    slave: int | None,
    *,
    after_fork: Callable[[int], None] | None = None,
) -> int:
    """Fork the gate and wait until its setup is done; its pid. On a failed setup the gate is
    reaped, the pty master closed, and ContainerError raised with the gate's words
    (lifecycle.await_ready)."""
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
        lc.await_ready(pid, ready_r, master, plan.what, prefix=plan.error_prefix)
    return pid


def _gate(plan: GatePlan, fifo: str, ready_w: int) -> None:
    code = 125
    try:
        try:
            plan.setup()
        except BaseException as e:  # noqa: BLE001 - every failure in setup is create's
            os.write(ready_w, (str(e) or repr(e)).encode()[:65536])
            os._exit(1)
        if plan.close_inherited:
            os.closerange(3, ready_w)
            os.closerange(ready_w + 1, _max_fd())
        os.write(ready_w, b"ok")
        os.close(ready_w)
        fd = lc.wait_for_start(fifo)
        if plan.start is not None:
            try:
                plan.start()
            except BareboatError as e:
                lc.report_start(fd, start_error(e))
                os._exit(e.exit_code)
        if plan.report_at_exec:
            os.write(fd, lc.GATE_OK)  # the fd closes at the workload's exec
        else:
            lc.report_start(fd)
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
