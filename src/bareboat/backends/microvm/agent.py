"""The host side of the guest agent protocol (guest/PROTOCOL.md, version 1).

Two parts: a codec (frames and the START/EXEC field lists, plain functions over bytes, tested
with hypothesis) and `AgentClient`, which talks to one agent over a stream socket. The guest is
untrusted: every frame it sends is bounded in size, checked for a known type that may travel
guest→host, a known session, and a well-formed payload; anything else raises
`AgentProtocolError`, and every wait has a deadline (`AgentTimeout`).
"""

from __future__ import annotations

import collections
import enum
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bareboat.closing import Closing
from bareboat.errors import AgentProtocolError, AgentTimeout, BootTimeout, UsageError
from bareboat.framing import split

MAGIC = b"BBAG"
VERSION = 1
HEADER = struct.Struct(">4sBBHII")
MAX_PAYLOAD = 1 << 20
MAX_DATA = 64 * 1024
MAX_STR = 4096
MAX_LIST = 4096
MAX_GROUPS = 64
MAX_RLIMITS = 32
MAX_MOUNTS = 64
MAX_ENTROPY = 512
MAX_HOSTNAME = 64
MAX_ERROR_MESSAGE = 1024
MAX_PING = 64
MAX_FILES = 64
MAX_FILE_SIZE = 64 * 1024
MAX_PORTS = 1024


class FrameType(enum.IntEnum):
    HELLO = 1
    START = 2
    STARTED = 3
    STDIN = 4
    STDOUT = 5
    STDERR = 6
    RESIZE = 7
    SIGNAL = 8
    EXIT = 9
    EXEC = 10
    ERROR = 11
    POWEROFF = 12
    PING = 13
    PONG = 14
    # 15 and 16 are not used: the host's own control messages are bareboat/control.py's
    PORTS = 17
    PREPARE = 18


class ErrorKind(enum.IntEnum):
    BAD_REQUEST = 1
    NOT_FOUND = 2
    NOT_EXECUTABLE = 3
    SPAWN = 4
    ROOTFS = 5
    INTERNAL = 6
    UNKNOWN_SESSION = 7


class Tag(enum.IntEnum):
    ARG = 1
    ENV = 2
    CWD = 3
    UID = 4
    GID = 5
    GROUP = 6
    UMASK = 7
    RLIMIT = 8
    NO_NEW_PRIVS = 9
    TERMINAL = 10
    WINSIZE = 11
    HOSTNAME = 32
    TIME = 33
    ENTROPY = 34
    LOWER = 35
    LOWER_FSTYPE = 36
    UPPER = 37
    UPPER_FSTYPE = 38
    MOUNT = 39
    ROOT_DIR = 40
    FILE = 41
    READONLY_ROOT = 42
    WATCH_PORTS = 43
    WARM = 44


# the largest payload the host accepts per guest→host type; other types never come from a guest
GUEST_LIMITS: dict[FrameType, int] = {
    FrameType.HELLO: 8 + 64,
    FrameType.STARTED: 4 + 16,
    FrameType.STDOUT: MAX_DATA,
    FrameType.STDERR: MAX_DATA,
    FrameType.EXIT: 5,
    FrameType.ERROR: 2 + MAX_ERROR_MESSAGE,
    FrameType.PONG: MAX_PING,
    FrameType.PORTS: 2 * MAX_PORTS,
}
MAX_SESSION = 0xFFFFFFFF


# --- frames -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    type: FrameType
    session: int
    payload: bytes = b""


def encode_frame(frame: Frame) -> bytes:
    if not 0 <= frame.session <= MAX_SESSION:
        raise UsageError(f"agent session id out of range: {frame.session}")
    if len(frame.payload) > MAX_PAYLOAD:
        raise UsageError(f"agent message too large: {len(frame.payload)} bytes")
    header = HEADER.pack(MAGIC, VERSION, int(frame.type), 0, frame.session, len(frame.payload))
    return header + frame.payload


class FrameDecoder:
    """Incremental decoder of one direction of the stream.

    `limits` maps each type that may arrive to its largest payload; by default the guest→host
    limits, since the host decodes what a (hostile) guest sends.
    """

    def __init__(self, limits: dict[FrameType, int] | None = None) -> None:
        self.limits = GUEST_LIMITS if limits is None else limits
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        return [
            Frame(kind, session, payload)
            for (kind, session), payload in split(self._buf, HEADER, self._check_header)
        ]

    def _check_header(self, fields: tuple[Any, ...]) -> tuple[tuple[FrameType, int], int]:
        magic, version, ftype, flags, session, length = fields
        if magic != MAGIC:
            raise AgentProtocolError(f"agent sent a frame with bad magic {bytes(magic)!r}")
        if version != VERSION:
            raise AgentProtocolError(
                f"agent speaks protocol version {version}, host speaks {VERSION}"
            )
        if flags != 0:
            raise AgentProtocolError(f"agent sent a frame with unknown flags {flags:#x}")
        try:
            kind = FrameType(ftype)
        except ValueError:
            raise AgentProtocolError(f"agent sent unknown frame type {ftype}") from None
        limit = self.limits.get(kind)
        if limit is None:
            raise AgentProtocolError(f"agent sent a {kind.name} frame, which it must not")
        if length > limit:
            raise AgentProtocolError(
                f"agent sent a {kind.name} frame of {length} bytes (limit {limit})"
            )
        return (kind, session), length


# --- START / EXEC -------------------------------------------------------------------------


@dataclass(frozen=True)
class Rlimit:
    resource: int
    soft: int
    hard: int


@dataclass(frozen=True)
class Mount:
    target: str
    fstype: str
    source: str = ""
    options: str = ""
    readonly: bool = False
    # A 9p share holding one file (`file`), bind-mounted onto `target` (a file) in the guest
    file: bool = False


@dataclass(frozen=True)
class File:
    """A small file the agent writes into the new root (hosts, hostname, resolv.conf)."""

    path: str
    data: bytes
    readonly: bool = False


@dataclass(frozen=True)
class ProcessSpec:
    """What EXEC carries, and START's process part."""

    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    groups: list[int] = field(default_factory=list)
    umask: int = 0o022
    rlimits: list[Rlimit] = field(default_factory=list)
    no_new_privs: bool = False
    terminal: bool = False
    rows: int = 0
    cols: int = 0


@dataclass(frozen=True)
class StartSpec:
    """START: the workload plus everything that makes this guest itself (see PROTOCOL.md)."""

    process: ProcessSpec
    hostname: str = ""
    time_ns: int | None = None
    entropy: bytes = b""
    lower: str | None = None
    lower_fstype: str = "erofs"
    upper: str | None = None
    upper_fstype: str = "ext4"
    mounts: list[Mount] = field(default_factory=list)
    root_dir: str | None = None
    files: list[File] = field(default_factory=list)
    readonly_root: bool = False
    watch_ports: bool = False  # the guest reports its listening TCP ports (PORTS)


def _str(value: str, what: str, limit: int = MAX_STR) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise UsageError(f"{what} contains a NUL byte")
    if len(raw) > limit:
        raise UsageError(f"{what} is longer than {limit} bytes")
    return raw


def _u32(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise UsageError(f"{what} out of range: {value}")
    return value.to_bytes(4, "big")


def _u16(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise UsageError(f"{what} out of range: {value}")
    return value.to_bytes(2, "big")


def _tlv(tag: Tag, value: bytes) -> bytes:
    return struct.pack(">HI", int(tag), len(value)) + value


def _lp(value: str, what: str) -> bytes:
    raw = _str(value, what, 0xFFFF)
    return struct.pack(">H", len(raw)) + raw


def encode_process(spec: ProcessSpec) -> bytes:
    if not spec.args or not spec.args[0]:
        raise UsageError("no command given")
    if len(spec.args) > MAX_LIST or len(spec.env) > MAX_LIST:
        raise UsageError(f"more than {MAX_LIST} arguments or environment entries")
    if len(spec.groups) > MAX_GROUPS:
        raise UsageError(f"more than {MAX_GROUPS} additional groups")
    if len(spec.rlimits) > MAX_RLIMITS:
        raise UsageError(f"more than {MAX_RLIMITS} rlimits")
    if not 0 <= spec.umask <= 0o777:
        raise UsageError(f"umask out of range: {spec.umask:o}")
    out = [_tlv(Tag.ARG, _str(a, "argument")) for a in spec.args]
    out += [_tlv(Tag.ENV, _str(e, "environment entry")) for e in spec.env]
    out.append(_tlv(Tag.CWD, _str(spec.cwd, "working directory")))
    out.append(_tlv(Tag.UID, _u32(spec.uid, "uid")))
    out.append(_tlv(Tag.GID, _u32(spec.gid, "gid")))
    out += [_tlv(Tag.GROUP, _u32(g, "group id")) for g in spec.groups]
    out.append(_tlv(Tag.UMASK, _u32(spec.umask, "umask")))
    for r in spec.rlimits:
        if not (0 <= r.soft < 1 << 64 and 0 <= r.hard < 1 << 64):
            raise UsageError(f"rlimit out of range: {r}")
        out.append(
            _tlv(Tag.RLIMIT, _u32(r.resource, "rlimit") + struct.pack(">QQ", r.soft, r.hard))
        )
    if spec.no_new_privs:
        out.append(_tlv(Tag.NO_NEW_PRIVS, b"\1"))
    if spec.terminal:
        out.append(_tlv(Tag.TERMINAL, b"\1"))
    if spec.rows or spec.cols:
        out.append(_tlv(Tag.WINSIZE, _u16(spec.rows, "rows") + _u16(spec.cols, "cols")))
    return b"".join(out)


def encode_start(spec: StartSpec) -> bytes:
    out = [encode_process(spec.process)]
    if spec.hostname:
        out.append(_tlv(Tag.HOSTNAME, _str(spec.hostname, "hostname", MAX_HOSTNAME)))
    if spec.time_ns is not None:
        if not 0 <= spec.time_ns < 1 << 64:
            raise UsageError("time out of range")
        sec, nsec = divmod(spec.time_ns, 1_000_000_000)
        out.append(_tlv(Tag.TIME, struct.pack(">QI", sec, nsec)))
    if spec.entropy:
        if len(spec.entropy) > MAX_ENTROPY:
            raise UsageError(f"more than {MAX_ENTROPY} bytes of entropy")
        out.append(_tlv(Tag.ENTROPY, spec.entropy))
    if spec.lower is not None:
        out.append(_tlv(Tag.LOWER, _str(spec.lower, "lower device")))
        out.append(_tlv(Tag.LOWER_FSTYPE, _str(spec.lower_fstype, "lower fstype")))
    if spec.upper is not None:
        out.append(_tlv(Tag.UPPER, _str(spec.upper, "upper device")))
        out.append(_tlv(Tag.UPPER_FSTYPE, _str(spec.upper_fstype, "upper fstype")))
    if len(spec.mounts) > MAX_MOUNTS:
        raise UsageError(f"more than {MAX_MOUNTS} mounts")
    for m in spec.mounts:
        if not m.target.startswith("/") or "/.." in m.target or not m.fstype:
            raise UsageError(f"bad mount target or type: {m.target!r} ({m.fstype!r})")
        bits = (1 if m.readonly else 0) | (2 if m.file else 0)
        value = _u32(bits, "flags") + b"".join(
            _lp(v, "mount field") for v in (m.target, m.fstype, m.source, m.options)
        )
        out.append(_tlv(Tag.MOUNT, value))
    if spec.root_dir is not None:
        out.append(_tlv(Tag.ROOT_DIR, _str(spec.root_dir, "root directory")))
    if len(spec.files) > MAX_FILES:
        raise UsageError(f"more than {MAX_FILES} files")
    for f in spec.files:
        if not f.path.startswith("/") or "/.." in f.path or f.path == "/":
            raise UsageError(f"bad guest file path: {f.path!r}")
        if len(f.data) > MAX_FILE_SIZE:
            raise UsageError(f"guest file {f.path} is over {MAX_FILE_SIZE} bytes")
        flags = _u32(1 if f.readonly else 0, "flags")
        out.append(_tlv(Tag.FILE, flags + _lp(f.path, "file path") + f.data))
    if spec.readonly_root:
        out.append(_tlv(Tag.READONLY_ROOT, b"\1"))
    if spec.watch_ports:
        out.append(_tlv(Tag.WATCH_PORTS, b"\1"))
    payload = b"".join(out)
    if len(payload) > MAX_PAYLOAD:
        raise UsageError(f"the process spec is too large ({len(payload)} bytes)")
    return payload


def encode_prepare(lower: str, lower_fstype: str, warm: int = 0) -> bytes:
    """PREPARE's payload: the image disk and its filesystem type, as START will name them, and
    how many bytes of the image's files to read into the guest's page cache."""
    if not 0 <= warm < 1 << 64:
        raise UsageError(f"warm bytes out of range: {warm}")
    return (
        _tlv(Tag.LOWER, _str(lower, "lower device"))
        + _tlv(Tag.LOWER_FSTYPE, _str(lower_fstype, "lower fstype"))
        + (_tlv(Tag.WARM, struct.pack(">Q", warm)) if warm else b"")
    )


def _fields(payload: bytes) -> Iterator[tuple[Tag, bytes]]:
    pos = 0
    while pos < len(payload):
        if len(payload) - pos < 6:
            raise AgentProtocolError("truncated field header")
        tag, length = struct.unpack_from(">HI", payload, pos)
        pos += 6
        if length > len(payload) - pos:
            raise AgentProtocolError("field length beyond payload")
        try:
            t = Tag(tag)
        except ValueError:
            raise AgentProtocolError(f"unknown field tag {tag}") from None
        yield t, payload[pos : pos + length]
        pos += length


def decode_start(payload: bytes) -> StartSpec:
    """The inverse of `encode_start` (what the agent does in C; used to test the codec)."""
    proc: dict[str, object] = {}
    args: list[str] = []
    env: list[str] = []
    groups: list[int] = []
    rlimits: list[Rlimit] = []
    mounts: list[Mount] = []
    files: list[File] = []
    start: dict[str, object] = {}

    def text(v: bytes) -> str:
        return v.decode("utf-8", "surrogateescape")

    def fixed(v: bytes, n: int, tag: Tag) -> bytes:
        if len(v) != n:
            raise AgentProtocolError(f"{tag.name}: bad length {len(v)}")
        return v

    for tag, v in _fields(payload):
        match tag:
            case Tag.ARG:
                args.append(text(v))
            case Tag.ENV:
                env.append(text(v))
            case Tag.CWD:
                proc["cwd"] = text(v)
            case Tag.UID | Tag.GID | Tag.UMASK:
                proc[tag.name.lower()] = int.from_bytes(fixed(v, 4, tag), "big")
            case Tag.GROUP:
                groups.append(int.from_bytes(fixed(v, 4, tag), "big"))
            case Tag.RLIMIT:
                res, soft, hard = struct.unpack(">IQQ", fixed(v, 20, tag))
                rlimits.append(Rlimit(res, soft, hard))
            case Tag.NO_NEW_PRIVS | Tag.TERMINAL:
                proc[tag.name.lower()] = fixed(v, 1, tag) != b"\0"
            case Tag.WINSIZE:
                proc["rows"], proc["cols"] = struct.unpack(">HH", fixed(v, 4, tag))
            case Tag.HOSTNAME:
                start["hostname"] = text(v)
            case Tag.TIME:
                sec, nsec = struct.unpack(">QI", fixed(v, 12, tag))
                start["time_ns"] = sec * 1_000_000_000 + nsec
            case Tag.ENTROPY:
                start["entropy"] = v
            case Tag.LOWER | Tag.LOWER_FSTYPE | Tag.UPPER | Tag.UPPER_FSTYPE | Tag.ROOT_DIR:
                start[tag.name.lower()] = text(v)
            case Tag.READONLY_ROOT | Tag.WATCH_PORTS:
                start[tag.name.lower()] = fixed(v, 1, tag) != b"\0"
            case Tag.FILE:
                if len(v) < 6 or len(v) - 6 < int.from_bytes(v[4:6], "big"):
                    raise AgentProtocolError("FILE: truncated")
                n = int.from_bytes(v[4:6], "big")
                ro = bool(int.from_bytes(v[:4], "big") & 1)
                files.append(File(text(v[6 : 6 + n]), v[6 + n :], readonly=ro))
            case Tag.MOUNT:
                if len(v) < 4:
                    raise AgentProtocolError("MOUNT: truncated")
                parts: list[str] = []
                pos = 4
                for _ in range(4):
                    if len(v) - pos < 2:
                        raise AgentProtocolError("MOUNT: truncated")
                    (n,) = struct.unpack_from(">H", v, pos)
                    if len(v) - pos - 2 < n:
                        raise AgentProtocolError("MOUNT: truncated")
                    parts.append(text(v[pos + 2 : pos + 2 + n]))
                    pos += 2 + n
                if pos != len(v):
                    raise AgentProtocolError("MOUNT: trailing bytes")
                flags = int.from_bytes(v[:4], "big")
                target, fstype, source, options = parts
                mounts.append(
                    Mount(target, fstype, source, options, bool(flags & 1), bool(flags & 2))
                )
    process = ProcessSpec(args=args, env=env, groups=groups, rlimits=rlimits, **proc)  # type: ignore[arg-type]
    return StartSpec(process=process, mounts=mounts, files=files, **start)  # type: ignore[arg-type]


# --- guest → host events ------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    version: int
    features: int
    agent: str


@dataclass(frozen=True)
class BootTimings:
    """What the agent measured on its own clock for the workload (session 0), in seconds."""

    init_to_ready: float  # init's first instruction to HELLO (mounts, finding the port)
    root: float  # START to the root assembled (identity, mounts)
    spawn: float  # root assembled to the workload's execve done
    init_to_exec: float  # init's first instruction to the workload's execve done


@dataclass(frozen=True)
class Started:
    session: int
    pid: int
    boot: BootTimings | None = None


@dataclass(frozen=True)
class Output:
    """Bytes of a session's stdout or stderr; empty data ends that stream."""

    session: int
    stream: str  # "stdout" | "stderr"
    data: bytes


@dataclass(frozen=True)
class Exited:
    session: int
    code: int | None  # exit status, or None when killed by a signal
    signal: int | None

    @property
    def status(self) -> int:
        """The shell's convention: the code, or 128 + the signal."""
        return self.code if self.code is not None else 128 + (self.signal or 0)


@dataclass(frozen=True)
class AgentError:
    session: int
    kind: ErrorKind
    message: str


@dataclass(frozen=True)
class Pong:
    session: int
    data: bytes


@dataclass(frozen=True)
class Ports:
    """The TCP ports the guest now listens on beyond loopback, ascending."""

    ports: tuple[int, ...]


Event = Hello | Started | Output | Exited | AgentError | Pong | Ports


def decode_event(frame: Frame) -> Event:
    """Turn one guest frame (already bounded by FrameDecoder) into an event, or refuse it."""
    p = frame.payload
    match frame.type:
        case FrameType.HELLO:
            if len(p) < 8:
                raise AgentProtocolError("HELLO: truncated")
            version, features = struct.unpack_from(">II", p)
            return Hello(version, features, p[8:].decode("utf-8", "replace"))
        case FrameType.STARTED:
            if len(p) not in (4, 20):
                raise AgentProtocolError("STARTED: bad length")
            pid = int.from_bytes(p[:4], "big")
            if len(p) == 4:
                return Started(frame.session, pid)
            us = struct.unpack(">IIII", p[4:])
            return Started(frame.session, pid, BootTimings(*(t / 1e6 for t in us)))
        case FrameType.STDOUT | FrameType.STDERR:
            return Output(frame.session, frame.type.name.lower(), p)
        case FrameType.EXIT:
            if len(p) != 5 or p[0] > 1:
                raise AgentProtocolError("EXIT: malformed")
            value = int.from_bytes(p[1:], "big")
            if p[0] == 0:
                if value > 255:
                    raise AgentProtocolError(f"EXIT: status {value} out of range")
                return Exited(frame.session, value, None)
            if not 1 <= value <= 64:
                raise AgentProtocolError(f"EXIT: signal {value} out of range")
            return Exited(frame.session, None, value)
        case FrameType.ERROR:
            if len(p) < 2:
                raise AgentProtocolError("ERROR: truncated")
            try:
                kind = ErrorKind(int.from_bytes(p[:2], "big"))
            except ValueError:
                raise AgentProtocolError("ERROR: unknown kind") from None
            # one line, printable: this text may reach a user's terminal
            msg = p[2:].decode("utf-8", "replace")
            msg = "".join(c if c.isprintable() else "?" for c in msg)
            return AgentError(frame.session, kind, msg)
        case FrameType.PONG:
            return Pong(frame.session, p)
        case FrameType.PORTS:
            if len(p) % 2:
                raise AgentProtocolError("PORTS: odd length")
            ports = struct.unpack(f">{len(p) // 2}H", p)
            if 0 in ports or list(ports) != sorted(set(ports)):
                raise AgentProtocolError("PORTS: not ascending distinct ports")
            return Ports(ports)
    raise AgentProtocolError(f"agent sent a {frame.type.name} frame, which it must not")


# --- the client ---------------------------------------------------------------------------


@dataclass
class SessionResult:
    """Everything one session produced, as `AgentClient.wait` collects it."""

    session: int
    stdout: bytes
    stderr: bytes
    exit: Exited
    errors: list[AgentError]
    pid: int | None = None
    boot: BootTimings | None = None  # session 0 only


@dataclass
class _SessionState:
    stdout_open: bool = True
    stderr_open: bool = True


class AgentClient(Closing):
    """Talk to one agent over a connected stream socket (a virtio-serial unix socket).

    Single-threaded: sends interleave with reads, so neither side can block the other
    (the agent may be writing output while we write its stdin). Events the caller has not
    asked for yet are queued, within bounds.
    """

    MAX_QUEUED_EVENTS = 65536
    MAX_QUEUED_BYTES = 64 << 20

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self._decoder = FrameDecoder()
        self._queue: collections.deque[Event] = collections.deque()
        self._queued_bytes = 0
        self._sessions: dict[int, _SessionState] = {}
        self._next_session = 1
        self._ended: set[int] = set()
        self._closed = False
        self.hello: Hello | None = None
        self.ports: tuple[int, ...] = ()  # the last PORTS the guest sent (WATCH_PORTS)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close()

    # -- sending

    def _send(self, frame: Frame, *, timeout: float = 10.0) -> None:
        data = memoryview(encode_frame(frame))
        deadline = time.monotonic() + timeout
        while data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AgentTimeout("agent did not read its input in time")
            r, w, _ = select.select([self.sock], [self.sock], [], left)
            if r:
                self._receive()
            if w:
                try:
                    n = self.sock.send(data)
                except BlockingIOError:
                    continue
                except OSError as e:
                    raise AgentProtocolError(f"agent connection lost: {e}") from None
                data = data[n:]

    def start(self, spec: StartSpec) -> None:
        payload = encode_start(spec)
        self._sessions[0] = _SessionState()
        self._send(Frame(FrameType.START, 0, payload))

    def exec(self, spec: ProcessSpec) -> int:
        payload = encode_process(spec)
        session = self._next_session
        self._next_session += 1
        self._sessions[session] = _SessionState()
        self._send(Frame(FrameType.EXEC, session, payload))
        return session

    def prepare(
        self, lower: str, lower_fstype: str, *, warm: int = 0, timeout: float = 10.0
    ) -> str:
        """Ask the agent to assemble START's root now (PREPARE), for a START with the same
        `lower` and `lower_fstype` and no upper disk, and to read up to `warm` bytes of the
        image's files into its page cache; "" when it did, else why not."""
        session = self._next_session
        self._next_session += 1
        self._sessions[session] = _SessionState()
        payload = encode_prepare(lower, lower_fstype, warm)
        self._send(Frame(FrameType.PREPARE, session, payload))
        errors: list[str] = []
        while True:
            event = self._take_session(session, timeout)
            if isinstance(event, AgentError):
                errors.append(event.message)
            elif isinstance(event, Exited):
                if event.code == 0 and not errors:
                    return ""
                return "; ".join(errors) or f"exit status {event.status}"
            else:
                raise AgentProtocolError(f"agent answered PREPARE with {type(event).__name__}")

    def write_stdin(self, session: int, data: bytes, *, timeout: float = 10.0) -> None:
        """Send `data` in frames; a guest that stops reading raises AgentTimeout."""
        deadline = time.monotonic() + timeout
        for i in range(0, len(data), MAX_DATA):
            left = max(deadline - time.monotonic(), 0.001)
            self._send(Frame(FrameType.STDIN, session, data[i : i + MAX_DATA]), timeout=left)

    def close_stdin(self, session: int) -> None:
        self._send(Frame(FrameType.STDIN, session, b""))

    def signal(self, session: int, signo: int) -> None:
        if not 1 <= signo <= 64:
            raise UsageError(f"bad signal number {signo}")
        self._send(Frame(FrameType.SIGNAL, session, signo.to_bytes(4, "big")))

    def resize(self, session: int, rows: int, cols: int) -> None:
        self._send(Frame(FrameType.RESIZE, session, _u16(rows, "rows") + _u16(cols, "cols")))

    def poweroff(self) -> None:
        self._send(Frame(FrameType.POWEROFF, 0))

    # -- receiving

    def _receive(self) -> None:
        try:
            data = self.sock.recv(256 * 1024)
        except BlockingIOError:
            return
        except OSError as e:
            raise AgentProtocolError(f"agent connection lost: {e}") from None
        if not data:
            raise AgentProtocolError("agent closed the connection")
        for frame in self._decoder.feed(data):
            event = self._check(decode_event(frame))
            if event is None:
                continue
            if isinstance(event, Hello):
                if event.version != VERSION:
                    raise AgentProtocolError(f"agent speaks protocol {event.version}")
                if self.hello is not None:
                    continue  # an answer to a repeated ask; reset `hello` to wait again
                self.hello = event
            self._queue.append(event)
            if isinstance(event, Output):
                self._queued_bytes += len(event.data)
            if (
                len(self._queue) > self.MAX_QUEUED_EVENTS
                or self._queued_bytes > self.MAX_QUEUED_BYTES
            ):
                raise AgentProtocolError("agent sent more than the host is willing to queue")

    def _check(self, event: Event) -> Event | None:
        """Refuse events for sessions we never started or that already ended."""
        if isinstance(event, Hello | Pong):
            return event
        if isinstance(event, Ports):
            self.ports = event.ports  # a state, not an event to queue
            return None
        state = self._sessions.get(event.session)
        if state is None and isinstance(event, AgentError) and event.session in self._ended:
            # e.g. the answer to a SIGNAL that crossed the session's EXIT: moot, dropped
            return None
        if state is None:
            raise AgentProtocolError(
                f"agent sent {type(event).__name__} for unknown session {event.session}"
            )
        if isinstance(event, Output):
            attr = f"{event.stream}_open"
            if not getattr(state, attr):
                raise AgentProtocolError(
                    f"agent sent {event.stream} after its end (session {event.session})"
                )
            if not event.data:
                setattr(state, attr, False)
        elif isinstance(event, Exited):
            del self._sessions[event.session]
            self._ended.add(event.session)
        return event

    def _receive_by(self, deadline: float, late: str) -> None:
        """Take in what the agent sends next, waiting until `deadline` (time.monotonic) at
        most; AgentTimeout(`late`) once it has passed."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise AgentTimeout(late)
        r, _, _ = select.select([self.sock], [], [], left)
        if r:
            self._receive()

    def next_event(self, timeout: float) -> Event:
        deadline = time.monotonic() + timeout
        while not self._queue:
            self._receive_by(deadline, f"agent sent nothing in {timeout:g}s")
        event = self._queue.popleft()
        if isinstance(event, Output):
            self._queued_bytes -= len(event.data)
        return event

    def _take(self, want: type[Event], session: int | None, timeout: float) -> Event:
        """The first queued or arriving event of a kind (and session); others stay queued."""
        return self._take_first(
            lambda e: (
                isinstance(e, want) and (session is None or getattr(e, "session", None) == session)
            ),
            timeout,
            f"agent sent no {want.__name__} in {timeout:g}s",
        )

    def _take_first(self, match: Callable[[Event], bool], timeout: float, late: str) -> Event:
        """The first queued or arriving event that `match`es; AgentTimeout(`late`) after
        `timeout` seconds. Unmatched events stay queued, in order."""
        deadline = time.monotonic() + max(timeout, 0)
        while True:
            for i, event in enumerate(self._queue):
                if match(event):
                    del self._queue[i]
                    if isinstance(event, Output):
                        self._queued_bytes -= len(event.data)
                    return event
            self._receive_by(deadline, late)

    def wait_ports(self, match: Callable[[tuple[int, ...]], bool], timeout: float) -> None:
        """Until the guest's reported listening ports `match`; AgentTimeout after `timeout`."""
        deadline = time.monotonic() + timeout
        while not match(self.ports):
            self._receive_by(deadline, f"the guest reported ports {self.ports} in {timeout:g}s")

    def wait_hello(self, timeout: float) -> Hello:
        """Wait for the agent's HELLO, asking again now and then (QEMU drops what the guest
        writes while no host is connected, so the first HELLO may be lost)."""
        deadline = time.monotonic() + timeout
        while self.hello is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BootTimeout(f"the guest agent was not ready in {timeout:g}s")
            self._send(Frame(FrameType.HELLO, 0), timeout=max(left, 0.1))
            try:
                self._take(Hello, None, min(left, 0.5))
            except AgentTimeout:
                continue
        # drop any further queued HELLOs: answers to our repeated asks
        self._queue = collections.deque(e for e in self._queue if not isinstance(e, Hello))
        return self.hello

    def ping(self, data: bytes = b"ping", *, timeout: float = 5.0) -> float:
        """Round trip time in seconds."""
        if len(data) > MAX_PING:
            raise UsageError(f"ping data over {MAX_PING} bytes")
        t0 = time.monotonic()
        self._send(Frame(FrameType.PING, 0, data))
        while True:
            event = self._take(Pong, 0, timeout)
            assert isinstance(event, Pong)
            if event.data == data:
                return time.monotonic() - t0

    def wait(
        self,
        session: int,
        *,
        timeout: float,
        stdin: bytes | None = None,
        max_output: int = 64 << 20,
    ) -> SessionResult:
        """Feed `stdin` (then end it), collect the session's output and its exit."""
        if stdin is not None:
            self.write_stdin(session, stdin)
            self.close_stdin(session)
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        size = 0
        errors: list[AgentError] = []
        pid: int | None = None
        boot: BootTimings | None = None
        deadline = time.monotonic() + timeout
        while True:
            event = self._take_session(session, deadline - time.monotonic())
            if isinstance(event, Output):
                size += len(event.data)
                if size > max_output:
                    raise AgentProtocolError(f"session {session} output over {max_output} bytes")
                out[event.stream].append(event.data)
            elif isinstance(event, AgentError):
                errors.append(event)
            elif isinstance(event, Started):
                pid, boot = event.pid, event.boot
            elif isinstance(event, Exited):
                return SessionResult(
                    session,
                    b"".join(out["stdout"]),
                    b"".join(out["stderr"]),
                    event,
                    errors,
                    pid,
                    boot,
                )

    def _take_session(self, session: int, timeout: float) -> Event:
        return self._take_first(
            lambda e: not isinstance(e, Hello | Ports) and e.session == session,
            timeout,
            f"session {session} did not finish in time",
        )
