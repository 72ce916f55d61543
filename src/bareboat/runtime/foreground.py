"""`run` for the isolations bareboat drives itself: what runc does after its create.

runc's `run` is create + start in one call; in the foreground it then waits for the
container, passing signals on, deletes it (unless `--keep`) and exits with its status. The
gate `create` forked is this process's child and exits with the workload's status, so a
plain waitpid carries the code, as it does for conmon or the shim after a create.
"""

from __future__ import annotations

from bareboat.proc import FORWARDED_SIGNALS, pass_signals_on, wait_child

from . import lifecycle as lc
from .args import Invocation
from .records import RuntimeRoot

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def run_created(inv: Invocation, root: RuntimeRoot, module: Any) -> int:
    """After a successful create: start; with `--detach` return, else wait and clean up."""
    rec = root.load(inv.id)
    assert rec is not None
    gate = int(lc.read_state(root, rec.id)["pid"])
    detach = inv.has("--detach")
    if not detach:
        # Before the workload starts: a signal the client sends once it runs must reach it
        # (the gate passes the signals on to its workload in turn), not end this process.
        pass_signals_on(gate, FORWARDED_SIGNALS)
    try:
        lc.release(root, rec)
    except BaseException:
        _delete(inv, root, module)
        raise
    if detach:
        return 0
    code = wait_child(gate)
    if not inv.has("--keep"):
        _delete(inv, root, module)
    return code


def _delete(inv: Invocation, root: RuntimeRoot, module: Any) -> None:
    rec = root.load(inv.id)
    if rec is None:
        return
    delete = Invocation(inv.globals)
    delete.command = "delete"
    delete.flags = {"--force": ""}
    delete.positionals = [rec.id]
    from .commands import run

    run(delete, root, rec, module)
