"""The monitor's control socket: length-prefixed frames, one byte of type + 4 of length.

A client opens the socket, sends one REQUEST frame (JSON: `{"op": "attach", ...}` or
`{"op": "kill", "signal": N}` or `{"op": "wait"}`), then for attach exchanges frames until
EXIT or ERROR (which every client gets, attached or not).
Socket paths can exceed the 108-byte `sun_path` limit under deep roots, so both sides go
through `/proc/self/fd/<dirfd>/ctl.sock`.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from contextlib import suppress
from pathlib import Path
from typing import Any

from bareboat.errors import ContainerError

HEADER = struct.Struct("!BI")
MAX_FRAME = 1 << 20

# monitor -> client
STDOUT, STDERR, EXIT, ERROR, STARTED, ACK = 1, 2, 3, 4, 5, 6
# client -> monitor
STDIN, STDIN_EOF, RESIZE, SIGNAL, REQUEST = 10, 11, 12, 13, 20


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
        out = []
        while len(self.buf) >= HEADER.size:
            kind, size = HEADER.unpack_from(self.buf)
            if size > MAX_FRAME:
                raise ContainerError("control socket: frame too large")
            if len(self.buf) < HEADER.size + size:
                break
            out.append((kind, bytes(self.buf[HEADER.size : HEADER.size + size])))
            del self.buf[: HEADER.size + size]
        return out


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
        sock.listen(8)
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
        try:
            sock.connect(short)
        except OSError:
            sock.close()
            raise ContainerError("the container's monitor is not running") from None
        sock.settimeout(None)
        return sock
    finally:
        os.close(fd)
