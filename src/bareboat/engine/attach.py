"""The client side of the monitor's control socket: attach, stream, forward.

While it streams, the client never blocks on a send: stdin waits in `outbuf` and goes out as
the socket takes it, and stdin is not read while much waits, so the output keeps flowing both
ways (the monitor stops reading a client whose stdin the workload does not take, and a client
blocked in a send would stop reading the output it is sent). Signals travel on a connection of
their own, so a workload that does not read its stdin still gets the user's Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from bareboat.errors import BareboatError

from . import protocol as P

SEND_HIGH = 1 << 20  # bytes waiting to be sent above which stdin is not read


@dataclass
class AttachClient:
    sock: socket.socket
    tty: bool
    reader: P.FrameReader = field(default_factory=P.FrameReader)
    path: Path | None = None  # the socket's, for the signals' own connections
    outbuf: bytearray = field(default_factory=bytearray)

    @classmethod
    def connect(cls, path: Path, *, tty: bool) -> AttachClient:
        return cls(P.connect(path), tty, path=path)

    def attach(self, *, stdin: bool, rows: int = 0, cols: int = 0) -> None:
        req = {"op": "attach", "stdin": stdin, "rows": rows, "cols": cols}
        self.sock.sendall(P.jframe(P.REQUEST, req))

    def request(self, req: dict[str, object]) -> None:
        self.sock.sendall(P.jframe(P.REQUEST, req))

    def wait_exit(self, timeout: float | None) -> int | None:
        """The exit code the monitor announces (None on timeout); output is not sent to
        a client that did not attach."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return None
            data = self.sock.recv(65536)
            if not data:
                raise BareboatError("lost the connection to the container's monitor")
            for kind, payload in self.reader.feed(data):
                if kind in (P.EXIT, P.ERROR):
                    return int(json.loads(payload).get("code", 125))
                if kind == P.REFUSED:
                    raise _refused(payload)

    def send_signal(self, sig: int) -> None:
        """Pass a signal on (from a signal handler too): on a connection of its own, never
        queued behind stdin the workload has not read."""
        if self.path is None:
            self._queue(P.jframe(P.SIGNAL, {"signal": sig}))
            return
        with contextlib.suppress(BareboatError, OSError), P.connect(self.path, 2.0) as s:
            s.sendall(P.jframe(P.REQUEST, {"op": "kill", "signal": sig}))

    def resize(self, rows: int, cols: int) -> None:
        self._queue(P.jframe(P.RESIZE, {"rows": rows, "cols": cols}))

    def _queue(self, frame: bytes) -> None:
        """Send after what waits (whole frames, in order), as much as the socket takes now."""
        self.outbuf += frame
        with contextlib.suppress(OSError):
            self._flush()

    def _flush(self) -> None:
        while self.outbuf:
            try:
                n = self.sock.send(self.outbuf, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            del self.outbuf[:n]

    def close(self) -> None:
        self.sock.close()

    def pump(self, *, stdin_fd: int | None, stdout_fd: int = 1, stderr_fd: int = 2) -> int:
        """Stream until the workload exits; its exit code. Raises the monitor's error."""
        sock = self.sock.fileno()
        while True:
            reading = [sock]
            if stdin_fd is not None and len(self.outbuf) < SEND_HIGH:
                reading.append(stdin_fd)
            # With a timeout: what a signal handler queued while we wait (a resize the socket
            # could not take at once) is not left until the next output.
            ready, writable, _ = select.select(reading, [sock] if self.outbuf else [], [], 0.5)
            if writable:
                try:
                    self._flush()
                except OSError:
                    # The monitor closed: it may have said why (EXIT) before, read that.
                    self.outbuf.clear()
                    stdin_fd = None
            if stdin_fd is not None and stdin_fd in ready:
                data = os.read(stdin_fd, 65536)
                self._queue(P.frame(P.STDIN, data) if data else P.frame(P.STDIN_EOF))
                if not data:
                    stdin_fd = None
            if sock in ready:
                data = self.sock.recv(65536)
                if not data:
                    raise BareboatError("lost the connection to the container's monitor")
                for kind, payload in self.reader.feed(data):
                    if kind == P.STDOUT:
                        _write_all(stdout_fd, payload)
                    elif kind == P.STDERR:
                        _write_all(stderr_fd, payload)
                    elif kind == P.EXIT:
                        return int(json.loads(payload)["code"])
                    elif kind == P.ERROR:
                        info = json.loads(payload)
                        err = BareboatError(str(info["message"]))
                        err.exit_code = int(info.get("code", 125))
                        raise err
                    elif kind == P.REFUSED:
                        raise _refused(payload)


def _refused(payload: bytes) -> BareboatError:
    """The monitor refused what we sent (and closed the connection)."""
    try:
        message = str(json.loads(payload)["message"])
    except (ValueError, KeyError, TypeError):
        message = "no reason given"
    return BareboatError(f"the container's monitor refused the request: {message}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            return
        view = view[n:]
