"""A container's processes found by what they are: those whose root is the container's own.

A monitor that dies (kill -9, OOM) leaves its workload to nobody: under `process` isolation
the workload and whatever it started keep running chrooted in the container's rootfs, under
`container` the runtime's container does, pivoted into it. The rootfs is an overlay mount of
the container's own, so the processes whose root directory is that mount's root belong to the
container and to nothing else. `end_rooted_in` SIGKILLs them, through a pidfd checked after
it was opened, so a pid reused meanwhile is never signalled, and never when the root given is
the caller's own (no host process is taken for a container's).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _root_of(pid: str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/root")
    except OSError:  # gone, or a zombie (its root is released at exit)
        return None
    return st.st_dev, st.st_ino


def rooted_in(root: Path) -> list[int]:
    """The pids of the processes whose root directory is `root` (none if that is ours)."""
    try:
        st = os.stat(root)
    except OSError:
        return []
    wanted = (st.st_dev, st.st_ino)
    if wanted == _root_of("self"):
        return []
    found = []
    with os.scandir("/proc") as entries:
        for e in entries:
            if e.name.isdigit() and _root_of(e.name) == wanted:
                found.append(int(e.name))
    return found


def end_rooted_in(root: Path, *, timeout: float = 5.0) -> int:
    """SIGKILL every process rooted in `root`, again until none is left (one may fork while
    we look) or `timeout` passed; how many processes were signalled."""
    try:
        st = os.stat(root)
    except OSError:
        return 0
    wanted = (st.st_dev, st.st_ino)
    ended: set[int] = set()
    deadline = time.monotonic() + timeout
    while pids := rooted_in(root):
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                # The pidfd names the process we looked at only if it was still alive after we
                # looked again through /proc (signal 0 says so).
                if _root_of(str(pid)) == wanted:
                    signal.pidfd_send_signal(fd, 0)
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    ended.add(pid)
            except ProcessLookupError:
                pass
            finally:
                os.close(fd)
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return len(ended)
