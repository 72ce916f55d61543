"""An OCI runtime-spec config.json, read as what a microVM needs: its process and its size.

The bundle format is the same for every backend; this module is where the microVM backend
decides what of it a guest can honour. Namespaces, cgroups, seccomp and the standard
/proc, /sys and /dev mounts are the VM boundary's job and the guest init's (it mounts those
itself), so they are dropped. Host bind mounts (`-v`) become 9p shares (the backend serves a
file's as a directory holding only that file), and the small files runtimes bind in
(`COPIED_FILES`) are copied into the guest; what a guest cannot do is refused with one clear
error.

Everything returned is plain, validated data; the backend turns it into the agent's START
message and QEMU's argv.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bareboat.errors import UsageError
from bareboat.spec.options import Rlimit

MIB = 1 << 20
MIN_MEMORY = 64 * MIB  # below this our kernel + init + a busybox workload do not fit
DEFAULT_MEMORY = 256 * MIB
MAX_VCPUS = 64
MAX_ARGS = 4096
MAX_STRING = 128 * 1024

# Mounts every OCI client adds that the guest init makes on its own (or that mean nothing
# inside a VM, such as the cgroup view of the host).
_GUEST_PROVIDED_TYPES = frozenset({"proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2"})
_GUEST_PROVIDED_DESTS = frozenset(
    {"/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys/fs/cgroup"}
)
# Small files runtimes bind in for name resolution and identity. Their contents are copied
# into the guest rather than mounted: there is no shared filesystem to mount them from.
COPIED_FILES = frozenset({"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run/.containerenv"})
MAX_COPIED_FILE = 64 * 1024
_TMPFS_OPTIONS = frozenset(
    {
        "ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime",
        "relatime", "strictatime", "nodiratime", "diratime", "sync", "async", "dirsync",
    }
)  # fmt: skip
_TMPFS_VALUE_OPTIONS = frozenset({"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks"})
# Mount propagation means nothing in a guest with one mount namespace: dropped.
_PROPAGATION = frozenset(
    {"private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable"}
)
RLIMITS = frozenset(
    {
        "RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE", "RLIMIT_LOCKS",
        "RLIMIT_MEMLOCK", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_NOFILE", "RLIMIT_NPROC",
        "RLIMIT_RSS", "RLIMIT_RTPRIO", "RLIMIT_RTTIME", "RLIMIT_SIGPENDING", "RLIMIT_STACK",
    }
)  # fmt: skip
U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class GuestMount:
    """A filesystem the guest init mounts: a fresh tmpfs, or (fstype "9p") the host directory
    `source`, which QEMU serves over virtio-9p."""

    destination: str
    fstype: str
    options: tuple[str, ...] = ()
    # podman's `tmpcopyup`: the tmpfs starts with the image's content at that path. The guest
    # cannot copy it, so the backend accepts it only where that content is empty.
    copyup: bool = False
    source: str = ""  # 9p: the host directory


@dataclass(frozen=True)
class GuestFile:
    """A small host file whose contents are placed at `path` in the guest."""

    path: str
    source: str  # host path, read when the VM starts
    readonly: bool = False


@dataclass(frozen=True)
class GuestProcess:
    """The workload as the agent runs it: the fields of START (and of EXEC, minus mounts)."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    umask: int | None = None
    rlimits: tuple[Rlimit, ...] = ()
    terminal: bool = False
    no_new_privileges: bool = False


@dataclass(frozen=True)
class VmSpec:
    process: GuestProcess
    hostname: str = ""
    readonly_rootfs: bool = False
    mounts: tuple[GuestMount, ...] = ()
    files: tuple[GuestFile, ...] = ()
    vcpus: int = 1
    memory: int = DEFAULT_MEMORY  # guest RAM, bytes


def _bad(path: str, why: str) -> UsageError:
    return UsageError(f"invalid config.json: {path} {why}")


def _obj(value: object, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _bad(path, "must be an object")
    return value


def _str(value: object, path: str, *, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise _bad(path, "must be a string")
    if "\0" in value or len(value) > MAX_STRING:
        raise _bad(path, "contains a NUL byte or is too long")
    return value


def _int(value: object, path: str, *, lo: int = 0, hi: int = U64_MAX) -> int:
    # bool is an int in Python; JSON true is not a number.
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(path, f"must be an integer in {lo}..{hi}")
    return value


def _strs(value: object, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) > MAX_ARGS:
        raise _bad(path, "must be a list of strings")
    return tuple(_str(v, f"{path}[{i}]") for i, v in enumerate(value))


def _abs(value: object, path: str) -> str:
    text = _str(value, path)
    if not text.startswith("/"):
        raise _bad(path, f"{text!r} must be an absolute path")
    return "/" + posixpath.normpath(text).lstrip("/")


def parse_process(process: Mapping[str, Any], where: str = "process") -> GuestProcess:
    """The `process` object of config.json (or an exec process.json) as a GuestProcess."""
    args = _strs(process.get("args"), f"{where}.args")
    if not args or not args[0]:
        raise UsageError("no command given and the image has none (entrypoint or cmd)")
    env = _strs(process.get("env"), f"{where}.env")
    for i, e in enumerate(env):
        if "=" not in e or e.startswith("="):
            raise _bad(f"{where}.env[{i}]", f"{e!r} is not NAME=VALUE")
    user = _obj(process.get("user"), f"{where}.user")
    umask = user.get("umask")
    rlimits = []
    for i, r in enumerate(process.get("rlimits") or ()):
        r = _obj(r, f"{where}.rlimits[{i}]")
        kind = _str(r.get("type"), f"{where}.rlimits[{i}].type")
        if kind not in RLIMITS:
            raise _bad(f"{where}.rlimits[{i}].type", f"{kind!r} is not a known rlimit")
        soft = _int(r.get("soft"), f"{where}.rlimits[{i}].soft")
        hard = _int(r.get("hard"), f"{where}.rlimits[{i}].hard")
        if soft > hard:
            raise _bad(f"{where}.rlimits[{i}]", "has soft above hard")
        rlimits.append(Rlimit(kind, soft, hard))
    return GuestProcess(
        args=args,
        env=env,
        cwd=_abs(process.get("cwd") or "/", f"{where}.cwd"),
        uid=_int(user.get("uid", 0), f"{where}.user.uid", hi=(1 << 32) - 2),
        gid=_int(user.get("gid", 0), f"{where}.user.gid", hi=(1 << 32) - 2),
        additional_gids=tuple(
            _int(g, f"{where}.user.additionalGids[{i}]", hi=(1 << 32) - 2)
            for i, g in enumerate(user.get("additionalGids") or ())
        ),
        umask=None if umask is None else _int(umask, f"{where}.user.umask", hi=0o777),
        rlimits=tuple(rlimits),
        terminal=process.get("terminal") is True,
        no_new_privileges=process.get("noNewPrivileges") is True,
    )


def _mounts(mounts: object) -> tuple[tuple[GuestMount, ...], tuple[GuestFile, ...]]:
    if mounts is None:
        return (), ()
    if not isinstance(mounts, Sequence) or isinstance(mounts, str):
        raise _bad("mounts", "must be a list")
    out: list[GuestMount] = []
    files: list[GuestFile] = []
    for i, m in enumerate(mounts):
        m = _obj(m, f"mounts[{i}]")
        dest = _abs(m.get("destination"), f"mounts[{i}].destination")
        kind = _str(m.get("type"), f"mounts[{i}].type")
        options = _strs(m.get("options"), f"mounts[{i}].options")
        is_bind = kind == "bind" or "bind" in options or "rbind" in options
        if kind in _GUEST_PROVIDED_TYPES or (dest in _GUEST_PROVIDED_DESTS and not is_bind):
            continue
        if dest == "/dev/shm":
            continue  # podman binds a host shm dir here; the guest's own /dev/shm serves
        if is_bind:
            source = _abs(m.get("source"), f"mounts[{i}].source")
            if dest in COPIED_FILES:
                files.append(GuestFile(dest, source, readonly="ro" in options))
                continue
            out.append(GuestMount(dest, "9p", _bind_words(options, i), source=source))
            continue
        if kind != "tmpfs":
            raise UsageError(f"mount type {kind!r} at {dest} is not supported in a microVM")
        kept = tuple(o for o in options if o not in _PROPAGATION | {"tmpcopyup", "notmpcopyup"})
        for opt in kept:
            key, eq, _ = opt.partition("=")
            if not (key in _TMPFS_VALUE_OPTIONS if eq else opt in _TMPFS_OPTIONS):
                raise _bad(f"mounts[{i}].options", f"has {opt!r}, not a tmpfs option")
        out.append(GuestMount(dest, "tmpfs", kept, copyup="tmpcopyup" in options))
    return tuple(out), tuple(files)


def _bind_words(options: Sequence[str], i: int) -> tuple[str, ...]:
    """A bind's flag words that mean something for the guest's 9p mount (ro, nosuid...)."""
    kept = []
    for opt in options:
        if opt in ("bind", "rbind") or opt in _PROPAGATION:
            continue
        if opt not in _TMPFS_OPTIONS:
            raise _bad(f"mounts[{i}].options", f"has {opt!r}, not an option a VM can honour")
        kept.append(opt)
    return tuple(kept)


def vcpus_for(linux: Mapping[str, Any]) -> int:
    """`--cpus N` arrives as a CFS quota/period; a VM gets ceil(N) whole vCPUs (1 if none)."""
    cpu = _obj(_obj(linux.get("resources"), "linux.resources").get("cpu"), "linux.resources.cpu")
    quota, period = cpu.get("quota"), cpu.get("period")
    if quota is None or period is None or quota in (0, -1):
        return 1
    quota = _int(quota, "linux.resources.cpu.quota", lo=1)
    period = _int(period, "linux.resources.cpu.period", lo=1)
    vcpus = max(1, math.ceil(quota / period))
    if vcpus > MAX_VCPUS:
        raise UsageError(f"a microVM takes at most {MAX_VCPUS} vCPUs, not {vcpus} (--cpus)")
    return vcpus


def memory_for(linux: Mapping[str, Any]) -> int:
    """`--memory` arrives as a memory limit; a VM gets that much RAM, at least 64 MiB."""
    res = _obj(linux.get("resources"), "linux.resources")
    limit = _obj(res.get("memory"), "linux.resources.memory").get("limit")
    if limit is None or limit in (0, -1):
        return DEFAULT_MEMORY
    limit = _int(limit, "linux.resources.memory.limit", lo=1)
    # QEMU takes whole MiB; round up so the guest never gets less than was asked.
    return max(MIN_MEMORY, (limit + MIB - 1) // MIB * MIB)


@dataclass(frozen=True)
class HostSize:
    """What this host can give a VM: the CPUs this process may run on, and its RAM."""

    cpus: int
    memory: int  # bytes

    @classmethod
    def current(cls) -> HostSize:
        import os

        memory = 0
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemTotal:"):
                    memory = int(line.split()[1]) * 1024
                    break
        return cls(len(os.sched_getaffinity(0)), memory)


def check_host(spec: VmSpec, host: HostSize) -> None:
    """Refuse a VM this host cannot run: more vCPUs than it has CPUs (under TCG such a guest
    did not even reach its agent in 30 s, with an empty console), more RAM than it has."""
    if spec.vcpus > host.cpus:
        raise UsageError(
            f"a microVM of {spec.vcpus} vCPUs (--cpus) needs as many CPUs; "
            f"this host has {host.cpus}"
        )
    if host.memory and spec.memory > host.memory:
        raise UsageError(
            f"a microVM of {spec.memory >> 20} MiB (--memory) is more than this host's "
            f"{host.memory >> 20} MiB of RAM"
        )


def parse_config(config: Mapping[str, Any]) -> VmSpec:
    """Read a config.json (already JSON-decoded) into a VmSpec, refusing what a VM cannot do."""
    config = _obj(config, "config")
    linux = _obj(config.get("linux"), "linux")
    root = _obj(config.get("root"), "root")
    mounts, files = _mounts(config.get("mounts"))
    hostname = _str(config.get("hostname"), "hostname")
    if len(hostname) > 64 or "/" in hostname:
        raise _bad("hostname", f"{hostname!r} is not a valid hostname")
    return VmSpec(
        process=parse_process(_obj(config.get("process"), "process")),
        hostname=hostname,
        readonly_rootfs=root.get("readonly") is True,
        mounts=mounts,
        files=files,
        vcpus=vcpus_for(linux),
        memory=memory_for(linux),
    )
