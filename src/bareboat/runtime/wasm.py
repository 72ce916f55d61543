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

import os

from bareboat.errors import BackendUnavailable

from . import lifecycle as lc
from .records import Record, RuntimeRoot

TYPE_CHECKING = False  # typing and contextlib cost import time on every call; mypy sees true
if TYPE_CHECKING:
    from typing import Any

    from bareboat.sandbox.supervisor import SupervisorPlan
    from bareboat.sandbox.wasm import ModuleCache, WasmPlan

    from .args import Invocation

ISOLATION = "wasm"


# --- create --------------------------------------------------------------------------------


def create(inv: Invocation, root: RuntimeRoot, bundle: str, config: dict[str, Any]) -> int:
    from bareboat.sandbox import wasm

    def body(sdir: str) -> int:
        rootfs = lc.rootfs_of(bundle, config)
        plan, cache = wasm.compile_plan(config, rootfs, os.path.join(sdir, "tmpfs"))
        wasm.load_runner()  # before the fork: the gate has nothing left to import after `start`
        lc.create_gate(
            inv, root, ISOLATION, bundle, config, lambda slave: _gate(plan, cache, slave)
        )
        return 0

    return lc.create_in_state_dir(inv, root, body)


def _gate(plan: WasmPlan, cache: ModuleCache, slave: int | None) -> SupervisorPlan:
    """The gate runs the module itself, with the pty as stdio when there is one."""
    from bareboat.sandbox import wasm
    from bareboat.sandbox.supervisor import SupervisorPlan

    def setup() -> None:
        wasm.default_signals()  # a signal must end the module at once, as for a native process
        _own_stdio(slave)

    def run() -> int:
        if plan.limits.timeout is not None:
            wasm.watchdog(plan.limits.timeout)
        return wasm.run(plan, cache)

    return SupervisorPlan(setup, run, close_inherited=True, what="the module's gate")


def _own_stdio(slave: int | None) -> None:
    """A session of its own, and the pty as stdio when there is one."""
    os.setsid()
    if slave is not None:
        import fcntl
        import termios

        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)


# --- exec --------------------------------------------------------------------------------------


def exec_in(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    raise BackendUnavailable(
        "exec is not possible with wasm isolation: a Wasm sandbox runs one module, no processes"
    )
