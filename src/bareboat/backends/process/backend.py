"""The `process` backend: the workload runs chrooted into the container's rootfs, nothing more.

No namespaces, no cgroups, no capability drop: the bare end of the isolation spectrum and the
baseline for benchmarks. The spec's mounts are applied below the container's own rootfs
mount (host /dev, /proc and /sys are bound in, volumes and tmpfs are mounted), so the
monitor's one recursive unmount of the rootfs removes them all.
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
    MS_RDONLY,
    MS_REC,
    BackendContext,
    Started,
    Stdio,
    mount,
    signal_pid,
)
from bareboat.errors import BackendError
from bareboat.proc import wait_status_to_code

MS_REMOUNT = 32

# Kernel filesystems in the spec are replaced by binds of the host's own: this backend shares
# the host's namespaces, so a fresh instance would show the same thing anyway.
_HOST_BINDS = {"/proc": "/proc", "/dev": "/dev", "/sys": "/sys"}
_SKIP = {"devpts", "mqueue", "cgroup", "cgroup2"}


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
            ro = MS_RDONLY if "ro" in opts else 0
            plan.append((m["source"], dest, "", MS_BIND | MS_REC | ro, ""))
        elif kind == "tmpfs":
            data = ",".join(o for o in opts if "=" in o)
            plan.append(("tmpfs", dest, "tmpfs", 0, data))
    return plan


def _apply_mounts(ctx: BackendContext) -> None:
    root = ctx.rootfs
    for source, dest, fstype, flags, data in plan_mounts(ctx.spec):
        target = root / dest.lstrip("/")
        if target.is_symlink():
            raise BackendError(f"mount destination {dest} is a symlink in the image")
        if Path(source).is_dir() or fstype:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        mount(source, target, fstype, flags & ~MS_RDONLY, data)
        if flags & MS_RDONLY:  # a bind only becomes read-only on a remount
            mount("none", target, "", MS_REMOUNT | MS_BIND | MS_RDONLY)
    if ctx.spec.get("root", {}).get("readonly"):
        mount("none", root, "", MS_REMOUNT | MS_BIND | MS_RDONLY)


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


class ProcessBackend:
    name = "process"

    def create(self, ctx: BackendContext) -> None:
        _apply_mounts(ctx)

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

    def exit_code(self, ctx: BackendContext, status: int) -> int:
        return wait_status_to_code(status)

    def kill(self, ctx: BackendContext, pid: int | None, sig: int) -> None:
        signal_pid(pid, sig)

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

    def state(self, ctx: BackendContext) -> str:
        return "unknown"

    def delete(self, ctx: BackendContext, *, force: bool = False) -> None:
        """Nothing of its own: the monitor unmounts the rootfs and everything below it."""
