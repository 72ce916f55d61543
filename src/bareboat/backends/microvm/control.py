"""The control protocol of a running VM's hub, and its client (`CtlClient`).

bareboat's own processes (the CLI's `kill`, `exec` and `rm`, bareboat-runtime's `kill`,
`exec`, `pause` and `resume`) reach a VM through the unix socket its hub serves. This protocol
is the host's alone: none of its frames reaches a guest. The hub checks each request and turns
it into agent frames (guest/PROTOCOL.md) or a QMP command, and the guest's answers for a
client's exec session into this protocol's events.

A frame: magic `BBCT`, u8 version (1), u8 type, u32 session, u32 payload length, payload; all
integers big-endian. Session 0 is the workload; an exec session has the id its client gave it
in EXEC (any id >= 1 not in use on that connection; the hub maps it to the agent's).

| n  | name     | dir | payload                                                      |
|---:|----------|-----|--------------------------------------------------------------|
| 1  | EXEC     | c→h | the agent's EXEC process fields (passed on as they are)      |
| 2  | STDIN    | c→h | bytes (≤ 64 KiB) for an exec session; empty = end of input   |
| 3  | SIGNAL   | c→h | u32 signal, 1..64                                            |
| 4  | RESIZE   | c→h | u16 rows, u16 cols                                           |
| 5  | POWEROFF | c→h | empty: the guest powers off (its processes are killed)       |
| 6  | PAUSE    | c→h | empty: stop the vCPUs; answered DONE or ERROR                |
| 7  | RESUME   | c→h | empty: continue them; answered DONE or ERROR                 |
| 16 | STARTED  | h→c | u32 the session's guest pid                                  |
| 17 | STDOUT   | h→c | bytes (≤ 64 KiB); empty = end of the stream                  |
| 18 | STDERR   | h→c | as STDOUT                                                    |
| 19 | EXIT     | h→c | u32 the session's status: its code, or 128 + its signal      |
| 20 | ERROR    | h→c | UTF-8 (≤ 1 KiB): the guest's error for the session, or why   |
|    |          |     | PAUSE/RESUME failed                                          |
| 21 | DONE     | h→c | empty: PAUSE or RESUME done                                  |
| 22 | REFUSED  | h→c | UTF-8 (≤ 1 KiB): what was wrong with the client's frame; the |
|    |          |     | hub then closes the connection                               |

Either side checks what it receives (`Decoder`): magic, version, a type that may travel that
way, the size each type takes, and the values (a signal 1..64, EXEC's session >= 1). A client
is input to the hub like any other; the worst it can get for what it sends is REFUSED.

Imported by bareboat-runtime's `kill`, `pause` and `resume`: this module imports only what
the runtime has loaded already (the exec relay's needs are imported when it runs, and the
frame splitter it shares with the other protocols, `bareboat.framing`, when a first frame is
read: `kill` only sends).
"""

from __future__ import annotations

import contextlib
import enum
import os
import socket
import struct

from bareboat.errors import BackendError

TYPE_CHECKING = False  # typing costs import time on the runtime's calls; mypy sees it true
if TYPE_CHECKING:
    import selectors
    import threading
    from collections.abc import Callable, Iterator
    from typing import Any

MAGIC = b"BBCT"
VERSION = 1
HEADER = struct.Struct(">4sBBII")
MAX_DATA = 64 * 1024
MAX_EXEC = 1 << 20  # the agent protocol's largest payload
MAX_MESSAGE = 1024
MAX_SESSION = 0xFFFFFFFF


class Type(enum.IntEnum):
    EXEC = 1
    STDIN = 2
    SIGNAL = 3
    RESIZE = 4
    POWEROFF = 5
    PAUSE = 6
    RESUME = 7
    STARTED = 16
    STDOUT = 17
    STDERR = 18
    EXIT = 19
    ERROR = 20
    DONE = 21
    REFUSED = 22


# The largest payload of each type that may arrive, by direction; `FIXED` types take exactly it.
REQUEST_LIMITS: dict[Type, int] = {
    Type.EXEC: MAX_EXEC,
    Type.STDIN: MAX_DATA,
    Type.SIGNAL: 4,
    Type.RESIZE: 4,
    Type.POWEROFF: 0,
    Type.PAUSE: 0,
    Type.RESUME: 0,
}
EVENT_LIMITS: dict[Type, int] = {
    Type.STARTED: 4,
    Type.STDOUT: MAX_DATA,
    Type.STDERR: MAX_DATA,
    Type.EXIT: 4,
    Type.ERROR: MAX_MESSAGE,
    Type.DONE: 0,
    Type.REFUSED: MAX_MESSAGE,
}
FIXED = frozenset({Type.SIGNAL, Type.RESIZE, Type.STARTED, Type.EXIT})

Frame = tuple[Type, int, bytes]  # type, session, payload


def encode(ftype: Type, session: int = 0, payload: bytes = b"") -> bytes:
    if not 0 <= session <= MAX_SESSION:
        raise BackendError(f"control session id out of range: {session}")
    limit = REQUEST_LIMITS.get(ftype, EVENT_LIMITS.get(ftype, 0))
    if len(payload) > limit:
        raise BackendError(f"control {ftype.name} of {len(payload)} bytes (limit {limit})")
    return HEADER.pack(MAGIC, VERSION, ftype, session, len(payload)) + payload


def message(ftype: Type, text: str, session: int = 0) -> bytes:
    """An ERROR or REFUSED frame: `text` cut to the protocol's bound."""
    return encode(ftype, session, text.encode("utf-8", "replace")[:MAX_MESSAGE])


class Decoder:
    """Splits one direction of a connection into checked frames; anything else raises
    BackendError naming the problem, from the point of view of `peer` ("control client")."""

    def __init__(self, limits: dict[Type, int], peer: str) -> None:
        self.limits = limits
        self.peer = peer
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        # Imported here, not at the top: see the module docstring.
        from bareboat.framing import split

        self._buf += data
        frames = split(self._buf, HEADER, self._check_header)
        for (ftype, session), payload in frames:
            self._check_payload(ftype, session, payload)
        return [(ftype, session, payload) for (ftype, session), payload in frames]

    def _check_header(self, fields: tuple[Any, ...]) -> tuple[tuple[Type, int], int]:
        magic, version, kind, session, length = fields
        who = self.peer
        if magic != MAGIC:
            raise BackendError(f"{who} sent a frame with bad magic {magic!r}")
        if version != VERSION:
            raise BackendError(f"{who} speaks control protocol version {version}, not {VERSION}")
        try:
            ftype = Type(kind)
        except ValueError:
            raise BackendError(f"{who} sent unknown frame type {kind}") from None
        limit = self.limits.get(ftype)
        if limit is None:
            raise BackendError(f"{who} sent {ftype.name}, which it may not send")
        if ftype in FIXED and length != limit:
            raise BackendError(f"{ftype.name} takes {limit} bytes, not {length}")
        if length > limit:
            raise BackendError(f"{who} sent a {ftype.name} of {length} bytes (limit {limit})")
        return (ftype, session), length

    @staticmethod
    def _check_payload(ftype: Type, session: int, payload: bytes) -> None:
        if ftype is Type.SIGNAL and not 1 <= int.from_bytes(payload, "big") <= 64:
            raise BackendError(f"no signal {int.from_bytes(payload, 'big')}")
        if ftype is Type.EXEC and session == 0:
            raise BackendError("EXEC needs a session id >= 1 not in use, not 0")


def text(payload: bytes) -> str:
    """An ERROR's or REFUSED's message as one printable line (it may reach a terminal)."""
    return "".join(c if c.isprintable() else "?" for c in payload.decode("utf-8", "replace"))


# --- the client side (any process) ----------------------------------------------------------


class CtlClient:
    """A connection to a running VM's hub."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(os.fspath(path))
        except OSError as err:
            self.sock.close()
            raise BackendError(f"the VM is not running ({err.strerror})") from None
        self.decoder = Decoder(EVENT_LIMITS, "the VM's hub")
        self._send_lock: threading.Lock | None = None  # `exec`'s: its stdin pump sends too

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> CtlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, ftype: Type, session: int = 0, payload: bytes = b"") -> None:
        data = encode(ftype, session, payload)
        try:
            if self._send_lock is None:
                self.sock.sendall(data)
            else:
                with self._send_lock:
                    self.sock.sendall(data)
        except OSError as err:
            raise BackendError(f"lost the VM's control socket: {err}") from None

    def signal(self, sig: int, session: int = 0) -> None:
        self.send(Type.SIGNAL, session, int(sig).to_bytes(4, "big"))

    def resize(self, rows: int, cols: int, session: int = 0) -> None:
        self.send(Type.RESIZE, session, struct.pack(">HH", rows, cols))

    def poweroff(self) -> None:
        self.send(Type.POWEROFF)

    def pause(self) -> None:
        """Stop the VM's vCPUs; returns when the hub has done it."""
        self._vm_request(Type.PAUSE)

    def resume(self) -> None:
        """Continue the VM's vCPUs; returns when the hub has done it."""
        self._vm_request(Type.RESUME)

    def _vm_request(self, ftype: Type) -> None:
        self.send(ftype)
        ended = "the VM ended before it could be paused or resumed"
        while True:
            for kind, _, payload in self._receive(ended):
                if kind is Type.DONE:
                    return
                if kind in (Type.ERROR, Type.REFUSED):
                    raise BackendError(text(payload))

    def _receive(self, ended: str) -> list[Frame]:
        try:
            data = self.sock.recv(256 * 1024)
        except OSError as err:
            raise BackendError(f"lost the VM's control socket: {err}") from None
        if not data:
            raise BackendError(ended)
        return self.decoder.feed(data)

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
        ended = "the VM ended before the exec session did"
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
                            return int.from_bytes(data, "big")
                        elif kind is Type.REFUSED:
                            raise BackendError(text(data))
        finally:
            sel.close()

    def _pump_stdin(self, fd: int) -> None:
        try:
            while True:
                data = os.read(fd, MAX_DATA)
                self.send(Type.STDIN, 1, data)
                if not data:
                    return
        except (OSError, BackendError):
            return


@contextlib.contextmanager
def _winch_events(
    sel: selectors.BaseSelector, tty: int | None
) -> Iterator[Callable[[], tuple[int, int] | None]]:
    """While relaying a session with a terminal: SIGWINCH makes the selector report "winch",
    and the function it yields then gives the terminal's new (rows, cols). The signal only
    writes to a pipe (signal.set_wakeup_fd), so the frame is sent by the relay loop itself."""
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


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
