"""A `process` sandbox's own parts: its mounts, made in the gate before the workload runs, and
its operations (`sandbox.oci`) over its processes, which `procgroup` tracks.

The sandbox shares the host's PID namespace and, until `start`, the host's root: its processes
are the members of its own cgroup, never those that merely share something with the gate.
"""

from __future__ import annotations

import os
import signal

from bareboat.proc import signal_each

from . import procgroup
from .status import alive, wait_gone

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any

    from .status import Status


def apply_mounts(config: dict[str, Any], rootfs: str) -> None:
    """In the gate, before it waits for `start`: the spec's mounts in a mount namespace of
    its own, each resolved inside the rootfs (an image's symlinks never reach the host), and
    the root read-only if the spec asks."""
    from pathlib import Path

    from bareboat.backends.base import CLONE_NEWNS, MS_PRIVATE, MS_REC, mount, unshare
    from bareboat.backends.process.backend import make_root

    unshare(CLONE_NEWNS)
    mount("none", Path("/"), "", MS_REC | MS_PRIVATE)
    make_root(Path(rootfs), config, own_mount=True)


def _cgroup(st: dict[str, Any]) -> str | None:
    return procgroup.owned(st.get("cgroup"))


def pids(sandbox: str, st: dict[str, Any]) -> list[int]:
    """The container's processes: its cgroup's members (the workload, its execs, whatever
    they started). Without a cgroup: the gate and, once it has chrooted, the processes whose
    root is its root, never one whose root is ours (before `start` the gate's root is the
    host's, which nearly every process on the host shares)."""
    cgroup = _cgroup(st)
    if cgroup is not None:
        return procgroup.members(cgroup)
    if not alive(st):
        return []
    pid = int(st["pid"])
    try:
        ref = os.stat(f"/proc/{pid}/root")
        own = os.stat("/proc/self/root")
    except OSError:
        return [pid]
    if (ref.st_dev, ref.st_ino) == (own.st_dev, own.st_ino):
        return [pid]  # not chrooted yet: it alone is the container
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                s = os.stat(f"/proc/{name}/root")
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == (ref.st_dev, ref.st_ino):
                found.append(int(name))
    return sorted(found)


def kill(sandbox: str, st: dict[str, Any], status: Status, sig: int, everything: bool) -> bool:
    cgroup = _cgroup(st)
    if everything and cgroup is not None and procgroup.members(cgroup):
        # Also what outlived the workload of a stopped container, as runc's kill --all.
        procgroup.signal_all(cgroup, sig)
        return True
    if not alive(st):
        return False
    signal_each(pids(sandbox, st) if everything else [int(st["pid"])], sig)
    return True


def set_paused(sandbox: str, st: dict[str, Any], paused: bool) -> None:
    cgroup = _cgroup(st)
    # The freezer where there is one: no member can fork past it, and a process the
    # workload stopped itself stays stopped after resume.
    if cgroup is None or not procgroup.freeze(cgroup, paused):
        signal_each(pids(sandbox, st), signal.SIGSTOP if paused else signal.SIGCONT)


def destroy(sandbox: str, st: dict[str, Any]) -> None:
    cgroup = _cgroup(st)
    if cgroup is not None:
        # Everything of the container, also what a stopped workload left running.
        procgroup.signal_all(cgroup, signal.SIGKILL)
    elif alive(st):
        signal_each(pids(sandbox, st), signal.SIGKILL)
    wait_gone(st)
    if cgroup is not None:
        procgroup.remove(cgroup)


def update(
    sandbox: str, st: dict[str, Any], resources: dict[str, Any], booted: dict[str, Any], name: str
) -> None:
    from bareboat.errors import BackendUnavailable

    raise BackendUnavailable("process isolation has no cgroups: nothing can be updated")
