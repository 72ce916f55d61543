"""The engine's monitor against scripted control clients: each test speaks the control
socket's frames itself (engine/protocol.py) to a real monitor of a real `process` container,
and checks what comes back frame by frame, and what the workload saw.

Covered: the stdio relay (stdout and stderr kept apart, in the log too), stdin and its end, the
exit every client hears, signals and kill requests, resize of a terminal, and clients that hang
up mid-frame or mid-stream.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bareboat.engine import protocol as P
from bareboat.engine.engine import Engine
from bareboat.sandbox.status import Status
from bareboat.spec.options import Isolation, RunOptions

Frames = list[tuple[int, bytes]]
MakeContainer = Callable[..., tuple[str, Path]]  # (*command, tty=) -> (id, control socket)


class Client:
    """One scripted connection to a monitor."""

    def __init__(self, path: Path) -> None:
        self.sock = P.connect(path)
        self.sock.settimeout(10)
        self.reader = P.FrameReader()
        self.got: Frames = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, **req: object) -> None:
        self.send(P.jframe(P.REQUEST, req))

    def until(self, kind: int) -> Frames:
        """Frames up to and including the first of `kind` (the rest stay for later)."""
        while not any(k == kind for k, _ in self.got):
            data = self.sock.recv(65536)
            assert data, f"the monitor closed the connection after {self.got}"
            self.got += self.reader.feed(data)
        i = next(i for i, (k, _) in enumerate(self.got) if k == kind)
        taken, self.got = self.got[: i + 1], self.got[i + 1 :]
        return taken

    def output_until(self, text: bytes) -> bytes:
        """STDOUT bytes up to the first that contains `text`."""
        out = b""
        while True:
            while self.got and text not in out:
                k, payload = self.got.pop(0)
                assert k == P.STDOUT, (k, payload)
                out += payload
            if text in out:
                return out
            data = self.sock.recv(65536)
            assert data, f"the monitor closed the connection; output so far {out!r}"
            self.got += self.reader.feed(data)

    def rest(self) -> Frames:
        """Everything up to the monitor's close."""
        while data := self.sock.recv(65536):
            self.got += self.reader.feed(data)
        taken, self.got = self.got, []
        return taken

    def close(self) -> None:
        self.sock.close()


def _stream(frames: Frames, kind: int) -> bytes:
    return b"".join(p for k, p in frames if k == kind)


def _code(frames: Frames) -> int:
    assert frames and frames[-1][0] == P.EXIT, frames
    return int(json.loads(frames[-1][1])["code"])


@pytest.fixture
def container(engine: Engine) -> Iterator[MakeContainer]:
    made: list[str] = []

    def make(*command: str, tty: bool = False) -> tuple[str, Path]:
        opts = RunOptions(isolation=Isolation.PROCESS, interactive=True, tty=tty, command=command)
        rec = engine.create("latest", opts)
        made.append(rec.id)
        # The workload starts once a client attached: every byte of its output is seen.
        engine.start(rec.id, wait_attach=True)
        return rec.id, engine.paths(rec.id).socket

    yield make
    for cid in made:
        engine.remove(cid, force=True)


def test_stdio_is_relayed_and_every_client_hears_the_exit(
    engine: Engine, container: MakeContainer
) -> None:
    cid, ctl = container("sh", "-c", "read l; echo out:$l; echo err:$l >&2; exit 3")
    waiter = Client(ctl)
    waiter.request(op="wait")
    c = Client(ctl)
    c.request(op="attach", stdin=True)
    assert c.until(P.STARTED) == [(P.STARTED, b"")]
    c.send(P.frame(P.STDIN, b"hi\n"))
    frames = c.rest()
    assert _stream(frames, P.STDOUT) == b"out:hi\n"
    assert _stream(frames, P.STDERR) == b"err:hi\n"
    assert _code(frames) == 3
    # A client that did not attach gets the end only: no output, no STARTED.
    assert [k for k, _ in waiter.rest()] == [P.EXIT]
    # The log keeps the two streams apart.
    logged = [(stream, data) for _, stream, data in engine.logs(cid)]
    assert ("stdout", b"out:hi\n") in logged and ("stderr", b"err:hi\n") in logged
    assert engine.wait(cid, 10) == 3


def test_stdin_in_pieces_and_its_end(container: MakeContainer) -> None:
    _, ctl = container("cat")
    c = Client(ctl)
    c.request(op="attach", stdin=True)
    c.until(P.STARTED)
    c.send(P.frame(P.STDIN, b"abc") + P.frame(P.STDIN, b"") + P.frame(P.STDIN, b"def"))
    c.send(P.frame(P.STDIN_EOF))
    frames = c.rest()
    assert _stream(frames, P.STDOUT) == b"abcdef" and _code(frames) == 0


def test_stdin_from_a_client_that_did_not_ask_for_it_is_dropped(container: MakeContainer) -> None:
    _, ctl = container("sh", "-c", "read l; echo got:$l")
    reader = Client(ctl)
    reader.request(op="attach", stdin=False)
    reader.until(P.STARTED)
    reader.send(P.frame(P.STDIN, b"not mine\n"))
    writer = Client(ctl)
    writer.request(op="attach", stdin=True)
    writer.send(P.frame(P.STDIN, b"mine\n"))
    assert _stream(writer.rest(), P.STDOUT) == b"got:mine\n"


def test_a_signal_frame_reaches_the_workload(container: MakeContainer) -> None:
    script = 'trap "echo got USR1; exit 7" USR1; echo ready; while :; do sleep 0.05; done'
    _, ctl = container("sh", "-c", script)
    c = Client(ctl)
    c.request(op="attach")
    c.until(P.STARTED)
    c.output_until(b"ready")
    c.send(P.jframe(P.SIGNAL, {"signal": 10}))
    frames = c.rest()
    assert b"got USR1" in _stream(frames, P.STDOUT) and _code(frames) == 7


def test_a_kill_request_is_acknowledged_then_the_exit_follows(container: MakeContainer) -> None:
    _, ctl = container("sh", "-c", "echo ready; while :; do sleep 0.05; done")
    c = Client(ctl)
    c.request(op="attach")
    c.until(P.STARTED)
    c.output_until(b"ready")
    killer = Client(ctl)
    killer.request(op="kill", signal=15)
    assert killer.until(P.ACK) == [(P.ACK, b"")]
    assert _code(killer.rest()) == 128 + 15
    assert _code(c.rest()) == 128 + 15


def test_resize_reaches_the_terminal(container: MakeContainer) -> None:
    script = 'trap "stty size" WINCH; stty size; while :; do sleep 0.05; done'
    _, ctl = container("sh", "-c", script, tty=True)
    c = Client(ctl)
    c.request(op="attach", stdin=True, rows=30, cols=100)
    c.until(P.STARTED)
    assert b"30 100" in c.output_until(b"30 100")
    c.send(P.jframe(P.RESIZE, {"rows": 40, "cols": 120}))
    assert b"40 120" in c.output_until(b"40 120")
    # A size past what the monitor gives a terminal is cut to it, not refused.
    c.send(P.jframe(P.RESIZE, {"rows": 65535, "cols": 65535}))
    assert b"10000 10000" in c.output_until(b"10000 10000")
    c.request(op="kill", signal=9)
    assert _code(c.rest()) == 128 + 9


def test_a_client_that_hangs_up_mid_frame_sends_nothing(
    engine: Engine, container: MakeContainer
) -> None:
    cid, ctl = container("sh", "-c", "read l; echo got:$l")
    c = Client(ctl)
    c.request(op="attach", stdin=True)
    c.until(P.STARTED)
    # Another client attaches for stdin, then hangs up in the middle of its STDIN frame, and
    # one more in the middle of a header and of a request.
    for partial in (
        P.jframe(P.REQUEST, {"op": "attach", "stdin": True}) + P.HEADER.pack(P.STDIN, 8) + b"bad",
        P.frame(P.STDIN, b"bad\n")[:3],
        P.HEADER.pack(P.REQUEST, 40) + b'{"op": "kill", "sig',
    ):
        half = Client(ctl)
        half.send(partial)
        half.close()
    time.sleep(0.3)
    assert engine.get(cid).state is Status.RUNNING
    c.send(P.frame(P.STDIN, b"ok\n"))
    frames = c.rest()
    assert _stream(frames, P.STDOUT) == b"got:ok\n" and _code(frames) == 0


def test_an_attached_client_that_leaves_mid_stream(
    engine: Engine, container: MakeContainer
) -> None:
    cid, ctl = container("sh", "-c", "while :; do echo tick; sleep 0.02; done")
    gone = Client(ctl)
    gone.request(op="attach", stdin=True)
    gone.until(P.STARTED)
    gone.output_until(b"tick")
    with contextlib.suppress(OSError):
        gone.sock.shutdown(socket.SHUT_RDWR)
    gone.close()
    time.sleep(0.3)
    assert engine.get(cid).state is Status.RUNNING
    later = Client(ctl)
    later.request(op="attach")
    later.output_until(b"tick")  # the output goes on, to the clients that are there
    later.request(op="kill", signal=9)
    assert _code(later.rest()) == 128 + 9
    assert sum(1 for _, _, data in engine.logs(cid) if b"tick" in data) > 3
