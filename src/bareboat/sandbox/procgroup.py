"""The processes of a `process`-isolation container, found by what they are: the members of a
cgroup of its own.

That isolation shares the host's PID namespace and, until `start`, the host's root too, so no
property of a process (its root, its namespaces) tells the container's processes from the
host's. A cgroup does: the gate is moved into a fresh one before it can start anything, `exec`
joins it before it enters the container, and whatever they start, daemons that double-fork included,
stays in it (only root can move a process out). It is for tracking only: no controller is
enabled in it and nothing is limited. `kill --all` and `delete` end it with `cgroup.kill`
(atomic against a workload that forks meanwhile), `pause` freezes it.

It is `bareboat-process/<id>-<random>` in the unified (cgroup2) hierarchy, at /sys/fs/cgroup
or, on hybrid hosts, /sys/fs/cgroup/unified; state.json names it. Where none can be made (no
cgroup2, a read-only cgroupfs) `process.container_pids` falls back to the root, never taking a
process whose root is the caller's own.

Plain `os` only: bareboat-runtime's `create`, `kill --all` and `delete` run this.
"""

from __future__ import annotations

import os
import signal
import time

from bareboat.cgroupfs import remove_when_empty

MOUNTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
PARENT = "bareboat-process"


def _hierarchy() -> str | None:
    for mount in MOUNTS:
        if os.path.exists(f"{mount}/cgroup.controllers"):  # only a cgroup2 root has it
            return mount
    return None


def create(cid: str) -> str | None:
    """A fresh, empty cgroup for container `cid`; None where none can be made."""
    base = _hierarchy()
    if base is None:
        return None
    # The id is the client's: only a readable prefix of it names the cgroup.
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in cid[:64])
    path = f"{base}/{PARENT}/{readable}-{os.urandom(6).hex()}"
    try:
        try:  # noqa: SIM105 - contextlib costs import time here
            os.mkdir(f"{base}/{PARENT}", 0o755)
        except FileExistsError:
            pass
        os.mkdir(path, 0o755)  # new, so it can hold nothing but what we put there
    except OSError:
        return None
    return path


def owned(path: object) -> str | None:
    """`path` (from state.json) if it names a cgroup this module makes, else None."""
    if not isinstance(path, str):
        return None
    parent, name = os.path.split(path)
    if name in ("", ".", "..") or parent not in [f"{m}/{PARENT}" for m in MOUNTS]:
        return None
    return path


def join(path: str) -> None:
    """Move the calling process into the cgroup."""
    with open(f"{path}/cgroup.procs", "w") as f:
        f.write("0")


def move(path: str, pid: int) -> bool:
    """Move process `pid` into the cgroup; False if that failed."""
    return _write(path, "cgroup.procs", str(pid))


def members(path: str) -> list[int]:
    """The processes in the cgroup (none once it is gone)."""
    try:
        with open(f"{path}/cgroup.procs") as f:
            text = f.read()
    except OSError:
        return []
    # 0 stands for a process outside the reader's PID namespace: not one we can signal.
    return sorted({int(p) for p in text.split() if p != "0"})


def _write(path: str, name: str, value: str) -> bool:
    try:
        with open(f"{path}/{name}", "w") as f:
            f.write(value)
    except OSError:
        return False
    return True


def signal_all(path: str, sig: int) -> None:
    """Send `sig` to every process in the cgroup."""
    if sig == signal.SIGKILL and _write(path, "cgroup.kill", "1"):
        return  # Linux >= 5.14: the kernel kills them all, new forks included
    for _ in range(100):  # a forking workload may add members while we signal
        pids = members(path)
        for pid in pids:
            try:  # noqa: SIM105
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if sig != signal.SIGKILL or not pids:
            return
        time.sleep(0.01)


def freeze(path: str, frozen: bool, timeout: float = 5.0) -> bool:
    """Freeze or thaw the cgroup and wait until the kernel says it is done; False where the
    kernel has no cgroup freezer (< 5.2)."""
    if not _write(path, "cgroup.freeze", "1" if frozen else "0"):
        return False
    want = f"frozen {int(frozen)}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"{path}/cgroup.events") as f:
                if want in f.read().splitlines():
                    break
        except OSError:
            break
        time.sleep(0.005)
    return True


def remove(path: str) -> None:
    """Remove the container's cgroup once its processes are gone."""
    remove_when_empty(path)
