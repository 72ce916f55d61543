"""The per-container shim process: run one plan with inherited stdio, exit with its code.

Kept apart from `backend.py` so that starting it imports only the plan, cache and runner
(every millisecond here is a millisecond of every Wasm container's start).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from bareboat.errors import WasmError

from .cache import ModuleCache
from .plan import WasmPlan

# The monitor ignores or catches these; a workload must get their default actions back.
RESET_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGPIPE,
    signal.SIGTTOU,
    signal.SIGTTIN,
    signal.SIGCHLD,
)


def default_signals() -> None:
    """Default actions, as an uncaught signal would end a native program.

    Python's own handlers would only run once the module returned to Python, which a
    spinning module never does; SIG_DFL lets the kernel end the process at once.
    """
    signal.set_wakeup_fd(-1)
    for sig in RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def main(argv: list[str]) -> int:
    default_signals()
    if len(argv) != 2:
        print("usage: python -m bareboat.backends.wasm PLAN.json CACHE_DIR", file=sys.stderr)
        return 125
    from .runner import run_plan

    try:
        plan = WasmPlan.from_json(Path(argv[0]).read_bytes())
        return run_plan(plan, ModuleCache(Path(argv[1]))).exit_code
    except (WasmError, OSError) as err:
        print(f"bareboat: {err}", file=sys.stderr)
        return 125
