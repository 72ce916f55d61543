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


def main(argv: list[str]) -> int:
    # Default actions, as an uncaught signal would end a native program: Python's own SIGINT
    # handler would only run once the module returned to Python, which a loop never does.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
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
