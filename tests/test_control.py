"""A sandbox's control protocol (bareboat/control.py): the codec, hostile frames either way,
and `ControlClient` against a scripted supervisor on a real unix socket (no VM, no agent, no
monitor: tests/engine/test_monitor_peers.py and tests/microvm/test_hub_peers.py script the
other side).

The protocol is the host's alone: no type of it is an agent frame type that a guest could be
sent, and an agent frame is refused by it (bad magic)."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bareboat import control as ctl
from bareboat.backends.microvm import agent
from bareboat.control import ControlClient, Type
from bareboat.errors import AgentProtocolError, BareboatError, ControlError

REQUESTS = sorted(ctl.REQUEST_LIMITS)
EVENTS = sorted(ctl.EVENT_LIMITS)


def _payload(ftype: Type) -> st.SearchStrategy[bytes]:
    if ftype is Type.SIGNAL:
        return st.integers(1, 64).map(lambda n: n.to_bytes(4, "big"))
    if ftype is Type.ATTACH:
        return st.tuples(st.booleans(), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)).map(
            lambda a: ctl.ATTACH.pack(*a)
        )
    if ftype is Type.FAILED:
        return st.binary(min_size=4, max_size=3000)
    if ftype in ctl.FIXED:
        size = ctl.REQUEST_LIMITS.get(ftype, ctl.EVENT_LIMITS.get(ftype, 0))
        return st.binary(min_size=size, max_size=size)
    limit = {**ctl.REQUEST_LIMITS, **ctl.EVENT_LIMITS}[ftype]
    return st.binary(max_size=min(limit, 3000))


@st.composite
def frames(draw: st.DrawFn, types: list[Type]) -> ctl.Frame:
    ftype = draw(st.sampled_from(types))
    low = 1 if ftype is Type.EXEC else 0
    return ftype, draw(st.integers(low, ctl.MAX_SESSION)), draw(_payload(ftype))


@given(st.lists(frames(REQUESTS), max_size=6), st.integers(1, 40))
def test_requests_round_trip_in_any_chunks(sent: list[ctl.Frame], chunk: int) -> None:
    wire = b"".join(ctl.encode(*f) for f in sent)
    dec = ctl.Decoder(ctl.REQUEST_LIMITS, "control client")
    got: list[ctl.Frame] = []
    for i in range(0, len(wire), chunk):
        got += dec.feed(wire[i : i + chunk])
    assert got == sent


@given(st.lists(frames(EVENTS), max_size=6), st.integers(1, 40))
def test_events_round_trip_in_any_chunks(sent: list[ctl.Frame], chunk: int) -> None:
    wire = b"".join(ctl.encode(*f) for f in sent)
    dec = ctl.Decoder(ctl.EVENT_LIMITS, "hub")
    got: list[ctl.Frame] = []
    for i in range(0, len(wire), chunk):
        got += dec.feed(wire[i : i + chunk])
    assert got == sent


@given(st.binary(max_size=200))
def test_garbage_is_refused_never_crashes(data: bytes) -> None:
    for limits in (ctl.REQUEST_LIMITS, ctl.EVENT_LIMITS):
        with contextlib.suppress(ControlError):
            ctl.Decoder(limits, "peer").feed(data)


def test_host_only_messages_are_no_guest_frames() -> None:
    """PAUSE and RESUME were agent FrameTypes the guest never saw; no control message is one
    now, and the two protocols cannot be mistaken for each other on the wire."""
    assert not {"PAUSE", "RESUME"} & {t.name for t in agent.FrameType}
    assert ctl.MAGIC != agent.MAGIC
    for ftype in agent.FrameType:
        with pytest.raises(ControlError, match="bad magic"):
            ctl.Decoder(ctl.REQUEST_LIMITS, "c").feed(agent.encode_frame(agent.Frame(ftype, 0)))
    with pytest.raises(AgentProtocolError, match="bad magic"):
        agent.FrameDecoder().feed(ctl.encode(Type.STDIN, 1, b"x" * 8))


def _header(ftype: int, session: int, length: int, *, version: int = ctl.VERSION) -> bytes:
    return ctl.HEADER.pack(ctl.MAGIC, version, ftype, session, length)


@pytest.mark.parametrize(
    ("limits", "data", "reason"),
    [
        (ctl.REQUEST_LIMITS, b"GET / HTTP/1.0\r\n\r\n", "bad magic"),
        (ctl.REQUEST_LIMITS, _header(Type.SIGNAL, 0, 4, version=2), "version 2"),
        (ctl.REQUEST_LIMITS, _header(99, 0, 0), "unknown frame type 99"),
        (ctl.REQUEST_LIMITS, _header(Type.STDOUT, 1, 0), "may not send"),
        (ctl.REQUEST_LIMITS, _header(Type.STDIN, 1, ctl.MAX_DATA + 1), "limit"),
        (ctl.REQUEST_LIMITS, _header(Type.EXEC, 1, ctl.MAX_EXEC + 1), "limit"),
        (ctl.REQUEST_LIMITS, _header(Type.SIGNAL, 0, 8), "4 bytes, not 8"),
        (ctl.REQUEST_LIMITS, _header(Type.RESIZE, 0, 2), "4 bytes, not 2"),
        (ctl.REQUEST_LIMITS, _header(Type.PAUSE, 0, 1), "limit 0"),
        (ctl.REQUEST_LIMITS, ctl.encode(Type.SIGNAL, 0, (65).to_bytes(4, "big")), "no signal 65"),
        (ctl.REQUEST_LIMITS, ctl.encode(Type.SIGNAL, 0, bytes(4)), "no signal 0"),
        (ctl.REQUEST_LIMITS, ctl.encode(Type.EXEC, 0, b"x"), "session id >= 1"),
        (ctl.REQUEST_LIMITS, _header(Type.ATTACH, 0, 4), "5 bytes, not 4"),
        (ctl.REQUEST_LIMITS, ctl.encode(Type.ATTACH, 0, ctl.ATTACH.pack(2, 24, 80)), "0 or 1"),
        (ctl.REQUEST_LIMITS, _header(Type.FAILED, 0, 4), "may not send"),
        (ctl.EVENT_LIMITS, _header(Type.ATTACH, 0, 5), "may not send"),
        (ctl.EVENT_LIMITS, _header(Type.FAILED, 0, 3), "at least 4 bytes"),
        (ctl.EVENT_LIMITS, _header(Type.FAILED, 0, 5 + ctl.MAX_REPORT), "limit"),
        (ctl.EVENT_LIMITS, _header(Type.EXEC, 1, 0), "may not send"),
        (ctl.EVENT_LIMITS, _header(Type.EXIT, 1, 5), "4 bytes, not 5"),
        (ctl.EVENT_LIMITS, _header(Type.ERROR, 1, ctl.MAX_MESSAGE + 1), "limit"),
    ],
)
def test_bad_frames_name_their_fault(limits: dict[Type, int], data: bytes, reason: str) -> None:
    with pytest.raises(ControlError, match=reason):
        ctl.Decoder(limits, "peer").feed(data)


def test_a_header_is_judged_before_its_payload_arrives() -> None:
    """An oversized frame is refused at its header: the hub never buffers what it will refuse."""
    with pytest.raises(ControlError, match="limit"):
        ctl.Decoder(ctl.REQUEST_LIMITS, "c").feed(_header(Type.EXEC, 1, 1 << 30))


def test_messages_are_bounded_and_shown_printable() -> None:
    frame = ctl.message(Type.ERROR, "x" * 5000 + "\x1b[2J")
    ((ftype, _, payload),) = ctl.Decoder(ctl.EVENT_LIMITS, "hub").feed(frame)
    assert ftype is Type.ERROR and len(payload) == ctl.MAX_MESSAGE
    assert ctl.text(b"bad\x1b[2J\nline\xff") == "bad?[2J?line\ufffd"


def test_encode_refuses_what_the_peer_would() -> None:
    with pytest.raises(ControlError, match="out of range"):
        ctl.encode(Type.SIGNAL, 1 << 32, bytes(4))
    with pytest.raises(ControlError, match="limit"):
        ctl.encode(Type.STDIN, 1, bytes(ctl.MAX_DATA + 1))


def test_the_runtime_pays_little_for_the_client() -> None:
    """bareboat-runtime's kill, pause and resume import control.py: it may add only itself
    and struct to what the runtime has loaded (the hub module it replaced pulled in the agent
    codec, dataclasses, json, pathlib and tempfile: ~120 ms here)."""
    code = (
        "import sys, bareboat.runtime.main, bareboat.runtime.vm; before = set(sys.modules); "
        "import bareboat.control; print(' '.join(set(sys.modules) - before))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    added = set(res.stdout.split())
    assert added <= {"bareboat.control", "struct", "_struct"}, added


# --- ControlClient against a scripted supervisor ----------------------------------------------


Script = Callable[[socket.socket, ctl.Decoder], None]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Callable[[Script], Path]]:
    """A supervisor that accepts one client and runs `script` on its connection."""
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []
    errors: list[BaseException] = []

    def serve(script: Script) -> Path:
        path = tmp_path / f"hub{len(listeners)}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(1)
        listeners.append(listener)

        def run() -> None:
            try:
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(10)
                    script(conn, ctl.Decoder(ctl.REQUEST_LIMITS, "control client"))
            except BaseException as err:  # noqa: BLE001 - reported by the test
                errors.append(err)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
        return path

    yield serve
    for t in threads:
        t.join(10)
    for listener in listeners:
        listener.close()
    assert not errors, errors


def _read(conn: socket.socket, dec: ctl.Decoder, n: int = 1) -> list[ctl.Frame]:
    got: list[ctl.Frame] = []
    while len(got) < n:
        data = conn.recv(65536)
        assert data, "the client hung up"
        got += dec.feed(data)
    return got


def test_pause_and_resume_wait_for_the_hub(hub: Callable[[Script], Path]) -> None:
    seen: list[Type] = []

    def script(conn: socket.socket, dec: ctl.Decoder) -> None:
        for reply in (ctl.encode(Type.DONE), ctl.message(Type.ERROR, "QMP said no")):
            ((ftype, _, _),) = _read(conn, dec)
            seen.append(ftype)
            conn.sendall(reply)

    path = hub(script)
    with ControlClient(path) as c:
        c.pause()
        with pytest.raises(ControlError, match="QMP said no"):
            c.resume()
    assert seen == [Type.PAUSE, Type.RESUME]


def test_a_hub_that_ends_or_refuses_is_an_error(hub: Callable[[Script], Path]) -> None:
    def hang_up(conn: socket.socket, dec: ctl.Decoder) -> None:
        _read(conn, dec)

    with ControlClient(hub(hang_up)) as c, pytest.raises(ControlError, match="ended before"):
        c.pause()

    def refuse(conn: socket.socket, dec: ctl.Decoder) -> None:
        _read(conn, dec)
        conn.sendall(ctl.message(Type.REFUSED, "no, thanks"))

    with ControlClient(hub(refuse)) as c, pytest.raises(ControlError, match="no, thanks"):
        c.pause()


def _collect(n: int, got: list[ctl.Frame], done: threading.Event) -> Script:
    def script(conn: socket.socket, dec: ctl.Decoder) -> None:
        got.extend(_read(conn, dec, n))
        done.set()

    return script


def test_signal_resize_poweroff_are_frames_of_their_own(hub: Callable[[Script], Path]) -> None:
    got: list[ctl.Frame] = []
    done = threading.Event()
    path = hub(_collect(3, got, done))
    with ControlClient(path) as c:
        c.signal(15)
        c.resize(24, 80, session=3)
        c.poweroff()
    assert done.wait(10)
    assert got == [
        (Type.SIGNAL, 0, b"\0\0\0\x0f"),
        (Type.RESIZE, 3, struct.pack(">HH", 24, 80)),
        (Type.POWEROFF, 0, b""),
    ]


def test_exec_relays_a_session_to_its_end(hub: Callable[[Script], Path]) -> None:
    stdin_seen: list[bytes] = []

    def script(conn: socket.socket, dec: ctl.Decoder) -> None:
        # The client sends its stdin without waiting for STARTED: it may come in the same
        # read as the EXEC.
        (ftype, session, payload), *early = _read(conn, dec)
        assert (ftype, session, payload) == (Type.EXEC, 1, b"spec")
        conn.sendall(
            ctl.encode(Type.STARTED, 1, (42).to_bytes(4, "big"))
            + ctl.message(Type.ERROR, "a warning\x07", 1)
            + ctl.encode(Type.STDOUT, 1, b"out")
            + ctl.encode(Type.STDERR, 1, b"err")
        )
        frames = early
        while not stdin_seen or stdin_seen[-1]:
            for ftype, session, payload in frames or _read(conn, dec):
                assert (ftype, session) == (Type.STDIN, 1)
                stdin_seen.append(payload)
            frames = []
        conn.sendall(
            ctl.encode(Type.STDOUT, 1, b"") + ctl.encode(Type.EXIT, 1, (128 + 9).to_bytes(4, "big"))
        )

    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    os.write(in_w, b"typed")
    os.close(in_w)
    started: list[bool] = []
    errors: list[str] = []
    try:
        with ControlClient(hub(script)) as c:
            status = c.exec(
                b"spec", stdin=in_r, stdout=out_w, stderr=err_w,
                on_started=lambda: started.append(True), on_error=errors.append,
            )  # fmt: skip
        assert status == 137 and started == [True] and errors == ["a warning?"]
        assert b"".join(stdin_seen) == b"typed" and stdin_seen[-1] == b""
        assert os.read(out_r, 100) == b"out" and os.read(err_r, 100) == b"err"
    finally:
        for fd in (in_r, out_r, out_w, err_r, err_w):
            os.close(fd)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"", "ended before the exec session did"),
        (ctl.message(Type.REFUSED, "EXEC needs a session id"), "EXEC needs a session id"),
        (agent.encode_frame(agent.Frame(agent.FrameType.EXIT, 1, bytes(5))), "bad magic"),
        (_header(Type.STDOUT, 1, ctl.MAX_DATA + 1), "limit"),
    ],
)
def test_exec_against_a_broken_hub_is_an_error(
    hub: Callable[[Script], Path], reply: bytes, reason: str
) -> None:
    def script(conn: socket.socket, dec: ctl.Decoder) -> None:
        _read(conn, dec)
        conn.sendall(reply)

    with ControlClient(hub(script)) as c, pytest.raises(ControlError, match=reason):
        c.exec(b"spec", stdin=None, stdout=1, stderr=2)


def test_detached_exec_returns_at_once(hub: Callable[[Script], Path]) -> None:
    got: list[ctl.Frame] = []
    done = threading.Event()
    path = hub(_collect(1, got, done))
    with ControlClient(path) as c:
        assert c.exec(b"spec", stdin=None, stdout=1, stderr=2, detach=True) == 0
    assert done.wait(10)
    assert got == [(Type.EXEC, 1, b"spec")]


def test_no_supervisor_is_a_sandbox_not_running(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="the VM is not running"):
        ControlClient(tmp_path / "nothing.sock", peer="the VM")


def test_kill_waits_for_done(hub: Callable[[Script], Path]) -> None:
    got: list[ctl.Frame] = []

    def script(conn: socket.socket, dec: ctl.Decoder) -> None:
        got.extend(_read(conn, dec))
        conn.sendall(ctl.encode(Type.DONE))

    with ControlClient(hub(script)) as c:
        c.kill(15)
    assert got == [(Type.SIGNAL, 0, (15).to_bytes(4, "big"))]


def test_attach_streams_the_workload_to_its_end(hub: Callable[[Script], Path]) -> None:
    """ATTACH, stdin in (its end an empty STDIN), output out by stream; frames of an exec
    session on the same socket are not the workload's."""
    seen: list[ctl.Frame] = []

    def script(conn: socket.socket, dec: ctl.Decoder) -> None:
        seen.extend(_read(conn, dec))
        conn.sendall(
            ctl.encode(Type.STARTED, 0, (7).to_bytes(4, "big"))
            + ctl.encode(Type.STDOUT, 0, b"out")
            + ctl.encode(Type.STDOUT, 3, b"not the workload's")
            + ctl.encode(Type.STDERR, 0, b"err")
        )
        while seen[-1] != (Type.STDIN, 0, b""):
            seen.extend(_read(conn, dec))
        conn.sendall(ctl.encode(Type.EXIT, 0, ctl.status(3)))

    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    os.write(in_w, b"typed")
    os.close(in_w)
    try:
        with ControlClient(hub(script)) as c:
            c.attach(stdin=True, rows=24, cols=80)
            assert c.pump(stdin_fd=in_r, stdout_fd=out_w, stderr_fd=err_w) == 3
        assert seen == [
            (Type.ATTACH, 0, ctl.ATTACH.pack(1, 24, 80)),
            (Type.STDIN, 0, b"typed"),
            (Type.STDIN, 0, b""),
        ]
        assert os.read(out_r, 100) == b"out" and os.read(err_r, 100) == b"err"
    finally:
        for fd in (in_r, out_r, out_w, err_r, err_w):
            os.close(fd)


def test_a_failed_workload_is_an_error_with_its_code(hub: Callable[[Script], Path]) -> None:
    def script(conn: socket.socket, dec: ctl.Decoder) -> None:
        _read(conn, dec)
        conn.sendall(ctl.failed(127, "no such command: nope\nconsole tail"))

    with ControlClient(hub(script)) as c:
        c.attach(stdin=False)
        with pytest.raises(BareboatError, match="no such command: nope\nconsole") as err:
            c.pump(stdin_fd=None)
    assert err.value.exit_code == 127


def test_wait_hears_the_end_or_times_out(hub: Callable[[Script], Path]) -> None:
    go = threading.Event()

    def script(conn: socket.socket, dec: ctl.Decoder) -> None:
        go.wait(10)
        conn.sendall(ctl.encode(Type.STDOUT, 0, b"x") + ctl.failed(125, "the VM died"))

    with ControlClient(hub(script)) as c:
        assert c.wait(0.1) is None
        go.set()
        assert c.wait(10) == 125


def test_a_forwarded_signal_takes_a_connection_of_its_own(
    hub: Callable[[Script], Path], tmp_path: Path
) -> None:
    got: list[ctl.Frame] = []
    done = threading.Event()
    path = hub(_collect(1, got, done))
    # The client's own connection is another listener's, which never reads.
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(tmp_path / "other.sock"))
    other.listen(1)
    try:
        with ControlClient(tmp_path / "other.sock") as c:
            c.path = str(path)
            c.forward_signal(2)
        assert done.wait(10)
        assert got == [(Type.SIGNAL, 0, (2).to_bytes(4, "big"))]
    finally:
        other.close()
