"""The host resources one jailed QEMU holds: a uid/gid of its own, leased from a range
bareboat owns, and cgroups that bound its memory, tasks and CPU.

The lease is an flock on a file named by the id, in one host-wide directory (the ids are
host-wide); the kernel drops it when its holder dies, and the next holder of the id removes
what the dead one left (its cgroups, named in the file).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bareboat.cgroupfs import remove_when_empty
from bareboat.errors import BackendError, UsageError

from .jail import Limits

# The ids bareboat hands to QEMU processes: 65536 from 0x60000000 (above the ranges useradd,
# systemd's dynamic users and the usual /etc/subuid allocations use). One per running VM.
DEFAULT_IDS = (0x6000_0000, 65536)
ENV_IDS = "BAREBOAT_VMM_IDS"  # BASE:COUNT
DEFAULT_LEASES = Path("/run/bareboat-vmm")
ENV_LEASES = "BAREBOAT_VMM_LEASES"
from .vmproc import VMM_CGROUP_PREFIX as CGROUP_PREFIX  # noqa: E402

# --- ids: one uid/gid per VM, leased ---------------------------------------------------------


def ids_from_env() -> range:
    """The ids bareboat may lease: $BAREBOAT_VMM_IDS (BASE:COUNT) or the default."""
    raw = os.environ.get(ENV_IDS, "").strip()
    if not raw:
        base, count = DEFAULT_IDS
        return range(base, base + count)
    try:
        base_s, _, count_s = raw.partition(":")
        base, count = int(base_s, 0), int(count_s or "65536", 0)
    except ValueError:
        raise UsageError(f"{ENV_IDS}={raw!r}: expected BASE:COUNT") from None
    if base < 1000 or count < 1 or base + count > 0xFFFF_FFFE:
        raise UsageError(f"{ENV_IDS}={raw!r}: ids must lie in 1000..4294967294")
    return range(base, base + count)


class Lease:
    """One id of the range, held (an flock on its lease file) as long as this object is open.

    The kernel drops the lock when its holder dies, so a crash never keeps an id; the file of a
    crashed holder names the cgroups it made, which the next holder of the id removes.
    """

    def __init__(self, directory: Path, uid: int, fd: int) -> None:
        self.directory = directory
        self.uid = uid
        self.gid = uid
        self._fd = fd

    @property
    def path(self) -> Path:
        return self.directory / str(self.uid)

    def note(self, **info: Any) -> None:
        """Record what this holder made (read back by the next holder after a crash)."""
        data = json.dumps({"pid": os.getpid(), **info}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def leases_dir() -> Path:
    return Path(os.environ.get(ENV_LEASES) or DEFAULT_LEASES)


def lease_id(ids: range | None = None, directory: Path | None = None) -> Lease:
    """A free id of the range, leased. Starts at a random place: concurrent starts rarely
    contend for the same file."""
    import secrets

    if ids is None:
        ids = ids_from_env()
    directory = directory or leases_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    start = secrets.randbelow(len(ids))
    for i in range(len(ids)):
        uid = ids[(start + i) % len(ids)]
        lease = _try_lease(directory, uid)
        if lease is not None:
            return lease
    raise BackendError(f"every VMM id in {ids[0]}..{ids[-1]} is in use")


def _try_lease(directory: Path, uid: int) -> Lease | None:
    path = directory / str(uid)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    # The holder before us may have unlinked this file after we opened it: a lock on a
    # removed inode is no lease (another process may be creating the path afresh).
    try:
        same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    stale = os.pread(fd, 65536, 0)
    if stale:
        _reclaim(stale)
    return Lease(directory, uid, fd)


def _reclaim(stale: bytes) -> None:
    """Remove what a crashed holder of this id left: its (empty) cgroups."""
    try:
        info = json.loads(stale)
    except ValueError:
        return
    for d in info.get("cgroups") or []:
        p = Path(str(d))
        if p.name.startswith(CGROUP_PREFIX):
            with contextlib.suppress(OSError):
                p.rmdir()


# --- cgroups ---------------------------------------------------------------------------------

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_mounts() -> dict[str, Path]:
    """controller (or "" for the unified hierarchy) -> its mount point, from mountinfo."""
    found: dict[str, Path] = {}
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.decode(errors="replace").split()
            sep = fields.index("-")
            fstype, opts = fields[sep + 1], fields[sep + 3].split(",")
            point = Path(fields[4])
            if fstype == "cgroup2":
                found.setdefault("", point)
            elif fstype == "cgroup":
                for o in opts:
                    if o in ("memory", "pids", "cpu"):
                        found.setdefault(o, point)
    return found


def _own_cgroups() -> dict[str, str]:
    """controller (or "") -> this process's cgroup path in that hierarchy."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if not controllers:
                own[""] = path
            for c in controllers.split(","):
                own[c] = path
    return own


@dataclass
class VmmCgroups:
    """The cgroups of one QEMU process: children of its owner's, named by its uid. On a
    cgroup v1 (or hybrid) host one each in the memory, pids and cpu hierarchies; on a unified
    host one cgroup with those controllers, where the owner's cgroup lets them be enabled."""

    dirs: list[Path]

    @classmethod
    def create(cls, uid: int, limits: Limits) -> VmmCgroups:
        mounts, own = _cgroup_mounts(), _own_cgroups()
        name = f"{CGROUP_PREFIX}{uid}"
        made = cls([])
        try:
            v1 = [c for c in ("memory", "pids", "cpu") if c in mounts and c in own]
            if v1:
                for c in v1:
                    d = mounts[c] / own[c].lstrip("/") / name
                    _fresh_dir(d)
                    made.dirs.append(d)
                    _limit_v1(c, d, limits)
            elif "" in mounts and "" in own:
                d = mounts[""] / own[""].lstrip("/") / name
                if _enable_v2(d.parent):
                    _fresh_dir(d)
                    made.dirs.append(d)
                    _limit_v2(d, limits)
        except BaseException:
            made.remove()
            raise
        return made

    def attach(self, pid: int) -> None:
        """Move `pid` (every thread of it) in. Its owner does this right after the exec, while
        QEMU starts: moving a process between cgroup v1 hierarchies waits for an RCU grace
        period (5-15 ms here), which would otherwise delay every start. What QEMU allocates
        in those milliseconds (its libraries, nothing of the guest's) stays charged where its
        owner is."""
        for d in self.dirs:
            _write(d / "cgroup.procs", str(pid))

    def remove(self) -> None:
        for d in reversed(self.dirs):
            remove_when_empty(d)
        self.dirs = []


def _fresh_dir(d: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        d.rmdir()  # a crashed holder's, empty by now
    d.mkdir()


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise BackendError(f"cannot write {value!r} to {path}: {e.strerror}") from None


def _limit_v1(controller: str, d: Path, limits: Limits) -> None:
    if controller == "memory":
        _write(d / "memory.limit_in_bytes", str(limits.memory_bytes))
    elif controller == "pids":
        _write(d / "pids.max", str(limits.pids))
    elif controller == "cpu":
        if limits.cpu_period_us:
            _write(d / "cpu.cfs_period_us", str(limits.cpu_period_us))
        if limits.cpu_quota_us:
            _write(d / "cpu.cfs_quota_us", str(limits.cpu_quota_us))


def _enable_v2(parent: Path) -> bool:
    """Enable memory, pids and cpu for the children of `parent`; False where the cgroup v2
    rules forbid it (processes in a non-root `parent`): then the VMM gets no cgroup."""
    try:
        have = (parent / "cgroup.subtree_control").read_text().split()
        want = [c for c in ("memory", "pids", "cpu") if c not in have]
        if want:
            (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in want))
    except OSError:
        return False
    return True


def _limit_v2(d: Path, limits: Limits) -> None:
    _write(d / "memory.max", str(limits.memory_bytes))
    _write(d / "pids.max", str(limits.pids))
    if limits.cpu_quota_us:
        _write(d / "cpu.max", f"{limits.cpu_quota_us} {limits.cpu_period_us or 100000}")
