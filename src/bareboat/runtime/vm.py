"""`microvm` isolation under the OCI contract: each container is a QEMU microVM running our
kernel and init, booted from the bundle's rootfs.

- `create` plans the VM (kernel, init, a read-only EROFS disk of the rootfs) and forks the
  *gate*: the pid in `--pid-file`, which the client's subreaper (conmon, the containerd shim)
  inherits. The gate launches QEMU (which dies with it: PR_SET_PDEATHSIG), waits for the
  agent's HELLO and tells `create`, which hands the pty to `--console-socket`, runs the
  createRuntime and prestart hooks, writes the pid file and exits. The VM is booted; the
  workload is not started.
- `start` opens the gate (lifecycle.release): the gate sends START and reports STARTED or the
  start's error. From then on the gate relays the workload's stdio (its own fds, or the pty
  slave) through the hub thread, forwards the signals it gets, and ends with the workload's
  exit status once the VM has powered off: it lives exactly as long as the workload.
- `kill` goes to the workload through the hub's control socket (SIGKILL kills the gate, and
  with it QEMU), `exec` runs an agent session through the same socket (with `--detach`, a
  forked exec gate relays it and carries its status), `pause`/`resume` stop and continue the
  vCPUs over QMP, `delete --force` kills the gate and QEMU and removes every file.

This module serves the calls on an existing VM and imports nothing of the backend for
`state`, `start`, `kill`, `delete` and `ps` (podman and the shim make them several times per
container); `create`, the gate and `exec` live in runtime/vmgate.py.

The rootfs is read at `create`: the guest writes to its own tmpfs layer, not back into the
client's rootfs (volumes, shared over 9p, are how files come back). A rootfs that is an
overlay of one image directory plus mount-point placeholders (what podman and containerd
make) reuses the image's cached disk; anything else gets a disk of its own in the
container's state directory.
"""

from __future__ import annotations

import contextlib
import os
import signal

from bareboat.errors import BackendUnavailable, ContainerError
from bareboat.proc import FORWARDED_SIGNALS, parse_signal, start_time

from . import lifecycle as lc
from .records import Record, RuntimeRoot

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any

    from .args import Invocation


# --- where one VM's files are ------------------------------------------------------------------


def sockets_dir(sdir: str) -> str:
    """A directory for the VM's unix sockets whose paths fit a sockaddr_un (108 bytes)."""
    if len(os.fsencode(sdir)) + len("/s/agent.sock") < 100:
        return f"{sdir}/s"
    import hashlib
    import tempfile

    digest = hashlib.sha256(os.fsencode(sdir)).hexdigest()[:16]
    return f"{tempfile.gettempdir()}/bareboat-rt-{digest}"


class VmPaths:
    """The files of one container's VM, as plain strings: the commands that only signal or
    clean up must not import the backend (they run several times per container)."""

    __slots__ = ("path", "sockets")

    def __init__(self, root: RuntimeRoot, cid: str) -> None:
        sdir = lc.state_dir(root, cid)
        self.path = f"{sdir}/vm"  # the backend's VmDir.path
        self.sockets = sockets_dir(sdir)

    @property
    def ctl(self) -> str:
        return f"{self.sockets}/hub.sock"

    def qemu_pid(self) -> int:
        """QEMU's pid as the backend recorded it (vm.json), or 0."""
        from bareboat.backends.microvm.vmproc import recorded_pid

        return recorded_pid(f"{self.path}/vm.json") or 0

    def is_our_qemu(self, pid: int) -> bool:
        from bareboat.backends.microvm.vmproc import is_vm_qemu

        return is_vm_qemu(pid, self.sockets)


def create(inv: Invocation, root: RuntimeRoot, bundle: str, config: dict[str, Any]) -> int:
    from . import vmgate

    return vmgate.create(inv, root, bundle, config)


# --- the other commands ------------------------------------------------------------------------


def command(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    return lc.dispatch(inv, root, rec, _COMMANDS, "microvm")


def _kill(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    sig = parse_signal(inv.positionals[1] if len(inv.positionals) > 1 else "SIGTERM")
    st = lc.read_state(root, rec.id)
    status = lc.status_of(root, rec, st)
    if status == "stopped":
        raise ContainerError(f"cannot kill container {rec.id}: container not running")
    if status == "created" or sig == signal.SIGKILL or sig in FORWARDED_SIGNALS:
        # No workload yet, or a kill that must not depend on the guest: end the gate, and
        # QEMU with it. A running gate passes the common signals on to the workload itself,
        # which spares this call the agent client's imports.
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(st["pid"]), sig)
        return 0
    from bareboat.backends.microvm.control import CtlClient

    with CtlClient(VmPaths(root, rec.id).ctl) as c:
        c.signal(sig)
    return 0


def _delete(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    st = lc.deletable(inv, root, rec)
    if lc.alive(st):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(st["pid"]), signal.SIGKILL)
        lc.wait_gone(st)
    _kill_qemu(root, rec.id)
    from bareboat.backends.microvm.vmproc import release_vmm, remove_vmm_cgroups_under

    release_vmm(VmPaths(root, rec.id).path)
    if st.get("cgroups"):
        from pathlib import Path

        from bareboat.backends.microvm import hostcgroup

        for d in st["cgroups"]:
            # The jail's cgroups are children of the container's (QEMU may have died before
            # its record was written): they go first.
            remove_vmm_cgroups_under(d)
            hostcgroup.remove(Path(d))
    remove_files(root, rec.id)
    lc.forget(root, rec, st)
    return 0


def _kill_qemu(root: RuntimeRoot, cid: str) -> None:
    """A QEMU that outlived its gate (PR_SET_PDEATHSIG is asynchronous): kill it."""
    import time

    d = VmPaths(root, cid)
    pid = d.qemu_pid()
    deadline = time.monotonic() + 10
    while pid and d.is_our_qemu(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def remove_files(root: RuntimeRoot, cid: str) -> None:
    import shutil

    sdir = lc.state_dir(root, cid)
    shutil.rmtree(sockets_dir(sdir), ignore_errors=True)
    shutil.rmtree(sdir, ignore_errors=True)


def _control(root: RuntimeRoot, rec: Record, pause: bool) -> int:
    from bareboat.backends.microvm.control import CtlClient

    lc.require(root, rec, "running", "paused", action="pause or resume it (it is not running)")
    with CtlClient(VmPaths(root, rec.id).ctl, timeout=30.0) as c:
        if pause:
            c.pause()
        else:
            c.resume()
    lc.set_paused(root, rec.id, pause)
    return 0


def _pause(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    return _control(root, rec, True)


def _resume(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    return _control(root, rec, False)


def _ps(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    """The host processes of the container: the gate and its QEMU (the guest's processes have
    no host pids)."""
    from .process import print_pids

    st = lc.read_state(root, rec.id)
    pids = [int(st["pid"])] if lc.alive(st) else []
    qemu = VmPaths(root, rec.id).qemu_pid()
    if pids and qemu and start_time(qemu) is not None:
        pids.append(qemu)
    return print_pids(inv, pids)


def _update(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    """The VM's host CPU limits (its QEMU's cgroup); its RAM and vCPUs are fixed at boot."""
    from pathlib import Path

    from bareboat.backends.microvm import hostcgroup

    st = lc.require(root, rec, "created", "running", "paused", action="update it")
    resources = _update_resources(inv)
    memory = (resources.get("memory") or {}).get("limit")
    booted = ((lc.load_config(rec).get("linux") or {}).get("resources") or {}).get("memory") or {}
    if memory not in (None, 0, -1, booted.get("limit")):
        raise BackendUnavailable(
            "microvm isolation: a VM's memory is fixed when it boots; only CPU can be updated"
        )
    limits = hostcgroup.cpu_limits(resources)
    if not st.get("cgroups"):
        if limits.empty:
            return 0
        raise BackendUnavailable(f"container {rec.id}: its VM has no cgroup to limit its CPU")
    hostcgroup.apply(Path(st["cgroups"][0]), limits)
    return 0


def _update_resources(inv: Invocation) -> dict[str, Any]:
    """LinuxResources from `--resources FILE|-`, else from runc's flags."""
    import json
    import sys

    from bareboat.errors import UsageError

    source = inv.flag("--resources")
    if source:
        try:
            if source == "-":
                data = json.load(sys.stdin)
            else:
                with open(source, "rb") as f:
                    data = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"update: cannot read resources from {source}: {e}") from None
        if not isinstance(data, dict):
            raise UsageError("update: resources must be a JSON object")
        return data
    cpu: dict[str, int] = {}
    for flag, key in (
        ("--cpu-quota", "quota"),
        ("--cpu-period", "period"),
        ("--cpu-share", "shares"),
    ):
        if inv.flag(flag):
            try:
                cpu[key] = int(inv.flag(flag))
            except ValueError:
                raise UsageError(f"update: {flag} must be an integer") from None
    memory = {"limit": _size(inv.flag("--memory"))} if inv.flag("--memory") else {}
    return {"cpu": cpu, "memory": memory}


def _size(text: str) -> int:
    from bareboat.spec.parse import parse_memory

    return parse_memory(text)


def _exec(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    from . import vmgate

    return vmgate.exec_in(inv, root, rec)


_COMMANDS = {
    "kill": _kill,
    "delete": _delete,
    "pause": _pause,
    "resume": _resume,
    "ps": _ps,
    "update": _update,
    "exec": _exec,
}
