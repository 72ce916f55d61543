"""ctypes bindings of the two syscalls the layer extractor needs that Python lacks:
openat2(2) and syncfs(2), and `make_in_root`, which the backends use for mount points.

With `RESOLVE_IN_ROOT` the kernel resolves the whole path as if `dirfd` were `/`: `..` stops at
it and absolute symlinks restart from it, so no path or symlink in an image can name a file
outside the root filesystem being built. Linux >= 5.6.
"""

from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import sys
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

# Symlinks followed by hand (dangling ones, whose target `make_in_root` makes), as the kernel's
# MAXSYMLINKS.
_MAX_HOPS = 40

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
    if not sys.platform.startswith("linux"):
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


def make_in_root(rootfd: int, path: str, *, directory: bool) -> int:
    """An O_PATH fd of `path` inside the tree at `rootfd`, made there if it is missing: a
    directory, or an empty file when not `directory` (missing parents become 0755
    directories). Every lookup is the kernel's, in root: `..` and symlinks, absolute or
    relative, never leave the tree. A dangling symlink has its target made, inside the tree,
    as runc and crun do for a mount point. What already exists is returned whatever its type.

    Mount onto `/proc/self/fd/N` of the result, never onto a path: the fd names the very
    file that was resolved, so a symlink swapped in afterwards cannot redirect the mount.
    """
    return _make(rootfd, _parts(path), directory, 0)


def _parts(path: str) -> list[str]:
    # Lexically clean, as the tree's `/`: `..` above the top stays at the top.
    return [p for p in posixpath.normpath("/" + path).split("/") if p]


def _make(rootfd: int, parts: list[str], directory: bool, hops: int) -> int:
    rel = "/".join(parts) or "."
    try:
        return openat2(rootfd, rel, os.O_PATH)
    except FileNotFoundError:
        if not parts:
            raise
    parent = _make(rootfd, parts[:-1], True, hops)
    try:
        name = parts[-1]
        try:
            if directory:
                os.mkdir(name, 0o755, dir_fd=parent)
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                os.close(os.open(name, flags, 0o644, dir_fd=parent))
        except FileExistsError:
            # Not found above yet there: a dangling symlink (or a racing creator, which the
            # lookup below then finds).
            try:
                link = os.readlink(name, dir_fd=parent)
            except OSError:
                link = ""
            if link:
                if hops >= _MAX_HOPS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), "/" + rel) from None
                base = "" if link.startswith("/") else _where(rootfd, parent)
                return _make(rootfd, _parts(f"{base}/{link}"), directory, hops + 1)
    finally:
        os.close(parent)
    return openat2(rootfd, rel, os.O_PATH)


def _where(rootfd: int, fd: int) -> str:
    """Where `fd` (opened in root) is, as a path inside the tree."""
    top = os.readlink(f"/proc/self/fd/{rootfd}")
    here = os.readlink(f"/proc/self/fd/{fd}")
    rel = posixpath.relpath(here, top)
    if rel == ".." or rel.startswith("../"):
        raise OSError(errno.EXDEV, "outside the root", here)
    return "" if rel == "." else rel


def syncfs(fd: int) -> None:
    """Flush everything of the filesystem that holds `fd` to disk (syncfs(2)), so a tree
    renamed into place after it survives a crash whole; os.sync() would flush every disk."""
    if _libc_handle().syncfs(ctypes.c_int(fd)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
