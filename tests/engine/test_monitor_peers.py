"""The engine's monitor against scripted control clients: each test speaks the control
socket's frames itself (bareboat/control.py) to a real monitor of a real `process` container,
and checks what comes back frame by frame, and what the workload saw.

Covered: the stdio relay (stdout and stderr kept apart, in the log too), stdin and its end, the
exit every client hears, signals and their DONE, resize of a terminal, a VM's requests refused
by a sandbox that is none, and clients that hang up mid-frame or mid-stream.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bareboat import control as ctl
from bareboat.control import Type
from bareboat.engine.engine import Engine
from bareboat.sandbox.status import Status
from bareboat.spec.options import Isolation, RunOptions

Frames = list[tuple[Type, bytes]]
MakeContainer = Callable[..., tuple[str, Path]]  # (*command, tty=) -> (id, control socket)


class Client:
    """One scripted connection to a monitor."""

    def __init__(self, path: Path) -> None:
        self.sock = ctl.connect(str(path), 10, "the monitor")
        self.decoder = ctl.Decoder(ctl.EVENT_LIMITS, "the monitor")
        self.got: Frames = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, ftype: Type, payload: bytes = b"") -> None:
        self.send(ctl.encode(ftype, 0, payload))

    def attach(self, *, stdin: bool = False, rows: int = 0, cols: int = 0) -> None:
        self.send(ctl.attach_request(stdin, rows, cols))

    def signal(self, sig: int) -> None:
        self.frame(Type.SIGNAL, sig.to_bytes(4, "big"))

    def feed(self, data: bytes) -> None:
        for ftype, session, payload in self.decoder.feed(data):
            assert session == 0, (ftype, session)
            self.got.append((ftype, payload))

    def until(self, kind: Type) -> Frames:
        """Frames up to and including the first of `kind` (the rest stay for later)."""
        while not any(k == kind for k, _ in self.got):
            data = self.sock.recv(65536)
            assert data, f"the monitor closed the connection after {self.got}"
            self.feed(data)
        i = next(i for i, (k, _) in enumerate(self.got) if k == kind)
        taken, self.got = self.got[: i + 1], self.got[i + 1 :]
        return taken

    def output_until(self, text: bytes) -> bytes:
        """STDOUT bytes up to the first that contains `text`."""
        out = b""
        while True:
            while self.got and text not in out:
                k, payload = self.got.pop(0)
                assert k is Type.STDOUT, (k, payload)
                out += payload
            if text in out:
                return out
            data = self.sock.recv(65536)
            assert data, f"the monitor closed the connection; output so far {out!r}"
            self.feed(data)

    def rest(self) -> Frames:
        """Everything up to the monitor's close."""
        while data := self.sock.recv(65536):
            self.feed(data)
        taken, self.got = self.got, []
        return taken

    def close(self) -> None:
        self.sock.close()


def _stream(frames: Frames, kind: Type) -> bytes:
    return b"".join(p for k, p in frames if k is kind)


def _code(frames: Frames) -> int:
    assert frames and frames[-1][0] is Type.EXIT, frames
    return ctl.u32(frames[-1][1])


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
    cid, path = container("sh", "-c", "read l; echo out:$l; echo err:$l >&2; exit 3")
    waiter = Client(path)  # asks for nothing
    c = Client(path)
    c.attach(stdin=True)
    ((kind, pid),) = c.until(Type.STARTED)
    assert kind is Type.STARTED and ctl.u32(pid) == engine.get(cid).pid
    c.frame(Type.STDIN, b"hi\n")
    frames = c.rest()
    assert _stream(frames, Type.STDOUT) == b"out:hi\n"
    assert _stream(frames, Type.STDERR) == b"err:hi\n"
    assert _code(frames) == 3
    # A client that did not attach gets the end only: no output, no STARTED.
    assert [k for k, _ in waiter.rest()] == [Type.EXIT]
    # The log keeps the two streams apart.
    logged = [(stream, data) for _, stream, data in engine.logs(cid)]
    assert ("stdout", b"out:hi\n") in logged and ("stderr", b"err:hi\n") in logged
    assert engine.wait(cid, 10) == 3


def test_stdin_in_pieces_and_its_end(container: MakeContainer) -> None:
    _, path = container("cat")
    c = Client(path)
    c.attach(stdin=True)
    c.until(Type.STARTED)
    c.frame(Type.STDIN, b"abc")
    c.frame(Type.STDIN, b"def")
    c.frame(Type.STDIN)  # the end of input
    c.frame(Type.STDIN, b"after the end")
    frames = c.rest()
    assert _stream(frames, Type.STDOUT) == b"abcdef" and _code(frames) == 0


def test_stdin_from_a_client_that_did_not_ask_for_it_is_dropped(container: MakeContainer) -> None:
    _, path = container("sh", "-c", "read l; echo got:$l")
    reader = Client(path)
    reader.attach(stdin=False)
    reader.until(Type.STARTED)
    reader.frame(Type.STDIN, b"not mine\n")
    writer = Client(path)
    writer.attach(stdin=True)
    writer.frame(Type.STDIN, b"mine\n")
    assert _stream(writer.rest(), Type.STDOUT) == b"got:mine\n"


def test_a_signal_frame_reaches_the_workload(container: MakeContainer) -> None:
    script = 'trap "echo got USR1; exit 7" USR1; echo ready; while :; do sleep 0.05; done'
    _, path = container("sh", "-c", script)
    c = Client(path)
    c.attach()
    c.until(Type.STARTED)
    c.output_until(b"ready")
    c.signal(10)
    frames = c.rest()
    assert b"got USR1" in _stream(frames, Type.STDOUT) and _code(frames) == 7


def test_a_signal_is_acknowledged_then_the_exit_follows(container: MakeContainer) -> None:
    _, path = container("sh", "-c", "echo ready; while :; do sleep 0.05; done")
    c = Client(path)
    c.attach()
    c.until(Type.STARTED)
    c.output_until(b"ready")
    killer = Client(path)
    killer.signal(15)
    assert killer.until(Type.DONE) == [(Type.DONE, b"")]
    assert _code(killer.rest()) == 128 + 15
    assert _code(c.rest()) == 128 + 15


def test_resize_reaches_the_terminal(container: MakeContainer) -> None:
    script = 'trap "stty size" WINCH; stty size; while :; do sleep 0.05; done'
    _, path = container("sh", "-c", script, tty=True)
    c = Client(path)
    c.attach(stdin=True, rows=30, cols=100)
    c.until(Type.STARTED)
    assert b"30 100" in c.output_until(b"30 100")
    c.frame(Type.RESIZE, ctl.WINSIZE.pack(40, 120))
    assert b"40 120" in c.output_until(b"40 120")
    # A size past what the monitor gives a terminal is cut to it, not refused.
    c.frame(Type.RESIZE, ctl.WINSIZE.pack(65535, 65535))
    assert b"10000 10000" in c.output_until(b"10000 10000")
    c.signal(9)
    assert _code(c.rest()) == 128 + 9


def test_a_client_that_hangs_up_mid_frame_sends_nothing(
    engine: Engine, container: MakeContainer
) -> None:
    cid, path = container("sh", "-c", "read l; echo got:$l")
    c = Client(path)
    c.attach(stdin=True)
    c.until(Type.STARTED)
    # Another client attaches for stdin, then hangs up in the middle of its STDIN frame, and
    # one more in the middle of a header and of a request.
    for partial in (
        ctl.attach_request(True) + ctl.encode(Type.STDIN, 0, b"bad\n")[:-1],
        ctl.encode(Type.STDIN, 0, b"bad\n")[:3],
        ctl.encode(Type.SIGNAL, 0, (9).to_bytes(4, "big"))[:-2],
    ):
        half = Client(path)
        half.send(partial)
        half.close()
    time.sleep(0.3)
    assert engine.get(cid).state is Status.RUNNING
    c.frame(Type.STDIN, b"ok\n")
    frames = c.rest()
    assert _stream(frames, Type.STDOUT) == b"got:ok\n" and _code(frames) == 0


def test_an_attached_client_that_leaves_mid_stream(
    engine: Engine, container: MakeContainer
) -> None:
    cid, path = container("sh", "-c", "while :; do echo tick; sleep 0.02; done")
    gone = Client(path)
    gone.attach(stdin=True)
    gone.until(Type.STARTED)
    gone.output_until(b"tick")
    with contextlib.suppress(OSError):
        gone.sock.shutdown(socket.SHUT_RDWR)
    gone.close()
    time.sleep(0.3)
    assert engine.get(cid).state is Status.RUNNING
    later = Client(path)
    later.attach()
    later.output_until(b"tick")  # the output goes on, to the clients that are there
    later.signal(9)
    assert _code(later.rest()) == 128 + 9
    assert sum(1 for _, _, data in engine.logs(cid) if b"tick" in data) > 3


def test_a_vm_request_to_a_sandbox_that_is_none_is_refused(container: MakeContainer) -> None:
    """EXEC, PAUSE, RESUME and POWEROFF are a VM's (its hub's, in the monitor): a `process`
    sandbox's monitor refuses them, and serves its workload on."""
    _, path = container("sh", "-c", "read l; echo got:$l")
    c = Client(path)
    c.attach(stdin=True)
    c.until(Type.STARTED)
    for frame in (
        ctl.encode(Type.EXEC, 1, b"{}"),
        ctl.encode(Type.PAUSE),
        ctl.encode(Type.POWEROFF),
        ctl.encode(Type.STDIN, 2, b"x"),
    ):
        other = Client(path)
        other.send(frame)
        ((kind, why),) = other.rest()
        assert kind is Type.REFUSED and b"a process sandbox serves no such request" in why
    c.frame(Type.STDIN, b"ok\n")
    frames = c.rest()
    assert _stream(frames, Type.STDOUT) == b"got:ok\n" and _code(frames) == 0
