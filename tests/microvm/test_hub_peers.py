"""`Hub` against scripted peers: a fake agent on a socket pair speaking agent frames, control
clients on the hub's real socket, pipes for the workload's stdio, and a real process standing
in for QEMU (what the hub kills when the guest misbehaves). No VM, no QEMU, no init: every
frame either side sees is the test's to choose and to check.

Covered: the workload's stdio relay, its exit (recorded, acknowledged by POWEROFF), signals
(and the SIGKILL deadline), resize, exec sessions renumbered per client, pause/resume, port
reports, hostile agents, and peers that hang up mid-frame.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bareboat import control as ctl
from bareboat.backends.microvm import hub as hub_mod
from bareboat.backends.microvm.agent import (
    MAX_PAYLOAD,
    Frame,
    FrameDecoder,
    FrameType,
    encode_frame,
)
from bareboat.backends.microvm.hub import ExitRecord, Hub
from bareboat.control import ControlClient
from bareboat.errors import BackendError, ControlError

# What the hub may send an agent: every type, as the agent's own decoder would bound them.
TO_AGENT = {t: MAX_PAYLOAD for t in FrameType}


def _exit(code: int) -> bytes:
    return b"\0" + code.to_bytes(4, "big")


@dataclass
class Peers:
    hub: Hub
    agent: socket.socket  # the fake agent's end of the channel
    qemu: subprocess.Popen[bytes]  # stands in for QEMU
    stdin: int | None  # the workload's stdin, our (writing) end
    stdout: int  # the workload's stdout, our (reading) end
    stderr: int
    ctl: Path
    exit: Path
    calls: list[str] = field(default_factory=list)  # pause/resume/ports, as the hub made them
    decoder: FrameDecoder = field(default_factory=lambda: FrameDecoder(TO_AGENT))
    backlog: list[Frame] = field(default_factory=list)

    def send(self, ftype: FrameType, session: int, payload: bytes = b"") -> None:
        self.agent.sendall(encode_frame(Frame(ftype, session, payload)))

    def expect(self, ftype: FrameType, timeout: float = 5.0) -> Frame:
        """The next frame of `ftype` the hub sent the agent (others are kept, in order)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, f in enumerate(self.backlog):
                if f.type is ftype:
                    return self.backlog.pop(i)
            left = deadline - time.monotonic()
            assert left > 0, f"the hub sent no {ftype.name}; it sent {self.backlog}"
            ready, _, _ = select.select([self.agent], [], [], left)
            if ready:
                data = self.agent.recv(65536)
                assert data, "the hub closed the agent channel"
                self.backlog += self.decoder.feed(data)

    def quiet(self, wait: float = 0.3) -> None:
        """The hub sends the agent nothing (more) within `wait` seconds."""
        ready, _, _ = select.select([self.agent], [], [], wait)
        if ready:
            self.backlog += self.decoder.feed(self.agent.recv(65536))
        assert not self.backlog, self.backlog

    def client(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(str(self.ctl))
        return s


def _events(sock: socket.socket, n: int) -> list[ctl.Frame]:
    dec = ctl.Decoder(ctl.EVENT_LIMITS, "hub")
    got: list[ctl.Frame] = []
    while len(got) < n:
        data = sock.recv(65536)
        assert data, f"the hub closed the connection after {got}"
        got += dec.feed(data)
    return got


MakePeers = Callable[..., Peers]


@pytest.fixture
def make_peers(tmp_path: Path) -> Iterator[MakePeers]:
    made: list[Peers] = []

    def make(
        *,
        pause_vm: Callable[[], None] | None = None,
        resume_vm: Callable[[], None] | None = None,
        forward_ports: Callable[[tuple[int, ...]], None] | None = None,
        with_stdin: bool = True,
        listen: bool = True,
    ) -> Peers:
        host, guest = socket.socketpair()
        qemu = subprocess.Popen(["sleep", "60"])
        in_r, in_w = os.pipe() if with_stdin else (None, None)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        d = tmp_path / f"vm{len(made)}"
        d.mkdir()
        hub = Hub(
            host,
            stdin=in_r,
            stdout=out_w,
            stderr=err_w,
            ctl_path=d / "hub.sock" if listen else None,
            exit_path=d / "exit.json",
            qemu_pid=qemu.pid,
            pause_vm=pause_vm,
            resume_vm=resume_vm,
            forward_ports=forward_ports,
        )
        hub.start()
        guest.settimeout(5)
        p = Peers(hub, guest, qemu, in_w, out_r, err_r, d / "hub.sock", d / "exit.json")
        made.append(p)
        return p

    yield make
    for p in made:
        p.hub.stop()
        assert not p.hub.thread.is_alive()
        with contextlib.suppress(ProcessLookupError):
            p.qemu.kill()
        p.qemu.wait(5)
        p.agent.close()
        for fd in (p.stdin, p.stdout, p.stderr):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        assert not p.ctl.exists(), "the hub left its socket"


def _read_until_eof(fd: int) -> bytes:
    got = b""
    while chunk := os.read(fd, 65536):
        got += chunk
    return got


# --- the workload's streams and exit ---------------------------------------------------------


def test_stdio_is_relayed_both_ways(make_peers: MakePeers) -> None:
    p = make_peers()
    p.send(FrameType.STDOUT, 0, b"to stdout")
    p.send(FrameType.STDERR, 0, b"to stderr")
    assert os.read(p.stdout, 100) == b"to stdout"
    assert os.read(p.stderr, 100) == b"to stderr"
    assert p.stdin is not None
    os.write(p.stdin, b"typed")
    assert p.expect(FrameType.STDIN) == Frame(FrameType.STDIN, 0, b"typed")
    os.close(p.stdin)
    p.stdin = None
    assert p.expect(FrameType.STDIN) == Frame(FrameType.STDIN, 0, b"")  # end of input
    # The end of one stream closes that fd alone; the other goes on.
    p.send(FrameType.STDOUT, 0, b"")
    assert _read_until_eof(p.stdout) == b""
    p.send(FrameType.STDERR, 0, b"still")
    assert os.read(p.stderr, 100) == b"still"
    assert not p.hub.done.is_set()


def test_a_large_output_arrives_whole_and_in_order(make_peers: MakePeers) -> None:
    p = make_peers()
    chunks = [bytes([i]) * 60_000 for i in range(40)]  # 2.4 MB, more than any pipe holds

    def send_all() -> None:
        for c in chunks:
            p.send(FrameType.STDOUT, 0, c)

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    got = b""
    while len(got) < sum(map(len, chunks)):
        got += os.read(p.stdout, 1 << 20)
    sender.join(10)
    assert got == b"".join(chunks)


def test_the_exit_is_recorded_then_acknowledged_by_poweroff(make_peers: MakePeers) -> None:
    p = make_peers()
    p.send(FrameType.STDOUT, 0, b"last words")
    p.send(FrameType.EXIT, 0, _exit(3))
    assert p.expect(FrameType.POWEROFF).session == 0
    assert ExitRecord.load(p.exit) == ExitRecord(3, "")
    # The streams end with the workload, after what it wrote.
    assert _read_until_eof(p.stdout) == b"last words"
    assert _read_until_eof(p.stderr) == b""
    # The VM powers off: QEMU closes the channel and the hub is done, having killed nothing.
    p.agent.shutdown(socket.SHUT_RDWR)
    assert p.hub.done.wait(5)
    assert p.qemu.poll() is None


def test_a_workload_killed_by_a_signal_and_its_errors(make_peers: MakePeers) -> None:
    p = make_peers()
    p.send(FrameType.ERROR, 0, b"\0\2no such file: /bin/nope")
    p.send(FrameType.EXIT, 0, b"\1" + (9).to_bytes(4, "big"))
    p.expect(FrameType.POWEROFF)
    assert ExitRecord.load(p.exit) == ExitRecord(137, "no such file: /bin/nope")


# --- control requests --------------------------------------------------------------------------


def test_signals_and_resizes_reach_the_workload(make_peers: MakePeers) -> None:
    p = make_peers()
    with ControlClient(p.ctl) as c:
        c.signal(signal.SIGUSR1)
        c.resize(50, 132)
    assert p.expect(FrameType.SIGNAL) == Frame(FrameType.SIGNAL, 0, b"\0\0\0\x0a")
    assert p.expect(FrameType.RESIZE) == Frame(FrameType.RESIZE, 0, struct.pack(">HH", 50, 132))
    # The workload's stdin is its owner's: a client's STDIN for session 0 goes nowhere.
    with p.client() as s:
        s.sendall(ctl.encode(ctl.Type.STDIN, 0, b"not yours"))
    p.quiet()


def test_a_finished_workload_takes_no_more_signals(make_peers: MakePeers) -> None:
    p = make_peers()
    p.send(FrameType.EXIT, 0, _exit(0))
    p.expect(FrameType.POWEROFF)
    with ControlClient(p.ctl) as c:
        c.signal(signal.SIGTERM)
        c.resize(10, 10)
    p.quiet()


def test_sigkill_that_the_guest_ignores_ends_the_vm(
    make_peers: MakePeers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_mod, "KILL_GRACE_S", 0.3)
    p = make_peers()
    with ControlClient(p.ctl) as c:
        c.signal(signal.SIGKILL)
    assert p.expect(FrameType.SIGNAL).payload == (9).to_bytes(4, "big")
    # The agent never answers: the hub kills QEMU and records why.
    assert p.qemu.wait(5) == -signal.SIGKILL
    assert p.hub.done.wait(5)
    rec = ExitRecord.load(p.exit)
    assert rec is not None and rec.code == 137 and "did not end after SIGKILL" in rec.error


def test_a_sigkill_answered_in_time_kills_nothing(
    make_peers: MakePeers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_mod, "KILL_GRACE_S", 0.5)
    p = make_peers()
    with ControlClient(p.ctl) as c:
        c.signal(signal.SIGKILL)
    p.expect(FrameType.SIGNAL)
    p.send(FrameType.EXIT, 0, b"\1" + (9).to_bytes(4, "big"))
    p.expect(FrameType.POWEROFF)
    time.sleep(0.8)
    assert p.qemu.poll() is None
    assert ExitRecord.load(p.exit) == ExitRecord(137, "")


def test_poweroff_is_passed_on(make_peers: MakePeers) -> None:
    p = make_peers()
    with ControlClient(p.ctl) as c:
        c.poweroff()
    assert p.expect(FrameType.POWEROFF) == Frame(FrameType.POWEROFF, 0)


def test_pause_and_resume_run_the_vms_own_and_never_reach_the_guest(
    make_peers: MakePeers,
) -> None:
    calls: list[str] = []
    p = make_peers(pause_vm=lambda: calls.append("stop"), resume_vm=lambda: calls.append("cont"))
    with ControlClient(p.ctl) as c:
        c.pause()
        c.resume()
        c.pause()
    assert calls == ["stop", "cont", "stop"]
    p.quiet()


def test_pause_that_fails_or_cannot_be_done_says_why(make_peers: MakePeers) -> None:
    def broken() -> None:
        raise BackendError("QMP: the VM is shutting down")

    p = make_peers(pause_vm=broken)
    with ControlClient(p.ctl) as c:
        with pytest.raises(ControlError, match="shutting down"):
            c.pause()
        with pytest.raises(ControlError, match="cannot be paused"):
            c.resume()  # no resume_vm given
        c.signal(signal.SIGTERM)  # the connection still serves
    p.expect(FrameType.SIGNAL)
    assert not p.hub.done.is_set()


# --- exec sessions -----------------------------------------------------------------------------


def test_exec_sessions_are_renumbered_per_client(make_peers: MakePeers) -> None:
    p = make_peers()
    with p.client() as a, p.client() as b:
        # Both clients call their session 1; the agent sees two sessions of the hub's numbering.
        a.sendall(ctl.encode(ctl.Type.EXEC, 1, b"spec-a"))
        assert p.expect(FrameType.EXEC) == Frame(FrameType.EXEC, 1, b"spec-a")
        b.sendall(ctl.encode(ctl.Type.EXEC, 1, b"spec-b"))
        assert p.expect(FrameType.EXEC) == Frame(FrameType.EXEC, 2, b"spec-b")
        b.sendall(
            ctl.encode(ctl.Type.STDIN, 1, b"for b")
            + ctl.encode(ctl.Type.RESIZE, 1, struct.pack(">HH", 5, 6))
            + ctl.encode(ctl.Type.SIGNAL, 1, (2).to_bytes(4, "big"))
            + ctl.encode(ctl.Type.SIGNAL, 7, (2).to_bytes(4, "big"))  # not b's: dropped
        )
        assert p.expect(FrameType.STDIN) == Frame(FrameType.STDIN, 2, b"for b")
        assert p.expect(FrameType.RESIZE).session == 2
        assert p.expect(FrameType.SIGNAL) == Frame(FrameType.SIGNAL, 2, b"\0\0\0\2")
        p.quiet()
        # The guest's events for session 2 reach b alone, as its session 1.
        p.send(FrameType.STARTED, 2, (77).to_bytes(4, "big"))
        p.send(FrameType.STDOUT, 2, b"b's output")
        p.send(FrameType.ERROR, 2, b"\0\6a\x1b[2Jwarning")
        p.send(FrameType.EXIT, 2, _exit(4))
        assert _events(b, 4) == [
            (ctl.Type.STARTED, 1, (77).to_bytes(4, "big")),
            (ctl.Type.STDOUT, 1, b"b's output"),
            (ctl.Type.ERROR, 1, b"a?[2Jwarning"),
            (ctl.Type.EXIT, 1, (4).to_bytes(4, "big")),
        ]
        # b's session is over: b may start another session 1, which is a new one for the agent.
        b.sendall(ctl.encode(ctl.Type.EXEC, 1, b"again"))
        assert p.expect(FrameType.EXEC) == Frame(FrameType.EXEC, 3, b"again")
        p.send(FrameType.STDOUT, 1, b"a's")
        assert _events(a, 1) == [(ctl.Type.STDOUT, 1, b"a's")]
        # A session id in use on the same connection is refused.
        a.sendall(ctl.encode(ctl.Type.EXEC, 1, b"twice"))
        ((kind, _, why),) = _events(a, 1)
        assert kind is ctl.Type.REFUSED and b"not in use" in why
    assert not p.hub.done.is_set()


def test_an_exec_stdin_larger_than_the_guest_takes_is_refused(make_peers: MakePeers) -> None:
    """STDIN frames are 64 KiB at most (guest/PROTOCOL.md; ControlClient sends no larger): the
    hub refuses a larger one at its header, and nothing of it reaches the agent. (It passed
    frames of up to 1 MiB on, having decoded its clients with the agent's largest payload.)"""
    p = make_peers()
    with p.client() as a:
        a.sendall(ctl.encode(ctl.Type.EXEC, 1, b"spec"))
        p.expect(FrameType.EXEC)
        header = ctl.HEADER.pack(ctl.MAGIC, ctl.VERSION, ctl.Type.STDIN, 1, ctl.MAX_DATA + 1)
        with contextlib.suppress(OSError):  # the hub may close before it has all of it
            a.sendall(header + bytes(ctl.MAX_DATA + 1))
        ((kind, _, why),) = _events(a, 1)
        assert kind is ctl.Type.REFUSED and b"limit" in why
    p.quiet()
    assert not p.hub.done.is_set()


def test_controlclient_exec_through_the_hub(make_peers: MakePeers) -> None:
    p = make_peers()
    out_r, out_w = os.pipe()
    result: list[int] = []
    errors: list[str] = []
    with ControlClient(p.ctl) as c:
        t = threading.Thread(
            target=lambda: result.append(
                c.exec(b"spec", stdin=None, stdout=out_w, stderr=out_w, on_error=errors.append)
            ),
            daemon=True,
        )
        t.start()
        sid = p.expect(FrameType.EXEC).session
        p.send(FrameType.STARTED, sid, (5).to_bytes(4, "big"))
        p.send(FrameType.STDOUT, sid, b"hello from exec\n")
        p.send(FrameType.ERROR, sid, b"\0\3not executable")
        p.send(FrameType.EXIT, sid, _exit(126))
        t.join(10)
    os.close(out_w)
    assert result == [126] and errors == ["not executable"]
    assert _read_until_eof(out_r) == b"hello from exec\n"
    os.close(out_r)


def test_a_clients_sessions_outlive_it_quietly(make_peers: MakePeers) -> None:
    """A client that leaves with a session running: the session runs on in the guest, its
    output has no reader and is dropped, and the VM is not harmed."""
    p = make_peers()
    with p.client() as a:
        a.sendall(ctl.encode(ctl.Type.EXEC, 1, b"spec"))
        sid = p.expect(FrameType.EXEC).session
    time.sleep(0.2)  # the hub sees the hang-up
    p.send(FrameType.STDOUT, sid, b"nobody reads this")
    p.send(FrameType.EXIT, sid, _exit(0))
    p.send(FrameType.STDOUT, 0, b"workload")
    assert os.read(p.stdout, 100) == b"workload"
    assert not p.hub.done.is_set() and p.qemu.poll() is None


# --- port reports ------------------------------------------------------------------------------


def test_port_reports_are_forwarded_and_a_failure_is_not_the_workloads(
    make_peers: MakePeers,
) -> None:
    seen: list[tuple[int, ...]] = []

    def forward(ports: tuple[int, ...]) -> None:
        seen.append(ports)
        if ports == (81,):
            raise OSError("QMP went away")

    p = make_peers(forward_ports=forward)
    p.send(FrameType.PORTS, 0, struct.pack(">2H", 80, 443))
    p.send(FrameType.PORTS, 0, struct.pack(">H", 81))
    p.send(FrameType.PORTS, 0, b"")
    p.send(FrameType.STDOUT, 0, b"after")
    assert os.read(p.stdout, 100) == b"after"
    assert seen == [(80, 443), (81,), ()]
    assert not p.hub.done.is_set() and p.qemu.poll() is None


def test_port_reports_nobody_asked_for_are_ignored(make_peers: MakePeers) -> None:
    p = make_peers()
    p.send(FrameType.PORTS, 0, struct.pack(">H", 22))
    p.send(FrameType.STDOUT, 0, b"on")
    assert os.read(p.stdout, 100) == b"on"


# --- hostile agents and peers that hang up -------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"\0" * 16, "bad magic"),
        (encode_frame(Frame(FrameType.STDOUT, 9, b"x")), "unknown session 9"),
        (encode_frame(Frame(FrameType.START, 0, b"")), "must not"),
        (
            encode_frame(Frame(FrameType.STDERR, 0, b""))
            + encode_frame(Frame(FrameType.STDERR, 0, b"more")),
            "stderr after its end",
        ),
        (encode_frame(Frame(FrameType.PORTS, 0, struct.pack(">2H", 90, 80))), "PORTS"),
    ],
)
def test_a_hostile_agent_ends_the_vm(make_peers: MakePeers, wire: bytes, reason: str) -> None:
    p = make_peers()
    p.agent.sendall(wire)
    assert p.qemu.wait(5) == -signal.SIGKILL
    assert p.hub.done.wait(5)
    rec = ExitRecord.load(p.exit)
    assert rec is not None and rec.code == 125, rec
    assert "broke the agent protocol" in rec.error and reason in rec.error


def test_a_second_exit_ends_the_vm_and_keeps_the_first(make_peers: MakePeers) -> None:
    p = make_peers()
    p.agent.sendall(encode_frame(Frame(FrameType.EXIT, 0, _exit(6))) * 2)
    assert p.qemu.wait(5) == -signal.SIGKILL
    assert ExitRecord.load(p.exit) == ExitRecord(6, "")


def test_an_agent_that_hangs_up_mid_frame(make_peers: MakePeers) -> None:
    """QEMU gone with half a frame sent: the hub ends, relays none of the half frame, records
    no exit the guest never sent (the owner then asks QEMU why), and kills nothing."""
    p = make_peers()
    frame = encode_frame(Frame(FrameType.STDOUT, 0, b"half of this never arrives"))
    p.agent.sendall(frame[:20])
    p.agent.close()
    assert p.hub.done.wait(5)
    p.hub.stop()
    assert _read_until_eof(p.stdout) == b""
    assert not p.exit.exists()
    assert p.qemu.poll() is None


def test_a_client_that_hangs_up_mid_frame_sends_nothing(make_peers: MakePeers) -> None:
    p = make_peers()
    whole = ctl.encode(ctl.Type.SIGNAL, 0, (15).to_bytes(4, "big"))
    for cut in (3, 13, len(whole) - 1):
        with p.client() as s:
            s.sendall(whole[:cut])
    p.quiet(0.5)
    with p.client() as s:  # the hub still serves, and a whole frame goes through
        s.sendall(whole)
    assert p.expect(FrameType.SIGNAL) == Frame(FrameType.SIGNAL, 0, (15).to_bytes(4, "big"))
    assert not p.hub.done.is_set()


def test_a_workload_without_stdin(make_peers: MakePeers) -> None:
    p = make_peers(with_stdin=False)
    p.send(FrameType.STDOUT, 0, b"x")
    assert os.read(p.stdout, 10) == b"x"
    p.quiet()


# --- under the engine: the monitor's socket, the hub in its process ---------------------------


def test_a_hub_under_a_monitor_listens_on_nothing_and_serves_what_it_is_handed(
    make_peers: MakePeers,
) -> None:
    """The monitor serves the sandbox's one socket: the hub makes none, takes the connections
    the monitor hands it from the request on (`adopt`), and the monitor's own requests for the
    workload (`request`)."""
    calls: list[str] = []
    p = make_peers(listen=False, pause_vm=lambda: calls.append("stop"))
    assert not p.ctl.exists()
    mine, theirs = socket.socketpair()
    with mine:
        mine.settimeout(5)
        # What the monitor read of the connection: an EXEC and half of a STDIN frame.
        stdin = ctl.encode(ctl.Type.STDIN, 1, b"typed")
        p.hub.adopt(theirs, ctl.encode(ctl.Type.EXEC, 1, b"spec") + stdin[:5])
        assert p.expect(FrameType.EXEC) == Frame(FrameType.EXEC, 1, b"spec")
        mine.sendall(stdin[5:] + ctl.encode(ctl.Type.PAUSE))
        assert p.expect(FrameType.STDIN) == Frame(FrameType.STDIN, 1, b"typed")
        p.send(FrameType.STDOUT, 1, b"out")
        p.send(FrameType.EXIT, 1, _exit(0))
        assert _events(mine, 3) == [
            (ctl.Type.DONE, 0, b""),
            (ctl.Type.STDOUT, 1, b"out"),
            (ctl.Type.EXIT, 1, bytes(4)),
        ]
        assert calls == ["stop"]
    p.hub.request(ctl.Type.SIGNAL, (15).to_bytes(4, "big"))
    assert p.expect(FrameType.SIGNAL) == Frame(FrameType.SIGNAL, 0, (15).to_bytes(4, "big"))
    p.hub.request(ctl.Type.RESIZE, ctl.WINSIZE.pack(30, 100))
    assert p.expect(FrameType.RESIZE) == Frame(FrameType.RESIZE, 0, ctl.WINSIZE.pack(30, 100))
    p.hub.request(ctl.Type.POWEROFF)
    assert p.expect(FrameType.POWEROFF) == Frame(FrameType.POWEROFF, 0)
    # A handed connection is a client like any other: a bad frame gets it REFUSED.
    mine, theirs = socket.socketpair()
    with mine:
        mine.settimeout(5)
        p.hub.adopt(theirs, ctl.encode(ctl.Type.EXEC, 0, b"spec"))
        ((kind, _, why),) = _events(mine, 1)
        assert kind is ctl.Type.REFUSED and b"session id >= 1" in why
    p.quiet()
    assert not p.hub.done.is_set()


def test_a_hub_serves_no_attach_and_acknowledges_signals(make_peers: MakePeers) -> None:
    p = make_peers()
    with p.client() as s:
        s.sendall(ctl.encode(ctl.Type.SIGNAL, 0, (10).to_bytes(4, "big")))
        assert _events(s, 1) == [(ctl.Type.DONE, 0, b"")]
        s.sendall(ctl.attach_request(True))
        ((kind, _, why),) = _events(s, 1)
        assert kind is ctl.Type.REFUSED and b"ATTACH" in why
    assert p.expect(FrameType.SIGNAL).payload == (10).to_bytes(4, "big")
