"""Read a small file from inside an untrusted root filesystem, never from outside it.

An image's `/etc/passwd` may be a symlink to `/etc/shadow` of the host, a FIFO that blocks
forever, or a gigabyte of junk. The kernel resolves the path for us with
`openat2(RESOLVE_IN_ROOT)`: every `..` and every symlink, absolute or not, is resolved as if
the rootfs were `/`, so nothing outside it can be reached (umoci and runc's securejoin do the
same). Where openat2 is missing (Linux < 5.6), every component is opened with O_NOFOLLOW
instead, so any symlink on the way is refused rather than followed.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_SYS_OPENAT2 = 437  # the same number on every architecture that has it (x86_64, arm64...)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10

MAX_SIZE = 4 << 20


class RootReadError(Exception):
    """The file exists but is not something we will read (not regular, too large)."""


def _openat2(dirfd: int, path: str, flags: int) -> int:
    """openat2(2) through ctypes; raises OSError (ENOSYS where the kernel lacks it)."""
    import ctypes  # only here: ctypes costs import time the CLIs need not pay

    class OpenHow(ctypes.Structure):
        _fields_ = [
            ("flags", ctypes.c_uint64),
            ("mode", ctypes.c_uint64),
            ("resolve", ctypes.c_uint64),
        ]

    libc = ctypes.CDLL(None, use_errno=True)
    how = OpenHow(flags, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    fd = int(
        libc.syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def _open_nofollow(dirfd: int, path: str, flags: int) -> int:
    """The fallback: walk the components, refusing every symlink and every `..`."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise OSError(errno.EINVAL, "refusing path", path)
    fd = os.dup(dirfd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW, dir_fd=fd)
    finally:
        os.close(fd)


def open_in_root(rootfs: Path, path: str, flags: int = os.O_RDONLY) -> int:
    """Open `path` (as seen from inside `rootfs`) and return the fd; OSError if it cannot."""
    flags |= os.O_CLOEXEC | os.O_NOCTTY
    root = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            return _openat2(root, path.lstrip("/"), flags)
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM):  # EPERM: seccomp-filtered hosts
                raise
        return _open_nofollow(root, path, flags)
    finally:
        os.close(root)


def read_in_root(rootfs: Path, path: str, *, limit: int = MAX_SIZE) -> bytes | None:
    """The bytes of regular file `path` inside `rootfs`, or None if it does not exist.

    Raises RootReadError if it is not a regular file or is larger than `limit`.
    """
    try:
        # O_NONBLOCK: opening a FIFO planted at this path must not hang us.
        fd = open_in_root(rootfs, path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
            # A symlink loop, a file where a directory should be, or (fallback) a symlink:
            # nothing we can read, so to the image it is as if the file were missing.
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RootReadError(f"{path} in the image is not a regular file")
        if st.st_size > limit:
            raise RootReadError(f"{path} in the image is larger than {limit} bytes")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise RootReadError(f"{path} in the image is larger than {limit} bytes")
    return data
