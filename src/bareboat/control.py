"""A sandbox's control socket: its one protocol and its one client (`ControlClient`).

Every sandbox has one unix control socket, served by its supervisor: the engine's monitor
(`engine/monitor.py`; for a microVM it hands the VM's requests to the VM's hub, a thread in
the same process), or, under bareboat-runtime, a microVM's hub itself (`backends/microvm/
hub.py`, in the gate). bareboat's own processes speak this protocol on it: the CLI's attach,
`wait`, `kill`, `exec` and `rm`, bareboat-runtime's `kill`, `exec`, `pause` and `resume`. It is
the host's alone: none of its frames reaches a guest. A VM's hub checks each request and turns
it into agent frames (guest/PROTOCOL.md) or a QMP command, and the guest's answers for a
client's exec session into this protocol's events.

A frame: magic `BBCT`, u8 version (1), u8 type, u32 session, u32 payload length, payload; all
integers big-endian. Session 0 is the workload; an exec session has the id its client gave it
in EXEC (any id >= 1 not in use on that connection; the hub maps it to the agent's).

| n  | name     | dir | payload                                                      |
|---:|----------|-----|--------------------------------------------------------------|
| 1  | EXEC     | c→s | the agent's EXEC process fields (passed on as they are); VM  |
| 2  | STDIN    | c→s | bytes (≤ 64 KiB); empty = end of input. Session 0: the       |
|    |          |     | workload's, from a client attached with stdin (monitor)      |
| 3  | SIGNAL   | c→s | u32 signal, 1..64; session 0's answered DONE                 |
| 4  | RESIZE   | c→s | u16 rows, u16 cols                                           |
| 5  | POWEROFF | c→s | empty: the guest powers off (its processes are killed); VM   |
| 6  | PAUSE    | c→s | empty: stop the vCPUs; answered DONE or ERROR; VM            |
| 7  | RESUME   | c→s | empty: continue them; answered DONE or ERROR; VM             |
| 8  | ATTACH   | c→s | u8 stdin (0 or 1), u16 rows, u16 cols (0 0: keep the size):  |
|    |          |     | stream the workload's output here (monitor)                  |
| 16 | STARTED  | s→c | u32 the session's pid (session 0: the workload's, on attach) |
| 17 | STDOUT   | s→c | bytes (≤ 64 KiB); empty = end of the stream                  |
| 18 | STDERR   | s→c | as STDOUT                                                    |
| 19 | EXIT     | s→c | u32 the session's status: its code, or 128 + its signal.     |
|    |          |     | Session 0 (monitor): every client hears it, then the close   |
| 20 | ERROR    | s→c | UTF-8 (≤ 1 KiB): the guest's error for the session, or why   |
|    |          |     | PAUSE/RESUME failed                                          |
| 21 | DONE     | s→c | empty: the workload's SIGNAL passed on, PAUSE or RESUME done |
| 22 | REFUSED  | s→c | UTF-8 (≤ 1 KiB): what was wrong with the client's frame; the |
|    |          |     | connection is then closed                                    |
| 23 | FAILED   | s→c | u32 exit code, UTF-8 (≤ 64 KiB): the workload could not run  |
|    |          |     | or its end failed; instead of EXIT (monitor)                 |

"VM": served where the sandbox is a microVM (the monitor hands the connection to the hub at
its first such frame, or a frame of a session >= 1); "monitor": served by the engine's monitor
only. Anything else is REFUSED, as is any frame that fails the checks: either side checks what
it receives (`Decoder`): magic, version, a type that may travel that way, the exact size each
type takes, and the values (a signal 1..64, EXEC's session >= 1, ATTACH's stdin 0 or 1). A
client is input like any other: the worst it can get for what it sends is REFUSED; the
sandbox runs on. Any local root process can connect, so a supervisor serves at most
MAX_CLIENTS connections at once.

Imported by bareboat-runtime's `kill`, `pause` and `resume`: this module imports only what
the runtime has loaded already and struct (what the relays need is imported when they run,
and the frame splitter it shares with the agent codec, `bareboat.framing`, when a first frame
is read: `kill` only sends).
"""

from __future__ import annotations

import enum
import os
import socket
import struct

from bareboat.errors import BareboatError, ControlError

TYPE_CHECKING = False  # typing costs import time on the runtime's calls; mypy sees it true
if TYPE_CHECKING:
    import selectors
    import threading
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from typing import Any

MAGIC = b"BBCT"
VERSION = 1
HEADER = struct.Struct(">4sBBII")
MAX_DATA = 64 * 1024
MAX_EXEC = 1 << 20  # the agent protocol's largest payload
MAX_MESSAGE = 1024
MAX_REPORT = 64 * 1024  # a FAILED's message (a VM's carries its console log's tail)
MAX_SESSION = 0xFFFFFFFF
# Connections one supervisor serves at once: each holds a descriptor and up to a frame of
# input, and a supervisor out of descriptors could not go on serving its sandbox.
MAX_CLIENTS = 64
ATTACH = struct.Struct(">BHH")
WINSIZE = struct.Struct(">HH")


class Type(enum.IntEnum):
    EXEC = 1
    STDIN = 2
    SIGNAL = 3
    RESIZE = 4
    POWEROFF = 5
    PAUSE = 6
    RESUME = 7
    ATTACH = 8
    STARTED = 16
    STDOUT = 17
    STDERR = 18
    EXIT = 19
    ERROR = 20
    DONE = 21
    REFUSED = 22
    FAILED = 23


# The largest payload of each type that may arrive, by direction; `FIXED` types take exactly it.
REQUEST_LIMITS: dict[Type, int] = {
    Type.EXEC: MAX_EXEC,
    Type.STDIN: MAX_DATA,
    Type.SIGNAL: 4,
    Type.RESIZE: WINSIZE.size,
    Type.POWEROFF: 0,
    Type.PAUSE: 0,
    Type.RESUME: 0,
    Type.ATTACH: ATTACH.size,
}
EVENT_LIMITS: dict[Type, int] = {
    Type.STARTED: 4,
    Type.STDOUT: MAX_DATA,
    Type.STDERR: MAX_DATA,
    Type.EXIT: 4,
    Type.ERROR: MAX_MESSAGE,
    Type.DONE: 0,
    Type.REFUSED: MAX_MESSAGE,
    Type.FAILED: 4 + MAX_REPORT,
}
FIXED = frozenset({Type.SIGNAL, Type.RESIZE, Type.ATTACH, Type.STARTED, Type.EXIT})
# What the engine's monitor serves itself on session 0; every other request is its VM's.
SUPERVISOR_REQUESTS = frozenset({Type.STDIN, Type.SIGNAL, Type.RESIZE, Type.ATTACH})

Frame = tuple[Type, int, bytes]  # type, session, payload


def encode(ftype: Type, session: int = 0, payload: bytes = b"") -> bytes:
    if not 0 <= session <= MAX_SESSION:
        raise ControlError(f"control session id out of range: {session}")
    limit = REQUEST_LIMITS.get(ftype, EVENT_LIMITS.get(ftype, 0))
    if len(payload) > limit:
        raise ControlError(f"control {ftype.name} of {len(payload)} bytes (limit {limit})")
    return HEADER.pack(MAGIC, VERSION, ftype, session, len(payload)) + payload


def message(ftype: Type, text: str, session: int = 0) -> bytes:
    """An ERROR or REFUSED frame: `text` cut to the protocol's bound."""
    return encode(ftype, session, text.encode("utf-8", "replace")[:MAX_MESSAGE])


def status(code: int) -> bytes:
    """An exit code or status as its u32 (a negative one as 0: it never is one)."""
    return min(max(code, 0), 0xFFFFFFFF).to_bytes(4, "big")


def failed(code: int, text: str) -> bytes:
    """A FAILED frame: the workload's exit code and why, cut to the protocol's bound."""
    return encode(Type.FAILED, 0, status(code) + text.encode("utf-8", "replace")[:MAX_REPORT])


def attach_request(stdin: bool, rows: int = 0, cols: int = 0) -> bytes:
    return encode(Type.ATTACH, 0, ATTACH.pack(int(stdin), rows, cols))


def u32(payload: bytes) -> int:
    return int.from_bytes(payload[:4], "big")


class Decoder:
    """Splits one direction of a connection into checked frames; anything else raises
    ControlError naming the problem, from the point of view of `peer` ("control client")."""

    def __init__(self, limits: dict[Type, int], peer: str) -> None:
        self.limits = limits
        self.peer = peer
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        # Imported here, not at the top: see the module docstring.
        from bareboat.framing import split

        self.buf += data
        frames = split(self.buf, HEADER, self._check_header)
        for (ftype, session), payload in frames:
            self._check_payload(ftype, session, payload)
        return [(ftype, session, payload) for (ftype, session), payload in frames]

    def _check_header(self, fields: tuple[Any, ...]) -> tuple[tuple[Type, int], int]:
        magic, version, kind, session, length = fields
        who = self.peer
        if magic != MAGIC:
            raise ControlError(f"{who} sent a frame with bad magic {magic[:4]!r}")
        if version != VERSION:
            raise ControlError(f"{who} speaks control protocol version {version}, not {VERSION}")
        try:
            ftype = Type(kind)
        except ValueError:
            raise ControlError(f"{who} sent unknown frame type {kind}") from None
        limit = self.limits.get(ftype)
        if limit is None:
            raise ControlError(f"{who} sent {ftype.name}, which it may not send")
        if ftype in FIXED and length != limit:
            raise ControlError(f"{ftype.name} takes {limit} bytes, not {length}")
        if length > limit:
            raise ControlError(f"{who} sent a {ftype.name} of {length} bytes (limit {limit})")
        if ftype is Type.FAILED and length < 4:
            raise ControlError(f"FAILED takes at least 4 bytes, not {length}")
        return (ftype, session), length

    @staticmethod
    def _check_payload(ftype: Type, session: int, payload: bytes) -> None:
        if ftype is Type.SIGNAL and not 1 <= u32(payload) <= 64:
            raise ControlError(f"no signal {u32(payload)}")
        if ftype is Type.EXEC and session == 0:
            raise ControlError("EXEC needs a session id >= 1 not in use, not 0")
        if ftype is Type.ATTACH and payload[0] > 1:
            raise ControlError(f"ATTACH's stdin must be 0 or 1, not {payload[0]}")


def text(payload: bytes) -> str:
    """An ERROR's or REFUSED's message as one printable line (it may reach a terminal)."""
    return "".join(c if c.isprintable() else "?" for c in payload.decode("utf-8", "replace"))


# --- the socket -------------------------------------------------------------------------------
# Socket paths can exceed the 108-byte sun_path under deep roots, so both sides go through
# /proc/self/fd/<dirfd>/<name>.


def _short(path: str) -> tuple[int, str]:
    parent, _, name = path.rpartition("/")
    fd = os.open(parent or ".", os.O_PATH | os.O_DIRECTORY)
    return fd, f"/proc/self/fd/{fd}/{name}"


def listen(path: str | os.PathLike[str]) -> socket.socket:
    """The sandbox's control socket at `path` (mode 0600), listening, non-blocking."""
    fd, short = _short(os.fspath(path))
    try:
        try:  # noqa: SIM105 - contextlib is not worth it here
            os.unlink(short)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(short)
        os.chmod(short, 0o600)
        sock.listen(MAX_CLIENTS)
        sock.setblocking(False)
        return sock
    finally:
        os.close(fd)


def connect(path: str, timeout: float, peer: str) -> socket.socket:
    try:
        fd, short = _short(path)
    except OSError:
        raise ControlError(f"{peer} is not running") from None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        deadline = None
        while True:
            try:
                sock.connect(short)
                return sock
            except BlockingIOError:
                # A unix socket's full backlog answers EAGAIN at once, timeout or not: the
                # supervisor is busy, not gone. Try again until the deadline.
                import time

                deadline = deadline or time.monotonic() + timeout
                if time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                sock.close()
                raise ControlError(f"{peer} does not answer") from None
            except OSError as err:
                sock.close()
                raise ControlError(f"{peer} is not running ({err.strerror})") from None
    finally:
        os.close(fd)


# --- the client (any process) -----------------------------------------------------------------

SEND_HIGH = 1 << 20  # bytes waiting to be sent while attached, above which stdin is not read


class ControlClient:
    """One connection to a sandbox's control socket. `peer` names the sandbox in errors."""

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float = 5.0, peer: str = "the sandbox"
    ) -> None:
        self.path = os.fspath(path)
        self.peer = peer
        self.sock = connect(self.path, timeout, peer)
        self.decoder = Decoder(EVENT_LIMITS, peer)
        self._send_lock: threading.Lock | None = None  # `exec`'s: its stdin pump sends too
        # While attached (`pump`): what waits to be sent, never blocking on it.
        self._outbuf: bytearray | None = None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, ftype: Type, session: int = 0, payload: bytes = b"") -> None:
        data = encode(ftype, session, payload)
        if self._outbuf is not None:
            self._queue(data)
            return
        try:
            if self._send_lock is None:
                self.sock.sendall(data)
            else:
                with self._send_lock:
                    self.sock.sendall(data)
        except OSError as err:
            raise ControlError(f"lost the connection to {self.peer}: {err}") from None

    # --- one-frame requests -----------------------------------------------------------------
    def signal(self, sig: int, session: int = 0) -> None:
        """Send `sig` to the workload (or an exec session); does not wait for DONE."""
        self.send(Type.SIGNAL, session, int(sig).to_bytes(4, "big"))

    def kill(self, sig: int) -> None:
        """Send `sig` to the workload; returns when the supervisor has passed it on."""
        self.signal(sig)
        self._await_done("it could take the signal")

    def resize(self, rows: int, cols: int, session: int = 0) -> None:
        self.send(Type.RESIZE, session, WINSIZE.pack(rows, cols))

    def poweroff(self) -> None:
        self.send(Type.POWEROFF)

    def pause(self) -> None:
        """Stop the VM's vCPUs; returns when its hub has done it."""
        self.send(Type.PAUSE)
        self._await_done("it could be paused")

    def resume(self) -> None:
        """Continue the VM's vCPUs; returns when its hub has done it."""
        self.send(Type.RESUME)
        self._await_done("it could be resumed")

    def _await_done(self, what: str) -> None:
        while True:
            for kind, _, payload in self._receive(f"{self.peer} ended before {what}"):
                if kind is Type.DONE:
                    return
                if kind is Type.ERROR:
                    raise ControlError(text(payload))
                if kind is Type.REFUSED:
                    raise self._refused(payload)

    def _receive(self, ended: str) -> list[Frame]:
        try:
            data = self.sock.recv(256 * 1024)
        except OSError as err:
            raise ControlError(f"lost the connection to {self.peer}: {err}") from None
        if not data:
            raise ControlError(ended)
        return self.decoder.feed(data)

    def _refused(self, payload: bytes) -> ControlError:
        return ControlError(f"{self.peer} refused the request: {text(payload)}")

    # --- the workload: attach, wait ---------------------------------------------------------
    def attach(self, *, stdin: bool, rows: int = 0, cols: int = 0) -> None:
        """Ask for the workload's output (and to send its stdin); then `pump`."""
        self.send(Type.ATTACH, 0, ATTACH.pack(int(stdin), rows, cols))

    def wait(self, timeout: float | None) -> int | None:
        """The exit code the supervisor announces (None on timeout); output is not sent to a
        client that did not attach."""
        import select
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        ended = f"lost the connection to {self.peer}"
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return None
            for kind, session, payload in self._receive(ended):
                if session == 0 and kind in (Type.EXIT, Type.FAILED):
                    return u32(payload)
                if kind is Type.REFUSED:
                    raise self._refused(payload)

    def forward_signal(self, sig: int) -> None:
        """Pass a signal on (from a signal handler too): on a connection of its own, never
        queued behind stdin the workload has not read."""
        try:
            with ControlClient(self.path, timeout=2.0, peer=self.peer) as c:
                c.signal(sig)
        except (BareboatError, OSError):
            pass

    def _queue(self, frame: bytes) -> None:
        """Send after what waits (whole frames, in order), as much as the socket takes now."""
        assert self._outbuf is not None
        self._outbuf += frame
        try:  # noqa: SIM105
            self._flush()
        except OSError:
            pass

    def _flush(self) -> None:
        buf = self._outbuf
        while buf:
            try:
                n = self.sock.send(buf, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            del buf[:n]

    def pump(self, *, stdin_fd: int | None, stdout_fd: int = 1, stderr_fd: int = 2) -> int:
        """Stream an attached workload until it exits; its exit code. Raises its FAILED as a
        BareboatError with that exit code.

        It never blocks on a send: stdin waits in a buffer and goes out as the socket takes
        it, and stdin is not read while much waits, so the output keeps flowing both ways
        (the monitor stops reading a client whose stdin the workload does not take, and a
        client blocked in a send would stop reading the output it is sent). Signals travel
        on a connection of their own (`forward_signal`)."""
        import select

        self._outbuf = out = bytearray()
        # Blocking, not with a timeout: a socket with one waits for room before a send, even
        # one with MSG_DONTWAIT, and a client that waits there reads no output (the monitor,
        # blocked on sending it, then drops the client).
        self.sock.settimeout(None)
        sock = self.sock.fileno()
        ended = f"lost the connection to {self.peer}"
        while True:
            reading = [sock]
            if stdin_fd is not None and len(out) < SEND_HIGH:
                reading.append(stdin_fd)
            # With a timeout: what a signal handler queued while we wait (a resize the socket
            # could not take at once) is not left until the next output.
            ready, writable, _ = select.select(reading, [sock] if out else [], [], 0.5)
            if writable:
                try:
                    self._flush()
                except OSError:
                    # The supervisor closed: it may have said why (EXIT) before, read that.
                    out.clear()
                    stdin_fd = None
            if stdin_fd is not None and stdin_fd in ready:
                data = os.read(stdin_fd, MAX_DATA)
                self.send(Type.STDIN, 0, data)
                if not data:
                    stdin_fd = None
            if sock in ready:
                for kind, session, payload in self._receive(ended):
                    if session != 0:
                        continue
                    if kind in (Type.STDOUT, Type.STDERR):
                        try:  # noqa: SIM105
                            write_all(stdout_fd if kind is Type.STDOUT else stderr_fd, payload)
                        except BrokenPipeError:
                            pass  # nobody reads it any more; the workload runs on
                    elif kind is Type.EXIT:
                        return u32(payload)
                    elif kind is Type.FAILED:
                        err = BareboatError(payload[4:].decode("utf-8", "replace"))
                        err.exit_code = u32(payload)
                        raise err
                    elif kind is Type.REFUSED:
                        raise self._refused(payload)

    # --- a VM's exec session ----------------------------------------------------------------
    def exec(
        self,
        payload: bytes,
        *,
        stdin: int | None,
        stdout: int,
        stderr: int,
        detach: bool = False,
        on_error: Callable[[str], None] | None = None,
        on_started: Callable[[], None] | None = None,
        tty: int | None = None,
    ) -> int:
        """Run one EXEC session to its end, relaying the given fds; its exit status. With
        `tty` (a terminal whose size is the session's), a SIGWINCH resizes the session's pty:
        call it from the main thread. `on_error` gets the guest's error messages."""
        import selectors
        import threading

        self.send(Type.EXEC, 1, payload)
        if detach:
            return 0
        self._send_lock = threading.Lock()
        self.sock.settimeout(None)
        if stdin is not None:
            # A thread, not the selector: stdin may be a regular file, which epoll refuses.
            threading.Thread(target=self._pump_stdin, args=(stdin,), daemon=True).start()
        fds = {Type.STDOUT: stdout, Type.STDERR: stderr}
        ended = f"{self.peer} ended before the exec session did"
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, "sock")
        try:
            with _winch_events(sel, tty) as resized:
                while True:
                    ready = {key.data for key, _ in sel.select()}
                    if "winch" in ready:
                        size = resized()
                        if size is not None:
                            self.resize(*size, session=1)
                        if "sock" not in ready:
                            continue
                    for kind, _, data in self._receive(ended):
                        if kind in fds and data:
                            write_all(fds[kind], data)
                        elif kind is Type.ERROR and on_error is not None:
                            on_error(text(data))
                        elif kind is Type.STARTED and on_started is not None:
                            on_started()
                        elif kind is Type.EXIT:
                            return u32(data)
                        elif kind is Type.REFUSED:
                            raise self._refused(data)
        finally:
            sel.close()

    def _pump_stdin(self, fd: int) -> None:
        try:
            while True:
                data = os.read(fd, MAX_DATA)
                self.send(Type.STDIN, 1, data)
                if not data:
                    return
        except (OSError, BareboatError):
            return


def _winch_events(
    sel: selectors.BaseSelector, tty: int | None
) -> AbstractContextManager[Callable[[], tuple[int, int] | None]]:
    """While relaying a session with a terminal: SIGWINCH makes the selector report "winch",
    and the function it yields then gives the terminal's new (rows, cols). The signal only
    writes to a pipe (signal.set_wakeup_fd), so the frame is sent by the relay loop itself."""
    import contextlib

    @contextlib.contextmanager
    def events() -> Iterator[Callable[[], tuple[int, int] | None]]:
        if tty is None:
            yield lambda: None
            return
        import fcntl
        import selectors
        import signal
        import termios

        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_handler = signal.signal(signal.SIGWINCH, lambda *_: None)
        old_fd = signal.set_wakeup_fd(w)
        sel.register(r, selectors.EVENT_READ, "winch")

        def size() -> tuple[int, int] | None:
            with contextlib.suppress(OSError):
                while os.read(r, 64):
                    pass
            try:
                rows, cols, _, _ = struct.unpack(
                    "HHHH", fcntl.ioctl(tty, termios.TIOCGWINSZ, b"\0" * 8)
                )
            except OSError:
                return None
            return rows, cols

        try:
            yield size
        finally:
            signal.set_wakeup_fd(old_fd)
            signal.signal(signal.SIGWINCH, old_handler)
            sel.unregister(r)
            os.close(r)
            os.close(w)

    return events()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
