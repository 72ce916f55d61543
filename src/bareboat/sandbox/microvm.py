"""A microVM sandbox under the OCI contract, over the microVM backend's public API: the VM
planned from a client's bundle, its supervisor (the gate: boot to HELLO at `create`, START at
`start`, relay until the VM is off), its operations (`sandbox.oci`: signal, pause, host pids,
CPU update, destroy) and exec sessions.

The calls that podman and the containerd shim make several times per container (`kill`,
`pause`, `resume`, `ps`, `delete`) import only `os`, the control client (`bareboat.control`)
and the backend's small modules (the VMM records): anything heavier is imported where used.
"""

from __future__ import annotations

import os
import signal

from bareboat.proc import signal_each
from bareboat.sandboxdir import CONTROL_SOCKET, SandboxDir, short_socket_dir

from .status import Status, alive, wait_gone

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from bareboat.backends.base import Stdio
    from bareboat.backends.microvm.backend import Booted, MicrovmBackend, VmDir

    from .supervisor import SupervisorPlan


class VmFiles:
    """The files of one sandbox's VM, as plain strings: in `SandboxDir.vm`, its sockets in a
    short directory of their own (`<sandbox>/s` where that fits a sockaddr_un)."""

    __slots__ = ("path", "sandbox", "sockets")

    def __init__(self, sandbox_dir: str) -> None:
        self.sandbox = sandbox_dir
        self.path = SandboxDir(sandbox_dir).vm
        self.sockets = short_socket_dir(f"{sandbox_dir}/s", sandbox_dir)

    @property
    def ctl(self) -> str:
        return f"{self.sockets}/{CONTROL_SOCKET}"

    def qemu_pid(self) -> int:
        """QEMU's pid as the backend recorded it, or 0."""
        from bareboat.backends.microvm.vmproc import recorded_pid

        return recorded_pid(SandboxDir(self.sandbox).vm_record) or 0

    def is_our_qemu(self, pid: int) -> bool:
        from bareboat.backends.microvm.vmproc import is_vm_qemu

        return is_vm_qemu(pid, self.sockets)

    def vmdir(self) -> VmDir:
        from pathlib import Path

        from bareboat.backends.microvm.backend import VmDir

        return VmDir(Path(self.path), Path(self.sockets))


# --- operations (sandbox.oci) -------------------------------------------------------------------


def pids(sandbox: str, st: dict[str, Any]) -> list[int]:
    """The sandbox's host processes: its gate and the gate's QEMU (a guest's processes have no
    host pids)."""
    from bareboat.proc import start_time

    if not alive(st):
        return []
    found = [int(st["pid"])]
    qemu = VmFiles(sandbox).qemu_pid()
    if qemu and start_time(qemu) is not None:
        found.append(qemu)
    return found


def kill(sandbox: str, st: dict[str, Any], status: Status, sig: int, everything: bool) -> bool:
    from bareboat.proc import FORWARDED_SIGNALS

    if status is Status.EXITED:
        return False
    if status is Status.CREATED or sig == signal.SIGKILL or sig in FORWARDED_SIGNALS:
        # No workload yet, or a kill that must not depend on the guest: end the gate, and
        # QEMU with it. A running gate passes the common signals on to the workload itself,
        # which spares this call the control client's imports.
        signal_each([int(st["pid"])], sig)
        return True
    from bareboat.control import ControlClient

    with ControlClient(VmFiles(sandbox).ctl, peer="the VM") as c:
        c.signal(sig)
    return True


def set_paused(sandbox: str, st: dict[str, Any], paused: bool) -> None:
    """Stop or continue the VM's vCPUs (the guest never hears of it)."""
    from bareboat.control import ControlClient

    with ControlClient(VmFiles(sandbox).ctl, timeout=30.0, peer="the VM") as c:
        if paused:
            c.pause()
        else:
            c.resume()


def update(
    sandbox: str, st: dict[str, Any], resources: dict[str, Any], booted: dict[str, Any], name: str
) -> None:
    """The VM's host CPU limits (its QEMU's cgroup, the first of the state's cgroups); its RAM
    and vCPUs are fixed at boot (`booted`: the bundle's resources)."""
    from pathlib import Path

    from bareboat.backends.microvm import hostcgroup
    from bareboat.errors import BackendUnavailable

    memory = (resources.get("memory") or {}).get("limit")
    if memory not in (None, 0, -1, (booted.get("memory") or {}).get("limit")):
        raise BackendUnavailable(
            "microvm isolation: a VM's memory is fixed when it boots; only CPU can be updated"
        )
    limits = hostcgroup.cpu_limits(resources)
    cgroups = list(st.get("cgroups") or [])
    if not cgroups:
        if limits.empty:
            return
        raise BackendUnavailable(f"{name}: its VM has no cgroup to limit its CPU")
    hostcgroup.apply(Path(cgroups[0]), limits)


def destroy(sandbox: str, st: dict[str, Any]) -> None:
    """The gate (QEMU dies with it), a QEMU that outlived it (PR_SET_PDEATHSIG is
    asynchronous), the VMM's uid lease and jail cgroups, the container's cgroups, and every
    file of the VM."""
    import time

    if alive(st):
        signal_each([int(st["pid"])], signal.SIGKILL)
        wait_gone(st)
    files = VmFiles(sandbox)
    pid = files.qemu_pid()
    deadline = time.monotonic() + 10
    while pid and files.is_our_qemu(pid) and time.monotonic() < deadline:
        signal_each([pid], signal.SIGKILL)
        time.sleep(0.01)
    from bareboat.backends.microvm.vmproc import release_vmm, remove_vmm_cgroups_under

    release_vmm(files.path)
    cgroups = list(st.get("cgroups") or [])
    if cgroups:
        from pathlib import Path

        from bareboat.backends.microvm import hostcgroup

        for d in cgroups:
            # The jail's cgroups are children of the container's (QEMU may have died before
            # its record was written): they go first.
            remove_vmm_cgroups_under(d)
            hostcgroup.remove(Path(d))
    remove_files(files)


def remove_files(files: VmFiles) -> None:
    import shutil

    shutil.rmtree(files.sockets, ignore_errors=True)
    shutil.rmtree(files.sandbox, ignore_errors=True)


# --- create -----------------------------------------------------------------------------------


class VmSandbox:
    """One VM planned from a client's bundle (config.json and its rootfs), with its files in
    the sandbox directory `sandbox_dir`."""

    def __init__(
        self, cid: str, bundle: str, sandbox_dir: str, config: dict[str, Any], rootfs: str
    ) -> None:
        from pathlib import Path

        from bareboat.backends.base import BackendContext
        from bareboat.backends.microvm.ocivm import OciVmBackend

        self.files = VmFiles(sandbox_dir)
        self.config = config
        self.rootfs = rootfs
        self.ctx = BackendContext(cid, Path(bundle), Path(sandbox_dir), config)
        self.backend: MicrovmBackend = OciVmBackend(
            self.files.vmdir(), Path(sandbox_dir), Path(rootfs)
        )

    def plan(self) -> None:
        """Every check that can fail before a VM exists: the command in the rootfs, then the
        VM's plan and artifacts (kernel, init, image disk)."""
        from pathlib import Path

        from bareboat.spec.command import check_command

        process = self.config.get("process") or {}
        args = [str(a) for a in process.get("args") or []]
        env = [str(e) for e in process.get("env") or []]
        check_command(Path(self.rootfs), args, env, str(process.get("cwd") or "/"))
        self.backend.create(self.ctx)

    def cgroups(self) -> list[str]:
        """The container's cgroups the gate joins (the cpu one first)."""
        from bareboat.backends.microvm import hostcgroup
        from bareboat.errors import BackendError

        linux = self.config.get("linux") or {}
        try:
            dirs = hostcgroup.cgroup_dirs(str(linux.get("cgroupsPath") or ""), self.ctx.id)
        except BackendError:
            return []
        return [str(d) for d in dirs]

    def drop_cgroups(self) -> None:
        """Remove the VM's cgroups (after its processes are gone)."""
        from pathlib import Path

        from bareboat.backends.microvm import hostcgroup
        from bareboat.errors import UsageError

        try:
            for d in self.cgroups():
                hostcgroup.remove(Path(d))
        except (UsageError, ValueError):
            pass

    def supervisor(
        self, slave: int | None, parent: int, enter_network: Callable[[], None]
    ) -> SupervisorPlan:
        """The VM's gate: boot to HELLO at create, START at start, relay until the VM is off.
        `enter_network` puts the gate (and so QEMU) in the client's network namespace."""
        from .supervisor import SupervisorPlan

        booted: list[Booted] = []
        stdio: list[Stdio] = []

        def setup() -> None:
            # Until the VM is ready the gate is `create`'s: if create dies, so do the gate and
            # (by its own PDEATHSIG) QEMU. Once ready it must outlive create.
            _die_with_parent(True)
            if os.getppid() != parent:
                os._exit(1)
            os.setsid()  # out of the caller's process group: its signals are not the workload's
            stdio.append(_gate_stdio(slave))
            host_net = os.readlink("/proc/self/ns/net")
            enter_network()  # QEMU inherits it: the client's hooks configure it
            if os.readlink("/proc/self/ns/net") != host_net:
                _low_ports_for_the_vmm()
            self._join_cgroups()
            booted.append(self.backend.boot(self.ctx, stdio[0]))
            _die_with_parent(False)

        def start() -> None:
            self.backend.run_workload(self.ctx, booted[0], stdio[0])

        def run() -> int:
            return self._serve(booted[0], stdio[0])

        return SupervisorPlan(setup, run, start, what="the VM's gate")

    def _join_cgroups(self) -> None:
        """In the gate, before it launches QEMU: join the container's cgroups (QEMU inherits
        them, so all its memory and CPU count there) and apply the spec's CPU limits, as far
        as the host lets us where no limit was asked for."""
        from bareboat.backends.microvm import hostcgroup
        from bareboat.errors import BackendError

        linux = self.config.get("linux") or {}
        limits = hostcgroup.cpu_limits(linux.get("resources"))
        try:
            dirs = hostcgroup.cgroup_dirs(str(linux.get("cgroupsPath") or ""), self.ctx.id)
            for d in dirs:
                hostcgroup.attach(d, os.getpid())
            hostcgroup.apply(dirs[0], limits)
        except BackendError:
            if not limits.empty:
                raise

    def _serve(self, b: Booted, stdio: Stdio) -> int:
        """Relay until the workload ends and the VM is off; the workload's exit status."""
        from bareboat.errors import BareboatError
        from bareboat.proc import FORWARDED_SIGNALS

        backend, ctx = self.backend, self.ctx

        def forward(sig: int, _frame: object) -> None:
            backend.kill(ctx, b.vm.pid, sig)

        def resize(_sig: int, _frame: object) -> None:
            from bareboat.backends.base import terminal_size

            backend.resize(ctx, *terminal_size(stdio.stdout))

        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, forward)
        if stdio.tty:
            signal.signal(signal.SIGWINCH, resize)
        while not backend.wait_relayed(ctx, 1.0):
            pass
        for sig in (*FORWARDED_SIGNALS, signal.SIGWINCH):
            signal.signal(sig, signal.SIG_IGN)
        rc = b.vm.wait(10.0)
        if rc is None:
            b.vm.shutdown(quit_timeout=1.0, term_timeout=2.0)
            rc = b.vm.returncode or 0
        status = -rc if rc < 0 else rc << 8  # a wait status, as the engine's monitor has it
        try:
            code = backend.exit_code(ctx, status)
        except BareboatError as e:
            try:  # noqa: SIM105 - contextlib costs import time here
                os.write(stdio.stderr, f"bareboat-runtime: {e}\n".encode())
            except OSError:
                pass
            code = e.exit_code
        backend.delete(ctx)
        return code


def _low_ports_for_the_vmm() -> None:
    """In the container's own network namespace, any uid may bind ports below 1024, as docker
    sets for its containers: the jailed QEMU (an unprivileged uid) forwards the ports the guest
    listens on from there, 80 and 443 included. Never done in the host's namespace."""
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", "w") as f:
        f.write("0")


def _die_with_parent(on: bool) -> None:
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, int(signal.SIGKILL) if on else 0, 0, 0, 0)


def _gate_stdio(slave: int | None) -> Stdio:
    from bareboat.backends.base import Stdio

    if slave is None:
        return Stdio(0, 1, 2)
    import fcntl
    import termios

    # The pty becomes the gate's controlling terminal, so a resize by the client (conmon sets
    # the window size on the master) reaches the gate as SIGWINCH. It replaces the stdio
    # inherited from `create`: a client that reads create's output to its end (the runc shim)
    # must not wait for the gate.
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    return Stdio(0, 1, 2, tty=True)


# --- exec -------------------------------------------------------------------------------------


def exec_payload(process: dict[str, Any], tty: int | None) -> bytes:
    """An OCI process object as the agent's exec request, sized to the terminal `tty`."""
    from bareboat.backends.base import terminal_size
    from bareboat.backends.microvm import vmspec
    from bareboat.backends.microvm.agent import encode_process
    from bareboat.backends.microvm.backend import to_process_spec

    p = vmspec.parse_process(process)
    winsize = terminal_size(tty) if tty is not None else (0, 0)
    return encode_process(to_process_spec(p, winsize))


def run_session(
    files: VmFiles,
    payload: bytes,
    fds: tuple[int, int, int],
    on_error: Callable[[str], None],
    on_started: Callable[[], None] | None = None,
    tty: int | None = None,
) -> int:
    """One exec session through the hub, with `fds` as its stdio (stdin not relayed when it
    is /dev/null); its exit status."""
    from bareboat.backends.base import is_devnull
    from bareboat.control import ControlClient

    stdin = None if is_devnull(fds[0]) else fds[0]
    with ControlClient(files.ctl, peer="the VM") as c:
        return c.exec(
            payload, stdin=stdin, stdout=fds[1], stderr=fds[2], on_error=on_error,
            on_started=on_started, tty=tty,
        )  # fmt: skip
