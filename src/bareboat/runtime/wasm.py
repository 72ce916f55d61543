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

from bareboat.errors import BackendUnavailable, ContainerError, WasmError
from bareboat.proc import parse_signal

from . import lifecycle as lc
from .records import Record, RuntimeRoot

TYPE_CHECKING = False  # typing and contextlib cost import time on every call; mypy sees true
if TYPE_CHECKING:
    from typing import Any

    from bareboat.backends.wasm.cache import ModuleCache
    from bareboat.backends.wasm.plan import WasmPlan

    from .args import Invocation

ISOLATION = "wasm"
# Mounts a client adds to every container that a module cannot use (WASI preopens are
# directories): podman's container marker file. /etc/{hostname,hosts,resolv.conf} and the
# kernel filesystems are dropped by the backend's `spec_preopens` already.
_CLIENT_FILES = frozenset({"/run/.containerenv"})
TIMEOUT_GRACE = 0.5  # seconds the runner's own deadline gets before the gate ends itself


# --- create --------------------------------------------------------------------------------


def runtime_spec(config: dict[str, Any]) -> dict[str, Any]:
    """The config as the wasm backend should read it.

    The module is the entrypoint in the rootfs, never a store blob named by an annotation:
    under a client the annotations are the user's, and no image store stands behind them.
    Client-added file mounts a module cannot see are left out.
    """
    from bareboat.backends.wasm.module import ANN_DIGEST, ANN_MODULE

    annotations = {**(config.get("annotations") or {}), ANN_MODULE: "", ANN_DIGEST: ""}
    mounts = [m for m in config.get("mounts") or [] if m.get("destination") not in _CLIENT_FILES]
    return {**config, "annotations": annotations, "mounts": mounts}


def compile_plan(bundle: str, config: dict[str, Any], scratch: str) -> tuple[WasmPlan, ModuleCache]:
    """(plan, cache): the checked plan, its module compiled into the shared cache."""
    from pathlib import Path

    from bareboat.backends.wasm.backend import spec_plan
    from bareboat.backends.wasm.cache import EngineSettings, ModuleCache
    from bareboat.paths import Roots

    rootfs = Path(lc.rootfs_of(bundle, config))
    try:
        plan = spec_plan(runtime_spec(config), rootfs, Path(scratch))
        cache = ModuleCache(Roots.from_env().make_private().wasm_cache)
        settings = EngineSettings(consume_fuel=plan.limits.fuel is not None)
        module, _ = cache.load(settings.engine(), Path(plan.module), plan.digest, settings)
        _check_command(module)
    except WasmError as e:
        raise WasmError(f"wasm isolation: {e}") from None
    return plan, cache


def _check_command(module: Any) -> None:
    """A WASI command exports `_start`; say so at create rather than after `start`."""
    import wasmtime

    for export in module.exports:
        if export.name == "_start" and isinstance(export.type, wasmtime.FuncType):
            return
    raise WasmError("the module has no _start function (not a WASI command)")


def create(inv: Invocation, root: RuntimeRoot, bundle: str, config: dict[str, Any]) -> int:
    process = config.get("process") or {}

    def body(sdir: str) -> int:
        plan, cache = compile_plan(bundle, config, os.path.join(sdir, "tmpfs"))
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
    # Loaded before the fork, so the gate has nothing left to import after `start`.
    import bareboat.backends.wasm.runner
    import bareboat.backends.wasm.shim  # noqa: F401

    from .gate import GatePlan, fork_gate

    fifo = lc.make_gate(sdir)
    master, slave = lc.console_pair(inv, process)

    def setup() -> None:
        from bareboat.backends.wasm.shim import default_signals

        default_signals()  # a signal must end the module at once, as for a native process
        _own_stdio(slave)

    def run() -> int:
        from bareboat.backends.wasm.runner import run_plan

        if plan.limits.timeout is not None:
            _watchdog(plan.limits.timeout)
        return run_plan(plan, cache).exit_code

    gate = GatePlan(setup, run, close_inherited=True, what="the module's gate")
    pid = fork_gate(gate, fifo, master, slave)
    lc.finish_create(inv, root, Record(inv.id, ISOLATION, bundle), config, pid, master)
    return 0


def _watchdog(timeout: float) -> None:
    """The runner's epoch deadline stops Wasm code, not a module blocked in a host call
    (sleeping in poll_oneoff, reading stdin). Past the deadline and a grace period the gate
    ends itself, with the runner's timeout code and message."""
    import threading

    from bareboat.backends.wasm.runner import EXIT_TIMEOUT

    def expire() -> None:
        os.write(2, f"bareboat: timed out after {timeout:g}s\n".encode())
        os._exit(EXIT_TIMEOUT)

    timer = threading.Timer(timeout + TIMEOUT_GRACE, expire)
    timer.daemon = True
    timer.start()


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
    st = lc.require(root, rec, "running", "paused", action="pause or resume it")
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
