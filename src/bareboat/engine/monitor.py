"""The per-container monitor (as conmon or containerd-shim): one process per container, the
sandbox's supervisor in the engine's mode (`bareboat.sandbox.supervisor`).

`spawn` forks it from the calling process (no new Python start-up), detached (setsid + double
fork), and waits for its ready report: once the workload runs (with `wait_attach`, once the
rootfs is mounted and the control socket listens), or its error and exit code after it
cleaned up.

The monitor then owns, for the container's whole life: the rootfs mount, the backend, the
workload's stdio (pipes, or a pty master for `-t`), the JSON-lines log (stdout and stderr
kept apart), the sandbox's one control socket (bareboat/control.py: attach, stdin, resize,
signals; a VM's exec sessions, pause and resume go to its hub, in this process), reaping (it
is a child subreaper), and the end: exit code written atomically, rootfs unmounted, and for `--rm`
every trace removed — before attached clients hear the exit code.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import shutil
import signal
import socket
import struct
import sys
import termios
import time

from bareboat import control as ctl
from bareboat import sandboxdir
from bareboat.backends.base import BackendContext, Started, Stdio, set_child_subreaper
from bareboat.errors import BareboatError, ContainerError
from bareboat.proc import start_time
from bareboat.sandbox.status import Status
from bareboat.sandbox.supervisor import SupervisorPlan, spawn_detached
from bareboat.spec.command import check_command

from .leftovers import end_rooted_in
from .logfile import LogWriter

TYPE_CHECKING = False  # typing costs import time on every `run`; mypy treats this as true
if TYPE_CHECKING:
    from .engine import Engine


def spawn(engine: Engine, cid: str, *, wait_attach: bool) -> None:
    """Start the monitor of container `cid` (the sandbox's supervisor in the engine's mode:
    `bareboat.sandbox.supervisor.spawn_detached`); return once it is ready, raise if it
    failed, with the code it reported."""
    import gc

    # Objects made so far never need collecting in the monitor: keep its GC from touching
    # (and so copying) every page it shares with the parent.
    gc.freeze()
    spawn_detached(Monitor.plan(engine, cid, wait_attach=wait_attach))


class Client:
    """One connection to the control socket.

    A plain class, not a dataclass: creating one costs 1-2 ms at import here, on the
    path of every `run`."""

    __slots__ = ("attached", "decoder", "sock", "stdin")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = ctl.Decoder(ctl.REQUEST_LIMITS, "control client")
        self.attached = False
        self.stdin = False


STDIN_HIGH = 1 << 20  # bytes of stdin that may wait for the workload before clients wait
UNHEARD_MAX = 64 << 10  # bytes of output kept for a foreground run's client yet to attach


class Monitor:
    def __init__(self, engine: Engine, cid: str, wait_attach: bool) -> None:
        self.engine = engine
        self.cid = cid
        self.wait_attach = wait_attach
        self.record = engine.records.load(cid)
        self.paths = engine.paths(cid)
        self.backend = engine.backend(self.record.isolation)
        self.ctx: BackendContext = engine.context(cid)
        self.clients: list[Client] = []
        self.sel = selectors.DefaultSelector()
        self.pid: int | None = None
        self.status: int | None = None
        self.pty_master: int | None = None
        # The workload's stdin, our end (non-blocking; for -t a dup of the pty master): what
        # clients send waits in stdin_buf until the workload reads it, and while more than
        # STDIN_HIGH waits, the clients sending it are not read (`paused`). A blocking write
        # here stopped the whole monitor, and with it the workload's output: a `run -i cat`
        # of a few MB deadlocked.
        self.stdin_w: int | None = None
        self.stdin_buf = bytearray()
        self.stdin_eof = False
        self.paused: list[Client] = []
        self.log: LogWriter | None = None
        self.winsize = (24, 80)
        # What the sandbox wrote before the first client of a foreground run attached (a
        # VM's boot notes, from `prelaunch`): that client is sent it first.
        self.unheard: bytearray | None = bytearray() if wait_attach else None

    @classmethod
    def plan(cls, engine: Engine, cid: str, *, wait_attach: bool) -> SupervisorPlan:
        """The monitor's life as a supervisor's phases; the monitor itself is made in the
        supervisor process, at setup."""
        made: list[Monitor] = []

        def setup() -> None:
            made.append(cls(engine, cid, wait_attach))
            made[0].setup()

        def failed(err: BaseException) -> tuple[int, str]:
            if not made:
                return 125, f"monitor failed: {err!r}"
            return made[0].failed(err)

        return SupervisorPlan(
            setup,
            run=lambda: made[0].run(),
            start=lambda: made[0].start(),
            go=(lambda: made[0].await_first_client()) if wait_attach else None,
            failed=failed,
            what="the container monitor",
        )

    def setup(self) -> None:
        """Before the workload starts: the monitor's own process, then the rootfs mount, the
        backend's create, the control socket, the log and the workload's stdio."""
        self.paths.run.mkdir(parents=True, exist_ok=True)
        # Who we are, before anything can fail: `rm -f` of a container whose start was
        # interrupted finds its monitor here (the record only learns it once running).
        me = f"{os.getpid()} {start_time(os.getpid())}"
        self.paths.monitor_pid.write_text(me)
        devnull = os.open(os.devnull, os.O_RDWR)
        logfd = os.open(self.paths.monitor_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(devnull, 0)
        os.dup2(logfd, 1)
        os.dup2(logfd, 2)
        os.close(devnull)
        os.close(logfd)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        set_child_subreaper()
        # Survive these, with a handler that does nothing rather than SIG_IGN: an ignored
        # signal stays ignored in the children across exec, and a `process` workload could
        # then not even trap SIGINT (sh cannot trap what it was started ignoring).
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTTOU, signal.SIGTTIN):
            signal.signal(sig, lambda *_: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # (Popen restores it in children)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: self.kill(signal.SIGTERM))
        self.wake_r = wake_r
        rec = self.record
        self.engine.overlay(self.cid, volatile=rec.auto_remove).mount()
        spec = self.ctx.spec
        proc = spec["process"]
        if self.backend.name != "wasm":  # a module need not be executable; create checks it
            check_command(
                self.ctx.rootfs, list(proc["args"]), list(proc.get("env", [])), proc.get("cwd", "/")
            )
        self.backend.create(self.ctx)
        # stdio exists before the first client attaches, so stdin it sends early is kept
        self.stdio = self.make_stdio()
        self.listener = ctl.listen(self.paths.socket)
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        opts = rec.options.log
        self.log = LogWriter(self.paths.log, max_size=opts.max_size, max_file=opts.max_file)

    def start(self) -> None:
        stdio = self.stdio
        started = self.backend.start(self.ctx, stdio)
        if isinstance(started, int):  # a backend still on the older protocol: just a pid
            started = Started(started)
        self.pid = started.pid
        for fd in {stdio.stdin, stdio.stdout, stdio.stderr}:
            os.close(fd)
        if started.console is not None and self.pty_master is not None:
            self.use_console(started.console)
        rec = self.engine.records.load(self.cid)
        rec.move_to(Status.RUNNING)
        rec.pid, rec.started, rec.exit_code, rec.finished = self.pid, time.time(), None, None
        rec.pid_start = start_time(self.pid)
        rec.monitor_pid = os.getpid()
        rec.monitor_start = start_time(os.getpid())
        self.record = rec
        self.engine.records.save(rec)  # (a detached start returns once the record says running)

    def run(self) -> int:
        assert self.pid is not None
        self.broadcast(ctl.encode(ctl.Type.STARTED, 0, self.pid.to_bytes(4, "big")))
        self.loop()
        return 0

    def failed(self, err: BaseException) -> tuple[int, str]:
        """After an error in any phase: the end recorded and everything cleaned up (`finish`);
        the code and message the supervisor reports."""
        import traceback

        traceback.print_exc()
        code = err.exit_code if isinstance(err, BareboatError) else 125
        msg = str(err) if isinstance(err, BareboatError) else f"monitor failed: {err!r}"
        self.finish(code, msg)
        return code, msg or "start failed"

    def await_first_client(self) -> None:
        # A VM boots while its client connects and attaches (the caller was told we are
        # ready; its connection waits in the listener's backlog); its workload still waits
        # for `start`. Under TCG the kernel's boot hides the attaching.
        prelaunch = getattr(self.backend, "prelaunch", None)
        if prelaunch is not None:
            prelaunch(self.ctx, self.stdio)
        deadline = time.monotonic() + 30
        while not any(c.attached for c in self.clients):
            left = deadline - time.monotonic()
            if left <= 0:
                raise ContainerError("no client attached in time")
            for key, _ in self.sel.select(left):
                self.dispatch(key)

    def make_stdio(self) -> Stdio:
        opts = self.record.options
        if opts.tty:
            master, slave = os.openpty()
            rows, cols = self.winsize
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.set_blocking(master, False)
            self.pty_master = master
            self.sel.register(master, selectors.EVENT_READ, "stdout")
            if opts.interactive:
                self.stdin_w = os.dup(master)
            return Stdio(slave, os.dup(slave), os.dup(slave), tty=True)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd, name in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, name)
        if opts.interactive:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(in_w, False)
            self.stdin_w = in_w
        else:
            in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return Stdio(in_r, out_w, err_w)

    def use_console(self, console: int) -> None:
        """Serve the backend's own pty master instead of ours (sized as ours was)."""
        assert self.pty_master is not None
        self.sel.unregister(self.pty_master)
        os.close(self.pty_master)
        os.set_blocking(console, False)
        self.pty_master = console
        if self.stdin_w is not None:
            if self.stdin_w in self.sel.get_map():
                self.sel.unregister(self.stdin_w)
            os.close(self.stdin_w)
            self.stdin_w = os.dup(console)
            self.flush_stdin()
        self.sel.register(console, selectors.EVENT_READ, "stdout")
        self.resize(*self.winsize)

    # --- event loop ------------------------------------------------------------------------
    def loop(self) -> None:
        while self.status is None or self.has_output():
            timeout = None if self.status is None else 0.2
            events = self.sel.select(timeout)
            if not events and self.status is not None:
                break  # the workload is gone; a grandchild may still hold the pipes
            for key, _ in events:
                self.dispatch(key)
        code = self.backend.exit_code(self.ctx, self.status or 0)
        self.finish(code, "")

    def has_output(self) -> bool:
        return any(k.data in ("stdout", "stderr") for k in self.sel.get_map().values())

    def dispatch(self, key: selectors.SelectorKey) -> None:
        kind = key.data
        if kind == "wake":
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 512)
            self.reap()
        elif kind == "listen":
            self.accept(key.fileobj)  # type: ignore[arg-type]
        elif kind in ("stdout", "stderr"):
            self.pump(key.fd, kind)
        elif kind == "stdin":
            self.flush_stdin()
        elif isinstance(kind, Client):
            self.from_client(kind)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self.status = status

    def pump(self, fd: int, stream: str) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno != errno.EIO:  # EIO: the pty's last slave closed
                raise
            data = b""
        if not data:
            self.sel.unregister(fd)
            if fd != self.pty_master:
                os.close(fd)
            return
        assert self.log is not None
        self.log.write(stream, data)
        kind = ctl.Type.STDOUT if stream == "stdout" else ctl.Type.STDERR
        frame = ctl.encode(kind, 0, data)
        if self.unheard is not None and len(self.unheard) < UNHEARD_MAX:
            self.unheard += frame
        self.broadcast(frame, attached=True)

    def broadcast(self, data: bytes, *, attached: bool = True) -> None:
        for c in list(self.clients):
            if attached and not c.attached:
                continue
            try:
                c.sock.sendall(data)
            except OSError:
                self.drop(c)

    def drop(self, c: Client) -> None:
        if c in self.clients:
            self.clients.remove(c)
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(c.sock)
            c.sock.close()

    # --- control clients ---------------------------------------------------------------
    def accept(self, listener: socket.socket) -> bool:
        """Take one waiting connection in; False when none was waiting."""
        try:
            sock, _ = listener.accept()
        except OSError:  # gone before we looked, or no descriptor left: nothing to serve
            return False
        sock.setblocking(True)
        sock.settimeout(5)
        client = Client(sock)
        self.clients.append(client)
        self.sel.register(sock, selectors.EVENT_READ, client)
        if len(self.clients) > ctl.MAX_CLIENTS:
            self.refuse(client, f"too many clients (at most {ctl.MAX_CLIENTS} at once)")
        return True

    def send(self, c: Client, data: bytes) -> None:
        """Send to one client; one that cannot take it is dropped."""
        try:
            c.sock.sendall(data)
        except OSError:
            self.drop(c)

    def refuse(self, c: Client, message: str) -> None:
        """Tell a client what was wrong with what it sent, and close its connection."""
        with contextlib.suppress(OSError):
            c.sock.send(ctl.message(ctl.Type.REFUSED, message), socket.MSG_DONTWAIT)
        self.drop(c)

    def from_client(self, c: Client) -> None:
        try:
            data = c.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.drop(c)
            return
        # A client is input like any other: whatever it sends or asks for, the worst it gets
        # is REFUSED and a closed connection; the container runs on.
        try:
            frames = c.decoder.feed(data)
            for i, (ftype, session, payload) in enumerate(frames):
                if ftype not in ctl.SUPERVISOR_REQUESTS or session != 0:
                    self.hand_over(c, ftype, frames[i:])
                    return
                self.handle(c, ftype, payload)
                if c not in self.clients:
                    return
        except BareboatError as err:
            self.refuse(c, str(err))
        except Exception as err:  # noqa: BLE001 - a failed request must not end the container
            import traceback

            traceback.print_exc()
            self.refuse(c, f"the request failed: {err!r}")

    def handle(self, c: Client, ftype: ctl.Type, payload: bytes) -> None:
        """One of the requests the monitor serves itself (ctl.SUPERVISOR_REQUESTS), checked.
        A client that asks for nothing still hears the workload's end (EXIT or FAILED)."""
        if ftype is ctl.Type.ATTACH:
            stdin, rows, cols = ctl.ATTACH.unpack(payload)
            c.attached, c.stdin = True, bool(stdin)
            unheard, self.unheard = self.unheard, None
            if unheard:
                self.send(c, bytes(unheard))
                if c not in self.clients:
                    return  # it could not take it
            if rows and cols:
                self.resize(rows, cols)
        elif ftype is ctl.Type.SIGNAL:
            self.kill(ctl.u32(payload))
            # A client that sent the signal and hung up is still served what it sent with it.
            with contextlib.suppress(OSError):
                c.sock.sendall(ctl.encode(ctl.Type.DONE))
        elif ftype is ctl.Type.STDIN:
            if not (c.stdin and self.stdin_w is not None and not self.stdin_eof):
                return
            if payload:
                self.stdin_buf += payload
                self.flush_stdin()
                if len(self.stdin_buf) > STDIN_HIGH and c in self.clients and c not in self.paused:
                    self.sel.unregister(c.sock)  # its next frames wait in its socket
                    self.paused.append(c)
            else:
                if self.pty_master is not None:
                    self.stdin_buf += b"\x04"  # a terminal's end of input
                self.stdin_eof = True
                self.flush_stdin()
        elif ftype is ctl.Type.RESIZE:
            self.resize(*ctl.WINSIZE.unpack(payload))

    def hand_over(self, c: Client, ftype: ctl.Type, frames: list[ctl.Frame]) -> None:
        """A request of the sandbox's own (a VM's exec session, pause, resume, power-off):
        the connection goes to the backend's side of the socket (a VM's hub, a thread of
        this process) with what it sent from that request on, and is the monitor's no more."""
        take = getattr(self.backend, "take_client", None)
        if take is None:
            self.refuse(c, f"{ftype.name}: a {self.backend.name} sandbox serves no such request")
            return
        if c.attached:
            self.refuse(c, f"{ftype.name} on an attached connection: open another")
            return
        unread = b"".join(ctl.encode(*f) for f in frames) + bytes(c.decoder.buf)
        self.clients.remove(c)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        if c in self.paused:
            self.paused.remove(c)
        take(self.ctx, c.sock, unread)

    def flush_stdin(self) -> None:
        """Write what waits for the workload's stdin, as much as it takes now."""
        fd = self.stdin_w
        if fd is None:
            return
        while self.stdin_buf:
            try:
                n = os.write(fd, self.stdin_buf)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: the workload closed its stdin (EIO: the pty's)
                self.stdin_buf.clear()
                self.stdin_eof = True
                break
            del self.stdin_buf[:n]
        registered = fd in self.sel.get_map()
        if self.stdin_buf and not registered:
            self.sel.register(fd, selectors.EVENT_WRITE, "stdin")
        elif not self.stdin_buf and registered:
            self.sel.unregister(fd)
        if len(self.stdin_buf) <= STDIN_HIGH // 2:
            for c in self.paused:
                if c in self.clients:
                    self.sel.register(c.sock, selectors.EVENT_READ, c)
            self.paused.clear()
        if self.stdin_eof and not self.stdin_buf:
            os.close(fd)  # (a pty's: our dup of its master)
            self.stdin_w = None

    def resize(self, rows: int, cols: int) -> None:
        rows, cols = max(1, min(rows, 10000)), max(1, min(cols, 10000))
        self.winsize = (rows, cols)
        if self.pty_master is not None:
            winsize = struct.pack("HHHH", rows, cols, 0, 0)
            fcntl.ioctl(self.pty_master, termios.TIOCSWINSZ, winsize)
            self.backend.resize(self.ctx, rows, cols)

    def kill(self, sig: int) -> None:
        if self.pid is not None and self.status is None:
            self.backend.kill(self.ctx, self.pid, sig)

    # --- the end -------------------------------------------------------------------------
    def finish(self, code: int, error: str) -> None:
        """Record the end, clean up, then tell the clients (and `spawn`, if still waiting)."""
        if self.pid is not None and self.status is None:
            with contextlib.suppress(Exception):
                self.backend.kill(self.ctx, self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        with contextlib.suppress(Exception):
            # The runtime's record of the container (container isolation) or a VM's files.
            left = (self.ctx.state_dir / self.cid, self.ctx.state_dir / sandboxdir.VM)
            if any(p.exists() for p in left):
                self.backend.delete(self.ctx, force=True)
        with contextlib.suppress(Exception):
            # What the workload started and left behind (a `process` container's daemons)
            # ends with it: nothing may run on in a root that is about to be unmounted.
            end_rooted_in(self.ctx.rootfs)
        with contextlib.suppress(Exception):
            self.engine.overlay(self.cid).unmount()
        if self.log is not None:
            self.log.close()
        rec = self.engine.records.load(self.cid)
        if rec.auto_remove:
            shutil.rmtree(self.paths.record, ignore_errors=True)
        else:
            if rec.state is not Status.EXITED:
                rec.move_to(Status.EXITED)
            rec.exit_code, rec.finished, rec.error, rec.pid = code, time.time(), error, None
            rec.pid_start = None
            self.engine.records.save(rec)
        with contextlib.suppress(FileNotFoundError):
            self.paths.socket.unlink()
        if rec.auto_remove:
            shutil.rmtree(self.paths.run, ignore_errors=True)
        # Who connected while we cleaned up (a `wait` that found the container running) waits
        # in the listener's backlog: take them in, so that they too hear the end. Unserved,
        # they saw the connection close and a `wait` of a --rm container answered 0.
        listener = getattr(self, "listener", None)
        while listener is not None and self.accept(listener):
            pass
        if error:
            self.broadcast(ctl.failed(code, error), attached=False)
        else:
            self.broadcast(ctl.encode(ctl.Type.EXIT, 0, ctl.status(code)), attached=False)
        for c in list(self.clients):
            # Read what the client sent unasked before closing: closing a socket with unread
            # data resets the connection, and the client could lose the EXIT frame.
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_WR)
                c.sock.setblocking(False)
                while c.sock.recv(65536):
                    pass
            self.drop(c)
