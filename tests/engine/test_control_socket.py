"""A container's control socket against hostile clients: real containers, real monitors.

Any root process can connect to a monitor's socket, so what a client sends is input to check.
Garbage, oversized and truncated frames, bad JSON and requests out of range get that client
REFUSED (with the reason) and a closed connection; the container runs on, and a good client
is still served to the workload's end.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from bareboat.engine import protocol as P
from bareboat.engine.engine import Engine
from bareboat.errors import BareboatError
from bareboat.proc import alive
from bareboat.sandbox.status import Status
from bareboat.spec.options import Isolation, RunOptions

BAD_CLIENTS = {
    "garbage": (b"this is not a frame at all", "too large"),
    "oversized": (P.HEADER.pack(P.STDIN, P.MAX_FRAME + 1), "too large"),
    "not JSON": (P.frame(P.REQUEST, b"{op: attach"), "not valid JSON"),
    "not UTF-8": (P.frame(P.REQUEST, b"\xff\xfe"), "not valid JSON"),
    "deeply nested": (P.frame(P.REQUEST, b"[" * 100_000), "not valid JSON"),
    "not an object": (P.frame(P.REQUEST, b"[1, 2]"), "JSON object"),
    "unknown op": (P.jframe(P.REQUEST, {"op": "format-disk"}), "unknown request"),
    "no op": (P.jframe(P.REQUEST, {}), "unknown request"),
    "kill with a word": (P.jframe(P.REQUEST, {"op": "kill", "signal": "TERM"}), "signal"),
    "kill 999": (P.jframe(P.REQUEST, {"op": "kill", "signal": 999}), "signal"),
    "kill 0": (P.jframe(P.REQUEST, {"op": "kill", "signal": 0}), "signal"),
    "kill true": (P.jframe(P.REQUEST, {"op": "kill", "signal": True}), "signal"),
    "attach stdin 1": (P.jframe(P.REQUEST, {"op": "attach", "stdin": "yes"}), "stdin"),
    "attach rows -1": (P.jframe(P.REQUEST, {"op": "attach", "rows": -1, "cols": 80}), "rows"),
    "signal -9": (P.jframe(P.SIGNAL, {"signal": -9}), "signal"),
    "signal missing": (P.jframe(P.SIGNAL, {}), "signal"),
    "resize 1e9": (P.jframe(P.RESIZE, {"rows": 10**9, "cols": 80}), "rows"),
    "resize text": (P.frame(P.RESIZE, b"24x80"), "not valid JSON"),
    "eof with data": (P.frame(P.STDIN_EOF, b"x"), "no payload"),
    "unknown frame": (P.frame(99, b""), "unknown frame type 99"),
    "a monitor's frame": (P.jframe(P.EXIT, {"code": 0}), "unknown frame type 3"),
}


def _send(path: Path, data: bytes, *, close_early: bool = False) -> bytes:
    """Send `data` as a client would; everything the monitor answered until it closed."""
    with P.connect(path) as sock:
        sock.settimeout(5)
        sock.sendall(data)
        if close_early:
            return b""
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


def _refusal(answer: bytes) -> str:
    frames = P.FrameReader().feed(answer)
    assert [k for k, _ in frames] == [P.REFUSED], answer
    return str(json.loads(frames[0][1])["message"])


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
    ctl = engine.paths(rec.id).socket
    try:
        for name, (data, reason) in BAD_CLIENTS.items():
            assert reason in _refusal(_send(ctl, data)), name
        # Truncated: a frame whose body never comes, a header cut short, each then hung up.
        _send(ctl, P.HEADER.pack(P.REQUEST, 100) + b'{"op":', close_early=True)
        _send(ctl, P.jframe(P.SIGNAL, {"signal": 9})[:3], close_early=True)
        # More connections than a monitor serves: those over the limit are refused.
        crowd: list[socket.socket] = []
        try:
            for _ in range(P.MAX_CLIENTS + 8):
                crowd.append(P.connect(ctl))
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
                client.request({"op": "reboot"})
                with pytest.raises(BareboatError, match="refused the request: ") as refused:
                    client.wait_exit(5)
            finally:
                client.close()
            if "too many" not in str(refused.value) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "unknown request 'reboot'" in str(refused.value)

        time.sleep(0.2)
        now = engine.get(rec.id)
        assert now.state is Status.RUNNING, now.error
        assert alive(now.monitor_pid, now.monitor_start)

        # A good client is served to the workload's end: its stdin in, its output and code out.
        client = engine.attach(rec.id)
        try:
            client.attach(stdin=True)
            client.sock.sendall(P.frame(P.STDIN, b"hello\n") + P.frame(P.STDIN_EOF))
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
