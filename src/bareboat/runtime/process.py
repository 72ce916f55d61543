"""`process` isolation under the OCI contract (no namespaces: the workload runs chrooted in
the bundle's rootfs). Not wired yet."""

from __future__ import annotations

from typing import Any

from bareboat.errors import BackendUnavailable

from .args import Invocation
from .records import Record, RuntimeRoot


def create(inv: Invocation, root: RuntimeRoot, bundle: str, config: dict[str, Any]) -> int:
    raise BackendUnavailable("process isolation under bareboat-runtime is not wired yet")


def command(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    raise BackendUnavailable("process isolation under bareboat-runtime is not wired yet")


def state_of(root: RuntimeRoot, rec: Record) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2-dev",
        "id": rec.id,
        "status": "stopped",
        "pid": 0,
        "bundle": rec.bundle,
    }
