"""The agent protocol codec: round trips and hostile frames (the guest is untrusted)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bareboat.backends.microvm import agent
from bareboat.backends.microvm.agent import (
    HEADER,
    AgentClient,
    Exited,
    Frame,
    FrameDecoder,
    FrameType,
    Mount,
    Output,
    ProcessSpec,
    Rlimit,
    StartSpec,
    decode_event,
    decode_start,
    encode_frame,
    encode_start,
)
from bareboat.errors import AgentProtocolError, AgentTimeout, BootTimeout, UsageError

ALL_TYPES = {t: agent.MAX_PAYLOAD for t in FrameType}

text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40
)
u32 = st.integers(0, 2**32 - 1)


@st.composite
def process_specs(draw: st.DrawFn) -> ProcessSpec:
    return ProcessSpec(
        args=draw(st.lists(text.filter(bool), min_size=1, max_size=5)),
        env=draw(st.lists(text, max_size=5)),
        cwd=draw(text),
        uid=draw(u32),
        gid=draw(u32),
        groups=draw(st.lists(u32, max_size=5)),
        umask=draw(st.integers(0, 0o777)),
        rlimits=draw(
            st.lists(
                st.builds(Rlimit, u32, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
                max_size=3,
            )
        ),
        no_new_privs=draw(st.booleans()),
        terminal=draw(st.booleans()),
        rows=draw(st.integers(1, 0xFFFF)),
        cols=draw(st.integers(1, 0xFFFF)),
    )


@st.composite
def start_specs(draw: st.DrawFn) -> StartSpec:
    mount = st.builds(
        Mount,
        target=text.map(lambda t: "/" + t.replace("..", "")),
        fstype=text.filter(bool),
        source=text,
        options=text,
        readonly=st.booleans(),
        file=st.booleans(),
    )
    return StartSpec(
        process=draw(process_specs()),
        hostname=draw(st.text(alphabet="abcdefghij-0123", max_size=64)),
        time_ns=draw(st.none() | st.integers(0, 2**63)),
        entropy=draw(st.binary(max_size=512)),
        lower=draw(st.none() | text),
        lower_fstype=draw(text),
        upper=draw(st.none() | text),
        upper_fstype=draw(text),
        mounts=draw(st.lists(mount, max_size=3)),
        root_dir=draw(st.none() | text),
        files=draw(
            st.lists(
                st.builds(
                    agent.File,
                    path=text.filter(bool).map(lambda t: "/" + t.replace("..", "")),
                    data=st.binary(max_size=100),
                    readonly=st.booleans(),
                ),
                max_size=3,
            )
        ),
        readonly_root=draw(st.booleans()),
        watch_ports=draw(st.booleans()),
    )


def normalized(spec: StartSpec) -> StartSpec:
    """What survives the wire: fstypes travel only with their device."""
    from dataclasses import replace

    return replace(
        spec,
        lower_fstype=spec.lower_fstype if spec.lower is not None else "erofs",
        upper_fstype=spec.upper_fstype if spec.upper is not None else "ext4",
    )


@settings(max_examples=200)
@given(start_specs())
def test_start_round_trip(spec: StartSpec) -> None:
    assert decode_start(encode_start(spec)) == normalized(spec)


@given(st.sampled_from(list(FrameType)), u32, st.binary(max_size=2000), st.integers(1, 50))
def test_frame_round_trip_in_any_chunks(
    ftype: FrameType, session: int, payload: bytes, chunk: int
) -> None:
    frames = [Frame(ftype, session, payload), Frame(FrameType.PING, 1, b"x")]
    wire = b"".join(encode_frame(f) for f in frames)
    dec = FrameDecoder(ALL_TYPES)
    got: list[Frame] = []
    for i in range(0, len(wire), chunk):
        got += dec.feed(wire[i : i + chunk])
    assert got == frames
    assert dec.buffered == 0


@given(st.binary(max_size=200))
def test_decoder_never_crashes_on_garbage(data: bytes) -> None:
    dec = FrameDecoder()
    try:
        for frame in dec.feed(data):
            with contextlib.suppress(AgentProtocolError):
                decode_event(frame)
    except AgentProtocolError:
        pass


def header(
    magic: bytes = b"BBAG",
    version: int = 1,
    ftype: int = FrameType.STDOUT,
    flags: int = 0,
    session: int = 0,
    length: int = 0,
) -> bytes:
    return HEADER.pack(magic, version, ftype, flags, session, length)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (header(magic=b"XXXX"), "bad magic"),
        (header(version=2), "version 2"),
        (header(flags=1), "flags"),
        (header(ftype=99), "unknown frame type 99"),
        (header(ftype=FrameType.START), "must not"),
        (header(ftype=FrameType.STDIN), "must not"),
        (header(length=agent.MAX_DATA + 1), "limit"),
        (header(length=0xFFFFFFFF), "limit"),
        (header(ftype=FrameType.EXIT, length=6), "limit"),
    ],
)
def test_hostile_headers_are_refused(wire: bytes, message: str) -> None:
    with pytest.raises(AgentProtocolError, match=message):
        FrameDecoder().feed(wire)


def test_truncated_frame_waits_for_more() -> None:
    wire = encode_frame(Frame(FrameType.STDOUT, 0, b"hello"))
    dec = FrameDecoder()
    assert dec.feed(wire[:-1]) == []
    assert dec.feed(wire[-1:]) == [Frame(FrameType.STDOUT, 0, b"hello")]


@pytest.mark.parametrize(
    "frame",
    [
        Frame(FrameType.EXIT, 0, b"\0\0\0"),
        Frame(FrameType.EXIT, 0, b"\2\0\0\0\0"),
        Frame(FrameType.EXIT, 0, b"\0\0\0\1\0"),  # status 256
        Frame(FrameType.EXIT, 0, b"\1\0\0\0\0"),  # signal 0
        Frame(FrameType.EXIT, 0, b"\1\0\0\0\x41"),  # signal 65
        Frame(FrameType.HELLO, 0, b"\0\0"),
        Frame(FrameType.STARTED, 0, b"\0"),
        Frame(FrameType.ERROR, 0, b"\0"),
        Frame(FrameType.ERROR, 0, b"\0\x63oops"),
        Frame(FrameType.PORTS, 0, b"\0\x50\0"),  # odd length
        Frame(FrameType.PORTS, 0, b"\0\x50\0\x16"),  # not ascending
        Frame(FrameType.PORTS, 0, b"\0\x50\0\x50"),  # twice
        Frame(FrameType.PORTS, 0, b"\0\0"),  # port 0
    ],
)
def test_malformed_payloads_are_refused(frame: Frame) -> None:
    with pytest.raises(AgentProtocolError):
        decode_event(frame)


def test_ports_frame() -> None:
    assert decode_event(Frame(FrameType.PORTS, 0, b"\0\x16\x1f\x90")) == agent.Ports((22, 8080))
    assert decode_event(Frame(FrameType.PORTS, 0, b"")) == agent.Ports(())


def test_error_messages_are_made_printable() -> None:
    ev = decode_event(Frame(FrameType.ERROR, 3, b"\0\2bad\x1b[2J\nthing\xff"))
    assert isinstance(ev, agent.AgentError)
    assert ev.kind == agent.ErrorKind.NOT_FOUND
    assert ev.message.isprintable()


def test_exit_events() -> None:
    assert decode_event(Frame(FrameType.EXIT, 2, b"\0\0\0\0\3")) == Exited(2, 3, None)
    ev = decode_event(Frame(FrameType.EXIT, 2, b"\1\0\0\0\x09"))
    assert ev == Exited(2, None, 9)
    assert isinstance(ev, Exited) and ev.status == 137


@pytest.mark.parametrize(
    "spec",
    [
        ProcessSpec(args=[]),
        ProcessSpec(args=[""]),
        ProcessSpec(args=["a\0b"]),
        ProcessSpec(args=["x" * 5000]),
        ProcessSpec(args=["sh"], uid=-1),
        ProcessSpec(args=["sh"], uid=2**32),
        ProcessSpec(args=["sh"], umask=0o1000),
        ProcessSpec(args=["sh"], groups=list(range(65))),
        ProcessSpec(args=["sh"], rlimits=[Rlimit(7, -1, 0)]),
    ],
)
def test_bad_specs_are_usage_errors(spec: ProcessSpec) -> None:
    with pytest.raises(UsageError):
        encode_start(StartSpec(process=spec))


def test_bad_start_fields_are_usage_errors() -> None:
    ok = ProcessSpec(args=["sh"])
    for spec in [
        StartSpec(ok, hostname="h" * 65),
        StartSpec(ok, entropy=b"e" * 513),
        StartSpec(ok, mounts=[Mount("relative", "tmpfs")]),
        StartSpec(ok, mounts=[Mount("/a/../../etc", "tmpfs")]),
        StartSpec(ok, mounts=[Mount("/a", "")]),
        StartSpec(ok, files=[agent.File("etc/hosts", b"")]),
        StartSpec(ok, files=[agent.File("/", b"")]),
        StartSpec(ok, files=[agent.File("/etc/hosts", bytes(65537))]),
    ]:
        with pytest.raises(UsageError):
            encode_start(spec)


# --- the client against a scripted (hostile) peer -----------------------------------------


def scripted_guest(script: bytes) -> tuple[AgentClient, socket.socket]:
    host, guest = socket.socketpair()
    guest.sendall(script)
    return AgentClient(host), guest


def started(client: AgentClient, guest: socket.socket, script: bytes) -> None:
    """START session 0, then let the guest say its lines."""
    client.wait_hello(2)
    client.start(StartSpec(ProcessSpec(args=["true"])))
    guest.sendall(script)


def frame(ftype: FrameType, session: int, payload: bytes) -> bytes:
    return HEADER.pack(b"BBAG", 1, ftype, 0, session, len(payload)) + payload


HELLO = frame(FrameType.HELLO, 0, struct.pack(">II", 1, 0) + b"test")


def test_client_collects_a_session() -> None:
    script = b"".join(
        [
            frame(FrameType.STARTED, 0, struct.pack(">I", 42)),
            frame(FrameType.STDOUT, 0, b"hel"),
            frame(FrameType.STDERR, 0, b"oops"),
            frame(FrameType.STDOUT, 0, b"lo"),
            frame(FrameType.STDOUT, 0, b""),
            frame(FrameType.STDERR, 0, b""),
            frame(FrameType.EXIT, 0, b"\0\0\0\0\3"),
        ]
    )
    client, guest = scripted_guest(HELLO)
    with client, guest:
        started(client, guest, script)
        assert client.hello is not None and client.hello.agent == "test"
        res = client.wait(0, timeout=2)
        assert (res.stdout, res.stderr, res.exit.code, res.pid) == (b"hello", b"oops", 3, 42)


@pytest.mark.parametrize(
    "script",
    [
        frame(FrameType.STDOUT, 7, b"x"),  # a session never started
        frame(FrameType.STDOUT, 0, b"") + frame(FrameType.STDOUT, 0, b"x"),  # after its end
        frame(FrameType.EXIT, 0, b"\0\0\0\0\0") + frame(FrameType.EXIT, 0, b"\0\0\0\0\0"),
        b"BBAG\x01\x05\x00\x00\x00\x00\x00\x00\x7f\xff\xff\xff",  # 2 GiB of stdout announced
        b"GET / HTTP/1.1\r\n\r\n",
    ],
)
def test_client_refuses_hostile_guest(script: bytes) -> None:
    client, guest = scripted_guest(HELLO)
    with client, guest:
        started(client, guest, script)
        with pytest.raises(AgentProtocolError):
            client.wait(0, timeout=2)


def test_client_times_out_on_a_silent_guest() -> None:
    client, guest = scripted_guest(b"")
    with client, guest, pytest.raises(BootTimeout):
        client.wait_hello(0.3)


def test_client_times_out_on_a_session_that_never_ends() -> None:
    client, guest = scripted_guest(HELLO)
    with client, guest:
        started(client, guest, frame(FrameType.STDOUT, 0, b"x"))
        with pytest.raises(AgentTimeout):
            client.wait(0, timeout=0.3)


def test_client_sees_a_closed_connection() -> None:
    client, guest = scripted_guest(HELLO)
    with client:
        client.wait_hello(2)
        guest.close()
        with pytest.raises(AgentProtocolError, match="connection"):
            client.next_event(2)


def test_client_bounds_what_it_queues() -> None:
    client, guest = scripted_guest(HELLO)
    client.MAX_QUEUED_BYTES = 100_000
    chunk = frame(FrameType.STDOUT, 0, b"x" * 60_000)

    def flood() -> None:
        try:
            for _ in range(10):
                guest.sendall(chunk)
        except OSError:
            pass

    with client, guest:
        client.wait_hello(2)
        client.start(StartSpec(ProcessSpec(args=["true"])))
        t = threading.Thread(target=flood)
        t.start()
        with pytest.raises(AgentProtocolError, match="queue"):
            client.ping(timeout=2)
        client.close()
        t.join(5)


def test_output_event_type() -> None:
    assert decode_event(Frame(FrameType.STDERR, 1, b"e")) == Output(1, "stderr", b"e")


def test_client_times_out_on_a_guest_that_never_reads() -> None:
    client, guest = scripted_guest(HELLO)
    with client, guest:
        started(client, guest, b"")
        with pytest.raises(AgentTimeout):
            client.write_stdin(0, bytes(64 << 20), timeout=0.5)


def test_started_with_boot_timings() -> None:
    ev = decode_event(Frame(FrameType.STARTED, 0, struct.pack(">IIIII", 7, 1000, 2000, 3000, 4000)))
    assert ev == agent.Started(0, 7, agent.BootTimings(0.001, 0.002, 0.003, 0.004))
    with pytest.raises(AgentProtocolError):
        decode_event(Frame(FrameType.STARTED, 0, bytes(8)))
