"""The client side of the monitor's control socket: attach, stream, forward."""

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


@dataclass
class AttachClient:
    sock: socket.socket
    tty: bool
    reader: P.FrameReader = field(default_factory=P.FrameReader)

    @classmethod
    def connect(cls, path: Path, *, tty: bool) -> AttachClient:
        return cls(P.connect(path), tty)

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
        with contextlib.suppress(OSError):
            self.sock.sendall(P.jframe(P.SIGNAL, {"signal": sig}))

    def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(P.jframe(P.RESIZE, {"rows": rows, "cols": cols}))

    def close(self) -> None:
        self.sock.close()

    def pump(self, *, stdin_fd: int | None, stdout_fd: int = 1, stderr_fd: int = 2) -> int:
        """Stream until the workload exits; its exit code. Raises the monitor's error."""
        fds: list[int] = [self.sock.fileno()]
        if stdin_fd is not None:
            fds.append(stdin_fd)
        while True:
            ready, _, _ = select.select(fds, [], [])
            if stdin_fd is not None and stdin_fd in ready:
                data = os.read(stdin_fd, 65536)
                if data:
                    self.sock.sendall(P.frame(P.STDIN, data))
                else:
                    self.sock.sendall(P.frame(P.STDIN_EOF))
                    fds.remove(stdin_fd)
                    stdin_fd = None
            if self.sock.fileno() in ready:
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
