"""bareboat-runtime's calls on an existing container of an isolation bareboat runs itself
(process, wasm, microvm), written once over the sandbox's operations (`bareboat.sandbox.oci`):
`state`, `start`, `kill`, `delete`, `pause`, `resume`, `ps` and `update`. `exec` is each
isolation module's own (`exec_in`).
"""

from __future__ import annotations

import json

from bareboat.errors import ContainerError
from bareboat.proc import parse_signal
from bareboat.sandbox.oci import operations
from bareboat.sandbox.status import Status

from . import lifecycle as lc
from .records import Record, RuntimeRoot

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any

    from .args import Invocation


def run(inv: Invocation, root: RuntimeRoot, rec: Record, module: Any) -> int:
    """Serve `inv` on container `rec`; `module` is its isolation's runtime module (for
    `exec`; None for the other calls)."""
    cmd = inv.command
    if cmd == "state":
        return lc.print_state(root, rec)
    if cmd == "start":
        lc.release(root, rec)
        return 0
    if cmd == "exec":
        return int(module.exec_in(inv, root, rec))
    ops = operations(rec.isolation)
    sandbox = lc.state_dir(root, rec.id)
    if cmd == "kill":
        sig = parse_signal(inv.positionals[1] if len(inv.positionals) > 1 else "SIGTERM")
        st = lc.read_state(root, rec.id)
        status = lc.status_of(root, rec, st)
        if not ops.kill(sandbox, st, status, sig, inv.has("--all")):
            raise ContainerError(f"cannot kill container {rec.id}: container not running")
        return 0
    if cmd == "delete":
        st = lc.deletable(inv, root, rec)
        ops.destroy(sandbox, st)
        lc.forget(root, rec, st)
        return 0
    if cmd in ("pause", "resume"):
        paused = cmd == "pause"
        st = lc.require(root, rec, Status.RUNNING, Status.PAUSED, action=f"{cmd} it")
        ops.set_paused(sandbox, st, paused)
        lc.set_paused(root, rec.id, paused)
        return 0
    if cmd == "ps":
        return print_pids(inv, ops.pids(sandbox, lc.read_state(root, rec.id)))
    if cmd == "update":
        resources = _update_resources(inv)
        st = lc.require(root, rec, Status.CREATED, Status.RUNNING, Status.PAUSED,
                        action="update it")  # fmt: skip
        booted = (lc.load_config(rec).get("linux") or {}).get("resources") or {}
        ops.update(sandbox, st, resources, booted, f"container {rec.id}")
        return 0
    from bareboat.errors import BackendUnavailable

    raise BackendUnavailable(f"{cmd} is not supported for {rec.isolation} isolation")


def print_pids(inv: Invocation, pids: list[int]) -> int:
    if inv.flag("--format") == "json":
        print(json.dumps(pids))
    else:
        print("PID")
        for pid in pids:
            print(pid)
    return 0


def _update_resources(inv: Invocation) -> dict[str, Any]:
    """LinuxResources from `--resources FILE|-`, else from runc's flags."""
    import sys

    from bareboat.errors import UsageError

    source = inv.flag("--resources")
    if source:
        try:
            if source == "-":
                data = json.load(sys.stdin)
            else:
                with open(source, "rb") as f:
                    data = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"update: cannot read resources from {source}: {e}") from None
        if not isinstance(data, dict):
            raise UsageError("update: resources must be a JSON object")
        return data
    cpu: dict[str, int] = {}
    for flag, key in (
        ("--cpu-quota", "quota"),
        ("--cpu-period", "period"),
        ("--cpu-share", "shares"),
    ):
        if inv.flag(flag):
            try:
                cpu[key] = int(inv.flag(flag))
            except ValueError:
                raise UsageError(f"update: {flag} must be an integer") from None
    memory = {"limit": _size(inv.flag("--memory"))} if inv.flag("--memory") else {}
    return {"cpu": cpu, "memory": memory}


def _size(text: str) -> int:
    from bareboat.spec.parse import parse_memory

    return parse_memory(text)
