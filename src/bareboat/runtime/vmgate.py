"""The heavy half of `microvm` isolation under the OCI contract (see runtime/vm.py): `create`
(plan the VM, fork the gate, boot to HELLO), the gate process itself, and `exec`. Only these
import the microVM backend.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bareboat.errors import BareboatError, UsageError
from bareboat.proc import FORWARDED_SIGNALS

from . import lifecycle as lc
from .args import Invocation
from .records import Record, RuntimeRoot
from .vm import VmPaths, remove_files

if TYPE_CHECKING:
    from bareboat.backends.base import BackendContext, Stdio
    from bareboat.backends.microvm.backend import Booted, MicrovmBackend, VmDir

    from .gate import GatePlan


def vm_dir(root: RuntimeRoot, cid: str) -> VmDir:
    from bareboat.backends.microvm.backend import VmDir

    p = VmPaths(root, cid)
    return VmDir(Path(p.path), Path(p.sockets))


def _backend(root: RuntimeRoot, cid: str, rootfs: str) -> MicrovmBackend:
    from bareboat.backends.microvm.ocivm import OciVmBackend

    return OciVmBackend(vm_dir(root, cid), Path(lc.state_dir(root, cid)), Path(rootfs))


def _context(cid: str, bundle: str, sdir: str, config: dict[str, Any]) -> BackendContext:
    from bareboat.backends.base import BackendContext

    return BackendContext(id=cid, bundle=Path(bundle), state_dir=Path(sdir), spec=config)


# --- create ------------------------------------------------------------------------------------


def create(inv: Invocation, root: RuntimeRoot, bundle: str, config: dict[str, Any]) -> int:
    def body(sdir: str) -> int:
        lc.process_of(config)
        return _create(inv, root, bundle, config, lc.rootfs_of(bundle, config), sdir)

    def undo() -> None:  # the VM's cgroups and sockets live outside the state dir
        drop_cgroups(inv.id, config)
        remove_files(root, inv.id)

    return lc.create_in_state_dir(inv, root, body, undo)


def _create(
    inv: Invocation,
    root: RuntimeRoot,
    bundle: str,
    config: dict[str, Any],
    rootfs: str,
    sdir: str,
) -> int:
    from bareboat.spec.command import check_command

    process = config.get("process") or {}
    args = [str(a) for a in process.get("args") or []]
    env = [str(e) for e in process.get("env") or []]
    check_command(Path(rootfs), args, env, str(process.get("cwd") or "/"))
    backend = _backend(root, inv.id, rootfs)
    ctx = _context(inv.id, bundle, sdir, config)
    backend.create(ctx)  # the plan: every check that can fail before a VM exists
    from .gate import fork_gate

    fifo = lc.make_gate(sdir)
    master, slave = lc.console_pair(inv, config.get("process") or {})
    # The cgroups the gate joins (the cpu one first), for update and delete to find.
    cgroups = {"cgroups": [str(d) for d in _cgroups_of(inv.id, config)]}

    def record(pid: int) -> None:
        # Recorded at once: a `delete --force` after this `create` was killed mid-boot
        # finds the gate (and with it QEMU) to kill.
        lc.write_state(root, inv.id, lc.new_state(pid, config, **cgroups))

    pid = fork_gate(_gate_plan(backend, ctx, slave, os.getpid()), fifo, master, slave,
                    after_fork=record)  # fmt: skip
    try:
        # Killing the gate on failure kills QEMU with it; the cgroups go after.
        lc.finish_create(inv, root, Record(inv.id, "microvm", bundle), config, pid, master,
                         extra=lambda: cgroups)  # fmt: skip
    except BaseException:
        drop_cgroups(inv.id, config)
        raise
    return 0


def _cgroups_of(cid: str, config: dict[str, Any]) -> list[Path]:
    from bareboat.backends.microvm import hostcgroup
    from bareboat.errors import BackendError

    linux = config.get("linux") or {}
    try:
        return hostcgroup.cgroup_dirs(str(linux.get("cgroupsPath") or ""), cid)
    except BackendError:
        return []


def join_cgroups(cid: str, config: dict[str, Any]) -> list[str]:
    """In the gate, before it launches QEMU: join the container's cgroups (QEMU inherits
    them, so all its memory and CPU count there) and apply the spec's CPU limits. The
    cgroups' paths; none where the host has no cgroup for us and no limit was asked for."""
    from bareboat.backends.microvm import hostcgroup
    from bareboat.errors import BackendError

    linux = config.get("linux") or {}
    limits = hostcgroup.cpu_limits(linux.get("resources"))
    dirs: list[Path] = []
    try:
        for d in hostcgroup.cgroup_dirs(str(linux.get("cgroupsPath") or ""), cid):
            hostcgroup.attach(d, os.getpid())
            dirs.append(d)
        hostcgroup.apply(dirs[0], limits)
    except BackendError:
        if limits.empty:
            return [str(d) for d in dirs]  # as far as the host lets us: nothing was asked
        raise
    return [str(d) for d in dirs]


def drop_cgroups(cid: str, config: dict[str, Any]) -> None:
    """Remove the VM's cgroups (after its processes are gone)."""
    from bareboat.backends.microvm import hostcgroup

    with contextlib.suppress(UsageError, ValueError):
        for d in _cgroups_of(cid, config):
            hostcgroup.remove(d)


# --- the gate process ------------------------------------------------------------------------


def _gate_plan(
    backend: MicrovmBackend, ctx: BackendContext, slave: int | None, parent: int
) -> GatePlan:
    """The VM's gate: boot to HELLO at create, START at start, relay until the VM is off."""
    from .gate import GatePlan

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
        lc.enter_network(ctx.spec)  # QEMU inherits it: the client's hooks configure it
        if os.readlink("/proc/self/ns/net") != host_net:
            _low_ports_for_the_vmm()
        join_cgroups(ctx.id, ctx.spec)
        booted.append(backend.boot(ctx, stdio[0]))
        _die_with_parent(False)

    def start() -> None:
        backend.run_workload(ctx, booted[0], stdio[0])

    def run() -> int:
        return _serve(backend, ctx, booted[0], stdio[0])

    return GatePlan(setup, run, start, what="the VM's gate")


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


def _serve(backend: MicrovmBackend, ctx: BackendContext, b: Booted, stdio: Stdio) -> int:
    """Relay until the workload ends and the VM is off; the workload's exit status."""

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
        with contextlib.suppress(OSError):
            os.write(stdio.stderr, f"bareboat-runtime: {e}\n".encode())
        code = e.exit_code
    backend.delete(ctx)
    return code


# --- exec --------------------------------------------------------------------------------------


def exec_in(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    from bareboat.backends.base import terminal_size
    from bareboat.backends.microvm import vmspec
    from bareboat.backends.microvm.agent import encode_process
    from bareboat.backends.microvm.backend import to_process_spec

    lc.require(root, rec, "running", action="exec in it (it is not running)")
    process = lc.exec_process(inv)
    p = vmspec.parse_process(process)
    master, slave = lc.console_pair(inv, process)
    winsize = terminal_size(slave) if slave is not None else (0, 0)
    payload = encode_process(to_process_spec(p, winsize))
    ctl = vm_dir(root, rec.id).ctl
    if not inv.has("--detach"):
        lc.hand_console(inv, master)
        fds = (slave, slave, slave) if slave is not None else (0, 1, 2)
        return _run_session(ctl, payload, fds, on_started=None)
    return _exec_detached(inv, ctl, payload, master, slave)


def _run_session(
    ctl: Path,
    payload: bytes,
    fds: tuple[int, int, int],
    on_started: Any,
    errors: list[str] | None = None,
    tty: int | None = None,
) -> int:
    from bareboat.backends.base import is_devnull
    from bareboat.backends.microvm.control import CtlClient

    found = errors if errors is not None else []

    def on_error(message: str) -> None:
        found.append(message)
        if errors is None:
            print(f"bareboat-runtime: exec failed: {message}", file=sys.stderr, flush=True)

    stdin = None if is_devnull(fds[0]) else fds[0]
    with CtlClient(ctl) as c:
        return c.exec(
            payload, stdin=stdin, stdout=fds[1], stderr=fds[2], on_error=on_error,
            on_started=on_started, tty=tty,
        )  # fmt: skip


def _exec_detached(
    inv: Invocation, ctl: Path, payload: bytes, master: int | None, slave: int | None
) -> int:
    """Fork an exec gate that relays the session and ends with its status; return once the
    session has started (or report why it did not)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            os.close(ready_r)
            if master is not None:
                os.close(master)
            if slave is not None:
                # The pty becomes this gate's controlling terminal: the client's resizes
                # arrive as SIGWINCH and go to the session as RESIZE.
                import fcntl
                import termios

                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            errors: list[str] = []
            told: list[bool] = []

            def started() -> None:
                os.write(ready_w, b"ok")
                os.close(ready_w)
                told.append(True)

            fds = (slave, slave, slave) if slave is not None else (0, 1, 2)
            code = _run_session(ctl, payload, fds, started, errors, tty=slave)
            if not told:  # the session never started: say why
                msg = "; ".join(errors) or f"exit status {code}"
                os.write(ready_w, _exec_error(msg, code).encode())
        except BaseException as e:  # noqa: BLE001 - the child must never return into main
            with contextlib.suppress(OSError):
                os.write(ready_w, f"exec failed: {e}".encode())
        finally:
            os._exit(code)
    os.close(ready_w)
    if slave is not None:
        os.close(slave)
    lc.await_ready(pid, ready_r, master, "the exec gate")
    lc.hand_console(inv, master)
    lc.write_pid_file(inv, pid)
    return 0


def _exec_error(msg: str, code: int) -> str:
    if code == 127 and "no such file or directory" not in msg.lower():
        msg += ": no such file or directory"
    elif code == 126 and "permission denied" not in msg.lower():
        msg += ": permission denied"
    return f"exec failed: {msg}"
