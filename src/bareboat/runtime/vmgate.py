"""The heavy half of `microvm` isolation under the OCI contract (see runtime/vm.py): `create`
(plan the VM, fork the gate, boot to HELLO), the gate process itself, and `exec`. Only these
import the microVM backend.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
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
    from bareboat.backends.microvm.backend import Booted, MicrovmBackend, VmDir, VmPlan
    from bareboat.backends.microvm.network import NetworkPlan
    from bareboat.backends.microvm.rootfs import RootfsImage

PLACEHOLDER_SCAN_LIMIT = 2000  # entries of an upper dir checked before giving up on the cache
PRIVATE_IMAGE = "rootfs"  # the key of a disk built for one container only


def vm_dir(root: RuntimeRoot, cid: str) -> VmDir:
    from bareboat.backends.microvm.backend import VmDir

    p = VmPaths(root, cid)
    return VmDir(Path(p.path), Path(p.sockets))


def _backend(root: RuntimeRoot, cid: str, rootfs: str) -> MicrovmBackend:
    from bareboat.backends.microvm import rootfs as vmrootfs
    from bareboat.backends.microvm.backend import (
        ANN_NETWORK,
        MicrovmBackend,
        lower_tree,
        tree_key,
    )

    class RuntimeVmBackend(MicrovmBackend):
        """The microVM backend with its files in the runtime's state dir and the rootfs
        named by the bundle's config.json."""

        def vmdir(self, ctx: BackendContext) -> VmDir:
            return vm_dir(root, ctx.id)

        def record_dir(self, ctx: BackendContext) -> Path:
            return Path(lc.state_dir(root, ctx.id))

        def rootfs_dir(self, ctx: BackendContext) -> Path:
            return Path(rootfs)

        def network_for(self, ctx: BackendContext, ann: dict[str, Any]) -> NetworkPlan:
            # QEMU runs in the container's network namespace with user-mode networking, so
            # the guest reaches out as the container would: in one the client set up with an
            # interface (podman's bridge, CNI), or in the new one the gate makes when asked,
            # which the client's prestart hook then configures (docker's bridge). A client's
            # namespace with only loopback (--network none), or none asked for (the host's),
            # gives no NIC. An annotation still wins.
            from bareboat.backends.microvm import network

            if ANN_NETWORK in ann:
                return super().network_for(ctx, ann)
            wanted, netns = _client_netns(ctx.spec)
            if netns is not None and not network.netns_has_links(netns):
                return super().network_for(ctx, ann)
            if netns is None and not (wanted and _may_be_configured(ctx.spec)):
                return super().network_for(ctx, ann)
            # QEMU inherits the gate's namespace. What the guest listens on is forwarded
            # from the same port there, where the client's port mappings (podman or
            # docker -p, a Kubernetes Service) send connections for the container.
            return network.plan_network("user", watch_ports=True)

        def image_for(self, ctx: BackendContext) -> RootfsImage:
            tree = lower_tree(Path(rootfs))
            if tree != Path(rootfs) and _only_placeholders(Path(rootfs)):
                return vmrootfs.ensure_image(self.roots, tree, key=tree_key(tree))
            # The client's own tree (or one it changed): a disk of this container's only.
            out = Path(lc.state_dir(root, ctx.id))
            return vmrootfs.build_image(Path(rootfs), out, key=PRIVATE_IMAGE, durable=False)

        def template_allowed(self, plan: VmPlan) -> bool:
            # A template is keyed by its image disk: only a shared, cached one can have one.
            return plan.image.key != PRIVATE_IMAGE

        def vmm_cpu_limit(self, ctx: BackendContext) -> tuple[int | None, int | None]:
            # The container's cgroup (the VMM's parent) holds the spec's CPU limits, and
            # `update` changes them there.
            return None, None

    return RuntimeVmBackend()


def _client_netns(config: dict[str, Any]) -> tuple[bool, Path | None]:
    """Whether config.json asks for a network namespace, and the path of the one the client
    made (None: a new one, the gate's)."""
    for ns in (config.get("linux") or {}).get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == "network":
            if not ns.get("path"):
                return True, None
            path = Path(str(ns["path"]))
            if not path.is_absolute():
                raise UsageError(f"config.json: network namespace path {path} is not absolute")
            return True, path
    return False, None


def _may_be_configured(config: dict[str, Any]) -> bool:
    """Whether a new network namespace may get an interface: only a hook of the client's can
    give it one before the workload starts (docker's libnetwork-setkey). Without one (podman
    --network none) it keeps only loopback, so the VM gets no NIC, and may be a template's
    clone."""
    hooks = config.get("hooks") or {}
    return bool(hooks.get("prestart") or hooks.get("createRuntime"))


def _only_placeholders(rootfs: Path) -> bool:
    """True if the overlay's upper dir holds nothing but directories, empty regular files
    (mount points the client made) and links into /proc: then the lower dir alone is the tree
    the VM must see."""
    from bareboat.backends.microvm.backend import overlay_layers
    from bareboat.backends.microvm.vmspec import COPIED_FILES

    lowers, upper = overlay_layers(rootfs)
    if upper is None:
        return True
    seen = 0
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in filenames + dirnames:
            seen += 1
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if seen > PLACEHOLDER_SCAN_LIMIT:
                return False  # too much to check: not placeholders
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                inside = "/" + os.path.relpath(path, upper)
                if inside in COPIED_FILES or not _has_content(lowers[0], inside):
                    continue
                return False  # an emptied image file: the merged view differs from the image
            if stat.S_ISLNK(st.st_mode) and os.readlink(path).startswith("/proc/"):
                continue  # podman's /etc/mtab -> /proc/mounts: about the guest's own /proc
            if not stat.S_ISDIR(st.st_mode) or _opaque(path):
                return False  # content, a symlink, a whiteout (0:0 char device), or a dir
                # that hides the lower one's entries
    return True


def _has_content(lower: Path, inside: str) -> bool:
    """Whether the image's tree has a non-empty regular file at `inside`."""
    try:
        st = os.lstat(lower / inside.lstrip("/"))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


def _opaque(path: str) -> bool:
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        with contextlib.suppress(OSError):
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
    return False


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def check_command(rootfs: Path, process: dict[str, Any]) -> None:
    """Fail `create` as runc and crun do when the command is not in the rootfs: clients (podman)
    turn that error into 127/126, while an error at `start` would only give 126."""
    from bareboat.errors import CommandNotExecutable, CommandNotFound
    from bareboat.spec.rootread import open_in_root

    arg0 = str(process["args"][0])
    if "/" in arg0:
        candidates = [arg0 if arg0.startswith("/") else f"{process.get('cwd') or '/'}/{arg0}"]
    else:
        path = lc.process_env(process).get("PATH", DEFAULT_PATH)
        candidates = [f"{d or '.'}/{arg0}" for d in path.split(":")]
    denied = False
    for candidate in candidates:
        try:
            fd = open_in_root(rootfs, candidate, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return
        denied = True
    if denied:
        raise CommandNotExecutable(f"exec {arg0}: permission denied")
    raise CommandNotFound(f"executable file `{arg0}` not found in $PATH: no such file or directory")


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
    check_command(Path(rootfs), config.get("process") or {})
    backend = _backend(root, inv.id, rootfs)
    ctx = _context(inv.id, bundle, sdir, config)
    backend.create(ctx)  # the plan: every check that can fail before a VM exists
    fifo = lc.make_gate(sdir)
    master, slave = lc.console_pair(inv, config.get("process") or {})
    ready_r, ready_w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        if master is not None:
            os.close(master)
        _gate(backend, ctx, fifo, ready_w, slave, parent)  # never returns
    os.close(ready_w)
    if slave is not None:
        os.close(slave)
    # Recorded at once: a `delete --force` after this `create` was killed mid-boot finds the
    # gate (and with it QEMU) to kill.
    # The cgroups the gate joins (the cpu one first), for update and delete to find.
    cgroups = {"cgroups": [str(d) for d in _cgroups_of(inv.id, config)]}
    lc.write_state(root, inv.id, lc.new_state(pid, config, **cgroups))
    lc.await_ready(pid, ready_r, master, "the VM's gate process")
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


def _gate(
    backend: MicrovmBackend,
    ctx: BackendContext,
    fifo: str,
    ready_w: int,
    slave: int | None,
    parent: int,
) -> None:
    """The body of the gate process: boot, wait for `start`, run the workload, exit with it."""
    code = 125
    try:
        try:
            # Until the VM is ready the gate is `create`'s: if create dies, so do the gate
            # and (by its own PDEATHSIG) QEMU. Once ready it must outlive create.
            _die_with_parent(True)
            if os.getppid() != parent:
                os._exit(1)
            os.setsid()  # out of the caller's process group: its signals are not the workload's
            stdio = _gate_stdio(slave)
            host_net = os.readlink("/proc/self/ns/net")
            lc.enter_network(ctx.spec)  # QEMU inherits it: the client's hooks configure it
            if os.readlink("/proc/self/ns/net") != host_net:
                _low_ports_for_the_vmm()
            join_cgroups(ctx.id, ctx.spec)
            booted = backend.boot(ctx, stdio)
        except BaseException as e:  # noqa: BLE001 - every failure is create's to report
            os.write(ready_w, (str(e) or repr(e)).encode()[:65536])
            os._exit(1)
        _die_with_parent(False)
        os.write(ready_w, b"ok")
        os.close(ready_w)
        gate = lc.wait_for_start(fifo)
        try:
            backend.run_workload(ctx, booted, stdio)
        except BareboatError as e:
            lc.report_start(gate, _start_error(e))
            os._exit(e.exit_code)
        lc.report_start(gate)
        code = _serve(backend, ctx, booted, stdio)
    except BaseException as e:  # noqa: BLE001 - the gate must never return into create
        with contextlib.suppress(Exception):
            os.write(2, f"bareboat-runtime: the VM's gate failed: {e!r}\n".encode())
    finally:
        os._exit(code)


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


def _start_error(e: BareboatError) -> str:
    from bareboat.errors import CommandNotExecutable, CommandNotFound

    msg = str(e)
    # podman and the containerd shim read the runtime's words to pick 127 and 126.
    if isinstance(e, CommandNotFound) and "no such file or directory" not in msg.lower():
        msg += ": no such file or directory"
    elif isinstance(e, CommandNotExecutable) and "permission denied" not in msg.lower():
        msg += ": permission denied"
    return msg


def _serve(backend: MicrovmBackend, ctx: BackendContext, b: Booted, stdio: Stdio) -> int:
    """Relay until the workload ends and the VM is off; the workload's exit status."""
    running = backend._running[ctx.id]
    hub = running.hub
    assert hub is not None

    def forward(sig: int, _frame: object) -> None:
        backend.kill(ctx, b.vm.pid, sig)

    def resize(_sig: int, _frame: object) -> None:
        from bareboat.backends.microvm.backend import _winsize

        backend.resize(ctx, *_winsize(stdio.stdout))

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    if stdio.tty:
        signal.signal(signal.SIGWINCH, resize)
    while not hub.done.wait(1.0):
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
    from bareboat.backends.microvm import vmspec
    from bareboat.backends.microvm.agent import encode_process
    from bareboat.backends.microvm.backend import _winsize, to_process_spec

    lc.require(root, rec, "running", action="exec in it (it is not running)")
    process = lc.exec_process(inv)
    p = vmspec.parse_process(process)
    master, slave = lc.console_pair(inv, process)
    winsize = _winsize(slave) if slave is not None else (0, 0)
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
    from bareboat.backends.microvm.backend import _is_devnull
    from bareboat.backends.microvm.control import CtlClient

    found = errors if errors is not None else []

    def on_error(message: str) -> None:
        found.append(message)
        if errors is None:
            print(f"bareboat-runtime: exec failed: {message}", file=sys.stderr, flush=True)

    stdin = None if _is_devnull(fds[0]) else fds[0]
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
