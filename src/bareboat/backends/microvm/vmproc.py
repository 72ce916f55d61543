"""A VM's QEMU as other processes find it: the pid the backend records and the check that a
pid still is that QEMU. Plain os/json, no backend imports: bareboat-runtime's `kill`,
`delete` and `ps` use it on a path that podman and containerd take several times per
container."""

from __future__ import annotations

import json
import os


def recorded_pid(pidfile: str | os.PathLike[str]) -> int | None:
    """QEMU's pid as the backend recorded it (vm.json), or None."""
    try:
        with open(pidfile, "rb") as f:
            return int(json.load(f)["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_vm_qemu(pid: int, sockets: str | os.PathLike[str]) -> bool:
    """Guard against pid reuse: a QEMU whose argv names this VM's socket directory."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"qemu-system" in cmdline and os.fsencode(sockets) in cmdline
