"""A synchronous QMP client: QEMU's JSON control protocol on one connected socket.

QMP is one JSON object per line: QEMU's greeting, then our `qmp_capabilities`, then commands
(`{"execute", "arguments", "id"}`) answered by `{"return"}` or `{"error"}` with the same id,
and events in between. This is all of it that bareboat uses. It replaced `qemu.qmp`'s client,
an asyncio library whose import alone took ~100 ms here (against ~7 ms for `socket` and
`json`), paid by every VM start from the CLI and `bareboat-runtime`.

QEMU runs jailed, but a guest that escaped into it speaks for it: every message is hostile
data, bounded in size and checked in shape before use.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

MAX_MESSAGE = 1 << 20  # a line of QMP; our largest answers (query-migrate, HMP output) are KiB


class QmpError(Exception):
    """The QMP conversation failed: QEMU hung up, spoke garbage or took too long."""


class QmpClosed(QmpError):
    """QEMU closed the connection (it does so on `quit`, or when it dies)."""


class QmpCommandError(QmpError):
    """QEMU refused a command; `desc` is its reason."""

    def __init__(self, name: str, error_class: str, desc: str) -> None:
        super().__init__(f"{name}: {desc}")
        self.error_class = error_class
        self.desc = desc


class QmpClient:
    """One QMP connection, after `handshake()`: `execute` runs a command, `send_fd` passes a
    descriptor for a following `getfd`. Events are read past and dropped (none is used)."""

    def __init__(self, sock: socket.socket, *, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self._buf = b""
        self._next_id = 0

    def handshake(self) -> dict[str, Any]:
        """Read QEMU's greeting and leave capabilities negotiation; the greeting."""
        deadline = time.monotonic() + self.timeout
        greeting = self._read(deadline)
        if not isinstance(greeting.get("QMP"), dict):
            raise QmpError("QEMU did not greet with QMP")
        self.execute("qmp_capabilities")
        return greeting

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run `name` and return its `return` value; QmpCommandError if QEMU refused it."""
        self._next_id += 1
        ident = f"bb{self._next_id}"
        request: dict[str, Any] = {"execute": name, "id": ident}
        if arguments:
            request["arguments"] = arguments
        deadline = time.monotonic() + self.timeout
        self._send(json.dumps(request).encode() + b"\n", deadline)
        while True:
            message = self._read(deadline)
            if "event" in message:
                continue
            if message.get("id") != ident:
                raise QmpError(f"QEMU answered {name} out of turn")
            if "return" in message:
                return message["return"]
            error = message.get("error")
            if isinstance(error, dict):
                raise QmpCommandError(
                    name, str(error.get("class", ""))[:200], str(error.get("desc", ""))[:1000]
                )
            raise QmpError(f"QEMU answered {name} with neither a result nor an error")

    def send_fd(self, fd: int) -> None:
        """Pass `fd` to QEMU (SCM_RIGHTS) with a byte QMP's parser skips (a space)."""
        self.sock.settimeout(self.timeout)
        self.sock.sendmsg([b" "], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("@i", fd))])

    def close(self) -> None:
        self.sock.close()

    # -- the wire ------------------------------------------------------------------------

    def _send(self, data: bytes, deadline: float) -> None:
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        self.sock.sendall(data)

    def _read(self, deadline: float) -> dict[str, Any]:
        line = b""
        while not line.strip():  # (QEMU ends its lines with CR LF)
            line = self._line(deadline)
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            raise QmpError("QEMU sent a QMP message that is not JSON") from None
        if not isinstance(message, dict):
            raise QmpError("QEMU sent a QMP message that is not an object")
        return message

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_MESSAGE:
                raise QmpError(f"a QMP message from QEMU is over {MAX_MESSAGE} bytes")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("QMP read timed out")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise QmpClosed("QEMU closed the QMP connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        if len(line) > MAX_MESSAGE:
            raise QmpError(f"a QMP message from QEMU is over {MAX_MESSAGE} bytes")
        return line
