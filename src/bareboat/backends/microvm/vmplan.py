"""The VM plan: one microVM as plain data, and QEMU's config and the agent's START made of it.

A `VmPlan` is what one VM is: the bundle as a guest can honour it (`vmspec.VmSpec`), the
operator's host-side settings (`VmSettings`: network and ports, disk, kernel, command line,
template use), the artifacts the backend built or found for it (kernel, initramfs, the
image's read-only disk, a persistent disk), which shared host paths are single files, and
the host's accelerator and TSC frequency. The functions here turn a plan into QEMU's
`VMConfig` (`vm_config`), into the START message (`start_spec`) and into the inputs of its
template (`template_inputs`). They read no file and start no process: what START copies
of host files, its clock and its entropy come in as arguments, so the path of every option
from the bundle to the VM is tested as data. Building the artifacts is the backend's step
before (`MicrovmBackend.prepare`); staging one-file shares and launching QEMU its step after.

Templates and cold boots share one builder (`machine`): a template VM, its clones and every
VM without more than a template carries get their devices from the same lines, and a VM is
a template's clone only when those lines alone make its config (`template_inputs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bareboat.errors import TemplateError, UsageError

if TYPE_CHECKING:
    from typing import Protocol

    from .agent import Mount, ProcessSpec, StartSpec
    from .network import NetworkPlan
    from .qemu import Accel, Share, VMConfig
    from .rootfs import RootfsImage
    from .vmspec import GuestFile, GuestProcess, VmSpec

    # Types only (no class to make at import): a VM's paths are a VmDir or VmFiles.
    class VmPaths(Protocol):
        """Where QEMU finds one VM's host-side files (backend.VmDir, template.VmFiles)."""

        @property
        def sockets(self) -> Path: ...  # its unix sockets; also QEMU's -name (vmproc)

        @property
        def qmp(self) -> Path: ...

        @property
        def agent(self) -> Path: ...

        @property
        def console(self) -> Path: ...

    class VmDirPaths(VmPaths, Protocol):
        """A container's VM, which may share host files: each one-file share is served from a
        directory of its own under `shared_files` (see `shares`)."""

        @property
        def shared_files(self) -> Path: ...


AGENT_PORT = "bareboat.agent"  # the virtio-serial port the guest init opens
LOWER_SERIAL = "bb-lower"
UPPER_SERIAL = "bb-upper"
LOWER_DEVICE = "/dev/vda"  # virtio-mmio disks enumerate in command-line order (measured)
UPPER_DEVICE = "/dev/vdb"
# How the guest mounts a shared directory: QEMU's 9p server over virtio, no caching (the
# host side may change under it), 256 KiB messages.
NINEP_OPTIONS = ("trans=virtio", "version=9p2000.L", "msize=262144", "cache=none")

_RLIMIT_NUMBERS = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8,
    "RLIMIT_AS": 9, "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12,
    "RLIMIT_NICE": 13, "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}  # fmt: skip


@dataclass(frozen=True)
class VmSettings:
    """The host side of one VM as its bundle sets it (the operator's annotations)."""

    net: NetworkPlan
    disk_size: int | None = None  # a persistent ext4 writable layer of this size
    kernel: Path | None = None  # a vmlinux to boot instead of the one bareboat built
    cmdline: tuple[str, ...] = ()  # extra guest kernel arguments
    template: str = "auto"  # template.template_mode


@dataclass(frozen=True)
class TemplateInputs:
    """Everything a template depends on; two equal inputs give the same key (template.py).
    They are also what every VM's `machine` is built from."""

    image: str  # the image's digest (or the rootfs image's cache key)
    kernel: Path
    initrd: Path
    lower: Path  # the read-only rootfs disk, attached at the same place in every clone
    lower_fstype: str = "erofs"  # its filesystem (a template mounts it before its snapshot)
    vcpus: int = 1
    memory_mib: int = 128
    network: str = "none"
    accel: Accel = "tcg"
    cmdline: tuple[str, ...] = ()
    tb_size_mib: int | None = None
    tsc_khz: int | None = None

    def validate(self) -> None:
        if self.network != "none":
            # slirp keeps host sockets and forwards in its migrated state; phase 1 clones
            # only network-less VMs (the caller cold-boots the rest).
            raise TemplateError(f"templates support only network mode none, not {self.network}")
        if self.memory_mib < 32 or not 1 <= self.vcpus <= 255:
            raise UsageError(f"bad template size: {self.vcpus} vCPUs, {self.memory_mib} MiB")


@dataclass(frozen=True)
class VmPlan:
    """One VM, ready to boot: the inputs of `vm_config` and `start_spec`."""

    spec: VmSpec
    settings: VmSettings
    kernel: Path
    initrd: Path
    image: RootfsImage  # the image's read-only disk
    disk: Path | None = None  # the persistent writable layer (None: a tmpfs in the guest)
    accel: Accel = "tcg"
    tsc_khz: int | None = None  # the host's TSC frequency (TSC calibration fails under TCG)
    # The shared host paths (`-v` sources) that are one regular file, not a directory: the
    # backend looked once, so QEMU's share and the guest's mount agree on what each one is.
    file_shares: frozenset[str] = frozenset()

    @property
    def net(self) -> NetworkPlan:
        return self.settings.net


# --- the QEMU config ------------------------------------------------------------------------


def machine(inputs: TemplateInputs, paths: VmPaths) -> VMConfig:
    """The VM every plan starts from: kernel, init, vCPUs and RAM, the image's read-only disk,
    the agent's port and the console, and no network. A template VM and its clones are this
    (plus their RAM file); a cold VM is this plus what its plan adds (`vm_config`)."""
    from .qemu import Disk, SerialPort, VMConfig

    return VMConfig(
        kernel=inputs.kernel,
        initrd=inputs.initrd,
        qmp_socket=paths.qmp,
        cmdline=inputs.cmdline,
        vcpus=inputs.vcpus,
        memory_mib=inputs.memory_mib,
        accel=inputs.accel,
        disks=(Disk(inputs.lower, readonly=True, serial=LOWER_SERIAL),),
        serial_ports=(SerialPort(AGENT_PORT, paths.agent),),
        console_log=paths.console,
        network="none",
        tb_size_mib=inputs.tb_size_mib,
        tsc_khz=inputs.tsc_khz,
        name=str(paths.sockets),
    )


def machine_inputs(plan: VmPlan) -> TemplateInputs:
    """The plan's part that `machine` builds, and a template would be keyed by."""
    return TemplateInputs(
        image=plan.image.key,
        kernel=plan.kernel,
        initrd=plan.initrd,
        lower=plan.image.path,
        lower_fstype=plan.image.fstype,
        vcpus=plan.spec.vcpus,
        memory_mib=plan.spec.memory >> 20,
        network=plan.net.mode,
        accel=plan.accel,
        cmdline=plan.settings.cmdline,
        tsc_khz=plan.tsc_khz,
    )


def vm_config(plan: VmPlan, paths: VmDirPaths) -> VMConfig:
    """QEMU's config for a cold boot of this VM: its machine, then its persistent disk, its
    network and published ports, and its shared host directories and files."""
    from .qemu import Disk, PortForward

    base = machine(machine_inputs(plan), paths)
    upper = (Disk(plan.disk, serial=UPPER_SERIAL),) if plan.disk is not None else ()
    forwards = tuple(
        PortForward(p.host_port, p.guest_port, p.protocol, p.host_ip)  # type: ignore[arg-type]
        for p in plan.net.ports
    )
    return dataclasses.replace(
        base,
        disks=(*base.disks, *upper),
        network="user" if plan.net.mode == "user" else "none",
        own_netns=plan.net.isolated,
        port_forwards=forwards,
        shares=shares(plan, paths.shared_files),
    )


class _Nowhere:
    """Paths no VM has, for comparing configs that differ only in where their files are."""

    sockets = Path("/nonexistent/vm")
    qmp = sockets / "qmp.sock"
    agent = sockets / "agent.sock"
    console = sockets / "console.log"
    shared_files = sockets / "files"


def template_inputs(plan: VmPlan) -> TemplateInputs | None:
    """The inputs of this VM's template, or None when it cannot be a clone: when its config
    is more than its `machine` (a network, a persistent disk, shared host files). Compared as
    whole configs, so a device added to `vm_config` keeps such VMs cold without a word here."""
    inputs = machine_inputs(plan)
    if vm_config(plan, _Nowhere()) != machine(inputs, _Nowhere()):
        return None
    return inputs


def share_tags(spec: VmSpec) -> dict[str, str]:
    """The 9p mount tag of each shared directory, by its destination in the guest."""
    return {
        m.destination: f"bb{i}" for i, m in enumerate(x for x in spec.mounts if x.fstype == "9p")
    }


def shares(plan: VmPlan, staging: Path) -> tuple[Share, ...]:
    """QEMU's 9p shares for the spec's bind mounts. A single file is served from a directory
    of this VM (`staging/<tag>`) holding only a placeholder, onto which QEMU's process binds
    the file (see qemu.Share): sharing the file's own directory would hand the guest its
    siblings. The backend makes those directories before QEMU starts."""
    from .qemu import Share

    tags = share_tags(plan.spec)
    out = []
    for m in plan.spec.mounts:
        if m.fstype != "9p":
            continue
        tag, readonly = tags[m.destination], "ro" in m.options
        if m.source in plan.file_shares:
            out.append(Share(staging / tag, tag, readonly, file=Path(m.source)))
        else:
            out.append(Share(Path(m.source), tag, readonly))
    return tuple(out)


# --- START ----------------------------------------------------------------------------------


def to_process_spec(p: GuestProcess, winsize: tuple[int, int] = (0, 0)) -> ProcessSpec:
    """The agent's process (START's, or an EXEC's) for a guest process; `winsize` (rows,
    cols) sizes its terminal, if it has one."""
    from .agent import ProcessSpec, Rlimit

    return ProcessSpec(
        args=list(p.args),
        env=list(p.env),
        cwd=p.cwd,
        uid=p.uid,
        gid=p.gid,
        groups=list(p.additional_gids),
        umask=0o022 if p.umask is None else p.umask,
        rlimits=[Rlimit(_RLIMIT_NUMBERS[r.type], r.soft, r.hard) for r in p.rlimits],
        no_new_privs=p.no_new_privileges,
        terminal=p.terminal,
        rows=winsize[0] if p.terminal else 0,
        cols=winsize[1] if p.terminal else 0,
    )


def guest_mounts(plan: VmPlan) -> list[Mount]:
    """The mounts START asks of the guest init: tmpfs, or the 9p share of its tag."""
    from .agent import Mount

    # The whole option list travels (vmspec checked every word): the agent turns flag words
    # (nosuid, noexec, ro...) into mount(2) flags and passes the valued ones as data.
    tags = share_tags(plan.spec)
    return [
        Mount(m.destination, m.fstype, tags.get(m.destination, "tmpfs"),
              ",".join((*m.options, *(NINEP_OPTIONS if m.fstype == "9p" else ()))),
              readonly="ro" in m.options,
              file=m.fstype == "9p" and m.source in plan.file_shares)
        for m in plan.spec.mounts
    ]  # fmt: skip


def start_spec(
    plan: VmPlan,
    *,
    contents: Mapping[GuestFile, bytes],
    time_ns: int,
    entropy: bytes,
    winsize: tuple[int, int] = (0, 0),
) -> StartSpec:
    """START for this VM: the process, its identity (hostname, the wall-clock `time_ns`,
    `entropy` for the guest's RNG), its root disks and mounts, and the small host files the
    bundle binds in (`contents`: each of `plan.spec.files`, as the backend read it)."""
    from .agent import File, StartSpec

    s = plan.spec
    return StartSpec(
        process=to_process_spec(s.process, winsize),
        hostname=s.hostname,
        time_ns=time_ns,
        entropy=entropy,
        lower=LOWER_DEVICE,
        lower_fstype=plan.image.fstype,
        upper=UPPER_DEVICE if plan.disk is not None else None,
        mounts=guest_mounts(plan),
        files=[File(f.path, contents[f], readonly=f.readonly) for f in s.files],
        readonly_root=s.readonly_rootfs,
        watch_ports=plan.net.watch_ports,
    )
