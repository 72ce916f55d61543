"""The user's options for one container, parsed and validated once.

Every front end (CLI flags, SDK keyword arguments, OCI annotations) turns what it was given
into a `RunOptions`; the spec builder and the engine only ever see this. Everything here is the
operator's: nothing in an image can set a field of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from bareboat.errors import UsageError


class Isolation(StrEnum):
    PROCESS = "process"
    CONTAINER = "container"
    MICROVM = "microvm"
    WASM = "wasm"
    # Resolved by the engine from the image before anything runs: wasm for Wasm images
    # (a Wasm layer, or a compat image with a *.wasm entrypoint), container otherwise.
    AUTO = "auto"


@dataclass(frozen=True)
class Mount:
    """`-v SRC:DST[:ro]` (kind "bind") or `--tmpfs DST[:opts]` (kind "tmpfs")."""

    destination: str
    kind: str = "bind"
    source: str = ""
    readonly: bool = False
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortMapping:
    """`-p [HOST_IP:]HOST_PORT:GUEST_PORT[/proto]`."""

    host_port: int
    guest_port: int
    protocol: str = "tcp"
    host_ip: str = "127.0.0.1"

    def to_flag(self) -> str:
        """The `-p` value that `parse.parse_publish` reads back as this mapping."""
        ip = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{ip}:{self.host_port}:{self.guest_port}/{self.protocol}"


@dataclass(frozen=True)
class Rlimit:
    type: str  # "RLIMIT_NOFILE"
    soft: int
    hard: int


@dataclass(frozen=True)
class LogOptions:
    """`--log-opt max-size=SIZE --log-opt max-file=N`: the container's log is rotated as
    docker's json-file driver rotates it, and takes at most max_size x max_file on disk.
    The defaults are those of docker's `local` driver (20 MiB x 5): a bound by default, with
    room for a chatty service's recent history."""

    max_size: int = 20 << 20
    max_file: int = 5

    MIN_SIZE = 1024  # a line of output (a split chunk) fits
    MAX_FILES = 100

    def __post_init__(self) -> None:
        if self.max_size < self.MIN_SIZE:
            raise UsageError(f"invalid log option max-size={self.max_size}: at least 1k")
        if not 1 <= self.max_file <= self.MAX_FILES:
            raise UsageError(
                f"invalid log option max-file={self.max_file}: from 1 to {self.MAX_FILES}"
            )

    @classmethod
    def parse(cls, values: Sequence[str]) -> LogOptions:
        """`--log-opt` values (`max-size=10m`, `max-file=3`), each at most once."""
        from bareboat.units import parse_size

        given: dict[str, str] = {}
        for value in values:
            key, eq, val = value.partition("=")
            key = key.strip()
            if not eq or key not in ("max-size", "max-file"):
                raise UsageError(
                    f"invalid --log-opt {value!r}: expected max-size=SIZE or max-file=N"
                )
            if key in given:
                raise UsageError(f"--log-opt {key} given twice")
            given[key] = val.strip()
        opts = cls()
        if "max-size" in given:
            opts = cls(parse_size(given["max-size"], what="log option max-size"), opts.max_file)
        if "max-file" in given:
            if not given["max-file"].isdigit():
                raise UsageError(f"invalid log option max-file={given['max-file']!r}: a number")
            opts = cls(opts.max_size, int(given["max-file"]))
        return opts


@dataclass(frozen=True)
class RunOptions:
    isolation: Isolation = Isolation.CONTAINER
    entrypoint: tuple[str, ...] | None = None  # --entrypoint overrides the image's
    command: tuple[str, ...] | None = None  # CMD... overrides the image's cmd
    env: tuple[str, ...] = ()  # K=V, applied over the image's env
    workdir: str | None = None
    user: str | None = None  # "uid[:gid]" or "name[:group]"
    hostname: str | None = None
    read_only: bool = False
    mounts: tuple[Mount, ...] = ()
    memory: int | None = None  # bytes
    cpus: float | None = None
    pids_limit: int | None = None
    network: str = "none"  # none | host | user
    publish: tuple[PortMapping, ...] = ()
    tty: bool = False
    interactive: bool = False
    # The operator's `--label`s: they become the spec's annotations, where the backends read
    # settings such as io.bareboat.vm.disk. The image's labels never do (see builder).
    labels: dict[str, str] = field(default_factory=dict)
    rlimits: tuple[Rlimit, ...] = ()
    name: str | None = None
    seccomp: bool = True  # False: no syscall filter (docker's --security-opt seccomp=unconfined)
    log: LogOptions = field(default_factory=LogOptions)  # --log-opt: rotation of the log
