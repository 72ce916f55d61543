"""The protocol every backend implements, and the Linux calls backends share.

The monitor model
-----------------
Each container has one *monitor* process (see `bareboat.engine.monitor`). The monitor owns the
backend for the container's life: it calls `start` once, with the file descriptors the
workload's stdio must use (pipes, or the slave of a pty for `-t`), waits for the pid that
`start` returned, and hands the raw wait status to `exit_code`. Everything else (`kill`,
`exec`, `delete`) must work from *any* process that holds the container's
`BackendContext` — the CLI calls them directly — so a backend keeps what it needs on disk
under `ctx.state_dir`, never in memory.

A backend that holds its workload's stdio itself (the microVM backend gets stdio as agent
frames over virtio-serial, not as fds) still gets the same `Stdio`: it copies the frames it
receives into `stdio.stdout`/`stdio.stderr` (a thread or its own event loop inside the
monitor), reads `stdio.stdin` to send stdin frames, and implements `resize` and `kill` by
sending agent messages. `start` returns the pid the monitor waits on (QEMU's), and
`exit_code` turns QEMU's end into the workload's code as the agent reported it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

TYPE_CHECKING = False  # typing costs import time on every `run`; mypy treats this as true
if TYPE_CHECKING:
    import ctypes
    from typing import Any, Protocol


# Plain classes, not dataclasses: creating a dataclass costs 1-2 ms at import here (its methods
# are compiled from source), and these are on the path of every `run` and runtime call.


class BackendContext:
    """Where one container's things are: derived from the roots by the engine."""

    __slots__ = ("bundle", "control", "id", "spec", "state_dir")

    def __init__(
        self,
        id: str,
        bundle: Path,
        state_dir: Path,
        spec: dict[str, Any],
        control: Path | None = None,
    ) -> None:
        self.id = id
        self.bundle = bundle  # holds config.json; rootfs at bundle/rootfs (the overlay mount)
        self.state_dir = state_dir  # the backend's own state (e.g. the OCI runtime's --root)
        self.spec = spec
        # The sandbox's control socket, where its supervisor serves it (the engine's
        # monitor); None where a backend serves its own (a VM's hub under bareboat-runtime).
        self.control = control

    @property
    def rootfs(self) -> Path:
        return self.bundle / "rootfs"


class Stdio:
    __slots__ = ("stderr", "stdin", "stdout", "tty")

    def __init__(self, stdin: int, stdout: int, stderr: int, tty: bool = False) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.tty = tty  # stdin/stdout/stderr are one pty slave


class Started:
    """What `start` hands back to the monitor."""

    __slots__ = ("console", "pid")

    def __init__(self, pid: int, console: int | None = None) -> None:
        self.pid = pid  # the monitor's child to wait for
        # A pty master that replaces the monitor's own for `-t` (a runtime that sent its
        # console over a console socket); the monitor then reads, writes and resizes this one.
        self.console = console


if TYPE_CHECKING:  # a protocol for mypy only: the engine and the monitor never check it

    class Backend(Protocol):
        name: str

        def create(self, ctx: BackendContext) -> None:
            """Check and prepare what `start` needs (runs in the monitor, after the rootfs
            mount)."""

        def start(self, ctx: BackendContext, stdio: Stdio) -> Started:
            """Start the workload; return the pid the monitor waits on (its child)."""

        def exit_code(self, ctx: BackendContext, status: int) -> int:
            """The workload's exit code (128+N for signal N) from the waited pid's wait status."""

        def kill(self, ctx: BackendContext, pid: int | None, sig: int) -> None:
            """Send `sig` to the workload; `pid` is the monitor's recorded pid. From any process."""

        def resize(self, ctx: BackendContext, rows: int, cols: int) -> None:
            """The terminal was resized (the monitor already set the pty's size)."""

        def exec(
            self, ctx: BackendContext, process: dict[str, Any], *, detach: bool = False
        ) -> int:
            """Run `process` (an OCI process object) in the running container with the caller's
            stdio; return its exit code (0 when detached)."""

        def delete(self, ctx: BackendContext, *, force: bool = False) -> None:
            """Remove every trace the backend left (runtime state, cgroups). Idempotent."""


def terminal_size(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal `fd`; (0, 0) when it is none."""
    import fcntl
    import struct
    import termios

    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    except OSError:
        return (0, 0)
    return rows, cols


def is_devnull(fd: int) -> bool:
    """Whether `fd` is /dev/null (a workload with no stdin to relay)."""
    try:
        st, null = os.fstat(fd), os.stat(os.devnull)
    except OSError:
        return False
    return (st.st_rdev, st.st_ino) == (null.st_rdev, null.st_ino)


def signal_pid(pid: int | None, sig: int) -> None:
    """Send `sig` to the workload `pid` the monitor started; gone already is fine."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --- Linux calls the standard library lacks (3.11) -------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_REC = 0x4000
MS_BIND = 0x1000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    """libc through ctypes, loaded on first use (ctypes costs ~5 ms to import)."""
    import ctypes

    global _libc
    if _libc is None:
        # CDLL(None): the symbols already loaded (libc among them); find_library("c")
        # would run /sbin/ldconfig, ~5 ms.
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(ret: int, what: str) -> None:
    import ctypes

    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: Path, fstype: str, flags: int = 0, data: str = "") -> None:
    _check(
        libc().mount(
            source.encode(), os.fsencode(target), fstype.encode(), flags, data.encode() or None
        ),
        f"mount {target}",
    )


def umount(target: Path, flags: int = 0) -> None:
    """Unmount; a target that is not mounted (or gone) is not an error."""
    import ctypes

    ret = libc().umount2(os.fsencode(target), flags)
    if ret != 0:
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(libc().unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(libc().setns(fd, nstype), "setns")


def loopback_up() -> None:
    """Bring `lo` up in this process's network namespace (a new one starts with it down)."""
    import fcntl
    import socket
    import struct

    siocsifflags, iff_up, iff_loopback, iff_running = 0x8914, 0x1, 0x8, 0x40
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", iff_up | iff_loopback | iff_running)
        fcntl.ioctl(s, siocsifflags, ifreq)


def set_child_subreaper() -> None:
    _check(libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl")


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path` from /proc/self/mountinfo, deepest first."""
    prefix = os.fsencode(path)
    found = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            point = line.split(b" ")[4].decode("unicode_escape").encode("latin-1")
            if point == prefix or point.startswith(prefix + b"/"):
                found.append(Path(os.fsdecode(point)))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)
