"""Pure parsers for docker-style flag values (`-v`, `--tmpfs`, `--memory`, `-e`, ...).

Each turns one string into plain data (`Mount`, `PortMapping`, bytes, ...) or raises
`UsageError` with a one-line message naming the bad value. They read nothing but their
arguments (`parse_env` takes the caller's environment as an argument), so front ends and
tests call them alike. Only the standard library is imported: the CLIs call these at start.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Mapping

from bareboat.errors import UsageError
from bareboat.spec.options import Mount, PortMapping, Rlimit

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?$", re.IGNORECASE)

# The mount options a user may give `--tmpfs`; anything else (bind, rbind, propagation...)
# would let a flag value change what kind of mount is made.
_TMPFS_OPTIONS = frozenset(
    [
        "ro",
        "rw",
        "exec",
        "noexec",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "atime",
        "noatime",
        "relatime",
        "strictatime",
        "nodiratime",
        "diratime",
        "sync",
        "async",
        "dirsync",
    ]
)
_TMPFS_VALUE_OPTIONS = frozenset({"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks"})

# `--ulimit NAME=...` names, as docker spells them, to the runtime-spec type.
ULIMITS = {
    "as": "RLIMIT_AS",
    "core": "RLIMIT_CORE",
    "cpu": "RLIMIT_CPU",
    "data": "RLIMIT_DATA",
    "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS",
    "memlock": "RLIMIT_MEMLOCK",
    "msgqueue": "RLIMIT_MSGQUEUE",
    "nice": "RLIMIT_NICE",
    "nofile": "RLIMIT_NOFILE",
    "nproc": "RLIMIT_NPROC",
    "rss": "RLIMIT_RSS",
    "rtprio": "RLIMIT_RTPRIO",
    "rttime": "RLIMIT_RTTIME",
    "sigpending": "RLIMIT_SIGPENDING",
    "stack": "RLIMIT_STACK",
}
RLIM_INFINITY = (1 << 64) - 1

NETWORKS = ("none", "host", "user")
NETWORK_OPTIONS = {"user": ("host-loopback",)}

# The smallest memory limit docker accepts; below it the runtime's own process cannot start.
MIN_MEMORY = 6 * (1 << 20)
# The largest the runtime spec's int64 holds (8 EiB): crun and runc refuse to read more.
MAX_MEMORY = (1 << 63) - 1
# The kernel's PID_MAX_LIMIT (64-bit): pids.max takes nothing larger.
MAX_PIDS = 4 * 1024 * 1024
CPU_PERIOD = 100_000  # microseconds, as docker uses for --cpus


def _container_path(value: str, what: str, flag: str) -> str:
    """An absolute, normalized path inside the container (`..` cannot climb above `/`)."""
    if not value.startswith("/"):
        raise UsageError(f"{flag} {what} {value!r} must be an absolute path")
    if "\0" in value:
        raise UsageError(f"{flag} {what} {value!r} contains a NUL byte")
    # normpath keeps a leading "//"; collapse it so destinations compare equal.
    return "/" + posixpath.normpath(value).lstrip("/")


def parse_volume(value: str) -> Mount:
    """`-v SRC:DST[:ro|rw]`: a bind mount of the absolute host path SRC at DST."""
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UsageError(f"invalid volume {value!r}: expected SRC:DST[:ro|rw]")
    src, dst = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if not src.startswith("/"):
        raise UsageError(
            f"invalid volume {value!r}: named volumes are not supported; "
            "give an absolute host path as SRC"
        )
    if "\0" in src:
        raise UsageError(f"invalid volume {value!r}: SRC contains a NUL byte")
    dest = _container_path(dst, "destination", "-v")
    if dest == "/":
        raise UsageError(f"invalid volume {value!r}: destination cannot be /")
    if mode not in ("ro", "rw"):
        raise UsageError(f"invalid volume {value!r}: mode must be ro or rw, not {mode!r}")
    return Mount(
        destination=dest,
        kind="bind",
        source=posixpath.normpath(src),
        readonly=mode == "ro",
    )


def parse_tmpfs(value: str) -> Mount:
    """`--tmpfs DST[:opt,opt=val...]`: a fresh tmpfs at DST (options as mount(8) takes them)."""
    dst, _, opts = value.partition(":")
    if not dst:
        raise UsageError(f"invalid tmpfs {value!r}: expected DST[:OPTIONS]")
    dest = _container_path(dst, "destination", "--tmpfs")
    if dest == "/":
        raise UsageError(f"invalid tmpfs {value!r}: destination cannot be /")
    options: list[str] = []
    for opt in filter(None, opts.split(",")):
        key, eq, val = opt.partition("=")
        valued = key in _TMPFS_VALUE_OPTIONS and re.fullmatch(r"[0-9a-zA-Z%]+", val) is not None
        if not (valued if eq else opt in _TMPFS_OPTIONS):
            raise UsageError(f"invalid tmpfs {value!r}: unsupported option {opt!r}")
        options.append(opt)
    return Mount(
        destination=dest,
        kind="tmpfs",
        source="tmpfs",
        readonly="ro" in options,
        options=tuple(o for o in options if o not in ("ro", "rw")),
    )


def parse_memory(value: str) -> int:
    """`--memory 512m|1g|1.5GiB|100000` to bytes (binary units, as docker's RAMInBytes)."""
    m = _MEMORY_RE.match(value.strip())
    if not m:
        raise UsageError(
            f"invalid memory size {value!r}: expected a number with an optional "
            "unit b, k, m, g, t or p"
        )
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size < MIN_MEMORY:
        raise UsageError(f"memory limit {value!r} is too small: the minimum is 6m")
    if size > MAX_MEMORY:
        raise UsageError(f"memory limit {value[:40]!r} is too large: the maximum is 8 EiB")
    return size


def parse_cpus(value: str) -> float:
    """`--cpus 1.5`: how many CPUs' worth of time per period the container may use."""
    try:
        cpus = float(value)
    except ValueError:
        raise UsageError(f"invalid --cpus {value!r}: expected a number such as 1.5") from None
    if not math.isfinite(cpus) or cpus < 0.01:
        raise UsageError(f"invalid --cpus {value!r}: must be at least 0.01")
    if cpus > 1024:
        raise UsageError(f"invalid --cpus {value!r}: must be at most 1024")
    return cpus


def parse_pids_limit(value: str) -> int | None:
    """`--pids-limit N`; 0 or -1 mean unlimited (None), as in docker."""
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"invalid --pids-limit {value!r}: expected an integer") from None
    if n in (0, -1):
        return None
    if n < 0:
        raise UsageError(f"invalid --pids-limit {value!r}: must be positive, or -1 for no limit")
    if n > MAX_PIDS:
        raise UsageError(
            f"invalid --pids-limit {value[:40]!r}: the kernel's maximum is {MAX_PIDS} "
            "(-1 for no limit)"
        )
    return n


def _port(text: str, value: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"invalid port mapping {value!r}: {text!r} is not a port (1-65535)")
    return int(text)


def parse_publish(value: str) -> PortMapping:
    """`-p [IP:]HOST:GUEST[/tcp|udp]`; an IPv6 IP is written in brackets, `[::1]:80:80`."""
    spec, _, proto = value.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise UsageError(f"invalid port mapping {value!r}: protocol must be tcp or udp")
    host_ip = ""
    if spec.startswith("["):
        end = spec.find("]:")
        if end < 0:
            raise UsageError(f"invalid port mapping {value!r}: unclosed [ in the IP")
        host_ip, spec = spec[1:end], spec[end + 2 :]
        parts = spec.split(":")
    else:
        parts = spec.split(":")
        if len(parts) == 3:
            host_ip, parts = parts[0], parts[1:]
    if len(parts) != 2:
        raise UsageError(
            f"invalid port mapping {value!r}: expected [IP:]HOST:GUEST[/tcp|udp] "
            "(random host ports are not supported)"
        )
    if host_ip:
        import ipaddress  # only here: it costs a millisecond at start-up

        try:
            host_ip = str(ipaddress.ip_address(host_ip))
        except ValueError:
            raise UsageError(
                f"invalid port mapping {value!r}: {host_ip!r} is not an IP address"
            ) from None
    host_port, guest_port = _port(parts[0], value), _port(parts[1], value)
    if host_ip:
        return PortMapping(host_port, guest_port, proto, host_ip)
    return PortMapping(host_port, guest_port, proto)  # the dataclass's safe default IP


def parse_env(value: str, environ: Mapping[str, str] | None = None) -> str | None:
    """`-e K=V` as is; a bare `-e K` takes K's value from `environ` (default: os.environ).

    Returns None when K is bare and unset in `environ`: docker then leaves it out entirely.
    """
    key, eq, _ = value.partition("=")
    if not key:
        raise UsageError(f"invalid environment variable {value!r}: the name is empty")
    if "\0" in value:
        raise UsageError(f"invalid environment variable {key!r}: it contains a NUL byte")
    if eq:
        return value
    env = os.environ if environ is None else environ
    if key not in env:
        return None
    return f"{key}={env[key]}"


def parse_label(value: str) -> tuple[str, str]:
    """`--label K=V` (or a bare `K`, meaning an empty value) to a (key, value) pair."""
    key, _, val = value.partition("=")
    if not key or key != key.strip():
        raise UsageError(f"invalid label {value!r}: expected KEY=VALUE with a non-empty KEY")
    return key, val


def _limit(text: str, value: str) -> int:
    if text == "-1":
        return RLIM_INFINITY
    if not text.isdigit() or int(text) > RLIM_INFINITY:
        raise UsageError(f"invalid ulimit {value!r}: {text!r} is not a limit (or -1)")
    return int(text)


def parse_ulimit(value: str) -> Rlimit:
    """`--ulimit nofile=1024:2048` (or `nofile=1024`, soft = hard; -1 is unlimited)."""
    name, eq, limits = value.partition("=")
    if not eq or not limits:
        raise UsageError(f"invalid ulimit {value!r}: expected NAME=SOFT[:HARD]")
    if name not in ULIMITS:
        raise UsageError(f"invalid ulimit {value!r}: unknown limit {name!r}")
    soft_s, _, hard_s = limits.partition(":")
    soft = _limit(soft_s, value)
    hard = _limit(hard_s, value) if hard_s else soft
    if soft > hard:
        raise UsageError(f"invalid ulimit {value!r}: the soft limit is above the hard limit")
    return Rlimit(type=ULIMITS[name], soft=soft, hard=hard)


def parse_network(value: str) -> str:
    """`--network none|host|user[,host-loopback]`, as its canonical spelling (the options
    after the mode sorted, each once)."""
    mode, options = network_mode(value)
    return ",".join((mode, *sorted(options)))


def network_mode(value: str) -> tuple[str, frozenset[str]]:
    """The mode of a `--network` value and its options: `user,host-loopback` gives
    ("user", {"host-loopback"}). Only `user` takes one: `host-loopback` lets the workload
    reach the host's loopback (closed by default)."""
    mode, *options = value.split(",")
    if mode not in NETWORKS:
        raise UsageError(f"invalid --network {value!r}: expected one of {', '.join(NETWORKS)}")
    allowed = NETWORK_OPTIONS.get(mode, ())
    for opt in options:
        if opt not in allowed:
            what = f"one of {', '.join(allowed)}" if allowed else f"none with {mode}"
            raise UsageError(f"invalid --network {value!r}: unknown option {opt!r} ({what})")
    return mode, frozenset(options)


def parse_workdir(value: str) -> str:
    """`-w DIR`: absolute, as docker requires."""
    return _container_path(value, "directory", "-w")
