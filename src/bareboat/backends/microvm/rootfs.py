"""Disks a microVM boots from: the shared read-only image and each VM's writable layer.

The image's unpacked rootfs tree becomes one read-only EROFS image (ext4 where mkfs.erofs is
missing), built once per image under a lock, written to a temporary name and renamed into
place, so concurrent runs share one file and a crash never leaves a half-built image under the
final name. Every VM attaches it read-only; its writes go to its own layer: a tmpfs upper in
the guest by default, or a sparse ext4 disk file when the user wants writes to persist.

A tree with sparse files keeps its holes: it becomes ext4 (see EROFS_MAX_HOLES). The image
is bounded like the tree it comes from (images/diskcap.py): a build that would pass the cap
is refused before it starts, by its estimated size, and mkfs runs with RLIMIT_FSIZE at the
cap, so a wrong estimate still cannot fill the disk.

Plan, then execute: `erofs_argv`/`ext4_argv`/`disk_argv` are plain data;
`ensure_image` and `make_disk` run them.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bareboat.errors import BackendError, BareboatError, StoreError, UsageError
from bareboat.fsutil import exclusive_lock
from bareboat.images.diskcap import DiskCap, disk_cap
from bareboat.paths import Roots
from bareboat.privdir import private_file
from bareboat.units import show_size

EROFS = "erofs"
EXT4 = "ext4"

# A build of a large image on a slow disk can take minutes; anything longer is a hang.
BUILD_TIMEOUT_S = 900.0
LOCK_TIMEOUT_S = BUILD_TIMEOUT_S + 60.0
# ext4 needs room for metadata beyond the files' own blocks: inode tables, directories,
# the group descriptors. A fixed floor covers small trees; the ratio covers large ones.
EXT4_SLACK_RATIO = 1.25
EXT4_FLOOR = 16 * 1024 * 1024
MIN_DISK = 8 * 1024 * 1024
# mkfs.erofs 1.5 writes a file's holes as data, and its chunked mode (--chunksize) hashes
# every chunk to share the zero ones: a sparse 10 GiB file took 1 min 55 s to build here.
# mkfs.ext4 -d copies only data (SEEK_DATA, and it skips zero blocks): 0.08 s. A tree whose
# holes add up to more than this becomes ext4, whose file keeps them.
EROFS_MAX_HOLES = 64 * 1024 * 1024

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class RootfsImage:
    """A built read-only image of one rootfs tree."""

    path: Path
    fstype: str  # "erofs" | "ext4", what the guest passes to mount(2)
    key: str


@dataclass(frozen=True)
class WritableLayer:
    """Where a VM's writes go. `disk` is None for a tmpfs upper inside the guest."""

    disk: Path | None = None
    size: int = 0

    @property
    def kind(self) -> str:
        return "disk" if self.disk is not None else "tmpfs"


def cache_dir(roots: Roots) -> Path:
    return roots.vm_images


def cache_key(digest: str) -> str:
    """The file-name key of an image digest (`sha256:abc…` -> `sha256-abc…`)."""
    key = digest.replace(":", "-")
    if not _KEY.match(key):
        raise UsageError(f"cannot use {digest!r} as a VM image key")
    return key


def available_fstype(preferred: str = EROFS) -> str:
    """The filesystem we can build here: EROFS when mkfs.erofs exists, else ext4."""
    if preferred not in (EROFS, EXT4):
        raise UsageError(f"unknown VM image filesystem {preferred!r} (erofs or ext4)")
    if preferred == EROFS and shutil.which("mkfs.erofs"):
        return EROFS
    if shutil.which("mkfs.ext4"):
        return EXT4
    if shutil.which("mkfs.erofs"):
        return EROFS
    raise BackendError("neither mkfs.erofs (erofs-utils) nor mkfs.ext4 (e2fsprogs) is installed")


def erofs_argv(tree: Path, out: Path) -> list[str]:
    # Uncompressed: under TCG decompression costs more guest time than the disk reads it
    # saves, and the guest kernel then needs no decompressor. Owners, modes and xattrs are
    # kept as unpacked; mtimes are kept so `ls -l` in the guest matches the image.
    return ["mkfs.erofs", "--quiet", "--preserve-mtime", str(out), str(tree)]


def ext4_argv(tree: Path, out: Path, size: int) -> list[str]:
    # No journal: the image is read-only in every guest. root_owner keeps / as in the tree.
    st = tree.stat()
    return [
        "mkfs.ext4", "-q", "-F", "-t", "ext4", "-O", "^has_journal",
        "-E", f"root_owner={st.st_uid}:{st.st_gid}", "-L", "bareboat-root",
        "-d", str(tree), str(out), f"{size // 1024}k",
    ]  # fmt: skip


def disk_argv(out: Path, size: int) -> list[str]:
    # A journal, because this disk holds writes the user wants to keep across a crash.
    return [
        "mkfs.ext4",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-L",
        "bareboat-rw",
        str(out),
        f"{size // 1024}k",
    ]


@dataclass(frozen=True)
class TreeSize:
    usage: int  # what its entries take on disk (blocks) plus a per-inode share
    contents: int  # what its regular files read as (holes included), plus the same share
    holes: int  # bytes of its regular files that are holes, not data

    @property
    def erofs(self) -> int:
        """About what an uncompressed EROFS image of it takes: every byte, holes too."""
        return self.contents


def tree_size(tree: Path) -> TreeSize:
    """Measure a tree without following links (one lstat per entry)."""
    usage = contents = holes = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            usage += st.st_blocks * 512 + 512
            contents += 512
            if stat.S_ISREG(st.st_mode):
                contents += st.st_size
                holes += max(0, st.st_size - st.st_blocks * 512)
    return TreeSize(usage, contents, holes)


def tree_usage(tree: Path) -> int:
    """Bytes a tree takes on disk plus a per-inode share, without following links."""
    return tree_size(tree).usage


def ext4_size(tree: Path, usage: int | None = None) -> int:
    usage = tree_usage(tree) if usage is None else usage
    size = int(usage * EXT4_SLACK_RATIO) + EXT4_FLOOR
    return (size + (1 << 20) - 1) & ~((1 << 20) - 1)


def _limit_files(max_file: int) -> Callable[[], None]:
    """A pre-exec hook: the child may make no file larger than `max_file` (and no core dump
    when SIGXFSZ ends it for trying)."""

    def hook() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file, max_file))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return hook


def _run(argv: list[str], timeout: float, *, max_file: int | None = None) -> None:
    hook = _limit_files(max_file) if max_file is not None else None
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, preexec_fn=hook
        )
    except subprocess.TimeoutExpired:
        raise BackendError(f"{argv[0]} took longer than {timeout:.0f}s") from None
    except FileNotFoundError:
        raise BackendError(f"{argv[0]} is not installed") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise BackendError(f"{argv[0]} failed: {why}")


def _existing(directory: Path, key: str) -> RootfsImage | None:
    for fstype in (EROFS, EXT4):
        path = directory / f"{key}.{fstype}"
        if path.is_file():
            return RootfsImage(path=path, fstype=fstype, key=key)
    return None


def ensure_image(
    roots: Roots,
    tree: Path,
    *,
    key: str,
    fstype: str = EROFS,
    timeout: float = BUILD_TIMEOUT_S,
) -> RootfsImage:
    """The read-only image of `tree` cached under `key`, built if it is not there yet.

    An image of either filesystem already cached under `key` is reused: both hold the same
    tree, and the guest mounts whichever it is told.
    """
    if not _KEY.match(key):
        raise UsageError(f"cannot use {key!r} as a VM image key")
    if not tree.is_dir():
        raise StoreError(f"rootfs {tree} is not a directory")
    directory = cache_dir(roots)
    found = _existing(directory, key)
    if found:
        return found
    with exclusive_lock(directory / f".{key}.lock", timeout=LOCK_TIMEOUT_S):
        found = _existing(directory, key)  # another builder finished while we waited
        if found:
            return found
        # Temporaries of a builder that died holding this lock; no live builder owns them.
        for stale in directory.glob(f".{key}.*.tmp"):
            stale.unlink(missing_ok=True)
        return build_image(tree, directory, key=key, fstype=fstype, timeout=timeout)


def build_image(
    tree: Path,
    directory: Path,
    *,
    key: str,
    fstype: str = EROFS,
    timeout: float = BUILD_TIMEOUT_S,
    durable: bool = True,
) -> RootfsImage:
    """Build the read-only image of `tree` as `directory/KEY.FSTYPE` (temp file, then rename)."""
    fstype = available_fstype(fstype)
    size = tree_size(tree)
    if fstype == EROFS and size.holes > EROFS_MAX_HOLES and shutil.which("mkfs.ext4"):
        fstype = EXT4
    directory.mkdir(parents=True, exist_ok=True)
    cap = disk_cap(directory)
    need = size.erofs if fstype == EROFS else ext4_size(tree, size.usage)
    if need > cap.limit:
        raise _too_large(cap, tree, need)
    final = directory / f"{key}.{fstype}"
    tmp = directory / f".{key}.{os.getpid()}.tmp"
    try:
        argv = erofs_argv(tree, tmp) if fstype == EROFS else ext4_argv(tree, tmp, need)
        try:
            _run(argv, timeout, max_file=cap.limit)
        except BackendError:
            # The estimate was short: RLIMIT_FSIZE stopped mkfs with the file at the cap.
            if tmp.exists() and tmp.stat().st_size >= cap.limit:
                raise _too_large(cap, tree, cap.limit + 1) from None
            raise
        # Attached read-only by every VM that uses it; no one needs to write it.
        tmp.chmod(0o444)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return RootfsImage(path=final, fstype=fstype, key=key)


def _too_large(cap: DiskCap, tree: Path, need: int) -> BareboatError:
    more = "more than " if need > cap.limit else ""
    return cap.refusal(f"the VM disk of {tree} needs {more}{show_size(need)}, which is")


def remove_image(roots: Roots, key: str) -> bool:
    """Drop a cached image (when its image leaves the store). True if one was removed."""
    directory = cache_dir(roots)
    removed = False
    with exclusive_lock(directory / f".{key}.lock", timeout=LOCK_TIMEOUT_S):
        for fstype in (EROFS, EXT4):
            path = directory / f"{key}.{fstype}"
            if path.exists():
                path.unlink()
                removed = True
    (directory / f".{key}.lock").unlink(missing_ok=True)
    return removed


def make_disk(path: Path, size: int, *, timeout: float = 120.0) -> WritableLayer:
    """A sparse ext4 disk file of `size` bytes for a VM's persistent writes.

    An existing disk at `path` is kept as is (that is what makes it persistent); a new one is
    made under a temporary name and renamed, so a failed mkfs leaves nothing.
    """
    if size < MIN_DISK:
        raise UsageError(f"a VM disk must be at least {MIN_DISK // (1 << 20)} MiB")
    if path.exists():
        return WritableLayer(disk=path, size=path.stat().st_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # 0600: it holds what the workload wrote
        with open(tmp, "wb", opener=private_file) as f:
            f.truncate(size)  # sparse: blocks are allocated as the guest writes
        _run(disk_argv(tmp, size), timeout)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return WritableLayer(disk=path, size=size)
