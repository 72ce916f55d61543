"""The real guest init, run on the host in test mode (`init --test-fd N`), driven by AgentClient.

No VM: the same binary, the same protocol and the same spawn/stream/signal/reap code that runs as
PID 1 in a guest; only the mounts, identity and power-off are skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.backends.microvm.agent import (
    HEADER,
    AgentClient,
    ErrorKind,
    Exited,
    Frame,
    FrameDecoder,
    FrameType,
    ProcessSpec,
    Rlimit,
    SessionResult,
    Started,
    StartSpec,
    encode_prepare,
    encode_start,
)
from bareboat.backends.microvm.initbuild import build_init
from bareboat.paths import Roots

pytestmark = pytest.mark.skipif(shutil.which("musl-gcc") is None, reason="musl-gcc is missing")

SH = "/bin/sh"
BUSYBOX = Path("/bin/busybox")


@pytest.fixture(scope="session")
def init_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("guest-cache")
    return build_init(Roots(root=d / "root", state=d / "state", cache=d))


class Agent:
    """One init process in test mode, owning its process and both socket ends."""

    def __init__(self, binary: Path) -> None:
        host, guest = socket.socketpair()
        self.proc = subprocess.Popen(
            [str(binary), "--test-fd", str(guest.fileno())], pass_fds=[guest.fileno()]
        )
        guest.close()
        self.client = AgentClient(host)

    def close(self) -> None:
        self.client.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def agent(init_binary: Path) -> Iterator[Agent]:
    a = Agent(init_binary)
    try:
        a.client.wait_hello(5)
        yield a
    finally:
        a.close()


def run(agent: Agent, spec: ProcessSpec, stdin: bytes | None = b"", **start: object):
    agent.client.start(StartSpec(process=spec, **start))  # type: ignore[arg-type]
    return agent.client.wait(0, timeout=20, stdin=stdin)


def sh(script: str, **kw: object) -> ProcessSpec:
    return ProcessSpec(args=[SH, "-c", script], env=["PATH=/usr/bin:/bin"], **kw)  # type: ignore[arg-type]


def test_hello(agent: Agent) -> None:
    assert agent.client.hello is not None
    assert agent.client.hello.version == 1
    assert agent.client.hello.agent.startswith("bareboat-init")


def test_streams_and_exit_code(agent: Agent) -> None:
    res = run(agent, sh("echo hello; echo oops >&2; exit 3"))
    assert (res.stdout, res.stderr, res.exit) == (b"hello\n", b"oops\n", Exited(0, 3, None))
    assert res.pid and res.pid > 1 and not res.errors
    assert res.boot is not None and res.boot.init_to_exec >= res.boot.spawn > 0


def test_stdin_is_streamed(agent: Agent) -> None:
    data = os.urandom(3 << 20)  # over every pipe and socket buffer on the way, both ways
    res = run(agent, ProcessSpec(args=["cat"], env=["PATH=/bin"]), stdin=data)
    assert res.stdout == data and res.exit.code == 0


def test_large_output(agent: Agent) -> None:
    res = run(agent, sh("head -c 5000000 /dev/zero"))
    assert res.stdout == bytes(5_000_000)


@pytest.mark.parametrize(
    ("args", "env", "kind", "code"),
    [
        (["/no/such/cmd"], [], ErrorKind.NOT_FOUND, 127),
        (["no-such-cmd"], ["PATH=/bin:/usr/bin"], ErrorKind.NOT_FOUND, 127),
        (["ls"], ["PATH=/nonexistent"], ErrorKind.NOT_FOUND, 127),  # PATH is the workload's
        (["/etc/passwd"], [], ErrorKind.NOT_EXECUTABLE, 126),
        (["/etc"], [], ErrorKind.NOT_EXECUTABLE, 126),
    ],
)
def test_exec_failures_say_why(
    agent: Agent, args: list[str], env: list[str], kind: ErrorKind, code: int
) -> None:
    res = run(agent, ProcessSpec(args=args, env=env))
    assert res.exit == Exited(0, code, None)
    assert [e.kind for e in res.errors] == [kind]
    assert args[0] in res.errors[0].message


def test_not_executable_script_without_shebang(agent: Agent, tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_bytes(b"\x7fELF-not-really")
    script.chmod(0o755)
    res = run(agent, ProcessSpec(args=[str(script)]))
    assert res.exit.code == 126 and res.errors[0].kind == ErrorKind.NOT_EXECUTABLE


def test_bad_cwd_is_a_spawn_error(agent: Agent) -> None:
    res = run(agent, ProcessSpec(args=["/bin/true"], cwd="/no/such/dir"))
    assert res.exit.code == 125
    assert res.errors[0].kind == ErrorKind.SPAWN and "/no/such/dir" in res.errors[0].message


def test_process_spec_is_applied(agent: Agent, tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    spec = sh(
        "id -u; id -g; id -G; pwd; umask; ulimit -n; echo $FOO; touch f; stat -c %a f",
        uid=1000,
        gid=1001,
        groups=[50, 60],
        cwd=str(tmp_path),
        umask=0o027,
        rlimits=[Rlimit(7, 100, 100)],  # RLIMIT_NOFILE
        no_new_privs=True,
    )
    spec = ProcessSpec(**{**spec.__dict__, "env": [*spec.env, "FOO=bar baz"]})
    res = run(agent, spec)
    assert res.exit.code == 0, res.stderr
    assert res.stdout.decode().split("\n") == [
        "1000",
        "1001",
        "1001 50 60",
        str(tmp_path),
        "0027",
        "100",
        "bar baz",
        "640",
        "",
    ]


def test_workload_inherits_only_its_stdio(agent: Agent) -> None:
    res = run(agent, ProcessSpec(args=[str(BUSYBOX), "ls", "/proc/self/fd"]))
    assert res.stdout.split() == [b"0", b"1", b"2", b"3"]  # 3: the directory ls reads


def test_no_new_privs(agent: Agent) -> None:
    res = run(agent, sh("grep NoNewPrivs /proc/self/status", no_new_privs=True))
    assert res.stdout.split() == [b"NoNewPrivs:", b"1"]


def test_signal_is_forwarded(agent: Agent) -> None:
    agent.client.start(StartSpec(process=ProcessSpec(args=["/bin/sleep", "100"])))
    time.sleep(0.1)
    agent.client.signal(0, signal.SIGTERM)
    res = agent.client.wait(0, timeout=10)
    assert res.exit == Exited(0, None, signal.SIGTERM)
    assert res.exit.status == 143


def test_listening_ports_are_reported(agent: Agent) -> None:
    # In test mode the agent reads this host's /proc/net/tcp{,6}: a socket opened here is one
    # it must report once it listens on a non-loopback address, and forget once closed.
    agent.client.start(StartSpec(process=ProcessSpec(args=["/bin/sleep", "100"]), watch_ports=True))
    loopback = socket.create_server(("127.0.0.1", 0))
    with (
        socket.create_server(("0.0.0.0", 0)) as v4,
        socket.create_server(("::", 0), family=socket.AF_INET6) as v6,
    ):
        p4, p6 = v4.getsockname()[1], v6.getsockname()[1]
        agent.client.wait_ports(lambda ports: {p4, p6} <= set(ports), 10)
    assert loopback.getsockname()[1] not in agent.client.ports
    agent.client.wait_ports(lambda ports: not {p4, p6} & set(ports), 10)
    loopback.close()
    agent.client.signal(0, signal.SIGKILL)
    agent.client.wait(0, timeout=10)


def test_ports_are_not_reported_unless_asked(agent: Agent) -> None:
    with socket.create_server(("0.0.0.0", 0)):
        res = run(agent, sh("sleep 0.6"))
    assert res.exit.code == 0 and agent.client.ports == ()


def test_exec_sessions_while_running(agent: Agent) -> None:
    agent.client.start(StartSpec(process=sh("read line; echo main got $line")))
    s1 = agent.client.exec(sh("echo from exec; exit 5"))
    s2 = agent.client.exec(ProcessSpec(args=["/no/such"]))
    r1 = agent.client.wait(s1, timeout=10)
    r2 = agent.client.wait(s2, timeout=10)
    assert (r1.stdout, r1.exit.code) == (b"from exec\n", 5)
    assert r2.exit.code == 127
    res = agent.client.wait(0, timeout=10, stdin=b"hi\n")
    assert res.stdout == b"main got hi\n"


def test_terminal_and_resize(agent: Agent) -> None:
    agent.client.start(StartSpec(process=ProcessSpec(args=["/bin/sleep", "30"])))
    spec = sh("tty; stty size; read x; stty size", terminal=True, rows=30, cols=90)
    s = agent.client.exec(spec)
    time.sleep(0.3)
    agent.client.resize(s, 40, 100)
    agent.client.write_stdin(s, b"go\n")
    res = agent.client.wait(s, timeout=10)
    out = res.stdout.decode().replace("\r", "").split("\n")
    assert out[0].startswith("/dev/pts/")
    assert out[1] == "30 90"
    assert "40 100" in out
    assert res.stderr == b"" and res.exit.code == 0
    agent.client.signal(0, signal.SIGKILL)
    assert agent.client.wait(0, timeout=10).exit.signal == signal.SIGKILL


def zombies_of(pid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (d / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] == "Z":
                found.append(int(d.name))
    return found


def test_orphans_are_reaped(agent: Agent) -> None:
    # the subshell's sleep is orphaned to init (PID 1, or a subreaper in test mode)
    res = run(agent, sh("(sleep 0.2 >/dev/null 2>&1 &) ; echo started"))
    assert res.stdout == b"started\n"
    time.sleep(0.6)
    agent.client.ping()
    assert zombies_of(agent.proc.pid) == []


def test_output_of_background_children_does_not_hold_exit(agent: Agent) -> None:
    # the background sleep keeps stdout open; EXIT must not wait for it
    res = run(agent, sh("sleep 30 & echo $!"))
    bg = int(res.stdout)
    assert res.exit.code == 0
    assert Path(f"/proc/{bg}").exists()
    os.kill(bg, signal.SIGKILL)


def test_exec_before_start_is_refused(agent: Agent) -> None:
    s = agent.client.exec(ProcessSpec(args=["/bin/true"]))
    res = agent.client.wait(s, timeout=5)
    assert res.exit.code == 125 and res.errors[0].kind == ErrorKind.BAD_REQUEST


def prepare_reply(agent: Agent, session: int, payload: bytes) -> SessionResult:
    """Send a raw PREPARE on `session`: the agent's ERRORs and EXIT for it."""
    from bareboat.backends.microvm.agent import _SessionState

    agent.client._sessions[session] = _SessionState()
    agent.client._send(Frame(FrameType.PREPARE, session, payload))
    return agent.client.wait(session, timeout=5)


def test_prepare_answers_on_its_session(agent: Agent) -> None:
    # test mode has no disks: the request is well-formed, the root cannot be made (ROOTFS)
    assert "test mode" in agent.client.prepare("/dev/vda", "erofs")
    res = prepare_reply(agent, 7, b"")
    assert "no LOWER" in res.errors[0].message and res.exit.code == 125
    # only the root's fields: a process, an identity or mounts are START's
    bad = encode_prepare("/dev/vda", "erofs") + encode_start(
        StartSpec(process=ProcessSpec(args=["x"]))
    )
    res = prepare_reply(agent, 8, bad)
    assert res.errors[0].kind == ErrorKind.BAD_REQUEST and "PREPARE" in res.errors[0].message
    assert res.exit.code == 125
    run(agent, ProcessSpec(args=["/bin/true"]))
    assert "after START" in agent.client.prepare("/dev/vda", "erofs")


def test_chroot_into_root_dir(agent: Agent, tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    shutil.copy(BUSYBOX, tmp_path / "bin" / "busybox")
    (tmp_path / "bin" / "sh").symlink_to("busybox")
    (tmp_path / "marker").write_text("x")
    spec = ProcessSpec(args=["sh", "-c", "busybox ls /"], env=["PATH=/bin"])
    res = run(agent, spec, root_dir=str(tmp_path))
    assert res.stdout.split() == [b"bin", b"marker"]


def test_ping(agent: Agent) -> None:
    rtts = [agent.client.ping(b"%d" % i) for i in range(50)]
    assert all(r > 0 for r in rtts)


def test_poweroff_ends_test_mode(agent: Agent) -> None:
    agent.client.start(StartSpec(process=ProcessSpec(args=["/bin/sleep", "100"])))
    agent.client.poweroff()
    assert agent.proc.wait(5) == 0


def test_closed_channel_ends_test_mode_and_kills_sessions(init_binary: Path) -> None:
    a = Agent(init_binary)
    try:
        a.client.wait_hello(5)
        a.client.start(StartSpec(process=ProcessSpec(args=["/bin/sleep", "100"])))
        ev = a.client.next_event(5)
        assert isinstance(ev, Started)
        a.client.close()
        assert a.proc.wait(5) == 0
        # killed by init, then reaped by whoever inherits it: gone within a moment
        deadline = time.monotonic() + 5
        while Path(f"/proc/{ev.pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{ev.pid}").exists()
    finally:
        a.close()


def raw_frame(ftype: int, session: int, payload: bytes, *, magic: bytes = b"BBAG") -> bytes:
    return HEADER.pack(magic, 1, ftype, 0, session, len(payload)) + payload


def test_agent_survives_garbage_and_bad_requests(init_binary: Path) -> None:
    host, guest = socket.socketpair()
    proc = subprocess.Popen(
        [str(init_binary), "--test-fd", str(guest.fileno())], pass_fds=[guest.fileno()]
    )
    guest.close()
    host.settimeout(5)
    try:
        host.recv(4096)  # HELLO
        bad_start = struct.pack(">HI", 999, 0)  # unknown tag
        for wire in [
            raw_frame(FrameType.START, 0, bad_start),
            raw_frame(FrameType.SIGNAL, 9, b"\0\0\0\x0f"),
            raw_frame(FrameType.PING, 0, b"x" * 65),
            b"garbage that is not a frame....",
        ]:
            host.sendall(wire)
            time.sleep(0.05)
        host.sendall(raw_frame(FrameType.PING, 0, b"alive"))
        got = b""
        deadline = time.monotonic() + 5
        while b"alive" not in got and time.monotonic() < deadline:
            got += host.recv(4096)
        assert b"alive" in got
        assert b"unknown field tag 999" in got
        assert proc.poll() is None
    finally:
        host.close()
        proc.wait(5)


def test_agent_parser_survives_random_fields(init_binary: Path) -> None:
    """Random TLV soup in START, always ending with an unknown tag so nothing is ever run:
    the C parser must reject each one cleanly (ERROR, then EXIT 125) and keep serving."""
    import random

    rng = random.Random(1234)
    host, guest = socket.socketpair()
    proc = subprocess.Popen(
        [str(init_binary), "--test-fd", str(guest.fileno())], pass_fds=[guest.fileno()]
    )
    guest.close()
    host.settimeout(5)
    decoder = FrameDecoder()

    def frames_until(ftype: FrameType) -> list[Frame]:
        got: list[Frame] = []
        while not any(f.type == ftype for f in got):
            got += decoder.feed(host.recv(65536))
        return got

    try:
        frames_until(FrameType.HELLO)
        for i in range(300):
            fields = []
            for _ in range(rng.randrange(0, 12)):
                tag = rng.choice([*range(1, 12), *range(32, 43), rng.randrange(0, 65536)])
                value = rng.randbytes(rng.choice([0, 1, 2, 4, 5, 12, 20, rng.randrange(0, 300)]))
                length = len(value) if rng.random() < 0.9 else rng.randrange(0, 2**32)
                fields.append(struct.pack(">HI", tag, length) + value)
            payload = b"".join(fields) + struct.pack(">HI", 999, 0)
            host.sendall(raw_frame(FrameType.START, 0, payload))
            got = frames_until(FrameType.EXIT)
            assert [f.type for f in got] == [FrameType.ERROR, FrameType.EXIT], i
            assert got[1].payload == b"\0\0\0\0\x7d"  # exited 125
        host.sendall(raw_frame(FrameType.PING, 0, b"alive"))
        assert frames_until(FrameType.PONG)[-1].payload == b"alive"
        assert proc.poll() is None
    finally:
        host.close()
        proc.wait(5)


def test_many_concurrent_exec_sessions(agent: Agent) -> None:
    agent.client.start(StartSpec(process=ProcessSpec(args=["/bin/sleep", "30"])))
    ids = [
        agent.client.exec(sh(f"head -c {100_000 + i} /dev/zero; echo err{i} >&2; exit {i}"))
        for i in range(20)
    ]
    for i, s in reversed(list(enumerate(ids))):
        res = agent.client.wait(s, timeout=20)
        assert (len(res.stdout), res.stderr, res.exit.code) == (100_000 + i, b"err%d\n" % i, i)
    agent.client.signal(0, signal.SIGKILL)
    assert agent.client.wait(0, timeout=10).exit.signal == signal.SIGKILL
