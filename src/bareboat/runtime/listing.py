"""`list`: runc's containers (container isolation) and bareboat's own, in runc's format."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from .args import Invocation
from .records import RuntimeRoot


def list_all(inv: Invocation, root: RuntimeRoot) -> int:
    rows: list[dict[str, Any]] = []
    from .delegate import find_runtime

    if os.path.isdir(root.runc):
        res = subprocess.run(
            [find_runtime(os.environ), f"--root={root.runc}", "list", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if res.returncode == 0 and res.stdout.strip():
            rows.extend(json.loads(res.stdout) or [])
    known = {r.get("id") for r in rows}
    for rec in root.all():
        if rec.isolation != "container" and rec.id not in known:
            from .lifecycle import state_of

            st = state_of(root, rec)
            rows.append({**st, "rootfs": "", "created": st.get("created", ""), "owner": ""})
    if inv.flag("--format") == "json":
        print(json.dumps(rows))
    elif inv.has("--quiet"):
        for r in rows:
            print(r["id"])
    else:
        print(f"{'ID':<20}{'PID':<10}{'STATUS':<10}{'BUNDLE':<40}CREATED")
        for r in rows:
            print(
                f"{r['id']:<20}{r.get('pid', 0):<10}{r['status']:<10}{r['bundle']:<40}"
                f"{r.get('created', '')}"
            )
    return 0
