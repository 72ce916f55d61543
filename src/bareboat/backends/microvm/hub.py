"""The host end of a running VM's agent channel, and the VM's side of the sandbox's control
socket.

QEMU's virtio-serial socket takes one connection, so one object must own it for the VM's
life: the `Hub`, a thread inside the sandbox's supervisor (the engine's monitor, or
bareboat-runtime's gate). It relays the workload's streams (session 0) between the agent and
the owner's stdio fds, records the workload's exit, and serves the VM's requests of the
sandbox's control protocol (bareboat/control.py): SIGNAL, RESIZE, POWEROFF, PAUSE and RESUME
for the VM, or an EXEC session of its own, which the hub renumbers to the agent's session ids
and whose guest events it passes back as control events. Under bareboat-runtime the hub
listens on the sandbox's control socket itself; under the engine the monitor serves that
socket and hands the hub, in-process, each connection that asks something of the VM
(`adopt`) and its own requests for the workload (`request`). Nothing a control client sends
reaches the guest unchecked, and no host-only message is ever a guest frame.

The guest is untrusted: its frames pass the agent codec's bounds and checks, events for
sessions it was never given are a protocol violation, and a violation ends the VM.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bareboat import control as ctl
from bareboat.control import write_all
from bareboat.errors import AgentProtocolError, BackendError, BareboatError, ControlError
from bareboat.fsutil import atomic_write_text

from .agent import (
    MAX_DATA,
    AgentError,
    Event,
    Exited,
    Frame,
    FrameDecoder,
    FrameType,
    Output,
    Ports,
    Started,
    decode_event,
    encode_frame,
)

# A control request's agent frame, for those the hub passes on.
_TO_AGENT = {
    ctl.Type.STDIN: FrameType.STDIN,
    ctl.Type.SIGNAL: FrameType.SIGNAL,
    ctl.Type.RESIZE: FrameType.RESIZE,
}
# Connections served at once: each holds a descriptor and up to a frame of input, and a hub
# out of descriptors would fail its relay, which ends the VM.
MAX_CLIENTS = ctl.MAX_CLIENTS
OUTBUF_HIGH = 4 << 20  # stop reading new input while this much waits for the agent
KILL_GRACE_S = 5.0  # after a SIGKILL the workload must be gone by then, or QEMU is killed


@dataclass(frozen=True)
class ExitRecord:
    """How the workload ended, as exit.json keeps it for `exit_code` (any process)."""

    code: int
    error: str = ""

    def save(self, path: Path) -> None:
        # Run state (not fsynced): a crash of the host ends the VM it describes.
        atomic_write_text(path, json.dumps({"code": self.code, "error": self.error}), durable=False)

    @classmethod
    def load(cls, path: Path) -> ExitRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(int(data["code"]), str(data.get("error", "")))
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass
class _Client:
    sock: socket.socket
    decoder: ctl.Decoder = field(
        default_factory=lambda: ctl.Decoder(ctl.REQUEST_LIMITS, "control client")
    )
    sessions: dict[int, int] = field(default_factory=dict)  # client's id -> agent's id


class Hub:
    """Relays one VM's agent channel; `run` is the body of its thread."""

    def __init__(
        self,
        agent: socket.socket,
        *,
        stdin: int | None,
        stdout: int,
        stderr: int,
        ctl_path: Path | None,
        exit_path: Path,
        qemu_pid: int,
        pending: list[Frame] | None = None,
        decoder: FrameDecoder | None = None,
        pause_vm: Callable[[], None] | None = None,
        resume_vm: Callable[[], None] | None = None,
        forward_ports: Callable[[tuple[int, ...]], None] | None = None,
        kill_after_exit: bool = False,
    ) -> None:
        self.agent = agent
        # The VM holds nothing the host keeps (no writable disk or share, no network): once
        # the workload's EXIT is recorded, QEMU is killed instead of waiting for the guest to
        # power off (tens of ms under TCG) and for QEMU's own orderly exit.
        self.kill_after_exit = kill_after_exit
        self.pause_vm = pause_vm  # PAUSE/RESUME: stop or continue the vCPUs (QMP)
        self.resume_vm = resume_vm
        self.forward_ports = forward_ports  # the guest's listening ports (PORTS frames)
        self.stdin = stdin
        self.out: dict[str, int | None] = {"stdout": stdout, "stderr": stderr}
        self.ctl_path = ctl_path
        self.exit_path = exit_path
        self.qemu_pid = qemu_pid
        self.pending = list(pending or [])
        self.decoder = decoder or FrameDecoder()
        self.outbuf = bytearray()
        self.sel = selectors.DefaultSelector()
        self.clients: dict[int, _Client] = {}  # by fd
        self.owner: dict[int, tuple[_Client, int]] = {}  # agent session -> (client, its id)
        self.next_session = 1
        self.exited: ExitRecord | None = None
        self.errors: list[str] = []
        self.kill_deadline: float | None = None
        self.done = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # What other threads hand the loop (`adopt`, `request`), and whether it must end.
        self._inbox: list[Callable[[], None]] = []
        self._inbox_lock = threading.Lock()
        self._stopping = False
        # The sandbox's control socket where no supervisor serves it (bareboat-runtime's gate).
        self.listener = ctl.listen(ctl_path) if ctl_path is not None else None
        self.thread = threading.Thread(target=self.run, name="bareboat-vm-hub", daemon=True)

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the loop (after the VM is gone) and release everything the hub holds."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        self._close()

    def _close(self) -> None:
        for c in list(self.clients.values()):
            self._drop(c)
        for s in (self.listener, self.agent):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        if self.ctl_path is not None and self.listener is not None:
            self.ctl_path.unlink(missing_ok=True)
        with self._inbox_lock:
            self._inbox.clear()
        for name in ("stdout", "stderr"):
            self._end_stream(name)
        for fd in (self.stdin, self._wake_r, self._wake_w):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.stdin = None
        self._wake_r = self._wake_w = -1
        with contextlib.suppress(Exception):
            self.sel.close()

    # --- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        except AgentProtocolError as err:
            self._fatal(f"the guest broke the agent protocol: {err}")
        except Exception as err:  # noqa: BLE001 - the VM must not outlive a broken relay
            self._fatal(f"the VM's relay failed: {err!r}")
        finally:
            self.done.set()

    def _loop(self) -> None:
        self.agent.setblocking(False)
        self.sel.register(self.agent, selectors.EVENT_READ, "agent")
        if self.listener is not None:
            self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self.stdin is not None:
            os.set_blocking(self.stdin, False)
            self.sel.register(self.stdin, selectors.EVENT_READ, "stdin")
        for frame in self.pending:
            self._from_agent(frame)
        self.pending = []
        while True:
            self._update_interest()
            timeout = None
            if self.kill_deadline is not None:
                timeout = max(0.0, self.kill_deadline - time.monotonic())
            for key, mask in self.sel.select(timeout):
                what = key.data
                if what == "wake":
                    if self._stopping:
                        return
                    self._take_inbox()
                if what == "agent":
                    if mask & selectors.EVENT_WRITE:
                        self._flush()
                    if mask & selectors.EVENT_READ and not self._read_agent():
                        return
                elif what == "listen":
                    self._accept()
                elif what == "stdin":
                    self._read_stdin()
                elif isinstance(what, _Client):
                    self._read_client(what)
            if self.kill_deadline is not None and time.monotonic() >= self.kill_deadline:
                self._fatal("the workload did not end after SIGKILL; the VM was killed", 137)
                return

    def _update_interest(self) -> None:
        mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0)
        self.sel.modify(self.agent, mask, "agent")
        if self.stdin is not None:
            full = len(self.outbuf) > OUTBUF_HIGH
            registered = self.stdin in self.sel.get_map()
            if full and registered:
                self.sel.unregister(self.stdin)
            elif not full and not registered:
                self.sel.register(self.stdin, selectors.EVENT_READ, "stdin")

    # --- agent side --------------------------------------------------------------------------
    def send(self, frame: Frame) -> None:
        self.outbuf += encode_frame(frame)

    def _flush(self) -> None:
        try:
            n = self.agent.send(self.outbuf)
        except BlockingIOError:
            return
        except OSError:
            self.outbuf.clear()  # the VM is gone; nothing will read it
            return
        del self.outbuf[:n]

    def _read_agent(self) -> bool:
        try:
            data = self.agent.recv(256 * 1024)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            return False  # QEMU closed the channel: the VM is gone
        for frame in self.decoder.feed(data):
            self._from_agent(frame)
        return True

    def _from_agent(self, frame: Frame) -> None:
        event = decode_event(frame)
        if isinstance(event, Ports):
            self._forward(event.ports)
            return
        if isinstance(event, Output | Exited | AgentError | Started):
            session = event.session
        else:
            return  # HELLO again, PONG: nothing to relay
        if session == 0:
            self._workload(event)
            return
        owner = self.owner.get(session)
        if owner is None:
            if session >= self.next_session:
                raise AgentProtocolError(f"agent sent a frame for unknown session {session}")
            return  # a session whose client went away
        client, local = owner
        self._to_client(client, _control_event(event, local))
        if isinstance(event, Exited):
            del self.owner[session]
            client.sessions.pop(local, None)

    def _workload(self, event: Output | Exited | AgentError | Started) -> None:
        if isinstance(event, Output):
            fd = self.out.get(event.stream)
            if fd is None:
                if event.data:
                    raise AgentProtocolError(f"agent sent {event.stream} after its end")
                return
            if not event.data:
                self._end_stream(event.stream)
                return
            try:
                write_all(fd, event.data)
            except OSError:
                self._end_stream(event.stream)  # nobody reads it any more; keep relaying
        elif isinstance(event, AgentError):
            self.errors.append(event.message)
        elif isinstance(event, Exited):
            if self.exited is not None:
                raise AgentProtocolError("agent sent a second EXIT for the workload")
            self.exited = ExitRecord(event.status, "; ".join(self.errors))
            self.exited.save(self.exit_path)
            self.kill_deadline = None
            for name in ("stdout", "stderr"):
                self._end_stream(name)
            # Acknowledge the exit by powering off: the agent keeps serving until then.
            self.send(Frame(FrameType.POWEROFF, 0))
            if self.kill_after_exit:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.qemu_pid, signal.SIGKILL)

    def _end_stream(self, name: str) -> None:
        fd = self.out.get(name)
        self.out[name] = None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _read_stdin(self) -> None:
        assert self.stdin is not None
        try:
            data = os.read(self.stdin, MAX_DATA)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: a pty whose other side closed
        self.send(Frame(FrameType.STDIN, 0, data))
        if not data:
            self.sel.unregister(self.stdin)
            os.close(self.stdin)
            self.stdin = None

    def _fatal(self, message: str, code: int = 125) -> None:
        """End the VM now (hostile guest, hung workload): record why, kill QEMU."""
        if self.exited is None:
            self.exited = ExitRecord(code, message)
            with contextlib.suppress(OSError):
                self.exited.save(self.exit_path)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.qemu_pid, signal.SIGKILL)

    # --- from the supervisor's own thread ------------------------------------------------------
    def adopt(self, sock: socket.socket, unread: bytes) -> None:
        """Serve a control connection the supervisor accepted, from the frames in `unread`
        on (what it has read of the connection and not served). Any thread."""
        self._post(lambda: self._serve(sock, unread))

    def request(self, ftype: ctl.Type, payload: bytes = b"") -> None:
        """A SIGNAL, RESIZE or POWEROFF for the workload (session 0) from the supervisor
        itself, as a client's would be. Any thread; a hub that has stopped takes nothing."""
        self._post(lambda: self._for_workload(ftype, payload))

    def _post(self, action: Callable[[], None]) -> None:
        with self._inbox_lock:
            self._inbox.append(action)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _take_inbox(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 512)
        with self._inbox_lock:
            actions, self._inbox = self._inbox, []
        for action in actions:
            action()

    # --- control clients ---------------------------------------------------------------------
    def _accept(self) -> None:
        assert self.listener is not None
        try:
            sock, _ = self.listener.accept()
        except OSError:  # gone before we looked, or no descriptor left: nothing to serve
            return
        self._serve(sock, b"")

    def _serve(self, sock: socket.socket, unread: bytes) -> None:
        sock.setblocking(True)
        sock.settimeout(5)
        client = _Client(sock)
        self.clients[sock.fileno()] = client
        self.sel.register(sock, selectors.EVENT_READ, client)
        if len(self.clients) > MAX_CLIENTS:
            self._refuse(client, f"too many control clients (at most {MAX_CLIENTS} at once)")
        elif unread:
            self._take(client, unread)

    def _refuse(self, c: _Client, message: str, session: int = 0) -> None:
        """Tell a control client what was wrong with what it sent (REFUSED), and close its
        connection. Nothing of it reaches the guest; the VM runs on."""
        with contextlib.suppress(OSError):
            c.sock.send(ctl.message(ctl.Type.REFUSED, message, session), socket.MSG_DONTWAIT)
        self._drop(c)

    def _drop(self, c: _Client) -> None:
        self.clients.pop(c.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        for sid in list(c.sessions.values()):
            self.owner.pop(sid, None)  # its sessions run on; their output has no reader
        c.sock.close()

    def _to_client(self, c: _Client, data: bytes) -> None:
        try:
            c.sock.sendall(data)
        except OSError:
            self._drop(c)

    def _read_client(self, c: _Client) -> None:
        try:
            data = c.sock.recv(256 * 1024)
        except OSError:
            data = b""
        if not data:
            self._drop(c)
            return
        self._take(c, data)

    def _take(self, c: _Client, data: bytes) -> None:
        fd = c.sock.fileno()
        # A control client is input like any other: the worst it can get for what it sends is
        # REFUSED and a closed connection. Only checked requests reach the guest, whose
        # answers to a malformed one would otherwise count as the workload's failure.
        try:
            for ftype, session, payload in c.decoder.feed(data):
                self._from_client(c, ftype, session, payload)
                if self.clients.get(fd) is not c:
                    return  # refused or gone
        except ControlError as err:  # the frame's shape (control.Decoder)
            self._refuse(c, str(err))
        except Exception as err:  # noqa: BLE001 - a failed request must not end the VM
            self._refuse(c, f"the request failed: {err!r}")

    def _from_client(self, c: _Client, ftype: ctl.Type, session: int, payload: bytes) -> None:
        if ftype is ctl.Type.POWEROFF:
            self._for_workload(ftype, payload)
            return
        if ftype in (ctl.Type.PAUSE, ctl.Type.RESUME):
            self._control_vm(c, ftype)
            return
        if ftype is ctl.Type.ATTACH:
            self._refuse(c, "ATTACH: the workload's stdio is not served here")
            return
        if ftype is ctl.Type.SIGNAL and session == 0:
            # A client that sent the signal and hung up is still served what it sent with it.
            with contextlib.suppress(OSError):
                c.sock.sendall(ctl.encode(ctl.Type.DONE))
        if ftype is ctl.Type.EXEC:
            if session in c.sessions:
                self._refuse(c, f"EXEC needs a session id >= 1 not in use, not {session}")
                return
            sid = self.next_session
            self.next_session += 1
            c.sessions[session] = sid
            self.owner[sid] = (c, session)
            self.send(Frame(FrameType.EXEC, sid, payload))
            return
        if session == 0:
            if ftype is not ctl.Type.STDIN:  # the workload's stdin is the supervisor's
                self._for_workload(ftype, payload)
            return
        target = c.sessions.get(session)
        if target is not None:
            self.send(Frame(_TO_AGENT[ftype], target, payload))

    def _for_workload(self, ftype: ctl.Type, payload: bytes) -> None:
        if ftype is ctl.Type.POWEROFF:
            self.send(Frame(FrameType.POWEROFF, 0))
            return
        if self.exited is not None:
            return  # a finished workload takes nothing
        if ftype is ctl.Type.SIGNAL and payload == signal.SIGKILL.to_bytes(4, "big"):
            self.kill_deadline = time.monotonic() + KILL_GRACE_S
        self.send(Frame(_TO_AGENT[ftype], 0, payload))

    def _forward(self, ports: tuple[int, ...]) -> None:
        if self.forward_ports is None:
            return  # not asked for (WATCH_PORTS unset): nothing to do
        # A failure is not the workload's business (its stderr is the client's): the VM
        # runs on, and the guest's next report tries again.
        with contextlib.suppress(BareboatError, OSError):
            self.forward_ports(ports)

    def _control_vm(self, c: _Client, what: ctl.Type) -> None:
        action = self.pause_vm if what is ctl.Type.PAUSE else self.resume_vm
        try:
            if action is None:
                raise BackendError("this VM cannot be paused")
            action()
        except (BareboatError, OSError) as err:
            reply = ctl.message(ctl.Type.ERROR, str(err))
        else:
            reply = ctl.encode(ctl.Type.DONE)
        self._to_client(c, reply)


def _control_event(event: Event, session: int) -> bytes:
    """A guest event of an exec session as its client's control frame."""
    if isinstance(event, Output):
        kind = ctl.Type.STDOUT if event.stream == "stdout" else ctl.Type.STDERR
        return ctl.encode(kind, session, event.data)
    if isinstance(event, Started):
        return ctl.encode(ctl.Type.STARTED, session, event.pid.to_bytes(4, "big"))
    if isinstance(event, Exited):
        return ctl.encode(ctl.Type.EXIT, session, event.status.to_bytes(4, "big"))
    assert isinstance(event, AgentError)
    return ctl.message(ctl.Type.ERROR, event.message, session)
