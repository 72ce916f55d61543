"""QEMU `microvm`: the command line as data, and one object that owns one QEMU process.

Plan, then execute: `VMConfig` describes a VM, `build_argv` turns it into QEMU's argument list
without touching the system (tests check that list as data), and `QemuProcess` is the only place
that starts a VM's QEMU (accel.py's probe runs a firmware-only QEMU of its own, for an instant).
`QemuProcess` is a context manager: however its body ends, QEMU is asked to quit
over QMP, then sent SIGTERM, then SIGKILL, is reaped, and the sockets it made are removed.

Machine choices, measured here under TCG (QEMU 7.2, Linux 6.1 guest): `rtc=on` (without an
RTC the kernel spends ~1 s probing it); ACPI on (the kernel finds the virtio-mmio devices in the
tables and can power the machine off through the GED); direct PVH boot of the ELF `vmlinux`, no
firmware; virtio-mmio devices only; `-no-reboot` so that a kernel panic (`panic=-1` reboots at
once) ends QEMU instead of looping.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal

from bareboat.errors import BackendError, BackendUnavailable, UsageError
from bareboat.privdir import private_file

from .consolelog import CONSOLE_LOG_MAX, ConsoleLog, fifo_path, read_tail
from .qmp import QmpClient, QmpCommandError, QmpError

if TYPE_CHECKING:
    from .network import Slirp4netns

QEMU_BINARY = "qemu-system-x86_64"
# QEMU's seccomp filter for a jailed VMM: obsolete system calls, privilege changes (set*id,
# capabilities), process creation (fork/exec) and resource controls (nice, affinity) denied.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

Accel = Literal["kvm", "tcg"]
Network = Literal["none", "user"]

# Lines the kernel prints when it panics; a panic ends QEMU (panic=-1 + -no-reboot), so the
# console log is how a caller tells "the guest powered off" from "the guest died".
_PANIC = re.compile(rb"Kernel panic - not syncing:[^\r\n]*")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Disk:
    """A raw disk image attached as a virtio-blk-device; `serial` lets the guest find it."""

    path: Path
    readonly: bool = False
    serial: str = ""


@dataclass(frozen=True)
class SerialPort:
    """A virtio-serial port named `name` in the guest, a unix socket `socket` on the host.

    With `server=True` QEMU listens on the socket and the host connects after launch; with
    `server=False` QEMU connects to a socket the host already listens on.
    """

    name: str
    socket: Path
    server: bool = True


@dataclass(frozen=True)
class Share:
    """A host directory served to the guest by QEMU's built-in 9p server (virtio-9p-device),
    mounted there by its `tag`. security_model=mapped-xattr: what the guest creates is owned by
    QEMU's user on the host, with the guest's owner, mode and device numbers kept in xattrs, so
    an untrusted guest can plant no setuid file or device node on the host."""

    path: Path
    tag: str
    readonly: bool = False
    # One host file instead of a directory: `path` is then a private directory holding an
    # empty SHARED_FILE, onto which this file is bind-mounted in QEMU's own mount namespace,
    # so the guest sees that file and nothing else of its directory.
    file: Path | None = None


SHARED_FILE = "file"


@dataclass(frozen=True)
class PortForward:
    """`-p HOST:GUEST`: a host port forwarded by user-mode networking to a guest port."""

    host_port: int
    guest_port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: str = ""  # "" = every host address, as docker does


@dataclass(frozen=True)
class VMConfig:
    kernel: Path
    qmp_socket: Path
    initrd: Path | None = None
    cmdline: tuple[str, ...] = ()
    vcpus: int = 1
    memory_mib: int = 128
    accel: Accel = "tcg"
    disks: tuple[Disk, ...] = ()
    serial_ports: tuple[SerialPort, ...] = ()
    console_log: Path | None = None
    network: Network = "none"
    port_forwards: tuple[PortForward, ...] = ()
    # QEMU in a network namespace of its own (network.py: slirp4netns connects it outward),
    # so its slirp's gateway leads to a loopback with nothing on it, not the host's.
    own_netns: bool = False
    # TCG translation-block cache in MiB; QEMU's default is large (tens of MiB of RSS per
    # VM) while a container guest runs fine with a few.
    tb_size_mib: int | None = None
    # Start with the vCPUs stopped (-S); `QemuProcess.cont()` starts them.
    paused: bool = False
    # Host TSC frequency for `tsc_early_khz=`: TSC calibration under TCG fails at random.
    tsc_khz: int | None = None
    quiet: bool = True
    rng: bool = True
    # A vsock device with this guest CID (needs vhost-vsock on the host: KVM hosts only).
    vsock_cid: int | None = None
    shares: tuple[Share, ...] = ()
    # Guest RAM in a file (templates): `ram_shared` writes the guest's pages into it (the
    # template VM); otherwise it is mapped copy-on-write (a clone, which also waits for its
    # state: `-incoming defer`).
    ram_file: Path | None = None
    ram_shared: bool = False
    incoming: bool = False
    # `-name`: how other processes tell this VM's QEMU from a process that reused its pid
    # (vmproc.is_vm_qemu looks for it in the command line); the VM's socket directory.
    name: str = ""
    extra_args: tuple[str, ...] = field(default=())


MEM_ID = "bbmem"


@dataclass(frozen=True)
class LaunchFds:
    """File descriptors QEMU inherits instead of opening paths: QMP (one end of a socket
    pair), per virtio-serial port a socket listening at its path (server=True) or one
    connected to it (server=False), the console log."""

    qmp: int
    serial: tuple[int, ...] = ()  # one per `serial_ports` entry, in order
    console: int | None = None


# What build_argv's fixed part gives a guest (its devices, their options, the kernel command
# line): a saved VM state (a template) is only good for the same. Bump it with such a change.
MACHINE_VERSION = 2  # 2: virtio-serial max_ports, noreplace-smp, tsc=reliable


def kernel_cmdline(cfg: VMConfig) -> str:
    """The kernel command line: ours first, then the caller's parts (which can override).

    `noreplace-smp`: a kernel that finds one possible CPU rewrites every `lock` prefix of its
    text (~4000 sites) one text_poke at a time, each a page-table switch and a TLB flush,
    which under TCG also throws away the translated code of that page: ~0.1 s of a TCG boot
    (measured here), for atomics that cost the same either way in a 1-vCPU guest.
    `tsc=reliable` with the host's TSC frequency: the TSC is the host's constant one (TCG
    reads the host's; KVM guests use kvm-clock), while the clocksource watchdog compares it
    with jiffies, which run slow whenever a loaded host delays the guest's ticks; it then
    marked the TSC unstable (seen here) and left the guest on a 10 ms jiffies clock."""
    parts = ["console=ttyS0", "panic=-1", "reboot=t", "noreplace-smp"]
    if cfg.quiet:
        parts += ["quiet", "loglevel=1"]
    if cfg.tsc_khz:
        parts += [f"tsc_early_khz={cfg.tsc_khz}", "tsc=reliable"]
    parts += cfg.cmdline
    for p in parts:
        if not p or any(c in p for c in "\n\0"):
            raise UsageError(f"bad kernel command-line part {p!r}")
    return " ".join(parts)


def _opt(value: str | Path) -> str:
    """A value inside a QEMU option list, with commas doubled (QEMU's escaping)."""
    return str(value).replace(",", ",,")


def validate(cfg: VMConfig) -> None:
    """Reject configurations QEMU would misread or refuse, with a message a user can act on."""
    if cfg.vcpus < 1 or cfg.vcpus > 255:
        raise UsageError(f"vCPUs must be between 1 and 255, not {cfg.vcpus}")
    if cfg.memory_mib < 32:
        raise UsageError(f"a microVM needs at least 32 MiB of memory, not {cfg.memory_mib}")
    if cfg.accel not in ("kvm", "tcg"):
        raise UsageError(f"unknown accelerator {cfg.accel!r} (kvm or tcg)")
    if cfg.network not in ("none", "user"):
        raise UsageError(f"unknown network {cfg.network!r} (none or user)")
    if cfg.port_forwards and cfg.network != "user":
        raise UsageError("published ports need user-mode networking (--network user)")
    if cfg.own_netns and cfg.network != "user":
        raise UsageError("a network namespace of QEMU's own is for user-mode networking")
    seen: set[tuple[str, str, int]] = set()
    for fw in cfg.port_forwards:
        for port in (fw.host_port, fw.guest_port):
            if not 1 <= port <= 65535:
                raise UsageError(f"port {port} is out of range 1-65535")
        if fw.protocol not in ("tcp", "udp"):
            raise UsageError(f"unknown protocol {fw.protocol!r} (tcp or udp)")
        if any(c in fw.host_ip for c in ",:- "):
            raise UsageError(f"bad host address {fw.host_ip!r} for a published port")
        key = (fw.protocol, fw.host_ip, fw.host_port)
        if key in seen:
            raise UsageError(f"host port {fw.host_port}/{fw.protocol} is published twice")
        seen.add(key)
    names = [p.name for p in cfg.serial_ports]
    for name in names:
        if not _NAME.match(name):
            raise UsageError(f"bad virtio-serial port name {name!r}")
    if len(set(names)) != len(names):
        raise UsageError("two virtio-serial ports have the same name")
    for d in cfg.disks:
        if d.serial and not re.match(r"^[A-Za-z0-9_.-]{1,20}$", d.serial):
            # virtio-blk serials are at most 20 bytes (VIRTIO_BLK_ID_BYTES).
            raise UsageError(f"bad disk serial {d.serial!r} (1-20 of A-Z a-z 0-9 _ . -)")
    if cfg.vsock_cid is not None and not 3 <= cfg.vsock_cid < 0xFFFFFFFF:
        # 0-2 are reserved (hypervisor, local, host); -1 means "any".
        raise UsageError(f"vsock guest CID {cfg.vsock_cid} is out of range 3-4294967294")
    if cfg.tb_size_mib is not None and cfg.tb_size_mib < 1:
        raise UsageError("tb-size must be at least 1 MiB")
    tags = [sh.tag for sh in cfg.shares]
    for sh in cfg.shares:
        # A 9p mount tag is at most 31 bytes.
        if not sh.path.is_absolute():
            raise UsageError(f"cannot share {sh.path} with a VM: not an absolute path")
        if not re.match(r"^[A-Za-z0-9_]{1,31}$", sh.tag):
            raise UsageError(f"bad 9p mount tag {sh.tag!r}")
    if len(set(tags)) != len(tags):
        raise UsageError("two shared directories have the same tag")


def build_argv(
    cfg: VMConfig,
    *,
    qemu: str = QEMU_BINARY,
    fds: LaunchFds | None = None,
    sandbox: bool = False,
) -> list[str]:
    """QEMU's argument list for `cfg`. Pure: reads nothing, starts nothing.

    With `fds`, QMP, the server-side serial ports and the console log are those inherited
    descriptors instead of paths; `sandbox` adds QEMU's seccomp filter (`SANDBOX`)."""
    validate(cfg)
    argv = [
        qemu,
        "-M", "microvm,rtc=on,acpi=on",
        "-nodefaults", "-no-user-config", "-nographic",
        "-no-reboot",
        "-m", str(cfg.memory_mib),
        "-smp", str(cfg.vcpus),
    ]  # fmt: skip
    if cfg.accel == "kvm":
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        tcg = "tcg" if cfg.tb_size_mib is None else f"tcg,tb-size={cfg.tb_size_mib}"
        # `max` gives the guest every instruction TCG emulates (x86-64-v2 and up), which
        # images built for newer CPUs need; the default qemu64 model lacks SSE4.2/POPCNT.
        argv += ["-accel", tcg, "-cpu", "max"]
    argv += ["-kernel", str(cfg.kernel), "-append", kernel_cmdline(cfg)]
    if cfg.initrd is not None:
        argv += ["-initrd", str(cfg.initrd)]
    if fds is not None and fds.console is not None:
        argv += ["-add-fd", f"fd={fds.console},set=1"]
        # append: no O_TRUNC, which QEMU would turn into an ftruncate of the inherited FIFO
        argv += ["-chardev", "file,id=console,path=/dev/fdset/1,append=on"]
        argv += ["-serial", "chardev:console"]
    elif cfg.console_log is not None:
        # Into the FIFO that QemuProcess reads into the capped log (see consolelog.py).
        argv += ["-chardev", f"file,id=console,path={_opt(fifo_path(cfg.console_log))}"]
        argv += ["-serial", "chardev:console"]
    else:
        argv += ["-serial", "null"]
    if fds is not None:
        argv += ["-chardev", f"socket,id=qmp,fd={fds.qmp},server=off"]
        argv += ["-mon", "chardev=qmp,mode=control"]
    else:
        argv += ["-qmp", f"unix:{_opt(cfg.qmp_socket)},server=on,wait=off"]
    if cfg.ram_file is not None:
        share = "on" if cfg.ram_shared else "off"
        argv += [
            "-object",
            f"memory-backend-file,id={MEM_ID},size={cfg.memory_mib}M,"
            f"mem-path={_opt(cfg.ram_file)},share={share}",
            "-machine",
            f"memory-backend={MEM_ID}",
        ]
    for i, d in enumerate(cfg.disks):
        drive = f"file={_opt(d.path)},if=none,id=disk{i},format=raw"
        drive += ",readonly=on" if d.readonly else ",discard=unmap"
        argv += ["-drive", drive]
        dev = f"virtio-blk-device,drive=disk{i}"
        if d.serial:
            dev += f",serial={d.serial}"
        argv += ["-device", dev]
    if cfg.serial_ports:
        # Only as many ports as are used (port 0 is kept for a console): the guest driver
        # sets up two virtqueues for every possible port, 31 by default, at every boot.
        argv += ["-device", f"virtio-serial-device,id=vser0,max_ports={len(cfg.serial_ports) + 1}"]
        for i, p in enumerate(cfg.serial_ports):
            server = "server=on,wait=off" if p.server else "server=off"
            where = f"fd={fds.serial[i]}" if fds is not None else f"path={_opt(p.socket)}"
            argv += ["-chardev", f"socket,id=port{i},{where},{server}"]
            argv += ["-device", f"virtserialport,bus=vser0.0,chardev=port{i},name={p.name}"]
    if cfg.network == "user":
        netdev = "user,id=net0"
        for fw in cfg.port_forwards:
            # In QEMU's own namespace only slirp4netns reaches the rule, on its tap's
            # address, which does not exist yet when QEMU binds: every address there.
            host_ip = "" if cfg.own_netns else fw.host_ip
            netdev += f",hostfwd={fw.protocol}:{host_ip}:{fw.host_port}-:{fw.guest_port}"
        argv += ["-netdev", netdev, "-device", "virtio-net-device,netdev=net0"]
    for i, sh in enumerate(cfg.shares):
        ro = ",readonly=on" if sh.readonly else ""
        argv += ["-fsdev", f"local,id=fs{i},path={_opt(sh.path)},security_model=mapped-xattr{ro}"]
        argv += ["-device", f"virtio-9p-device,fsdev=fs{i},mount_tag={sh.tag}"]
    if cfg.rng:
        # QEMU's own getrandom(): no /dev/urandom to open (a jailed QEMU has none).
        argv += ["-object", "rng-builtin,id=rng0"]
        argv += ["-device", "virtio-rng-device,rng=rng0"]
    if cfg.vsock_cid is not None:
        argv += ["-device", f"vhost-vsock-device,guest-cid={cfg.vsock_cid}"]
    if cfg.name:
        argv += ["-name", f"guest={_opt(cfg.name)}"]
    if cfg.paused:
        argv.append("-S")
    if cfg.incoming:
        argv += ["-incoming", "defer"]
    if sandbox:
        argv += ["-sandbox", SANDBOX]
    argv += cfg.extra_args
    return argv


# --- the host's TSC frequency -------------------------------------------------------------

_KMSG_TSC = re.compile(
    r"tsc: (?:Refined TSC clocksource calibration|Detected|Detected TSC frequency)"
    r":? ([0-9]+)\.([0-9]{3}) MHz"
)


def parse_tsc_khz(kernel_log: str) -> int | None:
    """The TSC frequency the host kernel settled on, from its log.

    The refined calibration is more exact than the first estimate, so the last match wins
    (the kernel prints "Detected" first and "Refined" later).
    """
    found = None
    for m in _KMSG_TSC.finditer(kernel_log):
        found = int(m.group(1)) * 1000 + int(m.group(2))
    return found


def parse_cpuinfo_khz(cpuinfo: str) -> int | None:
    """`cpu MHz` of the first CPU, trusted only when the TSC is constant.

    With constant_tsc and no cpufreq driver (the usual case in a VM) `cpu MHz` is the TSC
    frequency; on hosts that scale frequency it is only an estimate, which is why the kernel's
    own log is read first.
    """
    if not re.search(r"^flags\s*:.*\bconstant_tsc\b", cpuinfo, re.M):
        return None
    m = re.search(r"^cpu MHz\s*:\s*([0-9]+)(?:\.([0-9]{1,3}))?", cpuinfo, re.M)
    if not m:
        return None
    return int(m.group(1)) * 1000 + int((m.group(2) or "0").ljust(3, "0"))


@functools.cache
def host_tsc_khz() -> int | None:
    """The host's TSC frequency in kHz, or None when it cannot be known.

    Sources, best first: sysfs `tsc_freq_khz` (some kernels), the kernel log (/dev/kmsg: the
    frequency the host kernel calibrated), `cpu MHz` from /proc/cpuinfo with constant_tsc.
    """
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz").read_text())
    log = _read_kmsg()
    if log and (khz := parse_tsc_khz(log)):
        return khz
    with contextlib.suppress(OSError):
        return parse_cpuinfo_khz(Path("/proc/cpuinfo").read_text())
    return None


def _read_kmsg(limit: int = 16 * 1024 * 1024) -> str:
    """What is left of the kernel log, read without blocking (empty when not allowed)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    chunks: list[bytes] = []
    total = 0
    try:
        while total < limit:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as e:
                # EPIPE: the ring buffer overwrote the record we were at; go on reading.
                if e.errno == 32:
                    continue
                break
            if not rec:
                break
            chunks.append(rec)
            total += len(rec)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


# --- one QEMU process ---------------------------------------------------------------------


def _connect(path: Path) -> Any:
    """A unix socket connected to the host's listener at `path` (a client-side port)."""
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
    except OSError as e:
        s.close()
        raise BackendError(f"cannot connect a virtio-serial port to {path}: {e.strerror}") from None
    return s


def _listen(path: Path) -> Any:
    """A unix socket listening at `path` (root's, 0600, a stale one replaced), for QEMU to
    accept on: the host connects by path, QEMU never opens it."""
    import socket

    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
        # Not through the umask: it is the whole process's, and clones start from threads.
        # The socket directory is private (0700) already; this is the socket's own word.
        os.chmod(path, 0o600)
        s.listen(4)
    except BaseException:
        s.close()
        raise
    return s


def _pre_exec_hook(
    die_with_parent: bool, shares: tuple[Share, ...], *, own_netns: bool = False
) -> Callable[[], None] | None:
    """What QEMU's process does between fork and exec (None: nothing, so no hook).

    - die_with_parent: the kernel SIGKILLs QEMU when the process owning it dies. A bareboat
      process killed by SIGKILL (or SIGTERM without a handler) never reaches its cleanup;
      without this its QEMU would run on, orphaned. The kernel sends the signal when the
      parent *thread* exits, so launch QEMU from a thread that lives as long as the VM should.
    - single-file shares: a mount namespace of QEMU's own (private, so nothing reaches the
      host's) in which each file is bind-mounted onto its share's placeholder; it goes away
      with QEMU, so there is nothing to unmount.
    - own_netns: a network namespace of QEMU's own (VMConfig.own_netns), gone with QEMU.

    libc is looked up here, in the parent: the child between fork and exec must not dlopen.
    A failure in the child ends it with a message on QEMU's stderr, which launch reports.
    """
    import ctypes

    from bareboat.backends.base import (
        CLONE_NEWNET,
        CLONE_NEWNS,
        MS_BIND,
        MS_PRIVATE,
        MS_RDONLY,
        MS_REC,
        MS_REMOUNT,
        libc,
    )

    prctl, unshare, mount = libc().prctl, libc().unshare, libc().mount
    binds = [
        (os.fsencode(sh.file), os.fsencode(sh.path / SHARED_FILE), sh.readonly)
        for sh in shares
        if sh.file is not None
    ]
    if not die_with_parent and not binds and not own_netns:
        return None

    def fail(what: bytes) -> None:
        os.write(2, b"bareboat: " + what + b": " + os.strerror(ctypes.get_errno()).encode())
        os._exit(127)

    def hook() -> None:
        if die_with_parent:
            prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        if own_netns and unshare(CLONE_NEWNET):
            fail(b"a network namespace for QEMU")
        if not binds:
            return
        if unshare(CLONE_NEWNS) or mount(None, b"/", None, MS_REC | MS_PRIVATE, None):
            fail(b"a mount namespace for QEMU")
        for source, target, readonly in binds:
            if mount(source, target, None, MS_BIND, None):
                fail(b"bind mount of " + source)
            if readonly and mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None):
                fail(b"read-only bind mount of " + source)

    return hook


@dataclass(frozen=True)
class VMExit:
    """How a QEMU process ended."""

    returncode: int
    panic: str | None  # the kernel's panic line, when the guest panicked


class QemuProcess:
    """Owns one QEMU process, from launch to reaping.

    ```
    with QemuProcess(cfg) as vm:
        vm.wait(timeout=30)
    ```

    On leaving the block QEMU is stopped if it still runs (QMP quit, SIGTERM, SIGKILL, each
    with a timeout), reaped, and its QMP and virtio-serial sockets are removed. The console
    log, if any, is kept: it is the evidence of a failed boot. It is written by a thread of
    this process, capped (consolelog.ConsoleLog), and whole once `wait` has seen QEMU's end.
    """

    def __init__(
        self,
        cfg: VMConfig,
        *,
        qemu: str = QEMU_BINARY,
        launch_timeout: float = 10.0,
        qmp_timeout: float = 5.0,
        stderr: Path | None = None,
        die_with_parent: bool = True,
        jailed: bool | None = None,
        pass_fds: tuple[int, ...] = (),
        cpu_limit: tuple[int | None, int | None] = (None, None),
        jail_record: Path | None = None,
        console_max_size: int = CONSOLE_LOG_MAX,
        net: Slirp4netns | None = None,
    ) -> None:
        from . import jail

        self.cfg = cfg
        self.qemu = qemu
        self.console_max_size = console_max_size
        # Connects QEMU's own network namespace outward once QEMU runs (cfg.own_netns).
        self.net = net
        self.die_with_parent = die_with_parent
        # Confined unless BAREBOAT_VMM_JAIL=off (see jail.py); `jailed` decides for tests.
        self.jailed = jail.enabled() if jailed is None else jailed
        self.pass_fds = pass_fds  # more descriptors QEMU inherits (migration streams)
        self.cpu_limit = cpu_limit  # (quota µs, period µs) of the VMM's cgroup
        # Where to note the jail's host resources before QEMU starts, so that whoever
        # cleans up after a dead owner finds them (vmproc.release_vmm).
        self.jail_record_path = jail_record
        # The planned command line (paths); `launch` replaces it with the one it ran.
        self.argv = build_argv(cfg, qemu=qemu, sandbox=self.jailed)
        self.launch_timeout = launch_timeout
        self.qmp_timeout = qmp_timeout
        self._stderr_path = stderr
        self._stderr: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: QmpClient | None = None
        self._lease: Any = None  # jail.Lease of a jailed QEMU
        self._cgroups: Any = None  # jail.VmmCgroups
        self._owned: list[Path] = []  # files handed to the VMM's uid, handed back at shutdown
        self._console: ConsoleLog | None = None
        # How QEMU ended: "exit" (by itself), "quit" (QMP), "sigterm" or "sigkill" (by us).
        self.ended_by: str | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> QemuProcess:
        self.launch()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def uid(self) -> int | None:
        """The uid a jailed QEMU runs as (None unconfined)."""
        return self._lease.uid if self._lease is not None else None

    def jail_record(self) -> dict[str, Any]:
        """What another process needs to clean up after this QEMU if we die first (see
        vmproc.release_vmm): its uid, cgroups and lease file."""
        if self._lease is None:
            return {}
        dirs = [str(d) for d in self._cgroups.dirs] if self._cgroups is not None else []
        return {"uid": self._lease.uid, "cgroups": dirs, "lease": str(self._lease.path)}

    def launch(self) -> None:
        """Start QEMU and connect to its QMP; on any failure nothing is left running.

        QEMU opens no socket or log path itself: QMP is one end of a socket pair, each
        server-side serial port a socket we listen on at its path, the console log a file
        we opened; QEMU inherits the descriptors. Jailed, it starts in the jail (jail.py)."""
        if self._proc is not None:
            raise BackendError("this QEMU process was already launched")
        import socket

        cfg = self.cfg
        qemu = shutil.which(self.qemu) if "/" not in self.qemu else self.qemu
        if qemu is None or not os.access(qemu, os.X_OK):
            if self.net is not None:
                self.net.close()
            raise BackendUnavailable(f"{self.qemu} not found (install the qemu-system-x86 package)")
        if self._stderr_path is not None:
            # closed in shutdown
            self._stderr = open(self._stderr_path, "w+b", opener=private_file)  # noqa: SIM115
        else:
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in shutdown
        if cfg.console_log is not None:
            self._console = ConsoleLog(cfg.console_log, max_size=self.console_max_size)
            try:
                self._console.start()
            except BaseException:
                self._end_console()
                self._close_stderr()
                raise
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child_fds: list[int] = [theirs.fileno()]
        listening: list[socket.socket] = []
        try:
            with contextlib.ExitStack() as stack:
                stack.callback(theirs.close)
                for p in cfg.serial_ports:
                    listening.append(_listen(p.socket) if p.server else _connect(p.socket))
                    stack.callback(listening[-1].close)
                child_fds += [s.fileno() for s in listening]
                console = None
                if self._console is not None:
                    # QEMU writes its console into the FIFO our thread keeps, capped, in the
                    # log (consolelog.py); it gets the FIFO's write end, not its path.
                    console = self._console.writer()
                    stack.callback(os.close, console)
                    child_fds.append(console)
                fds = LaunchFds(theirs.fileno(), tuple(s.fileno() for s in listening), console)
                if self.net is not None:
                    child_fds.append(self.net.exit_fd)  # QEMU alone holds slirp4netns' life
                if self.jailed:
                    self._popen_jailed(stack, qemu, fds, (*child_fds, *self.pass_fds))
                else:
                    self.argv = build_argv(cfg, qemu=qemu, fds=fds)
                    hook = _pre_exec_hook(self.die_with_parent, cfg.shares, own_netns=cfg.own_netns)
                    self._popen(self.argv, pass_fds=(*child_fds, *self.pass_fds), preexec_fn=hook)
        except BaseException:
            ours.close()
            self.shutdown()
            raise
        try:
            if self.net is not None:
                assert self._proc is not None
                self.net.attach(self._proc.pid)
            self._connect_qmp(ours)
        except BaseException:
            self.shutdown()
            raise

    def _popen(self, argv: list[str], **kw: Any) -> None:
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            # Its own process group: a Ctrl-C meant for bareboat must not kill QEMU behind
            # our back; we stop it ourselves, in order.
            start_new_session=True,
            **kw,
        )

    def _popen_jailed(
        self, stack: contextlib.ExitStack, qemu: str, fds: LaunchFds, pass_fds: tuple[int, ...]
    ) -> None:
        from . import jail, jailer, vmmhost

        self._lease = vmmhost.lease_id()
        plan, jailed_cfg = jail.plan_jail(
            self.cfg,
            self._lease.uid,
            self._lease.gid,
            qemu=Path(qemu),
            cpu_quota_us=self.cpu_limit[0],
            cpu_period_us=self.cpu_limit[1],
        )
        assert plan.limits is not None
        self._cgroups = vmmhost.VmmCgroups.create(self._lease.uid, plan.limits)
        self._lease.note(cgroups=[str(d) for d in self._cgroups.dirs])
        if self.jail_record_path is not None:
            from bareboat.fsutil import atomic_write_text

            # Run state (not fsynced): a crash of the host ends what it names.
            atomic_write_text(self.jail_record_path, json.dumps(self.jail_record()), durable=False)
        for b in plan.binds:
            # The VM's own writable files (its disk, a template's RAM while it is made)
            # belong to its uid while it runs; shared ones (a clone's template RAM) do not.
            if (
                b.writable
                and b.idmap is None
                and (b.source != self.cfg.ram_file or self.cfg.ram_shared)
            ):
                os.chown(b.source, plan.uid, plan.gid)
                self._owned.append(b.source)
        self.argv = build_argv(jailed_cfg, qemu=qemu, fds=fds, sandbox=True)
        base = vmmhost.leases_dir()
        confine = stack.enter_context(
            jailer.Jailer(plan, jail_base=base, die_with_parent=self.die_with_parent)
        )
        hook = confine.preexec()
        with jailer.new_pid_namespace_for_next_child():
            self._popen(self.argv, pass_fds=pass_fds, preexec_fn=hook, env=plan.env)
        assert self._proc is not None
        self._cgroups.attach(self._proc.pid)

    def _connect_qmp(self, sock: Any) -> None:
        """Wait for QEMU's greeting on our end of the QMP pair (or its death), then talk."""
        import select

        assert self._proc is not None
        deadline = time.monotonic() + self.launch_timeout
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        while not poller.poll(20):
            if self._proc.poll() is not None:
                sock.close()
                raise BackendError(
                    f"QEMU exited with {self._proc.returncode} at start: {self.stderr_tail()}"
                )
            if time.monotonic() > deadline:
                sock.close()
                raise BackendError(f"QEMU did not speak QMP within {self.launch_timeout:g} s")
        qmp = QmpClient(sock, timeout=self.qmp_timeout)
        try:
            qmp.handshake()
        except (QmpError, OSError) as e:
            qmp.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(1.0)  # a QEMU that hung up is on its way out: let it say why
            raise BackendError(f"QEMU's QMP failed at start: {e}: {self.stderr_tail()}") from None
        self._qmp = qmp

    def wait(self, timeout: float | None = None) -> int | None:
        """QEMU's exit status, or None if it still runs after `timeout` seconds."""
        if self._proc is None:
            raise BackendError("QEMU was not launched")
        try:
            rc = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._end_console()  # QEMU is gone: its last console output is taken in now
        return rc

    def result(self) -> VMExit:
        """How QEMU ended; call after `wait` returned a status."""
        rc = self.returncode
        if rc is None:
            raise BackendError("QEMU is still running")
        return VMExit(returncode=rc, panic=self.panic_line())

    def panic_line(self) -> str | None:
        """The kernel's panic message from the console log, if it panicked."""
        log = self.cfg.console_log
        if log is None:
            return None
        if self.returncode is not None:
            self._end_console()
        m = _PANIC.search(read_tail(log, 65536))
        return m.group(0).decode(errors="replace").strip() if m else None

    def stderr_tail(self, limit: int = 400) -> str:
        """The end of what QEMU wrote to stdout/stderr, as one line."""
        if self._stderr is None or self._stderr.closed:
            return ""
        self._stderr.flush()
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - limit))
        text = self._stderr.read().decode(errors="replace")
        return " | ".join(line.strip() for line in text.splitlines() if line.strip())

    def shutdown(self, *, quit_timeout: float = 3.0, term_timeout: float = 3.0) -> None:
        """Stop QEMU if it runs (QMP quit → SIGTERM → SIGKILL), reap it, remove its sockets.

        Safe to call more than once and after QEMU has exited by itself.
        """
        try:
            proc = self._proc
            if proc is not None and proc.poll() is not None and self.ended_by is None:
                self.ended_by = "exit"
            if proc is not None and proc.poll() is None:
                if self._qmp is not None:
                    with contextlib.suppress(Exception):
                        self.command("quit")
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(quit_timeout)
                    self.ended_by = "quit"
                if proc.poll() is None:
                    self._signal(signal.SIGTERM)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(term_timeout)
                    self.ended_by = "sigterm"
                if proc.poll() is None:
                    self._signal(signal.SIGKILL)
                    proc.wait()
                    self.ended_by = "sigkill"
        finally:
            self._close_qmp()
            if self.net is not None:
                self.net.close()  # it ends with QEMU by itself; this reaps it
            for path in self._sockets():
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            if self._proc is None or self._proc.poll() is not None:
                self._end_console()
            self._close_stderr()
            self._release_jail()

    def _release_jail(self) -> None:
        """Once QEMU is gone: its cgroups removed, its files handed back, its id freed."""
        if self._proc is not None and self._proc.poll() is None:
            return  # still running (shutdown could not end it): keep what it holds
        if self._cgroups is not None:
            self._cgroups.remove()
            self._cgroups = None
        for path in self._owned:
            with contextlib.suppress(OSError):
                os.chown(path, 0, 0)
        self._owned = []
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def kill(self) -> None:
        """SIGKILL QEMU now (what a crash looks like); `shutdown` still reaps and cleans up."""
        if self.returncode is None and self._proc is not None:
            self._signal(signal.SIGKILL)
            self.ended_by = "sigkill"

    # -- QMP -----------------------------------------------------------------------------

    def command(self, name: str, **args: Any) -> Any:
        """Run one QMP command and return its `return` value; QMP errors become BackendError."""
        if self._qmp is None:
            raise BackendError("QMP is not connected")
        try:
            return self._qmp.execute(name, args)
        except QmpCommandError as e:
            raise BackendError(f"QMP {name} failed: {e.desc}") from None
        except TimeoutError:
            raise BackendError(f"QMP {name} did not answer in {self.qmp_timeout:g} s") from None
        except (QmpError, OSError) as e:
            # The connection broke: QEMU died or closed the socket (it does so on `quit`).
            if name == "quit":
                return None
            raise BackendError(f"QMP {name} failed: {type(e).__name__}: {e}") from None

    def send_fd(self, name: str, fd: int) -> None:
        """Hand QEMU a file descriptor over QMP (SCM_RIGHTS) under `name` (QMP `getfd`)."""
        if self._qmp is None:
            raise BackendError("QMP is not connected")
        try:
            self._qmp.send_fd(fd)
        except OSError as e:
            raise BackendError(f"cannot pass a descriptor to QEMU: {e}") from None
        self.command("getfd", fdname=name)

    def hmp(self, line: str) -> str:
        """One human-monitor command (for those QMP lacks, e.g. hostfwd_add); its output,
        which is empty when it went well."""
        return str(self.command("human-monitor-command", **{"command-line": line}) or "")

    def status(self) -> str:
        """The VM's run state as QMP reports it: "running", "paused", "shutdown", ..."""
        result = self.command("query-status")
        return str(result["status"])

    def stop(self) -> None:
        """Pause the vCPUs."""
        self.command("stop")

    def cont(self) -> None:
        """Resume (or first start, with `paused=True`) the vCPUs."""
        self.command("cont")

    def quit(self) -> None:
        """Ask QEMU to exit now (no guest shutdown)."""
        self.command("quit")

    # -- internals -----------------------------------------------------------------------

    def _sockets(self) -> list[Path]:
        return [p.socket for p in self.cfg.serial_ports if p.server]

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)

    def _close_qmp(self) -> None:
        qmp, self._qmp = self._qmp, None
        if qmp is not None:
            with contextlib.suppress(Exception):
                qmp.close()

    def _end_console(self) -> None:
        console, self._console = self._console, None
        if console is not None:
            console.finish()

    def _close_stderr(self) -> None:
        if self._stderr is not None and not self._stderr.closed:
            self._stderr.close()
