"""The user's options for one container, parsed and validated once.

Every front end (CLI flags, SDK keyword arguments, OCI annotations) turns what it was given
into a `RunOptions`; the spec builder and the engine only ever see this. Everything here is the
operator's: nothing in an image can set a field of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


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
