"""A `wasm` sandbox under the OCI contract: the bundle's entrypoint, a WASI preview 1 module in
its rootfs, planned and compiled at `create` and run by wasmtime in the gate (over the wasm
backend's public API). The gate is the sandbox's one process: a module cannot start others.
Its operations (`sandbox.oci`) never import wasmtime."""

from __future__ import annotations

import os
import signal

from bareboat.errors import WasmError
from bareboat.proc import signal_each

from .status import alive, wait_gone

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any

    from bareboat.backends.wasm.cache import ModuleCache as ModuleCache  # for front ends
    from bareboat.backends.wasm.plan import WasmPlan as WasmPlan

    from .status import Status

# Mounts a client adds to every container that a module cannot use (WASI preopens are
# directories): podman's container marker file. /etc/{hostname,hosts,resolv.conf} and the
# kernel filesystems are dropped by the backend's `spec_preopens` already.
_CLIENT_FILES = frozenset({"/run/.containerenv"})
TIMEOUT_GRACE = 0.5  # seconds the runner's own deadline gets before the gate ends itself


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


def compile_plan(config: dict[str, Any], rootfs: str, scratch: str) -> tuple[WasmPlan, ModuleCache]:
    """(plan, cache): the checked plan, its module compiled into the shared cache."""
    from pathlib import Path

    from bareboat.backends.wasm.backend import spec_plan
    from bareboat.backends.wasm.cache import EngineSettings, ModuleCache
    from bareboat.paths import Roots

    try:
        plan = spec_plan(runtime_spec(config), Path(rootfs), Path(scratch))
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


def load_runner() -> None:
    """Import what running a module takes (wasmtime among it)."""
    import bareboat.backends.wasm.runner
    import bareboat.backends.wasm.shim  # noqa: F401


def default_signals() -> None:
    """A signal ends the module's process at once, as it would a native process."""
    from bareboat.backends.wasm.shim import default_signals as defaults

    defaults()


def run(plan: WasmPlan, cache: ModuleCache) -> int:
    """Run the module to its end; its exit code."""
    from bareboat.backends.wasm.runner import run_plan

    return run_plan(plan, cache).exit_code


def watchdog(timeout: float) -> None:
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


# --- operations (sandbox.oci) -------------------------------------------------------------------


def pids(sandbox: str, st: dict[str, Any]) -> list[int]:
    return [int(st["pid"])] if alive(st) else []


def kill(sandbox: str, st: dict[str, Any], status: Status, sig: int, everything: bool) -> bool:
    gate = pids(sandbox, st)
    signal_each(gate, sig)
    return bool(gate)


def set_paused(sandbox: str, st: dict[str, Any], paused: bool) -> None:
    signal_each(pids(sandbox, st), signal.SIGSTOP if paused else signal.SIGCONT)


def destroy(sandbox: str, st: dict[str, Any]) -> None:
    signal_each(pids(sandbox, st), signal.SIGKILL)
    wait_gone(st)


def update(
    sandbox: str, st: dict[str, Any], resources: dict[str, Any], booted: dict[str, Any], name: str
) -> None:
    from bareboat.errors import BackendUnavailable

    raise BackendUnavailable("wasm isolation has no cgroups: nothing can be updated")
