"""A VM's QEMU as other processes find it: the pid the backend records and the check that a
pid still is that QEMU. Plain os/json, no backend imports: bareboat-runtime's `kill`,
`delete` and `ps` use it on a path that podman and containerd take several times per
container."""

from __future__ import annotations

import json
import os


def recorded_pid(pidfile: str | os.PathLike[str]) -> int | None:
    """QEMU's pid as the backend recorded it (vm.json), or None."""
    try:
        with open(pidfile, "rb") as f:
            return int(json.load(f)["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_vm_qemu(pid: int, sockets: str | os.PathLike[str]) -> bool:
    """Guard against pid reuse: a QEMU whose argv names this VM's socket directory."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"qemu-system" in cmdline and os.fsencode(sockets) in cmdline


VMM_RECORD = "vmm.json"  # in the VM's directory: what its jailed QEMU holds on the host


def release_vmm(vmdir: str | os.PathLike[str]) -> None:
    """What a jailed QEMU held, once it is gone and its owner (a killed monitor or gate)
    did not release it: its cgroups, empty by now, and its id's lease file, unless another VM
    holds that id again. QemuProcess writes the record before QEMU starts."""
    import fcntl

    try:
        with open(os.path.join(vmdir, VMM_RECORD), "rb") as f:
            info = json.load(f)
    except (OSError, ValueError):
        return
    if not isinstance(info, dict):
        return
    for d in info.get("cgroups") or []:
        if isinstance(d, str) and os.path.basename(d).startswith(VMM_CGROUP_PREFIX):
            try:  # noqa: SIM105 - contextlib costs import time here
                os.rmdir(d)
            except OSError:
                pass
    lease = info.get("lease")
    if not isinstance(lease, str) or not lease:
        return
    try:
        fd = os.open(lease, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(lease).st_ino:
            os.unlink(lease)
    except OSError:
        pass  # held again, or gone
    finally:
        os.close(fd)


VMM_CGROUP_PREFIX = "bareboat-vmm-"


def remove_vmm_cgroups_under(cgroup: str | os.PathLike[str]) -> None:
    """The (empty) VMM cgroups inside a container's cgroup, which must go before it can."""
    try:
        names = os.listdir(cgroup)
    except OSError:
        return
    for name in names:
        if name.startswith(VMM_CGROUP_PREFIX):
            try:  # noqa: SIM105
                os.rmdir(os.path.join(cgroup, name))
            except OSError:
                pass
