"""Directories only bareboat's own user may enter, as containers/storage and docker keep theirs.

Unpacked image trees hold setuid binaries and device nodes exactly as the image made them, and
a container's writable layer holds whatever its workload planted there (`chmod 4755` on a copy
of a shell). A local user who can walk to such a file runs it as root, so the barrier is the
directories above them: every root and every directory of image or container content is 0700
and owned by the user bareboat runs as. Files inside keep the modes the image gave them (a
shared read-only VM image stays 0444, for a jailed QEMU that gets it bind-mounted).

Plain `os` only: bareboat-runtime calls this on its hot path (its `create`).
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # mypy treats this as true
if TYPE_CHECKING:
    from bareboat.errors import StoreError

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600  # logs and disks that hold what a workload wrote


def private_dir(path: str | os.PathLike[str]) -> None:
    """Make `path` a directory of ours that no other user may enter.

    Missing directories are made 0700, missing parents too (as Go's MkdirAll, which runc and
    containerd use for their roots); an existing one is tightened to 0700, so an older
    installation's 0755 root is closed the first time it is opened. Parents that exist are
    never changed. A directory owned by another user, or a shared one (sticky bit, as /tmp),
    is refused: its owner could replace what is inside, and tightening /tmp would break the
    host.
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        _make(p)
        st = os.stat(p)
    if not stat.S_ISDIR(st.st_mode):
        raise _refused(f"{p} is not a directory")
    if st.st_uid != os.geteuid():
        raise _refused(
            f"{p} is owned by uid {st.st_uid}, not by this user ({os.geteuid()}): bareboat keeps "
            "its files only in directories of its own (chown it, or choose another path)"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_ISVTX:
        raise _refused(
            f"{p} is a shared directory (sticky bit): give bareboat a directory of its own in it"
        )
    if mode & 0o7077:
        os.chmod(p, mode & PRIVATE_DIR_MODE)


def _refused(message: str) -> StoreError:
    # bareboat.errors (~1 ms of building its classes) only when a directory is refused:
    # bareboat-runtime's create comes here for every container.
    from bareboat.errors import StoreError

    return StoreError(message)


def _make(path: str) -> None:
    """`mkdir -p`, every directory it makes 0700."""
    parent = os.path.dirname(path)
    if parent and parent != path and not os.path.isdir(parent):
        _make(parent)
    try:  # noqa: SIM105 - contextlib costs import time on the runtime's hot path
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        pass  # made by another process just now; the caller checks what it is


def private_file(path: str, flags: int) -> int:
    """An `open(..., opener=private_file)` for logs and disks: created 0600, and a file an
    older version made with wider permissions is narrowed when it is opened again."""
    fd = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
