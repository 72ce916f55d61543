"""ctypes bindings of the two syscalls the layer extractor needs that Python lacks:
openat2(2) and syncfs(2).

With `RESOLVE_IN_ROOT` the kernel resolves the whole path as if `dirfd` were `/`: `..` stops at
it and absolute symlinks restart from it, so no path or symlink in an image can name a file
outside the root filesystem being built. Linux >= 5.6.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from typing import Any

# include/uapi/linux/openat2.h
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# openat2 came after the syscall tables were unified, so it is 437 on every architecture.
_SYS_OPENAT2 = 437


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_libc: ctypes.CDLL | None = None

# RESOLVE_IN_ROOT answers EAGAIN when a rename raced with a `..` walk; try again a few times.
_RETRIES = 64


def _libc_handle() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _syscall() -> Any:
    return _libc_handle().syscall


def openat2(
    dirfd: int,
    path: str,
    flags: int,
    *,
    mode: int = 0,
    resolve: int = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
) -> int:
    """Open `path` relative to `dirfd` under the `resolve` rules; return the new fd.

    Raises OSError with the kernel's errno (ENOENT, ELOOP, EXDEV, ...) like os.open does.
    """
    if platform.system() != "Linux":
        raise OSError(errno.ENOSYS, "openat2 needs Linux")
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    encoded = os.fsencode(path)
    for _ in range(_RETRIES):
        fd = _syscall()(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(encoded),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EINTR, errno.EAGAIN):
            break
    raise OSError(err, os.strerror(err), path)


def syncfs(fd: int) -> None:
    """Flush everything of the filesystem that holds `fd` to disk (syncfs(2)), so a tree
    renamed into place after it survives a crash whole; os.sync() would flush every disk."""
    if _libc_handle().syncfs(ctypes.c_int(fd)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
