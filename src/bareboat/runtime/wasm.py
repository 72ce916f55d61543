"""`wasm` isolation under the OCI contract: the bundle's entrypoint is a WASI preview 1 module
in its rootfs, run by wasmtime in the gate process.

- `create` does all the checking: it reads config.json into a `WasmPlan` (the wasm backend's
  `spec_plan`: argv, env, the rootfs read-only at `/`, directory volumes, limits), compiles the
  module into the shared cache (or finds it there) and checks it is a WASI command. Then it
  forks the gate, which waits in `exec.fifo` with wasmtime loaded and the module compiled, so
  `start` costs no new interpreter and no second `import wasmtime` (as the engine's wasm
  backend forks its monitor).
- After `start` the gate runs the module with the client's stdio (or the pty slave) and ends
  with its exit code: `proc_exit(n)` gives n, a trap 134, a timeout or fuel budget 124 (a
  watchdog thread ends a module asleep in a host call, where the epoch deadline cannot reach),
  and a signal ends the process itself (SIG_DFL), so the client sees 128+N as for any process.
- `exec` cannot work: a Wasm sandbox has no processes to add. `update`: nothing to update.

`state`, `kill`, `delete`, `start` never import wasmtime: they only read the state dir.
"""

from __future__ import annotations

import json
import os
import signal

from bareboat.errors import BackendUnavailable, ContainerError
from bareboat.proc import parse_signal
from bareboat.sandbox.status import Status

from . import lifecycle as lc
from .records import Record, RuntimeRoot

TYPE_CHECKING = False  # typing and contextlib cost import time on every call; mypy sees true
if TYPE_CHECKING:
    from typing import Any

    from bareboat.sandbox.wasm import ModuleCache, WasmPlan

    from .args import Invocation

ISOLATION = "wasm"


# --- create --------------------------------------------------------------------------------


def create(inv: Invocation, root: RuntimeRoot, bundle: str, config: dict[str, Any]) -> int:
    process = config.get("process") or {}

    def body(sdir: str) -> int:
        from bareboat.sandbox.wasm import compile_plan

        rootfs = lc.rootfs_of(bundle, config)
        plan, cache = compile_plan(config, rootfs, os.path.join(sdir, "tmpfs"))
        return _create(inv, root, bundle, config, process, sdir, plan, cache)

    return lc.create_in_state_dir(inv, root, body)


def _create(
    inv: Invocation,
    root: RuntimeRoot,
    bundle: str,
    config: dict[str, Any],
    process: dict[str, Any],
    sdir: str,
    plan: WasmPlan,
    cache: ModuleCache,
) -> int:
    from bareboat.sandbox import wasm
    from bareboat.sandbox.supervisor import SupervisorPlan, fork_gate

    wasm.load_runner()  # before the fork: the gate has nothing left to import after `start`

    fifo = lc.make_gate(sdir)
    master, slave = lc.console_pair(inv, process)

    def setup() -> None:
        wasm.default_signals()  # a signal must end the module at once, as for a native process
        _own_stdio(slave)

    def run() -> int:
        if plan.limits.timeout is not None:
            wasm.watchdog(plan.limits.timeout)
        return wasm.run(plan, cache)

    gate = SupervisorPlan(setup, run, close_inherited=True, what="the module's gate")
    pid = fork_gate(gate, fifo, master, slave)
    lc.finish_create(inv, root, Record(inv.id, ISOLATION, bundle), config, pid, master)
    return 0


def _own_stdio(slave: int | None) -> None:
    """A session of its own, and the pty as stdio when there is one."""
    os.setsid()
    if slave is not None:
        import fcntl
        import termios

        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)


# --- the other commands ----------------------------------------------------------------------


def command(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    return lc.dispatch(inv, root, rec, _COMMANDS, ISOLATION)


def _gate_pids(st: dict[str, Any]) -> list[int]:
    """The container's processes: the gate alone (a module cannot start others)."""
    return [int(st["pid"])] if lc.alive(st) else []


def _signal(pid: int, sig: int) -> None:
    try:  # noqa: SIM105 - contextlib costs import time here
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # gone between the liveness check and now: nothing left to signal


def _kill(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    sig = parse_signal(inv.positionals[1] if len(inv.positionals) > 1 else "SIGTERM")
    st = lc.read_state(root, rec.id)
    if not lc.alive(st):
        raise ContainerError(f"cannot kill container {rec.id}: container not running")
    _signal(int(st["pid"]), sig)
    return 0


def _delete(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    st = lc.deletable(inv, root, rec)
    for pid in _gate_pids(st):
        _signal(pid, signal.SIGKILL)
    lc.wait_gone(st)
    lc.forget(root, rec, st)
    return 0


def _signal_gate(root: RuntimeRoot, rec: Record, sig: int, paused: bool) -> int:
    st = lc.require(root, rec, Status.RUNNING, Status.PAUSED, action="pause or resume it")
    for pid in _gate_pids(st):
        _signal(pid, sig)
    lc.set_paused(root, rec.id, paused)
    return 0


def _pause(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    return _signal_gate(root, rec, signal.SIGSTOP, True)


def _resume(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    return _signal_gate(root, rec, signal.SIGCONT, False)


def _ps(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    pids = _gate_pids(lc.read_state(root, rec.id))
    if inv.flag("--format") == "json":
        print(json.dumps(pids))
    else:
        print("PID")
        for pid in pids:
            print(pid)
    return 0


def _update(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    raise BackendUnavailable("wasm isolation has no cgroups: nothing can be updated")


def _exec(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    raise BackendUnavailable(
        "exec is not possible with wasm isolation: a Wasm sandbox runs one module, no processes"
    )


_COMMANDS = {
    "kill": _kill,
    "delete": _delete,
    "pause": _pause,
    "resume": _resume,
    "ps": _ps,
    "update": _update,
    "exec": _exec,
}
