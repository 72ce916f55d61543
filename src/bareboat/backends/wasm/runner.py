"""Run one `WasmPlan` with wasmtime and WASI preview 1: the only place a module executes.

Each run gets its own `Engine` (cheap: ~0.2 ms here) so that its epoch counter is its own:
the timeout timer and `interrupt()` bump that epoch, and the store's deadline of one tick
makes the running code trap at its next loop back-edge or function entry. A module blocked
inside a host call (reading stdin, sleeping in `poll_oneoff`) is not Wasm code and does not see
the epoch until the call returns; the shim process is what makes such a module stoppable
(a signal ends the process).

Exit codes follow the wasmtime CLI: `proc_exit(n)` gives n, returning from `_start` gives 0,
a trap gives 134 (128+SIGABRT, what `wasmtime run` exits with) and its message goes to the
module's stderr. A timeout or an exhausted fuel budget gives 124 (coreutils `timeout`), and an
interrupt (stop) 143 (128+SIGTERM); the `Outcome` says which, in words.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bareboat.errors import WasmError

from .cache import CacheResult, EngineSettings, ModuleCache
from .plan import INHERIT, StdioTarget, WasmPlan

if TYPE_CHECKING:
    import wasmtime

EXIT_TRAP = 134
EXIT_TIMEOUT = 124
EXIT_STOPPED = 143


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    error: str = ""  # why it ended, when not by returning or proc_exit
    cache: CacheResult = CacheResult.HIT
    start_s: float = 0.0  # plan handed over -> _start about to be called
    run_s: float = 0.0  # inside _start


def _fmt_seconds(s: float) -> str:
    return f"{s:g}s"


def _summary(err: BaseException) -> str:
    """One line from wasmtime's multi-line report: its innermost cause, which comes last."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    last = re.sub(r"^\d+:\s*", "", lines[-1])
    return re.sub(r"^wasm trap:\s*", "", last)


class Execution:
    """One run of a plan. `run()` blocks; `interrupt()` may be called from any thread."""

    def __init__(self, plan: WasmPlan, cache: ModuleCache) -> None:
        self.plan = plan
        self.cache = cache
        self.settings = EngineSettings(consume_fuel=plan.limits.fuel is not None)
        self._engine: wasmtime.Engine | None = None
        self._reason = ""
        self._lock = threading.Lock()

    def interrupt(self, reason: str = "stopped") -> None:
        """Make the module trap at its next epoch check (first caller's reason wins)."""
        with self._lock:
            if not self._reason:
                self._reason = reason
            if self._engine is not None:
                self._engine.increment_epoch()

    def _wasi(self) -> wasmtime.WasiConfig:
        import wasmtime

        plan = self.plan
        wasi = wasmtime.WasiConfig()
        wasi.argv = list(plan.args)
        if plan.env:
            wasi.env = [list(kv) for kv in plan.env]
        _stdio(wasi, "stdin", plan.stdin)
        _stdio(wasi, "stdout", plan.stdout)
        _stdio(wasi, "stderr", plan.stderr)
        for p in plan.preopens:
            if not Path(p.host).is_dir():
                raise WasmError(f"preopened directory {p.host} does not exist")
            wasi.preopen_dir(p.host, p.guest, fs_mutable=not p.readonly)
        return wasi

    def run(self) -> Outcome:
        import wasmtime

        t0 = time.perf_counter()
        plan = self.plan
        engine = self.settings.engine()
        module, cached = self.cache.load(engine, Path(plan.module), plan.digest, self.settings)
        store = wasmtime.Store(engine)
        try:
            store.set_wasi(self._wasi())
        except wasmtime.WasmtimeError as err:
            raise WasmError(f"cannot set up WASI: {_summary(err)}") from None
        if plan.limits.memory is not None:
            store.set_limits(memory_size=plan.limits.memory)
        if plan.limits.fuel is not None:
            store.set_fuel(plan.limits.fuel)
        store.set_epoch_deadline(1)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        try:
            instance = linker.instantiate(store, module)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as err:
            msg = _summary(err)
            if plan.limits.memory is not None and "memory" in str(err):
                msg = f"module needs more linear memory than --memory allows ({msg})"
            raise WasmError(f"cannot instantiate Wasm module: {msg}") from None
        start = instance.exports(store).get("_start")
        if not isinstance(start, wasmtime.Func):
            raise WasmError("Wasm module has no _start function (not a WASI command)")

        with self._lock:
            self._engine = engine
            pending = bool(self._reason)
        if pending:  # interrupted before it started
            engine.increment_epoch()
        timer = None
        if plan.limits.timeout is not None:
            timeout = plan.limits.timeout
            timer = threading.Timer(
                timeout, self.interrupt, (f"timed out after {_fmt_seconds(timeout)}",)
            )
            timer.daemon = True
            timer.start()
        t1 = time.perf_counter()
        try:
            start(store)
            code, error = 0, ""
        except wasmtime.ExitTrap as exit_:
            code, error = exit_.code, ""
        except wasmtime.Trap as trap:
            code, error = self._trap_outcome(trap)
        except wasmtime.WasmtimeError as err:
            code, error = EXIT_TRAP, f"wasm error: {_summary(err)}"
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                self._engine = None
        t2 = time.perf_counter()
        return Outcome(code, error, cached, start_s=t1 - t0, run_s=t2 - t1)

    def _trap_outcome(self, trap: wasmtime.Trap) -> tuple[int, str]:
        import wasmtime

        if trap.trap_code == wasmtime.TrapCode.INTERRUPT:
            reason = self._reason or "interrupted"
            return (EXIT_STOPPED if reason == "stopped" else EXIT_TIMEOUT), reason
        if trap.trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
            return EXIT_TIMEOUT, f"out of fuel (budget {self.plan.limits.fuel})"
        return EXIT_TRAP, f"wasm trap: {_summary(trap)}"


def _stdio(wasi: wasmtime.WasiConfig, name: str, target: StdioTarget) -> None:
    """Point one WASI stream at a file, at our own fd, or nowhere (WASI's default)."""
    if target is None:
        return
    if target == INHERIT:
        getattr(wasi, f"inherit_{name}")()
        return
    # wasmtime opens the path itself: stdin must exist; stdout/stderr are created/truncated.
    setattr(wasi, f"{name}_file", target)


def run_plan(plan: WasmPlan, cache: ModuleCache, *, write_error: bool = True) -> Outcome:
    """Run and, like the wasmtime CLI, report a trap or timeout on the module's stderr."""
    outcome = Execution(plan, cache).run()
    if outcome.error and write_error:
        _report(plan.stderr, outcome.error)
    return outcome


def _report(target: StdioTarget, message: str) -> None:
    import os

    line = f"bareboat: {message}\n"
    if target == INHERIT:
        # fd 2 itself, not sys.stderr: in a forked workload sys.stderr is the parent's object.
        os.write(2, line.encode())
    elif target is not None:
        with open(target, "a", encoding="utf-8") as f:
            f.write(line)
