"""A container's control socket against hostile clients: real containers, real monitors.

Any root process can connect to a monitor's socket, so what a client sends is input to check.
Garbage, oversized, misshapen and truncated frames, frames a client may not send and values out
of range get that client REFUSED (with the reason) and a closed connection; the container runs
on, and a good client is still served to the workload's end.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from bareboat import control as ctl
from bareboat.control import Type
from bareboat.engine.engine import Engine
from bareboat.errors import BareboatError
from bareboat.proc import alive
from bareboat.sandbox.status import Status
from bareboat.spec.options import Isolation, RunOptions


def _header(
    kind: int, length: int, *, version: int = ctl.VERSION, magic: bytes = ctl.MAGIC
) -> bytes:
    return ctl.HEADER.pack(magic, version, kind, 0, length)


def _signal(n: int) -> bytes:
    return ctl.encode(Type.SIGNAL, 0, n.to_bytes(4, "big"))


BAD_CLIENTS = {
    "garbage": (b"this is not a frame at all", "bad magic"),
    "HTTP": (b"GET / HTTP/1.0\r\n\r\n", "bad magic"),
    "another version": (_header(Type.SIGNAL, 4, version=2) + bytes(4), "version 2"),
    "oversized": (_header(Type.STDIN, ctl.MAX_DATA + 1), "limit"),
    "oversized exec": (_header(Type.EXEC, ctl.MAX_EXEC + 1), "limit"),
    "unknown frame": (_header(99, 0), "unknown frame type 99"),
    "a monitor's frame": (ctl.encode(Type.EXIT, 0, bytes(4)), "may not send"),
    "a refusal": (ctl.message(Type.REFUSED, "no"), "may not send"),
    "signal 999": (_header(Type.SIGNAL, 4) + (999).to_bytes(4, "big"), "no signal 999"),
    "signal 0": (_header(Type.SIGNAL, 4) + bytes(4), "no signal 0"),
    "signal -9": (_header(Type.SIGNAL, 4) + (-9 & 0xFFFFFFFF).to_bytes(4, "big"), "no signal"),
    "signal as text": (_header(Type.SIGNAL, 4) + b"TERM", "no signal"),
    "signal too long": (_header(Type.SIGNAL, 8) + bytes(8), "4 bytes, not 8"),
    "signal missing": (_header(Type.SIGNAL, 0), "4 bytes, not 0"),
    "resize text": (_header(Type.RESIZE, 5) + b"24x80", "4 bytes, not 5"),
    "attach short": (_header(Type.ATTACH, 1) + b"\1", "5 bytes, not 1"),
    "attach stdin 2": (ctl.encode(Type.ATTACH, 0, ctl.ATTACH.pack(2, 0, 0)), "0 or 1"),
    "exec as the workload": (_header(Type.EXEC, 2) + b"{}", "session id >= 1"),
    "exec in a process": (ctl.encode(Type.EXEC, 1, b"{}"), "serves no such request"),
    "pause a process": (ctl.encode(Type.PAUSE), "serves no such request"),
}


def _send(path: Path, data: bytes, *, close_early: bool = False) -> bytes:
    """Send `data` as a client would; everything the monitor answered until it closed."""
    with ctl.connect(str(path), 5, "the monitor") as sock:
        sock.settimeout(5)
        sock.sendall(data)
        if close_early:
            return b""
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


def _refusal(answer: bytes) -> str:
    frames = ctl.Decoder(ctl.EVENT_LIMITS, "the monitor").feed(answer)
    assert [k for k, _, _ in frames] == [Type.REFUSED], answer
    return ctl.text(frames[0][2])


@pytest.mark.parametrize("isolation", [Isolation.PROCESS, Isolation.CONTAINER])
def test_bad_clients_are_refused_and_the_container_lives(
    engine: Engine, isolation: Isolation
) -> None:
    opts = RunOptions(
        isolation=isolation,
        interactive=True,
        command=("sh", "-c", "read line; echo got:$line; exit 5"),
    )
    rec = engine.start(engine.create("latest", opts).id)
    path = engine.paths(rec.id).socket
    try:
        for name, (data, reason) in BAD_CLIENTS.items():
            assert reason in _refusal(_send(path, data)), name
        # Truncated: a frame whose body never comes, a header cut short, each then hung up.
        _send(path, _header(Type.STDIN, 100) + b"some", close_early=True)
        _send(path, _signal(9)[:3], close_early=True)
        # More connections than a monitor serves: those over the limit are refused.
        crowd: list[socket.socket] = []
        try:
            for _ in range(ctl.MAX_CLIENTS + 8):
                crowd.append(ctl.connect(str(path), 5, "the monitor"))
            crowd[-1].settimeout(5)
            assert "too many" in _refusal(crowd[-1].recv(65536))
        finally:
            for s in crowd:
                s.close()
        # The client side names a refusal as one (once the monitor has seen the crowd go).
        deadline = time.monotonic() + 10
        while True:
            client = engine.attach(rec.id)
            try:
                client.sock.sendall(_header(42, 0))
                with pytest.raises(BareboatError, match="refused the request: ") as refused:
                    client.wait(5)
            finally:
                client.close()
            if "too many" not in str(refused.value) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "unknown frame type 42" in str(refused.value)

        time.sleep(0.2)
        now = engine.get(rec.id)
        assert now.state is Status.RUNNING, now.error
        assert alive(now.monitor_pid, now.monitor_start)

        # A good client is served to the workload's end: its stdin in, its output and code out.
        client = engine.attach(rec.id)
        try:
            client.attach(stdin=True)
            client.send(Type.STDIN, 0, b"hello\n")
            client.send(Type.STDIN)  # the end of input
            out_r, out_w = os.pipe()
            code = client.pump(stdin_fd=None, stdout_fd=out_w)
            os.close(out_w)
            with os.fdopen(out_r, "rb") as f:
                assert (code, f.read()) == (5, b"got:hello\n")
        finally:
            client.close()
        assert engine.wait(rec.id, 10) == 5
        assert engine.get(rec.id).error == ""
    finally:
        engine.remove(rec.id, force=True)
