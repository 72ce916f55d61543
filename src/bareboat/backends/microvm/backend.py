"""The `microvm` backend: each container is a QEMU microVM running our kernel and init/agent.

create: read the bundle as data (vmspec, and `settings`: network, ports, disk, kernel) and
check it, then build the artifacts (`prepare`: find the kernel and the init initramfs, build
or reuse the image's read-only EROFS disk, make the persistent disk if one was asked for);
the result is a `vmplan.VmPlan`, from which vmplan makes QEMU's config and START as data.
start: launch QEMU (QemuProcess), wait for the agent's HELLO (a deadline, a panic or a dead
QEMU each end the wait with the console log's tail), send START, wait for STARTED, and hand
the channel to the `Hub` thread that relays stdio and serves the VM's side of the sandbox's
control socket (its own socket under bareboat-runtime; under the engine the monitor's, which
hands the VM's requests to the hub: `take_client`, and `kill`, `resize` and `delete` in the
monitor's process go to the hub directly). The pid the
monitor waits on is QEMU's; `exit_code` reads what the hub recorded from the agent's EXIT.

One VM's files live in `<ctx.state_dir>/vm/` (console log, QEMU's log, exit and pid records:
the sandbox directory layout of `bareboat.sandboxdir`, the same under every front end)
and its unix sockets in a short directory of their own (`socket_dir`: a socket's path must fit
a sockaddr_un), both removed by `delete`; the log of a failed start is first copied beside the
container's record, where a persistent disk lives too.
Options a bundle cannot express travel as annotations (`settings` reads them, as data):
`io.bareboat.network` (none|user[,host-loopback]),
`io.bareboat.publish` ([IP:]HOST:GUEST[/proto],...),
`io.bareboat.vm.disk` (size of a persistent ext4 writable layer, e.g. 1g),
`io.bareboat.vm.kernel` (a vmlinux to boot), `io.bareboat.vm.cmdline` (extra kernel args),
`io.bareboat.vm.template` (auto|create|off). They configure the host, so only the operator
sets them: the spec builder writes them from the flags (`--network`, `-p`, `--template`) and
`--label`s and never copies an image's labels; under bareboat-runtime they are the client's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import termios
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bareboat import control as ctl
from bareboat.backends.base import BackendContext, Stdio, is_devnull, terminal_size
from bareboat.control import ControlClient
from bareboat.errors import (
    AgentProtocolError,
    BareboatError,
    BootTimeout,
    CommandNotExecutable,
    CommandNotFound,
    ControlError,
    GuestError,
    UsageError,
)
from bareboat.fsutil import atomic_write, atomic_write_text
from bareboat.paths import Roots
from bareboat.privdir import private_dir
from bareboat.sandboxdir import (
    AGENT_SOCKET,
    CONTROL_SOCKET,
    QMP_SOCKET,
    VM_RECORD,
    FileIn,
    SandboxDir,
    short_socket_dir,
)
from bareboat.spec.defaults import NETWORK_ANNOTATION, PUBLISH_ANNOTATION
from bareboat.spec.options import PortMapping

from . import network, rootfs, vmplan, vmspec
from .vmplan import VmPlan as VmPlan  # re-exported: bareboat-runtime names these from here
from .vmplan import VmSettings as VmSettings
from .vmplan import to_process_spec as to_process_spec
from .vmproc import VMM_RECORD, is_vm_qemu, recorded_pid, release_vmm

if TYPE_CHECKING:
    # The agent's protocol and the hub are imported where a VM is booted, once its QEMU
    # runs: under TCG their import (~45 ms here) then overlaps the guest kernel's boot.
    from .agent import Frame, FrameDecoder
    from .hub import Hub
    from .qemu import QemuProcess, Share, VMConfig

BOOT_TIMEOUT_S = 30.0  # TCG boots in ~1 s here; a loaded CI host may need far more
START_TIMEOUT_S = 30.0
# A clone resumes in ~60 ms here; one that has not after this is broken: boot cold instead.
CLONE_READY_TIMEOUT_S = 8.0
ENV_BOOT_TIMEOUT = "BAREBOAT_BOOT_TIMEOUT"
CONSOLE_TAIL_LINES = 15
DISK_FILE = "vm-disk.ext4"  # the persistent writable layer, beside the container's record
NOT_TEMPLATED = "templates are made only for VMs without network, persistent disk or shared files"

ANN_NETWORK = NETWORK_ANNOTATION
ANN_PUBLISH = PUBLISH_ANNOTATION
ANN_DISK = "io.bareboat.vm.disk"
ANN_KERNEL = "io.bareboat.vm.kernel"
ANN_CMDLINE = "io.bareboat.vm.cmdline"


# --- plain data: what one VM is -----------------------------------------------------------------


@dataclass(frozen=True)
class VmDir:
    """The files of one VM: records in `path`, unix sockets in the short `sockets` dir."""

    path: Path
    sockets: Path

    qmp = FileIn("sockets", QMP_SOCKET)
    agent = FileIn("sockets", AGENT_SOCKET)
    ctl = FileIn("sockets", CONTROL_SOCKET)
    console = FileIn("path", "console.log")
    qemu_log = FileIn("path", "qemu.log")
    exit = FileIn("path", "exit.json")
    pidfile = FileIn("path", VM_RECORD)
    vmm_record = FileIn("path", VMM_RECORD)
    shared_files = FileIn("path", "files")  # one directory per one-file share (vmplan.shares)


def check_shares(spec: vmspec.VmSpec) -> frozenset[str]:
    """Bind mounts reach a VM as 9p shares of a directory or of one regular file: anything
    else (missing, a device, a FIFO, a socket) is a clear error here, not a failed mount in
    the guest. Returns the sources that are one file (`VmPlan.file_shares`)."""
    files = set()
    for m in spec.mounts:
        if m.fstype != "9p":
            continue
        if Path(m.source).is_file():
            files.add(m.source)
        elif not Path(m.source).is_dir():
            what = "does not exist" if not os.path.exists(m.source) else "is a special file"
            raise UsageError(
                f"bind mount of {m.source} at {m.destination}: {m.source} {what} (a microVM "
                "shares host directories and regular files)"
            )
    return frozenset(files)


def stage_file_shares(shares: tuple[Share, ...]) -> None:
    """Make the directory each one-file share is served from, holding only a placeholder
    that QEMU's process binds the file onto (see qemu.Share)."""
    from .qemu import SHARED_FILE

    for share in shares:
        if share.file is not None:
            share.path.mkdir(parents=True, exist_ok=True)
            (share.path / SHARED_FILE).touch()


def nothing_to_flush(cfg: VMConfig) -> bool:
    """Whether a VM whose workload has exited can be killed at once: nothing it holds reaches
    the host later (no writable disk or host share, no network with data in flight); its RAM
    and tmpfs layer die with it. Every template clone is such a VM."""
    return (
        cfg.network == "none"
        and all(d.readonly for d in cfg.disks)
        and all(sh.readonly for sh in cfg.shares)
    )


def _tell(stdio: Stdio, message: str) -> None:
    """A note on the run's own stderr (the monitor's stderr goes to its log)."""
    with contextlib.suppress(OSError):
        os.write(stdio.stderr, f"bareboat: {message}\n".encode())


def read_guest_file(f: vmspec.GuestFile) -> bytes:
    """The contents of a small host file bound into the guest (hosts, hostname, resolv.conf).

    Only regular files of at most `vmspec.MAX_COPIED_FILE` bytes: the guest gets a copy, so a
    FIFO or a huge file named in a client's config.json must not hang or bloat the start.
    """
    try:
        fd = os.open(f.source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"cannot read {f.source} for {f.path} in the guest: {e.strerror}") from e
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > vmspec.MAX_COPIED_FILE:
            raise UsageError(
                f"{f.source} for {f.path} in the guest must be a regular file of at most "
                f"{vmspec.MAX_COPIED_FILE} bytes"
            )
        return fh.read(vmspec.MAX_COPIED_FILE + 1)[: vmspec.MAX_COPIED_FILE]


def annotations_of(config: dict[str, Any]) -> dict[str, Any]:
    ann = config.get("annotations") or {}
    if not isinstance(ann, dict):
        raise UsageError("invalid config.json: annotations must be an object")
    return ann


def network_of(ann: dict[str, Any]) -> network.NetworkPlan:
    """The VM's network as the annotations set it (`none` unless asked)."""
    mode = str(ann.get(ANN_NETWORK, "none"))
    return network.plan_network(mode, parse_publish(str(ann.get(ANN_PUBLISH, ""))))


def settings_of(ann: dict[str, Any], net: network.NetworkPlan) -> VmSettings:
    """What the annotations set of the VM's host side, with its network `net`; plain data."""
    from . import template

    kernel, disk = ann.get(ANN_KERNEL), ann.get(ANN_DISK)
    return VmSettings(
        net=net,
        disk_size=parse_size(str(disk)) if disk else None,
        kernel=Path(str(kernel)) if kernel else None,
        cmdline=tuple(str(ann.get(ANN_CMDLINE, "")).split()),
        template=template.template_mode(ann.get(template.ANN_TEMPLATE)),
    )


def read_bundle(
    config: dict[str, Any], settings: VmSettings, tree: Path
) -> tuple[vmspec.VmSpec, VmSettings, frozenset[str]]:
    """A bundle as what a VM can honour (vmspec), refused if this host cannot run it, if a
    tmpfs would need copying from the image `tree` or a share is not a directory or file;
    with its `settings` and the shares that are single files (`VmPlan.file_shares`)."""
    spec = vmspec.parse_config(config)
    vmspec.check_host(spec, vmspec.HostSize.current())
    check_copyup(spec, tree)
    return spec, settings, check_shares(spec)


def image_of_tree(roots: Roots, tree: Path) -> rootfs.RootfsImage:
    """The read-only disk of an image tree: built once, cached by the tree's identity."""
    return rootfs.ensure_image(roots, tree, key=tree_key(tree))


def parse_publish(value: str) -> tuple[PortMapping, ...]:
    from bareboat.spec.parse import parse_publish as parse_one

    return tuple(parse_one(v.strip()) for v in value.split(",") if v.strip())


def parse_size(value: str) -> int:
    from bareboat.spec.parse import parse_memory

    return parse_memory(value)


def console_tail(path: Path, lines: int = CONSOLE_TAIL_LINES) -> str:
    from .consolelog import read_tail, rotated_path

    data = read_tail(path, 16384)
    if not data and not (path.exists() or rotated_path(path).exists()):
        return "(no console log)"
    text = data.decode(errors="replace").replace("\r", "")
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(tail) if tail else "(the console log is empty)"


def overlay_layers(rootfs_path: Path) -> tuple[list[Path], Path | None]:
    """The lowerdirs and upperdir of the overlay mounted at `rootfs_path` ([], None if none)."""
    target = os.fsencode(rootfs_path)
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            left, _, right = line.rstrip(b"\n").partition(b" - ")
            point = left.split(b" ")[4].decode("unicode_escape").encode("latin-1")
            fields = right.split(b" ")
            if point != target or len(fields) < 3 or fields[0] != b"overlay":
                continue
            lowers: list[Path] = []
            upper = None
            for opt in fields[2].split(b","):
                if opt.startswith(b"lowerdir="):
                    value = os.fsdecode(opt[len(b"lowerdir=") :])
                    lowers = [Path(p) for p in value.split(":") if p]
                elif opt.startswith(b"upperdir="):
                    upper = Path(os.fsdecode(opt[len(b"upperdir=") :]))
            return lowers, upper
    return [], None


def lower_tree(rootfs_path: Path) -> Path:
    """The image tree under a container's rootfs: the overlay's single lowerdir, if it is one."""
    lowers, _ = overlay_layers(rootfs_path)
    return lowers[0] if len(lowers) == 1 else rootfs_path


def check_copyup(spec: vmspec.VmSpec, tree: Path) -> None:
    """A `tmpcopyup` tmpfs is honoured only where the image has nothing to copy."""
    from bareboat.spec.rootread import open_in_root

    for m in spec.mounts:
        if not m.copyup:
            continue
        try:
            fd = open_in_root(tree, m.destination, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue  # not in the image: the tmpfs starts empty either way
        try:
            empty = not os.listdir(fd)
        finally:
            os.close(fd)
        if not empty:
            raise UsageError(
                f"tmpfs at {m.destination} with tmpcopyup: the image has files there, and a "
                "microVM cannot copy them into the tmpfs (mount it without tmpcopyup, e.g. "
                "podman --mount type=tmpfs,destination=...,notmpcopyup)"
            )


def tree_key(tree: Path) -> str:
    """A cache key for an immutable rootfs tree: its path and the identity of its inode."""
    st = tree.stat()
    ident = f"{tree.resolve()}\0{st.st_dev}\0{st.st_ino}\0{st.st_ctime_ns}"
    return "tree-" + hashlib.sha256(ident.encode()).hexdigest()[:40]


def socket_dir(roots: Roots, cid: str) -> Path:
    """A directory for one VM's sockets whose paths fit a sockaddr_un (108 bytes).

    The container's own state directory is too deep (two 64-character ids); the short name
    under the state root serves where it fits (`sandboxdir.short_socket_dir`). Both follow
    from the roots and the id alone, so every process finds the same one.
    """
    return Path(short_socket_dir(str(roots.vm_sockets / cid[:16]), f"{roots.state}\0{cid}"))


def _pid_is_ours(pid: int, vmdir: VmDir) -> bool:
    return is_vm_qemu(pid, vmdir.sockets)


# --- the backend ----------------------------------------------------------------------------


@dataclass
class Booted:
    """A VM whose agent said HELLO: what `run_workload` needs to START it."""

    plan: VmPlan
    vm: QemuProcess
    sock: socket.socket
    decoder: FrameDecoder
    pending: list[Frame]


@dataclass
class _Running:
    vm: Any  # QemuProcess
    hub: Hub | None = None


@dataclass
class _Launched:
    """A VM whose QEMU runs (registered as the container's), its agent not yet heard."""

    plan: VmPlan
    vm: Any  # QemuProcess
    running: _Running
    vmdir: VmDir
    sock: socket.socket | None  # a clone's agent channel, connected before its state loaded


class MicrovmBackend:
    name = "microvm"

    def __init__(self, roots: Roots | None = None, *, boot_timeout: float | None = None) -> None:
        self.roots = (roots or Roots.from_env()).make_private()
        env_timeout = os.environ.get(ENV_BOOT_TIMEOUT)
        self.boot_timeout = boot_timeout or (float(env_timeout) if env_timeout else BOOT_TIMEOUT_S)
        self._plans: dict[str, VmPlan] = {}
        self._launched: dict[str, _Launched] = {}
        self._running: dict[str, _Running] = {}
        self.template_used: str | None = None  # the template key the last start cloned

    # --- paths ---------------------------------------------------------------------------
    def vmdir(self, ctx: BackendContext) -> VmDir:
        return VmDir(Path(SandboxDir(str(ctx.state_dir)).vm), socket_dir(self.roots, ctx.id))

    def record_dir(self, ctx: BackendContext) -> Path:
        return self.roots.containers / ctx.id

    # --- create: the bundle read as data, then the artifacts built --------------------------
    def plan(self, ctx: BackendContext) -> VmPlan:
        """Everything `start` needs: the bundle read and checked (`read`: a bad one makes
        nothing), then its artifacts built (`prepare`)."""
        return self.prepare(
            *self.read(ctx),
            image=lambda: self.image_for(ctx),
            disk=self.record_dir(ctx) / DISK_FILE,
        )

    def read(self, ctx: BackendContext) -> tuple[vmspec.VmSpec, VmSettings, frozenset[str]]:
        """The container's bundle as a VM's data, checked against this host and the
        container's tree (see `read_bundle`); nothing is built."""
        return read_bundle(ctx.spec, self.settings(ctx), self.rootfs_dir(ctx))

    def template_inputs(self, config: dict[str, Any], tree: Path) -> vmplan.TemplateInputs:
        """The template that a run of the bundle `config` on the image tree `tree` looks for
        (`bareboat template create`), planned as `plan` plans that run."""
        ann = annotations_of(config)
        plan = self.prepare(
            *read_bundle(config, settings_of(ann, network_of(ann)), tree),
            image=lambda: image_of_tree(self.roots, tree),
            disk=None,
        )
        inputs = vmplan.template_inputs(plan)
        if inputs is None:
            raise UsageError(NOT_TEMPLATED)
        return inputs

    def prepare(
        self,
        spec: vmspec.VmSpec,
        settings: VmSettings,
        file_shares: frozenset[str] = frozenset(),
        *,
        image: Callable[[], rootfs.RootfsImage],
        disk: Path | None,
    ) -> VmPlan:
        """The artifact step, for a VM whose bundle was read and checked: the kernel (ours,
        or the one asked for), the init's initramfs and the image's read-only disk (each
        built once and cached), the persistent disk at `disk` when the settings ask for one;
        and the host's accelerator and TSC frequency. Then the plan is data (vmplan)."""
        from .accel import choose_accel
        from .initbuild import build_initramfs
        from .kernel import resolve_kernel
        from .qemu import host_tsc_khz

        kernel = resolve_kernel(self.roots, configured=settings.kernel)
        initrd = build_initramfs(self.roots)
        made = image()
        upper = None
        if settings.disk_size is not None:
            if disk is None:
                raise UsageError("a persistent VM disk needs a container to keep it")
            upper = rootfs.make_disk(disk, settings.disk_size).disk
        return VmPlan(
            spec,
            settings,
            kernel.path,
            initrd,
            made,
            upper,
            accel=choose_accel(self.roots).accel,
            tsc_khz=host_tsc_khz(),
            file_shares=file_shares,
        )

    def settings(self, ctx: BackendContext) -> VmSettings:
        """What the bundle's annotations set of the VM's host side; plain data, nothing is
        built or started (the planned network's QEMU arguments included)."""
        ann = annotations_of(ctx.spec)
        return settings_of(ann, self.network_for(ctx, ann))

    def network_for(self, ctx: BackendContext, ann: dict[str, Any]) -> network.NetworkPlan:
        """The VM's network from the annotations (`none` unless asked)."""
        return network_of(ann)

    def rootfs_dir(self, ctx: BackendContext) -> Path:
        """The container's root tree on the host (what the VM's disk is made of)."""
        return ctx.rootfs

    def image_for(self, ctx: BackendContext) -> rootfs.RootfsImage:
        """The read-only disk of the container's image: cached per image tree."""
        return image_of_tree(self.roots, lower_tree(ctx.rootfs))

    def template_allowed(self, plan: VmPlan) -> bool:
        """Whether this VM may be a template's clone (its image disk is shared and keyed)."""
        return True

    def vmm_cpu_limit(self, ctx: BackendContext) -> tuple[int | None, int | None]:
        """The host CPU quota and period of the VMM's cgroup: the spec's (`--cpus`)."""
        from .hostcgroup import cpu_limits

        limits = cpu_limits((ctx.spec.get("linux") or {}).get("resources"))
        return limits.quota, limits.period

    def create(self, ctx: BackendContext) -> None:
        plan = self.plan(ctx)
        self.vmdir(ctx).path.mkdir(parents=True, exist_ok=True)
        self._plans[ctx.id] = plan

    def vm_config(self, ctx: BackendContext, plan: VmPlan) -> VMConfig:
        """QEMU's config for a cold boot of this container's VM (vmplan.vm_config)."""
        return vmplan.vm_config(plan, self.vmdir(ctx))

    def _qemu(self, ctx: BackendContext, plan: VmPlan) -> QemuProcess:
        """This VM's QEMU, not yet launched, with the slirp4netns that an isolated network
        needs (it starts once QEMU runs and ends with it)."""
        from .qemu import QemuProcess

        d = self.vmdir(ctx)
        cfg = self.vm_config(ctx, plan)
        stage_file_shares(cfg.shares)
        net = network.Slirp4netns(plan.net, d.sockets / "net.sock") if plan.net.isolated else None
        return QemuProcess(
            cfg,
            stderr=d.qemu_log,
            net=net,
            cpu_limit=self.vmm_cpu_limit(ctx),
            jail_record=d.vmm_record,
        )

    # --- start ----------------------------------------------------------------------------
    def start(self, ctx: BackendContext, stdio: Stdio) -> int:
        return self.run_workload(ctx, self.boot(ctx, stdio), stdio)

    def prelaunch(self, ctx: BackendContext, stdio: Stdio) -> None:
        """Launch this VM's QEMU (or its template's clone) now, ahead of `start`: the engine's
        monitor calls it before its client attaches, so that the guest boots while the
        client connects; the workload still waits for `start`."""
        if ctx.id not in self._launched:
            self._launched[ctx.id] = self._begin(ctx, stdio)

    def _begin(self, ctx: BackendContext, stdio: Stdio) -> _Launched:
        """QEMU (or a template clone) launched and registered; nothing waited for."""
        plan = self._plans.get(ctx.id) or self.plan(ctx)
        d = self.vmdir(ctx)
        d.path.mkdir(parents=True, exist_ok=True)
        # Refused if someone else made it first (the fallback is under the shared /tmp): who
        # owns it could connect to the agent's socket and drive the guest.
        private_dir(d.sockets)
        d.exit.unlink(missing_ok=True)
        d.console.unlink(missing_ok=True)
        network.check_ports_free(plan.net.ports)
        vm = self._qemu(ctx, plan)
        running = _Running(vm)
        sock: socket.socket | None = None
        try:
            # a clone comes with its agent channel, connected before its state loaded
            vm, sock = self._launch(ctx, plan, vm, d, stdio)
            self._register(ctx, running, vm, d)
        except BaseException:
            self._abort(ctx, vm, sock, [])
            raise
        return _Launched(plan, vm, running, d, sock)

    def boot(self, ctx: BackendContext, stdio: Stdio) -> Booted:
        """Launch QEMU (or a template clone), unless `prelaunch` did, and wait for the agent's
        HELLO: a VM ready to START its workload. The OCI runtime does this at `create`, the
        engine at `start`."""
        launched = self._launched.pop(ctx.id, None) or self._begin(ctx, stdio)
        plan, vm, running, d = launched.plan, launched.vm, launched.running, launched.vmdir
        sock = launched.sock
        try:
            if self.template_used is not None:
                try:
                    sock, decoder, pending = self._boot(
                        vm, d, timeout=CLONE_READY_TIMEOUT_S, sock=sock
                    )
                except GuestError as e:
                    # Size and checksums of a template are checked before use, but RAM damaged
                    # in place only shows when the clone never resumes: boot cold instead.
                    vm.shutdown(quit_timeout=1.0, term_timeout=1.0)
                    _tell(stdio, f"template not used, booting cold: the clone did not resume: {e}")
                    self.template_used = None
                    sock = None  # _boot closed it
                    d.console.unlink(missing_ok=True)
                    vm = self._qemu(ctx, plan)
                    vm.launch()
                    self._register(ctx, running, vm, d)
            if sock is None:
                sock, decoder, pending = self._boot(vm, d)
        except BaseException:
            self._abort(ctx, vm, sock, [])
            raise
        return Booted(plan, vm, sock, decoder, pending)

    def run_workload(self, ctx: BackendContext, b: Booted, stdio: Stdio) -> int:
        """START the workload in a booted VM and hand its channel to the hub; QEMU's pid."""
        from .agent import Frame, FrameType, encode_frame, encode_start
        from .hub import Hub

        d = self.vmdir(ctx)
        vm = b.vm
        assert vm.pid is not None
        fds: list[int] = []
        try:
            winsize = (0, 0)
            if stdio.tty:
                winsize = terminal_size(stdio.stdout)
                # The guest's pty does the line discipline; ours must pass bytes through.
                with contextlib.suppress(termios.error):
                    tty.setraw(stdio.stdin)
            start = encode_start(
                vmplan.start_spec(
                    b.plan,
                    contents={f: read_guest_file(f) for f in b.plan.spec.files},
                    time_ns=time.time_ns(),
                    entropy=os.urandom(64),
                    winsize=winsize,
                )
            )
            b.sock.sendall(encode_frame(Frame(FrameType.START, 0, start)))
            pending = b.pending + self._await_started(vm, d, b.sock, b.decoder)
            fds = [os.dup(stdio.stdout), os.dup(stdio.stderr)]
            stdin = os.dup(stdio.stdin) if not is_devnull(stdio.stdin) else None
            if stdin is not None:
                fds.append(stdin)
            hub = Hub(
                b.sock,
                stdin=stdin,
                stdout=fds[0],
                stderr=fds[1],
                ctl_path=None if ctx.control is not None else d.ctl,
                exit_path=d.exit,
                qemu_pid=vm.pid,
                pending=pending,
                decoder=b.decoder,
                pause_vm=vm.stop,
                resume_vm=vm.cont,
                forward_ports=(
                    network.PortForwarder(vm.hmp).update if b.plan.net.watch_ports else None
                ),
                kill_after_exit=nothing_to_flush(vm.cfg),
            )
            self._running[ctx.id].hub = hub
            hub.start()
            return vm.pid
        except BaseException:
            self._abort(ctx, vm, b.sock, fds)
            raise

    def _abort(
        self, ctx: BackendContext, vm: QemuProcess, sock: socket.socket | None, fds: list[int]
    ) -> None:
        """Undo a failed boot or start: QEMU stopped, the console log kept, files removed."""
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if sock is not None:
            sock.close()
        self._running.pop(ctx.id, None)
        vm.shutdown(quit_timeout=1.0, term_timeout=1.0)
        self._keep_console(ctx)
        self._cleanup(self.vmdir(ctx))

    def _launch(
        self, ctx: BackendContext, plan: VmPlan, vm: QemuProcess, d: VmDir, stdio: Stdio
    ) -> tuple[QemuProcess, socket.socket | None]:
        """A clone of this VM's template when there is one (made first when asked), with its
        agent channel already connected, else `vm` booted cold (and no channel yet). A broken
        template is reported (on the run's stderr: the monitor's own goes to its log) and the
        VM boots cold."""
        from . import template

        self.template_used = None
        mode = plan.settings.template
        if not self.template_allowed(plan):
            mode = "off"
        inputs = vmplan.template_inputs(plan) if mode != "off" else None
        reason = ""
        if inputs is None and mode == "create":
            reason = NOT_TEMPLATED
        if inputs is not None:
            try:
                found = template.find_template(self.roots, inputs)
                if found is None and mode == "create":
                    found = template.create_template(self.roots, inputs)
                if found is not None:
                    files = template.VmFiles(d.sockets, d.console, d.qemu_log, d.vmm_record)
                    clone, sock = template.launch_clone(
                        found, inputs, files, cpu_limit=self.vmm_cpu_limit(ctx)
                    )
                    self.template_used = found.key
                    return clone, sock
            except GuestError as e:
                reason = str(e)
        if reason:
            _tell(stdio, f"template not used, booting cold: {reason}")
        vm.launch()
        return vm, None

    def _register(self, ctx: BackendContext, running: _Running, vm: QemuProcess, d: VmDir) -> None:
        """Record `vm` as this container's QEMU, for kill/delete from this and other processes."""
        running.vm = vm
        assert vm.pid is not None
        # Run state (not fsynced): a crash of the host ends the QEMU it names.
        atomic_write_text(d.pidfile, json.dumps({"pid": vm.pid}), durable=False)
        self._running[ctx.id] = running

    def _boot(
        self, vm: Any, d: VmDir, *, timeout: float | None = None, sock: socket.socket | None = None
    ) -> tuple[socket.socket, FrameDecoder, list[Frame]]:
        """Connect to the agent (unless `sock` is connected already) and wait for its HELLO,
        or explain why it never came."""
        from .agent import Frame, FrameDecoder, FrameType, Hello, decode_event, encode_frame

        deadline = time.monotonic() + (timeout or self.boot_timeout)
        dialed = sock is not None
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            while not dialed:
                try:
                    sock.connect(str(d.agent))
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    self._check_alive(vm, d, deadline)
                    time.sleep(0.005)
            decoder = FrameDecoder()
            pending: list[Frame] = []
            ask = 0.0
            while True:
                now = time.monotonic()
                self._check_alive(vm, d, deadline)
                sock.settimeout(max(0.01, min(0.1, deadline - now)))
                try:
                    if now >= ask:
                        # QEMU drops guest bytes while no host is connected: ask again.
                        sock.sendall(encode_frame(Frame(FrameType.HELLO, 0)))
                        ask = now + 0.5
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    data = b""  # QEMU went away (a panic, a kill) with the channel open
                if not data:
                    self._check_alive(vm, d, deadline, wait=2.0)
                    raise GuestError(self._why(vm, d, "the VM closed the agent channel at boot"))
                for frame in decoder.feed(data):
                    if isinstance(decode_event(frame), Hello):
                        pending = []
                        sock.settimeout(None)
                        return sock, decoder, pending
                    raise AgentProtocolError(f"agent sent {frame.type.name} before HELLO")
        except BaseException:
            sock.close()
            raise

    def _await_started(
        self, vm: Any, d: VmDir, sock: socket.socket, decoder: FrameDecoder
    ) -> list[Frame]:
        """Frames up to STARTED (returned for the hub to relay), or the start's failure."""
        from .agent import AgentError, ErrorKind, Exited, Hello, Output, Started, decode_event

        errors_of: dict[ErrorKind, type[BareboatError]] = {
            ErrorKind.NOT_FOUND: CommandNotFound,
            ErrorKind.NOT_EXECUTABLE: CommandNotExecutable,
        }
        deadline = time.monotonic() + START_TIMEOUT_S
        pending: list[Frame] = []
        errors: list[AgentError] = []
        while True:
            self._check_alive(vm, d, deadline, what="the workload did not start")
            sock.settimeout(0.1)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                vm.wait(2.0)  # let QEMU finish dying so the reason (panic, signal) is known
                raise GuestError(self._why(vm, d, "the VM stopped while starting the workload"))
            frames = decoder.feed(data)
            for i, frame in enumerate(frames):
                event = decode_event(frame)
                if isinstance(event, Hello):
                    continue  # an answer to one of our repeated asks
                if getattr(event, "session", 0) != 0:
                    raise AgentProtocolError(
                        f"agent sent {frame.type.name} for a session never started"
                    )
                if isinstance(event, AgentError):
                    errors.append(event)
                elif isinstance(event, Exited):
                    # START failed: ERROR (NOT_FOUND, ...) then EXIT 127/126/125.
                    kind = errors[0].kind if errors else ErrorKind.SPAWN
                    msg = errors[0].message if errors else f"exit status {event.status}"
                    err_cls = errors_of.get(kind, GuestError)
                    if kind in (ErrorKind.ROOTFS, ErrorKind.INTERNAL):
                        msg = self._why(vm, d, f"the guest init failed: {msg}")
                    raise err_cls(msg)
                elif isinstance(event, Started):
                    # what came in the same read (output, even the EXIT) is the hub's too
                    return pending + frames[i + 1 :]
                elif isinstance(event, Output):
                    pending.append(frame)

    def _check_alive(
        self, vm: Any, d: VmDir, deadline: float, *, wait: float = 0.0, what: str = ""
    ) -> None:
        if vm.wait(wait) is not None:
            raise GuestError(self._why(vm, d, "the VM stopped during boot"))
        if time.monotonic() > deadline:
            raise BootTimeout(
                self._why(vm, d, what or f"the guest agent was not ready in {self.boot_timeout:g}s")
            )

    def _why(self, vm: Any, d: VmDir, message: str) -> str:
        panic = vm.panic_line() if vm is not None else None
        if panic:
            message = f"the guest kernel panicked ({panic})"
        elif vm is not None and vm.returncode is not None and vm.returncode < 0:
            message = f"{message}: QEMU was killed by signal {-vm.returncode}"
        elif vm is not None and vm.returncode not in (None, 0):
            message = f"{message}: QEMU exited with {vm.returncode}: {vm.stderr_tail()}"
        tail = console_tail(d.console)
        return f"{message}; console log tail:\n{tail}"

    def _keep_console(self, ctx: BackendContext) -> None:
        """Keep a failed VM's console log beside the container's record (removed by rm): the
        capped log and the part rotated out of it, as one file."""
        from .consolelog import read_all

        src = self.vmdir(ctx).console
        dest = self.record_dir(ctx) / "console.log"
        if src.exists() and dest.parent.is_dir():
            with contextlib.suppress(OSError):
                atomic_write(dest, read_all(src))

    # --- after start ----------------------------------------------------------------------------
    def wait_relayed(self, ctx: BackendContext, timeout: float | None = None) -> bool:
        """Wait until the hub has relayed the workload's end (its output and exit); False if
        it has not after `timeout` seconds. For a supervisor that must outlive the workload."""
        running = self._running.get(ctx.id)
        if running is None or running.hub is None:
            return True
        return running.hub.done.wait(timeout)

    def exit_code(self, ctx: BackendContext, status: int) -> int:
        from .hub import ExitRecord

        d = self.vmdir(ctx)
        running = self._running.get(ctx.id)
        if running is not None and running.hub is not None:
            running.hub.done.wait(5.0)
        rec = ExitRecord.load(d.exit)
        if rec is not None and not rec.error:
            return rec.code
        vm = running.vm if running is not None else None
        if vm is not None:
            vm.wait(0)  # if QEMU has ended, its console log is then whole
        self._keep_console(ctx)
        if rec is not None:
            if rec.code == 137 and "SIGKILL" in rec.error:
                return rec.code
            raise GuestError(f"{rec.error}; console log tail:\n{console_tail(d.console)}")
        if os.WIFSIGNALED(status):
            raise GuestError(
                f"the VM died: QEMU was killed by signal {os.WTERMSIG(status)}; console log tail:\n"
                + console_tail(d.console)
            )
        raise GuestError(self._why(vm, d, "the VM stopped before the workload exited"))

    def _hub(self, ctx: BackendContext) -> Hub | None:
        """The VM's hub, where this process is the sandbox's supervisor."""
        running = self._running.get(ctx.id)
        return running.hub if running is not None else None

    def control(self, ctx: BackendContext, timeout: float = 5.0) -> ControlClient:
        """A client of the sandbox's control socket (the monitor's, or the hub's own)."""
        return ControlClient(ctx.control or self.vmdir(ctx).ctl, timeout=timeout, peer="the VM")

    def take_client(self, ctx: BackendContext, sock: socket.socket, unread: bytes) -> None:
        """Serve a connection to the sandbox's control socket that asks something of the VM
        (`bareboat.control`), from its frames in `unread` on: the supervisor that accepted it
        hands it over, and forgets it."""
        hub = self._hub(ctx)
        if hub is None:
            with contextlib.suppress(OSError):
                sock.send(ctl.message(ctl.Type.REFUSED, "the VM is not running"))
            sock.close()
            return
        hub.adopt(sock, unread)

    def kill(self, ctx: BackendContext, pid: int | None, sig: int) -> None:
        d = self.vmdir(ctx)
        hub = self._hub(ctx)
        try:
            if hub is not None:
                hub.request(ctl.Type.SIGNAL, int(sig).to_bytes(4, "big"))
            else:
                with self.control(ctx) as c:
                    c.signal(int(sig))
            return
        except ControlError:
            pass
        # No hub (the monitor is gone): a kill must still end the VM.
        if int(sig) == signal.SIGKILL:
            qpid = pid or self._recorded_pid(d)
            if qpid and _pid_is_ours(qpid, d):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(qpid, signal.SIGKILL)

    def resize(self, ctx: BackendContext, rows: int, cols: int) -> None:
        hub = self._hub(ctx)
        if hub is not None:
            hub.request(ctl.Type.RESIZE, ctl.WINSIZE.pack(rows, cols))
            return
        with contextlib.suppress(ControlError), self.control(ctx) as c:
            c.resize(rows, cols)

    def exec(self, ctx: BackendContext, process: dict[str, Any], *, detach: bool = False) -> int:
        import sys

        from .agent import encode_process

        p = vmspec.parse_process(process)
        winsize = terminal_size(0) if p.terminal else (0, 0)
        payload = encode_process(to_process_spec(p, winsize))

        def show(message: str) -> None:
            print(f"bareboat: exec failed: {message}", file=sys.stderr, flush=True)

        with self.control(ctx) as c:
            return c.exec(
                payload, stdin=None if detach else 0, stdout=1, stderr=2, detach=detach,
                on_error=show, tty=0 if p.terminal and not detach else None,
            )  # fmt: skip

    def delete(self, ctx: BackendContext, *, force: bool = False) -> None:
        d = self.vmdir(ctx)
        self._launched.pop(ctx.id, None)
        running = self._running.pop(ctx.id, None)
        if running is not None:
            if running.hub is not None:
                # A workload that ran gets a clean power-off first (its disk flushed); a VM
                # still booting has nothing to flush and is simply quit.
                self._stop_vm(ctx, d, running.vm.pid, running.hub)
            running.vm.shutdown(quit_timeout=2.0, term_timeout=2.0)
            if running.hub is not None:
                running.hub.stop()
        else:
            pid = self._recorded_pid(d)
            if pid and _pid_is_ours(pid, d):
                self._stop_vm(ctx, d, pid)
            release_vmm(d.path)  # its owner died without releasing the jail's cgroups
        self._plans.pop(ctx.id, None)
        self._cleanup(d)

    def _stop_vm(
        self, ctx: BackendContext, d: VmDir, pid: int | None, hub: Hub | None = None
    ) -> None:
        """POWEROFF through the hub, then SIGTERM, then SIGKILL; each waits a little."""
        if pid is None or not _pid_is_ours(pid, d):
            return
        if hub is not None:
            hub.request(ctl.Type.POWEROFF)
        else:
            with contextlib.suppress(ControlError), self.control(ctx, timeout=1.0) as c:
                c.poweroff()
        for sig, wait in ((None, 2.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _pid_is_ours(pid, d):
                    return
                time.sleep(0.02)

    def _recorded_pid(self, d: VmDir) -> int | None:
        return recorded_pid(d.pidfile)

    def _cleanup(self, d: VmDir) -> None:
        shutil.rmtree(d.sockets, ignore_errors=True)
        shutil.rmtree(d.path, ignore_errors=True)
