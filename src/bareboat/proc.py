"""One process named for good: its pid and its kernel start time (a reused pid has a later
one). Plain `os`, nothing else at import: bareboat-runtime's calls use it on their hot path,
the engine for its monitors."""

from __future__ import annotations

import os


def start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if it is gone or has
    finished (a zombie, or one being reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def alive(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and start_time(pid) == start


def wait_exit(pid: int | None, start: int | None, timeout: float) -> bool:
    """Until that process has exited (True), or `timeout` seconds passed (False). A pidfd,
    so the wait ends the moment it exits; works for a process that is not our child."""
    import select

    if not alive(pid, start):
        return True
    assert pid is not None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return True  # gone already
    try:
        if alive(pid, start):  # still that process after the open: the pidfd names it
            ready, _, _ = select.select([fd], [], [], timeout)
            return bool(ready)
        return True
    finally:
        os.close(fd)
