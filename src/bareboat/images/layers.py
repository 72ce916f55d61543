"""Apply OCI image layers to a root filesystem tree, treating every layer as hostile.

A layer is a tar stream (plain, gzip or zstd) read once, front to back, with `tarfile` in
stream mode. Every entry is created relative to an fd of the rootfs directory, and every path
is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)`: `..` stops at the rootfs and
symlinks - which in an image may point anywhere, they are just data - are followed as if the
rootfs were `/`. So no entry, symlink or hard link in any layer can make us write outside it.

Names are cleaned lexically first, as containerd does: a leading `/` means the rootfs, and
`a/../b` is `b`. A name whose `..` climbs above the rootfs is refused (containerd clamps it to
the root instead; no honest tool writes one, so we call it hostile). Writing through a symlink
that points outside (`evil -> /tmp`, then `evil/x`) is contained, not refused: real images
rely on absolute symlinks such as `/var/run -> /run`, so `evil/x` lands in `<rootfs>/tmp/x`.

A parent that is a dangling symlink (`var/run -> /run` before /run exists) has its target
made, inside the rootfs, as docker does; symlink loops are a LayerError.

OCI whiteouts: `.wh.NAME` removes NAME of lower layers and `.wh..wh..opq` empties its
directory of lower-layer contents; both only hide what lower layers made (never entries of
their own layer, in whatever order the tar lists them) and never appear in the tree.

Holes stay holes: the data extents of a sparse entry (GNU and PAX sparse formats) and, in
any regular file, whole blocks of zeros are never written, so a 10 KB tar of a sparse 10 GiB
file, or 2 GiB of zeros in a 2 MB gzip, takes no more disk than its data. What is written is
counted (blocks written, a block per directory, long symlink and set of xattrs, and the
entry's name) against `max_disk`, the image's disk cap (diskcap.py), and the layer is refused
as soon as it would pass it.

Metadata: modes (setuid, setgid, sticky), mtimes, and PAX xattrs (user.*, trusted.*,
security.capability); owners and device nodes only as root (device nodes are skipped with a
warning otherwise). Directory modes and times are set when the layer is done, and directories
whose contents a layer changed get their times back, so the tree does not depend on when it
was unpacked. Without root, directories keep u+rwx so later layers and clean-up can enter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from bareboat.errors import ImageTooLarge, LayerError, StoreError
from bareboat.images.diskcap import DiskCap, disk_cap, short_digest
from bareboat.images.layerstream import bounded_tarinfo, decompressed, one_line
from bareboat.images.openat2 import RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, openat2, syncfs
from bareboat.units import show_size

if TYPE_CHECKING:
    import logging


def _log() -> logging.Logger:
    """This module's logger; logging is imported only when there is something to say (it
    and what it imports cost ~6 ms on every pull here)."""
    import logging

    return logging.getLogger(__name__)


KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

_RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
_COPY_CHUNK = 1 * MiB
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_AUFS_META = ".wh..wh."  # AUFS bookkeeping (.wh..wh.plnk/, .wh..wh.aufs): never in a tree
_XATTR = "SCHILY.xattr."
_MAX_HOPS = 40  # symlinks followed to make a missing directory, as the kernel's ELOOP
# Holes are made a filesystem block at a time: 4 KiB on ext4, xfs, btrfs and tmpfs here.
_BLOCK = 4 * KiB
_ZERO_BLOCK = bytes(_BLOCK)
_ZERO_CHUNK = bytes(_COPY_CHUNK)
_INLINE_SYMLINK = 60  # ext4 keeps shorter symlink targets in the inode, longer take a block


@dataclass(frozen=True)
class LayerLimits:
    """Bounds on what one layer (or, in unpack_rootfs, one image) may make us write."""

    max_entry_size: int = 32 * GiB  # one regular file
    max_total_size: int = 128 * GiB  # all regular files together
    max_entries: int = 4_000_000
    max_header_size: int = 1 * MiB  # one PAX or GNU long-name record, read into memory
    max_disk: int = 1 << 62  # what may be written, holes excluded: the image's disk cap

    @property
    def max_stream_size(self) -> int:
        """Uncompressed tar bytes we read at most: contents plus a header block per entry."""
        return self.max_total_size + self.max_entries * 1 * KiB + 1 * MiB


DEFAULT_LIMITS = LayerLimits()


@dataclass
class LayerStats:
    entries: int = 0  # tar entries read, whiteouts included
    bytes: int = 0  # regular file contents written (their apparent size, holes included)
    disk: int = 0  # what that took on disk: blocks written, directories and long symlinks
    whiteouts: int = 0
    skipped: int = 0  # device nodes (and hard links to them) not made without root

    def __add__(self, other: LayerStats) -> LayerStats:
        return LayerStats(*(a + b for a, b in zip(_fields(self), _fields(other), strict=True)))


def _fields(s: LayerStats) -> tuple[int, ...]:
    return tuple(getattr(s, f.name) for f in dataclasses.fields(s))


def entry_parts(name: str) -> tuple[str, ...]:
    """The clean, rootfs-relative components of a tar name; () is the rootfs itself.

    A leading `/` means the rootfs; `.` and empty components vanish and `..` removes the one
    before it. A `..` that would climb above the rootfs raises LayerError.
    """
    if "\0" in name:
        raise LayerError(f"layer entry {name!r}: name contains a NUL byte")
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise LayerError(f"layer entry {name!r}: path escapes the root filesystem")
            parts.pop()
        else:
            parts.append(comp)
    return tuple(parts)


# --- extraction -----------------------------------------------------------------------------


def _clamped(comps: Sequence[str]) -> tuple[str, ...]:
    """Clean components as the kernel walks them under RESOLVE_IN_ROOT: `..` stops at root."""
    parts: list[str] = []
    for comp in comps:
        if comp == "..":
            if parts:
                parts.pop()
        elif comp not in ("", "."):
            parts.append(comp)
    return tuple(parts)


def _rel(parts: Sequence[str]) -> str:
    return "/".join(parts) or "."


def _lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(dirfd: int, name: str) -> int | None:
    """Remove `name` in `dirfd`, whatever it is; a directory goes with all it holds. Returns
    the mode of what was removed, None when there was nothing."""
    st = _lstat(dirfd, name)
    if st is None:
        return None
    if stat.S_ISDIR(st.st_mode):
        # rmtree with dir_fd walks by fds and never follows a symlink.
        shutil.rmtree(name, dir_fd=dirfd)
    else:
        os.unlink(name, dir_fd=dirfd)
    return st.st_mode


@contextlib.contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


class _Extractor:
    """Applies one layer's entries to the tree under `rootfd`."""

    def __init__(self, rootfd: int, limits: LayerLimits) -> None:
        self.rootfd = rootfd
        self.limits = limits
        self.stats = LayerStats()
        self.total = 0
        self.as_root = os.geteuid() == 0
        # Paths (and their ancestors) this layer made: whiteouts never hide those.
        self.touched: set[str] = set()
        # Directory modes and times, set when the layer is done: making entries inside a
        # directory changes its mtime, and a read-only directory would stop a non-root user.
        self.dir_meta: dict[str, tuple[int, int]] = {}
        self.dir_times: dict[str, tuple[int, int]] = {}
        self.skipped: set[str] = set()  # entries not made (device nodes without root)
        self.root_path = os.readlink(f"/proc/self/fd/{rootfd}")
        self.name = ""  # the entry being applied, for a refusal
        # The parent directory of the last entry, (parts, O_PATH fd), for the entries that
        # follow in it (a layer lists a directory's entries together). An fd opened in-root
        # names a directory inside the tree for good; only removing or replacing a directory
        # or a symlink can change what a path resolves to (every other entry makes a new
        # name, or replaces a file, which no path walks through), and then it is stale.
        self._parent: tuple[tuple[str, ...], int] | None = None
        self._parent_stale = False

    def parent(self, parts: tuple[str, ...]) -> int:
        """An O_PATH fd of the directory at `parts`, made if missing; kept for the next
        entries (see `_parent`), closed by `close`."""
        if self._parent is not None:
            if self._parent[0] == parts and not self._parent_stale:
                return self._parent[1]
            os.close(self._parent[1])
            self._parent = None
        fd = self.open_dir(parts, create=True)
        self._parent, self._parent_stale = (parts, fd), False
        return fd

    def remove(self, dirfd: int, name: str) -> None:
        """`_remove`, and the kept parent fd is stale if a directory or symlink went."""
        mode = _remove(dirfd, name)
        if mode is not None and (stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            self._parent_stale = True

    def close(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    def use(self, nbytes: int) -> None:
        """Count `nbytes` more on disk, refusing the layer before they pass `max_disk`."""
        if self.stats.disk + nbytes > self.limits.max_disk:
            err = ImageTooLarge(
                f"layer entry {self.name!r} takes the layer past {show_size(self.limits.max_disk)}"
                " on disk"
            )
            err.entry = self.name
            raise err
        self.stats.disk += nbytes

    # -- directories

    def open_dir(
        self, parts: Sequence[str], *, create: bool, flags: int = os.O_PATH, hops: int = 0
    ) -> int:
        """An fd of the directory at `parts`, resolved in-root; missing ones are made 0755
        when `create` (as docker and containerd make a layer's implicit parents)."""
        try:
            return openat2(self.rootfd, _rel(parts), flags | os.O_DIRECTORY, resolve=_RESOLVE)
        except FileNotFoundError:
            if not create or not parts:
                raise
        with _fd(self.open_dir(parts[:-1], create=True, hops=hops)) as pfd:
            try:
                self.use(_BLOCK)
                os.mkdir(parts[-1], 0o700, dir_fd=pfd)
                os.chmod(parts[-1], 0o755, dir_fd=pfd)
            except FileExistsError:
                # A dangling symlink (`var/run -> /run` before there is a /run): make the
                # directory it names, inside the rootfs, as docker and containerd do.
                if hops >= _MAX_HOPS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), _rel(parts)) from None
                link = os.readlink(parts[-1], dir_fd=pfd)
                start = () if link.startswith("/") else self.where(pfd)
                target = _clamped((*start, *link.split("/")))
                return self.open_dir(target, create=True, flags=flags, hops=hops + 1)
        return openat2(self.rootfd, _rel(parts), flags | os.O_DIRECTORY, resolve=_RESOLVE)

    def where(self, fd: int) -> tuple[str, ...]:
        """Where the directory `fd` (opened in-root) really is, relative to the rootfs."""
        rel = os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), self.root_path)
        if rel == ".." or rel.startswith("../"):
            raise LayerError(f"directory {rel!r} is outside the root filesystem")
        return () if rel == "." else tuple(rel.split("/"))

    def touching(self, dirfd: int, parts: Sequence[str]) -> None:
        """Note a directory's times before this layer changes what it holds, to put them
        back at the end: the tree then depends on the layers only, not on when we ran."""
        key = _rel(parts)
        if key not in self.dir_times:
            st = os.fstat(dirfd)
            self.dir_times[key] = (st.st_atime_ns, st.st_mtime_ns)

    # -- one entry

    def apply(self, tar: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        self.stats.entries += 1
        self.name = ti.name
        if self.stats.entries > self.limits.max_entries:
            raise LayerError(f"layer has more than {self.limits.max_entries} entries")
        if ti.isreg():
            if ti.size < 0 or ti.size > self.limits.max_entry_size:
                raise LayerError(
                    f"layer entry {ti.name!r}: size {ti.size} exceeds the per-file limit "
                    f"of {self.limits.max_entry_size}"
                )
            self.total += ti.size
            if self.total > self.limits.max_total_size:
                raise LayerError(
                    f"layer entry {ti.name!r}: contents exceed the total limit of "
                    f"{self.limits.max_total_size} bytes"
                )
        parts = entry_parts(ti.name)
        if any(comp.startswith(_AUFS_META) and comp != _OPAQUE for comp in parts):
            return
        for comp in parts[:-1]:
            if comp.startswith(_WHITEOUT):
                raise LayerError(f"layer entry {ti.name!r}: whiteout name used as a directory")
        try:
            if parts and parts[-1].startswith(_WHITEOUT):
                self.whiteout(ti, parts)
            elif not parts:
                self.root_entry(ti)
            else:
                self.entry(tar, ti, parts)
        except OSError as e:
            raise LayerError(f"layer entry {ti.name!r}: {e.strerror or one_line(e)}") from e
        except (ValueError, OverflowError) as e:  # NUL in a link target, a uid past 2**32...
            raise LayerError(f"layer entry {ti.name!r}: {one_line(e)}") from e
        if not parts or not parts[-1].startswith(_WHITEOUT):
            for i in range(1, len(parts) + 1):
                self.touched.add(_rel(parts[:i]))

    def root_entry(self, ti: tarfile.TarInfo) -> None:
        if not ti.isdir():
            raise LayerError(f"layer entry {ti.name!r}: the root must be a directory")
        if self.as_root:
            os.chown(self.rootfd, ti.uid, ti.gid)
        self.dir_meta["."] = (stat.S_IMODE(ti.mode), _ns(ti))

    def entry(self, tar: tarfile.TarFile, ti: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        # Its name in the directory, and a block for extended attributes: small each, but a
        # layer may hold millions of entries.
        self.use(len(os.fsencode(base)) + 8)
        if ti.pax_headers and any(k.startswith(_XATTR) for k in ti.pax_headers):
            self.use(_BLOCK)
        pfd = self.parent(parts[:-1])
        self.touching(pfd, parts[:-1])
        if ti.isdir():
            self.make_dir(pfd, base, ti, parts)
        elif ti.isreg():
            self.make_file(pfd, base, tar, ti)
        elif ti.issym():
            if len(os.fsencode(ti.linkname)) >= _INLINE_SYMLINK:
                self.use(_BLOCK)
            try:
                os.symlink(ti.linkname, base, dir_fd=pfd)
            except FileExistsError:  # an entry of a lower layer, or earlier in this one
                self.remove(pfd, base)
                os.symlink(ti.linkname, base, dir_fd=pfd)
            self.own(pfd, base, ti)
            os.utime(base, ns=(_ns(ti), _ns(ti)), dir_fd=pfd, follow_symlinks=False)
        elif ti.islnk():
            self.make_hardlink(pfd, base, ti, parts)
        elif ti.ischr() or ti.isblk() or ti.isfifo():
            self.make_node(pfd, base, ti)
        else:
            raise LayerError(f"layer entry {ti.name!r}: unsupported tar type {ti.type!r}")

    def make_dir(self, pfd: int, base: str, ti: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        st = _lstat(pfd, base)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            self.remove(pfd, base)
            st = None
        if st is None:
            self.use(_BLOCK)
            os.mkdir(base, 0o700, dir_fd=pfd)
        self.own(pfd, base, ti)
        if ti.pax_headers and any(k.startswith(_XATTR) for k in ti.pax_headers):
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            with _fd(os.open(base, flags, dir_fd=pfd)) as dfd:
                _set_xattrs(dfd, ti)
        self.dir_meta[_rel(parts)] = (stat.S_IMODE(ti.mode), _ns(ti))

    def make_file(self, pfd: int, base: str, tar: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        # Always a new inode: writing into the old one would also change its hard links.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            new = os.open(base, flags, 0o600, dir_fd=pfd)
        except FileExistsError:
            self.remove(pfd, base)
            new = os.open(base, flags, 0o600, dir_fd=pfd)
        with _fd(new) as fd:
            src: Any = tar.extractfile(ti)  # an ExFileObject: a BufferedReader
            if src is None:  # pragma: no cover - isreg() entries always have a file object
                raise LayerError(f"layer entry {ti.name!r}: no contents")
            # The unbuffered reader under it: its seek only moves its position (the buffered
            # one asks a stream-mode tar whether it is seekable, and fails), and a read of a
            # data extent skips the stream forward to it. Holes are never read.
            raw: Any = src.raw
            for offset, length in _extents(ti):
                raw.seek(offset)
                self.copy(raw, fd, offset, length)
            os.ftruncate(fd, ti.size)  # a hole at the end, or none
            if self.as_root:
                os.fchown(fd, ti.uid, ti.gid)
            # After chown, which clears setuid/setgid bits and file capabilities.
            os.fchmod(fd, stat.S_IMODE(ti.mode))
            _set_xattrs(fd, ti)
            os.utime(fd, ns=(_ns(ti), _ns(ti)))
        self.stats.bytes += ti.size

    def copy(self, src: IO[bytes], fd: int, offset: int, length: int) -> None:
        """`length` bytes of `src` into `fd` at `offset`, whole zero blocks left as holes."""
        pos, end = offset, offset + length
        while pos < end:
            chunk = src.read(min(_COPY_CHUNK, end - pos))
            if not chunk:
                raise LayerError(f"layer entry {self.name!r}: unexpected end of data")
            view = memoryview(chunk)
            for start, stop in data_runs(chunk, pos):
                first, last = (pos + start) // _BLOCK, (pos + stop - 1) // _BLOCK
                self.use((last - first + 1) * _BLOCK)
                _pwrite_all(fd, view[start:stop], pos + start)
            pos += len(chunk)

    def make_hardlink(
        self, pfd: int, base: str, ti: tarfile.TarInfo, parts: tuple[str, ...]
    ) -> None:
        try:
            target = entry_parts(ti.linkname)
        except LayerError as e:
            raise LayerError(
                f"layer entry {ti.name!r}: hard link target {ti.linkname!r} escapes the root "
                "filesystem"
            ) from e
        if not target:
            raise LayerError(f"layer entry {ti.name!r}: hard link to the root directory")
        if target == parts:
            raise LayerError(f"layer entry {ti.name!r}: hard link to itself")
        if _rel(target) in self.skipped:
            _log().warning("skipping hard link %s: its target was skipped", ti.name)
            self.skip(ti)
            return
        try:
            tfd = self.open_dir(target[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError) as e:
            raise LayerError(
                f"layer entry {ti.name!r}: hard link target {ti.linkname!r} does not exist"
            ) from e
        with _fd(tfd):
            tst = _lstat(tfd, target[-1])
            if tst is None:
                raise LayerError(
                    f"layer entry {ti.name!r}: hard link target {ti.linkname!r} does not exist"
                )
            if stat.S_ISDIR(tst.st_mode):
                raise LayerError(f"layer entry {ti.name!r}: hard link to a directory")
            self.remove(pfd, base)
            # No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink, as tar means it.
            os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)

    def make_node(self, pfd: int, base: str, ti: tarfile.TarInfo) -> None:
        kind = stat.S_IFIFO if ti.isfifo() else stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
        if kind != stat.S_IFIFO and not self.as_root:
            _log().warning("skipping device node %s: only root can make device nodes", ti.name)
            self.skip(ti)
            return
        self.remove(pfd, base)
        try:
            os.mknod(base, 0o600 | kind, os.makedev(ti.devmajor, ti.devminor), dir_fd=pfd)
        except PermissionError:
            if kind == stat.S_IFIFO:
                raise
            # Root in a user namespace, or a nodev policy: the image still runs without it.
            _log().warning("skipping device node %s: mknod not permitted here", ti.name)
            self.skip(ti)
            return
        self.own(pfd, base, ti)
        # By name, not fd: opening a fifo or device has side effects. We made this very
        # node a line above in our own private tree, so it is not a symlink.
        os.chmod(base, stat.S_IMODE(ti.mode), dir_fd=pfd)
        os.utime(base, ns=(_ns(ti), _ns(ti)), dir_fd=pfd, follow_symlinks=False)

    def skip(self, ti: tarfile.TarInfo) -> None:
        self.stats.skipped += 1
        self.skipped.add(_rel(entry_parts(ti.name)))

    def own(self, pfd: int, base: str, ti: tarfile.TarInfo) -> None:
        if self.as_root:
            os.chown(base, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)

    # -- whiteouts

    def whiteout(self, ti: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        self.stats.whiteouts += 1
        base = parts[-1]
        if base == _OPAQUE:
            with _fd(self.open_dir(parts[:-1], create=True, flags=os.O_RDONLY)) as dfd:
                self.touching(dfd, parts[:-1])
                self.prune(dfd, parts[:-1])
            for i in range(1, len(parts)):
                self.touched.add(_rel(parts[:i]))
            return
        name = base[len(_WHITEOUT) :]
        if name in ("", ".", ".."):
            raise LayerError(f"layer entry {ti.name!r}: whiteout of {name!r}")
        if _rel((*parts[:-1], name)) in self.touched:
            return  # made by this same layer: a whiteout only hides lower layers
        try:
            pfd = self.open_dir(parts[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing there to hide
        with _fd(pfd):
            if _lstat(pfd, name) is not None:
                self.touching(pfd, parts[:-1])
                self.remove(pfd, name)

    def prune(self, dfd: int, parts: tuple[str, ...]) -> None:
        """Remove what lower layers put under the directory `dfd`, keeping this layer's."""
        for name in os.listdir(dfd):
            child = (*parts, name)
            if _rel(child) not in self.touched:
                self.remove(dfd, name)
                continue
            st = _lstat(dfd, name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                with _fd(os.open(name, flags, dir_fd=dfd)) as cfd:
                    self.prune(cfd, child)

    # -- end of layer

    def finish(self) -> None:
        for path, times in self.dir_times.items():
            if path not in self.dir_meta:
                self.set_dir(path, None, times)
        for path, (mode, mtime) in self.dir_meta.items():
            self.set_dir(path, mode, (mtime, mtime))

    def set_dir(self, path: str, mode: int | None, times: tuple[int, int]) -> None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        try:
            fd = openat2(self.rootfd, path, flags, resolve=_RESOLVE)
        except OSError as e:
            # Removed, or replaced by a file or symlink, later in its layer.
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            return
        with _fd(fd):
            if mode is not None:
                # Without root, the owner's bits are all that lets us (and the next layer,
                # and whoever deletes the tree) into the directory: keep them.
                os.fchmod(fd, mode if self.as_root else mode | 0o700)
            os.utime(fd, ns=times)


def _ns(ti: tarfile.TarInfo) -> int:
    """The entry's mtime in ns, clamped to what utimensat takes (a PAX mtime can be anything)."""
    try:
        ns = int(ti.mtime * 1_000_000_000)
    except (ValueError, OverflowError):  # nan, inf
        return 0
    return max(-(2**63), min(ns, 2**63 - 1))


def _set_xattrs(fd: int, ti: tarfile.TarInfo) -> None:
    """Apply the entry's extended attributes (PAX `SCHILY.xattr.*`, as GNU tar and docker
    write them) to the open file `fd`. Only user data, trusted.* and file capabilities: the
    rest (security.selinux, ACLs) belongs to the host's policy, not to an image."""
    for key, value in ti.pax_headers.items():
        if not key.startswith(_XATTR):
            continue
        name = key[len(_XATTR) :]
        if not (name.startswith(("user.", "trusted.")) or name == "security.capability"):
            _log().debug("ignoring xattr %s on %s", name, ti.name)
            continue
        try:
            # tarfile decoded the value with surrogateescape; this gives the bytes back.
            os.setxattr(fd, name, value.encode("utf-8", "surrogateescape"))
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                raise
            _log().warning("cannot set xattr %s on %s: %s", name, ti.name, e.strerror)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _extents(ti: tarfile.TarInfo) -> list[tuple[int, int]]:
    """The (offset, length) ranges of the file that hold data; the rest is holes.

    A regular entry is one range; a sparse one lists its own, which tarfile reads from the
    archive without checking: a map that goes backwards, overlaps or runs past the file's
    size is refused (reading it in a stream would fail, or write outside the file's size).
    """
    sparse: Any = ti.sparse  # typeshed says bytes; tarfile makes [(offset, length), ...]
    if sparse is None:
        return [(0, ti.size)] if ti.size else []
    out: list[tuple[int, int]] = []
    end = 0
    for offset, length in sparse:
        if offset < end or length < 0 or offset + length > ti.size:
            raise LayerError(f"layer entry {ti.name!r}: invalid sparse map")
        if length:
            out.append((offset, length))
        end = offset + length
    return out


def data_runs(data: bytes, pos: int) -> list[tuple[int, int]]:
    """The [start, stop) slices of `data` that must be written, at file offset `pos`, for
    the file to read back as `data` with holes in place of every whole zero block.

    Only blocks aligned on the file's offsets can be holes; partial blocks at either end are
    written as they are.
    """
    n = len(data)
    if not n or data == _ZERO_CHUNK:
        return []
    if _ZERO_BLOCK not in data:  # a fast scan: most data has no 4 KiB of zeros at all
        return [(0, n)]
    runs: list[tuple[int, int]] = []
    start: int | None = None
    i = 0
    while i < n:
        j = min(n, i + _BLOCK - (pos + i) % _BLOCK)
        hole = j - i == _BLOCK and data[i:j] == _ZERO_BLOCK
        if hole and start is not None:
            runs.append((start, i))
            start = None
        elif not hole and start is None:
            start = i
        i = j
    if start is not None:
        runs.append((start, n))
    return runs


def apply_layer(
    rootfs: Path, blob: BinaryIO, media_type: str, *, limits: LayerLimits = DEFAULT_LIMITS
) -> LayerStats:
    """Apply one layer blob (compressed as its bytes say) on top of the tree at `rootfs`.

    Raises LayerError for a corrupt or hostile layer; the tree may then be half-changed, so
    callers build into a scratch directory (as unpack_rootfs does) and throw it away.
    """
    stream = decompressed(blob, media_type, max_bytes=limits.max_stream_size)
    with _fd(os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as rootfd:
        ex = _Extractor(rootfd, limits)
        # typeshed wants a real file; stream mode only ever calls read().
        open_tar: Any = tarfile.open
        try:
            with open_tar(
                fileobj=stream, mode="r|", tarinfo=bounded_tarinfo(limits.max_header_size)
            ) as tar:
                while (ti := tar.next()) is not None:
                    ex.apply(tar, ti)
                    # Stream mode keeps every TarInfo for random access we never do.
                    tar.members.clear()
        except tarfile.TarError as e:
            raise LayerError(f"corrupt layer: {one_line(e)}") from e
        finally:
            ex.close()
        stream.drain()
        try:
            ex.finish()
        except OSError as e:
            raise LayerError(f"cannot set directory modes and times: {one_line(e)}") from e
    return ex.stats


def remaining(limits: LayerLimits, cap: DiskCap, done: LayerStats) -> LayerLimits:
    """What the next layer of an image may use, after the layers before it used `done`: the
    image's limits bound the whole image, not each layer."""
    return dataclasses.replace(
        limits,
        max_total_size=limits.max_total_size - done.bytes,
        max_entries=limits.max_entries - done.entries,
        max_disk=min(limits.max_disk, cap.limit) - done.disk,
    )


def too_large(cap: DiskCap, index: int, count: int, name: str, e: ImageTooLarge) -> ImageTooLarge:
    """The refusal of layer `index` (1-based) of `count`, named by its digest (or blob name)."""
    return cap.refusal(
        f"layer {index} of {count} ({short_digest(name)}, at entry {e.entry!r}) takes its "
        "root filesystem"
    )


def unpack_rootfs(
    dest: Path,
    layers: Sequence[tuple[Path, str]],
    *,
    limits: LayerLimits = DEFAULT_LIMITS,
    cap: DiskCap | None = None,
    durable: bool = True,
) -> LayerStats:
    """Build the root filesystem of `layers` ([(blob path, media type)], lowest first) at
    `dest`, which must not exist yet.

    The tree is built in a temporary directory beside `dest` and renamed into place only when
    every layer applied, so a failure leaves neither `dest` nor the temporary directory.
    `limits.max_total_size`, `max_entries` and the disk `cap` (by default the free space of
    `dest`'s filesystem less a reserve, see diskcap.py) bound the whole image, not each layer.
    With `durable`, the tree is flushed to disk (syncfs) before the rename, so a `dest` that
    exists after a crash is whole.
    """
    if dest.exists() or dest.is_symlink():
        raise StoreError(f"cannot unpack into {dest}: it already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    cap = cap or disk_cap(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".unpacking", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # an image without a "./" entry gets a 0755 root, as in docker
        total = LayerStats()
        for i, (blob_path, media_type) in enumerate(layers, 1):
            try:
                blob = blob_path.open("rb")
            except OSError as e:
                raise StoreError(f"cannot read layer blob {blob_path}: {e.strerror}") from e
            with blob:
                try:
                    total += apply_layer(
                        tmp, blob, media_type, limits=remaining(limits, cap, total)
                    )
                except ImageTooLarge as e:
                    raise too_large(cap, i, len(layers), blob_path.name, e) from None
        if durable:
            with _fd(os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as tfd:
                syncfs(tfd)
        try:
            tmp.rename(dest)
        except OSError as e:
            raise StoreError(f"cannot move the unpacked tree to {dest}: {e.strerror}") from e
    except BaseException:
        remove_tree(tmp)
        raise
    return total


def remove_tree(path: Path) -> None:
    """Remove a scratch tree, also where a layer left directories we may not enter."""
    try:
        shutil.rmtree(path)
        return
    except OSError:
        pass
    for dirpath, dirnames, _files in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            # lstat first: chmod follows symlinks, and a symlink here may point anywhere.
            with contextlib.suppress(OSError):
                if stat.S_ISDIR(os.lstat(full).st_mode):
                    os.chmod(full, 0o700)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        _log().warning("could not remove the scratch tree %s", path)
