"""The `process` backend: the workload runs chrooted into the container's rootfs, nothing more.

No namespaces, no cgroups, no capability drop: the bare end of the isolation spectrum and the
baseline for benchmarks. The spec's mounts are applied below the container's own rootfs
mount (host /dev, /proc and /sys are bound in, volumes and tmpfs are mounted), so the
monitor's one recursive unmount of the rootfs removes them all.

Each mount point is resolved by the kernel inside the rootfs (`make_in_root`), never as a
host path: the image's symlinks are its own data, and `/etc -> /var/lib/x` in an image means
`<rootfs>/var/lib/x`, not the host's, for the files made as mount points and for the mounts.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import termios
from pathlib import Path
from typing import Any

from bareboat.backends.base import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    BackendContext,
    Started,
    Stdio,
    mount,
)
from bareboat.backends.child import ChildWorkload
from bareboat.errors import BackendError

# Kernel filesystems in the spec are replaced by binds of the host's own: this backend shares
# the host's namespaces, so a fresh instance would show the same thing anyway.
_HOST_BINDS = {"/proc": "/proc", "/dev": "/dev", "/sys": "/sys"}
_SKIP = {"devpts", "mqueue", "cgroup", "cgroup2"}
# A mount's per-mount flags, from its options (the last of `ro`/`rw` and the like wins).
_SETS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
_CLEARS = {"rw": MS_RDONLY, "suid": MS_NOSUID, "dev": MS_NODEV, "exec": MS_NOEXEC}
_PER_MOUNT = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC


def mount_flags(options: list[str]) -> int:
    flags = 0
    for o in options:
        flags = (flags | _SETS.get(o, 0)) & ~_CLEARS.get(o, 0)
    return flags


def plan_mounts(spec: dict[str, Any]) -> list[tuple[str, str, str, int, str]]:
    """(source, destination, fstype, flags, data) for each mount, in order."""
    plan: list[tuple[str, str, str, int, str]] = []
    for m in spec.get("mounts", []):
        dest, kind = m["destination"], m.get("type", "bind")
        opts = m.get("options", [])
        if dest in _HOST_BINDS:
            plan.append((_HOST_BINDS[dest], dest, "", MS_BIND | MS_REC, ""))
        elif kind in _SKIP or dest.startswith(("/dev/", "/sys/", "/proc/")):
            continue
        elif kind == "bind" or "bind" in opts or "rbind" in opts:
            plan.append((m["source"], dest, "", MS_BIND | MS_REC | mount_flags(opts), ""))
        elif kind == "tmpfs":
            data = ",".join(o for o in opts if "=" in o)
            plan.append(("tmpfs", dest, "tmpfs", mount_flags(opts), data))
    return plan


def mount_in_root(rootfs: Path, plan: list[tuple[str, str, str, int, str]]) -> None:
    """Apply `plan_mounts`' mounts, each onto its destination resolved inside `rootfs`.

    A missing mount point is made there (a directory, or an empty file for a file bind); the
    mount goes onto the fd of what was resolved, so no symlink in the image, nor one swapped
    in meanwhile, can put a file or a mount anywhere on the host.
    """
    from bareboat.images.openat2 import make_in_root, openat2

    rootfd = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for source, dest, fstype, flags, data in plan:
            try:
                fd = make_in_root(rootfd, dest, directory=bool(fstype) or os.path.isdir(source))
            except OSError as err:
                raise BackendError(
                    f"cannot make the mount point {dest} in the container's root: {err.strerror}"
                ) from None
            bind = bool(flags & MS_BIND)
            try:
                _mount_at(source, fd, dest, fstype, flags & ~_PER_MOUNT if bind else flags, data)
            finally:
                os.close(fd)
            if bind and flags & _PER_MOUNT:  # a bind takes its ro, nosuid... on a remount only
                # Looked up again: the fd above names what the bind now covers, not the bind.
                top = openat2(rootfd, dest.lstrip("/") or ".", os.O_PATH)
                try:
                    remount = MS_REMOUNT | MS_BIND | (flags & _PER_MOUNT)
                    _mount_at("none", top, dest, "", remount, "")
                finally:
                    os.close(top)
    finally:
        os.close(rootfd)


def _mount_at(source: str, fd: int, dest: str, fstype: str, flags: int, data: str) -> None:
    try:
        mount(source, Path(f"/proc/self/fd/{fd}"), fstype, flags, data)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise BackendError(f"cannot mount {source} on {dest}: {reason}") from None


def make_root(rootfs: Path, spec: dict[str, Any], *, own_mount: bool = False) -> None:
    """The container's root as the spec asks: its mounts, then read-only if `root.readonly`.
    `own_mount`: first bind the rootfs onto itself (a plain directory cannot be remounted
    read-only; the engine's rootfs is an overlay mount already)."""
    readonly = bool(spec.get("root", {}).get("readonly"))
    if own_mount and readonly:
        mount(str(rootfs), rootfs, "", MS_BIND | MS_REC)
    mount_in_root(rootfs, plan_mounts(spec))
    if readonly:
        mount("none", rootfs, "", MS_REMOUNT | MS_BIND | MS_RDONLY)


def _user(spec: dict[str, Any]) -> tuple[int, int, list[int]]:
    user = spec.get("process", {}).get("user", {})
    return int(user.get("uid", 0)), int(user.get("gid", 0)), list(user.get("additionalGids", []))


def _child_setup(
    root: Path, process: dict[str, Any], uid: int, gid: int, groups: list[int], tty: bool
) -> Any:
    cwd = process.get("cwd", "/")

    def setup() -> None:
        if tty:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        else:
            os.setpgid(0, 0)
        os.chroot(root)
        os.chdir(cwd)
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    return setup


class ProcessBackend(ChildWorkload):
    name = "process"

    def create(self, ctx: BackendContext) -> None:
        make_root(ctx.rootfs, ctx.spec)

    def _popen(
        self, ctx: BackendContext, process: dict[str, Any], **kw: Any
    ) -> subprocess.Popen[bytes]:
        uid, gid, groups = _user({"process": process})
        env = dict(e.split("=", 1) for e in process.get("env", []) if "=" in e)
        try:
            return subprocess.Popen(
                process["args"],
                env=env,
                preexec_fn=_child_setup(
                    ctx.rootfs, process, uid, gid, groups, bool(process.get("terminal"))
                ),
                close_fds=True,
                **kw,
            )
        except OSError as err:
            raise BackendError(f"cannot start {process['args'][0]}: {err.strerror}") from None

    def start(self, ctx: BackendContext, stdio: Stdio) -> Started:
        process = dict(ctx.spec["process"], terminal=stdio.tty)
        proc = self._popen(
            ctx, process, stdin=stdio.stdin, stdout=stdio.stdout, stderr=stdio.stderr
        )
        proc.returncode = 0  # the monitor reaps it
        return Started(proc.pid)

    def resize(self, ctx: BackendContext, rows: int, cols: int) -> None:
        """Nothing to do: the workload holds the pty slave itself."""

    def exec(self, ctx: BackendContext, process: dict[str, Any], *, detach: bool = False) -> int:
        process = dict(process, terminal=False)  # the caller's own tty serves, if any
        if detach:
            self._popen(
                ctx,
                process,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            return 0
        return self._popen(ctx, process).wait()

    def delete(self, ctx: BackendContext, *, force: bool = False) -> None:
        """Nothing of its own: the monitor unmounts the rootfs and everything below it."""
