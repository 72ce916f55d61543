"""The monitor's control socket: length-prefixed frames, one byte of type + 4 of length.

A client opens the socket, sends one REQUEST frame (JSON: `{"op": "attach", ...}` or
`{"op": "kill", "signal": N}` or `{"op": "wait"}`), then for attach exchanges frames until
EXIT or ERROR (which every client gets, attached or not).

Any local root process can connect, so a client is checked like any other input: `decode`
turns each frame into one typed message or raises `ContainerError`, and the monitor then
answers REFUSED with the reason and closes that connection. The container runs on.
Socket paths can exceed the 108-byte `sun_path` limit under deep roots, so both sides go
through `/proc/self/fd/<dirfd>/ctl.sock`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bareboat.errors import ContainerError
from bareboat.framing import split

HEADER = struct.Struct("!BI")
MAX_FRAME = 1 << 20

# monitor -> client (REFUSED: JSON {"message": ...}, this client's frame was refused)
STDOUT, STDERR, EXIT, ERROR, STARTED, ACK, REFUSED = 1, 2, 3, 4, 5, 6, 7
# client -> monitor
STDIN, STDIN_EOF, RESIZE, SIGNAL, REQUEST = 10, 11, 12, 13, 20

# Connections one monitor serves at once: each holds a file descriptor and up to MAX_FRAME of
# buffered input, and a monitor out of descriptors could not go on serving its container.
MAX_CLIENTS = 64
MAX_WINSIZE = 0xFFFF  # a terminal's rows and columns are u16 (struct winsize)


def frame(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def jframe(kind: int, obj: dict[str, Any]) -> bytes:
    return frame(kind, json.dumps(obj).encode())


class FrameReader:
    """Splits a byte stream into frames; rejects frames larger than MAX_FRAME."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        return split(self.buf, HEADER, _check_header)


def _check_header(fields: tuple[Any, ...]) -> tuple[int, int]:
    kind, size = fields
    if size > MAX_FRAME:
        raise ContainerError("control socket: frame too large")
    return kind, size


# --- what a client may send, checked -------------------------------------------------------


@dataclass(frozen=True)
class Attach:
    stdin: bool = False
    rows: int = 0
    cols: int = 0


@dataclass(frozen=True)
class Kill:
    signal: int = int(signal.SIGKILL)


@dataclass(frozen=True)
class Wait:
    pass


@dataclass(frozen=True)
class Stdin:
    data: bytes


@dataclass(frozen=True)
class StdinEof:
    pass


@dataclass(frozen=True)
class Resize:
    rows: int
    cols: int


@dataclass(frozen=True)
class Signal:
    signal: int


Message = Attach | Kill | Wait | Stdin | StdinEof | Resize | Signal


def decode(kind: int, payload: bytes) -> Message:
    """One client frame as a message, or ContainerError naming what is wrong with it."""
    if kind == STDIN:
        return Stdin(payload)
    if kind == STDIN_EOF:
        if payload:
            raise ContainerError("control socket: STDIN_EOF carries no payload")
        return StdinEof()
    if kind == RESIZE:
        obj = _object(payload, "RESIZE")
        return Resize(_int(obj, "rows", 0, MAX_WINSIZE), _int(obj, "cols", 0, MAX_WINSIZE))
    if kind == SIGNAL:
        return Signal(_signal(_object(payload, "SIGNAL"), None))
    if kind == REQUEST:
        obj = _object(payload, "REQUEST")
        op = obj.get("op")
        if op == "attach":
            stdin = obj.get("stdin", False)
            if not isinstance(stdin, bool):
                raise ContainerError("control socket: attach's stdin must be true or false")
            rows = _int(obj, "rows", 0, MAX_WINSIZE, default=0)
            return Attach(stdin, rows, _int(obj, "cols", 0, MAX_WINSIZE, default=0))
        if op == "kill":
            return Kill(_signal(obj, int(signal.SIGKILL)))
        if op == "wait":
            return Wait()
        raise ContainerError(f"control socket: unknown request {str(op)[:40]!r}")
    raise ContainerError(f"control socket: unknown frame type {kind}")


def _object(payload: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        raise ContainerError(f"control socket: {what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ContainerError(f"control socket: {what} must be a JSON object")
    return obj


def _int(obj: dict[str, Any], key: str, lo: int, hi: int, *, default: int | None = None) -> int:
    value = obj.get(key, default)
    # bool is an int in Python; JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ContainerError(f"control socket: {key} must be an integer from {lo} to {hi}")
    return value


def _signal(obj: dict[str, Any], default: int | None) -> int:
    return _int(obj, "signal", 1, int(signal.SIGRTMAX), default=default)


def _short(path: Path) -> tuple[int, str]:
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    return fd, f"/proc/self/fd/{fd}/{path.name}"


def listen(path: Path) -> socket.socket:
    fd, short = _short(path)
    try:
        with suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(short)
        sock.listen(MAX_CLIENTS)
        return sock
    finally:
        os.close(fd)


def connect(path: Path, timeout: float = 5.0) -> socket.socket:
    try:
        fd, short = _short(path)
    except FileNotFoundError:
        raise ContainerError("the container's monitor is not running") from None
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock.connect(short)
                break
            except BlockingIOError:
                # A unix socket's full backlog answers EAGAIN at once, timeout or not: the
                # monitor is busy, not gone. Try again until the deadline.
                if time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                sock.close()
                raise ContainerError("the container's monitor does not answer") from None
            except OSError:
                sock.close()
                raise ContainerError("the container's monitor is not running") from None
        sock.settimeout(None)
        return sock
    finally:
        os.close(fd)
