"""A bundle planned as a microVM, as data: what a backend reads of it, and QEMU's config, START
and the VMM's CPU quota made of that by `vmplan`. Nothing is built or booted: the artifacts
(kernel, initramfs, image disk, persistent disk) are named, not made, and START's clock,
entropy and terminal size are fixed, so two plans differ only where their bundles do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bareboat.backends.base import BackendContext
from bareboat.backends.microvm import vmplan
from bareboat.backends.microvm.agent import ProcessSpec, StartSpec
from bareboat.backends.microvm.backend import MicrovmBackend, read_guest_file
from bareboat.backends.microvm.qemu import VMConfig
from bareboat.backends.microvm.rootfs import RootfsImage

# The artifacts, as the backend's build step would hand them over.
KERNEL = Path("/guest/kernel/vmlinux")
INITRD = Path("/guest/init/initramfs.cpio")
IMAGE = RootfsImage(Path("/images/sha256-feed.erofs"), "erofs", "sha256-feed")
DISK = Path("/containers/vm-disk.ext4")
TSC_KHZ = 1_996_249
TIME_NS = 1_700_000_000_000_000_000
ENTROPY = bytes(range(64))
WINSIZE = (24, 80)


@dataclass(frozen=True)
class Planned:
    """One VM planned from a bundle: its plan, QEMU config, START and files."""

    plan: vmplan.VmPlan
    config: VMConfig
    start: StartSpec
    vmdir: Any  # backend.VmDir
    vmm_cpu_limit: tuple[int | None, int | None]


def plan_vm(backend: MicrovmBackend, ctx: BackendContext) -> Planned:
    """What `backend` plans for the bundle of `ctx`: the bundle read (`backend.read`: parsed,
    checked against this host and the container's tree), the named artifacts, and the small
    host files START copies read now, as the backend reads them at start."""
    spec, settings, file_shares = backend.read(ctx)
    plan = vmplan.VmPlan(
        spec, settings, KERNEL, INITRD, IMAGE,
        disk=DISK if settings.disk_size is not None else None,
        accel="tcg", tsc_khz=TSC_KHZ, file_shares=file_shares,
    )  # fmt: skip
    start = vmplan.start_spec(
        plan,
        contents={f: read_guest_file(f) for f in spec.files},
        time_ns=TIME_NS,
        entropy=ENTROPY,
        winsize=WINSIZE,
    )
    d = backend.vmdir(ctx)
    return Planned(plan, vmplan.vm_config(plan, d), start, d, backend.vmm_cpu_limit(ctx))


def fields(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A dataclass's fields by name, START's process flattened into `process.<field>`."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, ProcessSpec):
            out.update(fields(value, "process."))
        else:
            out[prefix + f.name] = value
    return out


def changes(before: Any, after: Any) -> dict[str, Any]:
    """The fields of `after` (a dataclass) whose values differ from those of `before`."""
    old, new = fields(before), fields(after)
    return {k: v for k, v in new.items() if old[k] != v}
