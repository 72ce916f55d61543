"""A `process` sandbox's own parts: its mounts, made in the gate before the workload runs.
Its processes are tracked by `procgroup`."""

from __future__ import annotations

from typing import Any


def apply_mounts(config: dict[str, Any], rootfs: str) -> None:
    """In the gate, before it waits for `start`: the spec's mounts in a mount namespace of
    its own, each resolved inside the rootfs (an image's symlinks never reach the host)."""
    from pathlib import Path

    from bareboat.backends.base import CLONE_NEWNS, MS_PRIVATE, MS_REC, mount, unshare
    from bareboat.backends.process.backend import mount_in_root, plan_mounts

    unshare(CLONE_NEWNS)
    mount("none", Path("/"), "", MS_REC | MS_PRIVATE)
    mount_in_root(Path(rootfs), plan_mounts(config))
