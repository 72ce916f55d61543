"""Image config + user options -> an OCI runtime-spec `config.json` (as a dict).

`build_spec` is a function of its inputs: the only thing it reads is the image's
/etc/passwd and /etc/group (through `users`, and not even those when the caller passes a
resolved `user`). Each part of the spec comes from a small function of its own, so the
docker rules (argument overrides, env merge, mount order, limits) are tested as data;
`write_bundle` is the one place that writes.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from bareboat.errors import UsageError
from bareboat.images.model import ImageConfig
from bareboat.spec import defaults, etcfiles, parse
from bareboat.spec.options import Isolation, Mount, RunOptions
from bareboat.spec.users import User, resolve_user

TYPE_CHECKING = False  # typing costs import time on every `run`; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any

_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})$")
# Mounting over these would hide or replace the kernel filesystems the runtime sets up
# (runc refuses some of them late, with an error that is hard to read).
_RESERVED = ("/proc", "/sys")


def process_args(config: ImageConfig, options: RunOptions) -> list[str]:
    """Docker's rules: --entrypoint replaces the entrypoint and drops the image's cmd;
    a CMD on the command line replaces the image's cmd."""
    if options.entrypoint is not None:
        entrypoint, cmd = options.entrypoint, options.command or ()
    else:
        entrypoint, cmd = config.entrypoint, options.command or config.cmd
    args = [*entrypoint, *cmd]
    if not args:
        raise UsageError("no command specified")
    if any("\0" in a for a in args):
        raise UsageError("a command argument contains a NUL byte")
    return args


def _env_pairs(entries: Iterable[str], *, trusted: bool) -> Iterable[tuple[str, str | None]]:
    """(key, value) pairs; value None means "unset" (a trusted entry without '=')."""
    for entry in entries:
        key, eq, value = entry.partition("=")
        if not key or "\0" in entry:
            # Untrusted image env is dropped quietly; runc would refuse the whole spec.
            if trusted:
                raise UsageError(f"invalid environment variable {entry!r}")
            continue
        if eq:
            yield key, value
        elif trusted:
            yield key, None
        # An image entry without '=' means nothing to execve: drop it.


def merge_env(config: ImageConfig, options: RunOptions, *, hostname: str, home: str) -> list[str]:
    """Docker's order: PATH, HOSTNAME (and TERM with a tty) as defaults, then the image's
    env, then the user's `-e` by key (a bare key unsets), and HOME last if still unset."""
    env: dict[str, str] = {"PATH": defaults.DEFAULT_PATH, "HOSTNAME": hostname}
    if options.tty:
        env["TERM"] = "xterm"
    for key, value in _env_pairs(config.env, trusted=False):
        if value is not None:
            env[key] = value
    for key, value in _env_pairs(options.env, trusted=True):
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env.setdefault("HOME", home)
    return [f"{k}={v}" for k, v in env.items()]


def working_dir(config: ImageConfig, options: RunOptions) -> str:
    if options.workdir:
        if not options.workdir.startswith("/"):
            raise UsageError(
                f"the working directory {options.workdir!r} is invalid: "
                "it needs to be an absolute path"
            )
        wd = options.workdir
    else:
        # Image configs may carry a relative WorkingDir; docker reads it from /.
        wd = "/" + (config.workdir or "").lstrip("/")
    return "/" + posixpath.normpath(wd).lstrip("/")


def _user_mount(m: Mount) -> dict[str, Any]:
    if m.kind == "bind":
        if not m.source.startswith("/"):
            raise UsageError(f"bind mount source {m.source!r} must be an absolute host path")
        options = ["rbind", "rprivate", *m.options]
        options.append("ro" if m.readonly else "rw")
        return {
            "destination": m.destination,
            "type": "bind",
            "source": m.source,
            "options": options,
        }
    if m.kind == "tmpfs":
        given = set(m.options)
        # Docker's --tmpfs defaults, each dropped when the user asked for the opposite.
        base = [o for o in ("nosuid", "nodev", "noexec") if o[2:] not in given]
        options = [*base, *m.options]
        if m.readonly:
            options.append("ro")
        return {
            "destination": m.destination,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": options,
        }
    raise UsageError(f"unsupported mount kind {m.kind!r} at {m.destination}")


def build_mounts(options: RunOptions, *, etc_dir: Path | None = None) -> list[dict[str, Any]]:
    """The kernel filesystems, the /etc files (with `etc_dir`), then the user's mounts,
    parents before children.

    A user mount at the same destination as a default one (say `--tmpfs /dev/shm`) replaces
    it, as in docker; two user mounts at one destination are an error.
    """
    seen: set[str] = set()
    for m in options.mounts:
        dest = m.destination
        if not dest.startswith("/") or "\0" in dest:
            raise UsageError(f"mount destination {dest!r} must be an absolute path")
        if dest != "/" + posixpath.normpath(dest).lstrip("/") or dest == "/":
            raise UsageError(f"invalid mount destination {dest!r}")
        if any(dest == r or dest.startswith(r + "/") for r in _RESERVED):
            raise UsageError(f"cannot mount over {dest}: it is reserved for the kernel's files")
        if dest in seen:
            raise UsageError(f"duplicate mount point: {dest}")
        seen.add(dest)
    mounts = [m for m in defaults.base_mounts() if m["destination"] not in seen]
    if etc_dir is not None:
        mounts += etcfiles.etc_mounts(etc_dir, skip=frozenset(seen))
    # Sort by depth (stable): /data before /data/sub whatever order the flags came in.
    user = sorted(options.mounts, key=lambda m: m.destination.count("/"))
    return mounts + [_user_mount(m) for m in user]


def build_rlimits(options: RunOptions, *, nofile: int) -> list[dict[str, Any]]:
    """RLIMIT_NOFILE at `nofile` (soft and hard), then the user's limits by type."""
    limits = {"RLIMIT_NOFILE": (nofile, nofile)}
    for r in options.rlimits:
        if r.soft > r.hard:
            raise UsageError(f"rlimit {r.type}: the soft limit is above the hard limit")
        limits[r.type] = (r.soft, r.hard)
    return [{"type": t, "hard": hard, "soft": soft} for t, (soft, hard) in limits.items()]


def build_resources(options: RunOptions) -> dict[str, Any]:
    res: dict[str, Any] = {"devices": defaults.device_rules()}
    if options.memory is not None:
        if not 0 < options.memory <= parse.MAX_MEMORY:
            raise UsageError(f"invalid memory limit {options.memory}")
        # swap == limit: no swap on top of the memory limit, so --memory is a hard cap.
        res["memory"] = {"limit": options.memory, "swap": options.memory}
    if options.cpus is not None:
        if not 0.01 <= options.cpus <= 1024:
            raise UsageError(f"invalid --cpus {options.cpus}: must be from 0.01 to 1024")
        period = 100_000
        res["cpu"] = {"quota": round(options.cpus * period), "period": period}
    if options.pids_limit is not None:
        if not 0 < options.pids_limit <= parse.MAX_PIDS:
            raise UsageError(f"invalid --pids-limit {options.pids_limit}")
        res["pids"] = {"limit": options.pids_limit}
    return res


def build_namespaces(options: RunOptions) -> list[dict[str, str]]:
    from bareboat.spec.parse import network_mode

    kinds = ["pid", "ipc", "mount", "cgroup"]
    mode, _ = network_mode(options.network)  # a bad value is refused here, named
    if mode == "user" and options.isolation in (Isolation.CONTAINER, Isolation.PROCESS):
        # A namespace container would get only loopback, and a process has no network
        # namespace at all: refused rather than a resolv.conf naming a server that is not
        # there. User-mode networking (QEMU's slirp behind slirp4netns) is the microVM's.
        raise UsageError(
            f"--network {options.network} is not possible with --isolation "
            f"{options.isolation} (user-mode networking is for microvm; use none or host)"
        )
    if options.network != "host":
        # Host networking keeps the host's UTS namespace too, and so its hostname (docker).
        kinds += ["uts", "network"]
    return [{"type": k} for k in kinds]


def container_hostname(options: RunOptions, container_id: str) -> str | None:
    """The hostname to set, or None where the container shares the host's (host network)."""
    if options.network == "host":
        if options.hostname:
            raise UsageError("conflicting options: --hostname and --network host")
        return None
    hostname = options.hostname or container_id[:12]
    if not _HOSTNAME_RE.match(hostname):
        raise UsageError(f"invalid hostname {hostname!r}: letters, digits, '.' and '-' only")
    return hostname


def build_annotations(options: RunOptions) -> dict[str, str]:
    """The operator's labels, then the settings the backends read from annotations, taken
    from the typed options (which win over a label of the same key).

    Never the image's labels. Annotations configure the host: in `io.bareboat.*` the ports
    QEMU listens on, a disk file to make, a kernel to boot, and other runtimes read their own
    (crun's `run.oci.*`, runc's `org.systemd.property.*`). An image is data; copied here, its
    labels would configure the host it runs on. Docker, too, keeps image labels as labels.
    """
    annotations = dict(options.labels)
    if options.publish:
        flags = ",".join(p.to_flag() for p in options.publish)
        annotations[defaults.PUBLISH_ANNOTATION] = flags
    annotations[defaults.ISOLATION_ANNOTATION] = str(options.isolation)
    annotations[defaults.NETWORK_ANNOTATION] = options.network
    return annotations


def build_spec(
    config: ImageConfig,
    options: RunOptions,
    *,
    rootfs: Path,
    container_id: str,
    root_path: str | None = None,
    user: User | None = None,
    cgroups_path: str | None = None,
    nofile: int | None = None,
    etc_dir: Path | None = None,
) -> dict[str, Any]:
    """The runtime-spec 1.0.2 config for running `config` with `options`.

    `rootfs` is the image's root filesystem, where the user is resolved; `root_path` is
    what goes in `root.path` (default: `rootfs`; a bundle-relative "rootfs" or the
    container's overlay mount point). Pass `user` to skip reading the image's passwd.
    `cgroups_path` goes to `linux.cgroupsPath` (default: the runtime's choice). `nofile` is
    the default open-files limit (default: docker's 1048576, or less where this process may
    not raise its own hard limit that far). With `etc_dir`, the container's /etc/hostname,
    /etc/hosts and /etc/resolv.conf are bind-mounted from there (see `etcfiles`; pass the
    same `etc_dir` to `write_bundle`), unless the user mounts something at those paths.
    Unless `options.seccomp` is False, a seccomp filter refuses (EPERM) the syscalls
    docker's default profile refuses (`defaults.SECCOMP_DENIED`).
    """
    if not container_id:
        raise UsageError("a container id is required")
    args = process_args(config, options)
    if user is None:
        user = resolve_user(rootfs, options.user or config.user)
    hostname = container_hostname(options, container_id)
    env_hostname = hostname if hostname is not None else os.uname().nodename
    caps = list(defaults.CAPABILITIES)
    user_spec: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        user_spec["additionalGids"] = list(user.additional_gids)
    linux: dict[str, Any] = {
        "namespaces": build_namespaces(options),
        "resources": build_resources(options),
        "maskedPaths": list(defaults.MASKED_PATHS),
        "readonlyPaths": list(defaults.READONLY_PATHS),
    }
    if options.network != "host":
        # Docker's defaults for a network namespace of the container's own: any user may bind
        # low ports and send pings there, since nothing else shares that network.
        linux["sysctl"] = {
            "net.ipv4.ip_unprivileged_port_start": "0",
            "net.ipv4.ping_group_range": "0 2147483647",
        }
    if cgroups_path is not None:
        linux["cgroupsPath"] = cgroups_path
    if options.seccomp:
        linux["seccomp"] = defaults.seccomp_profile(os.uname().machine)
    spec: dict[str, Any] = {
        "ociVersion": defaults.OCI_VERSION,
        "process": {
            "terminal": options.tty,
            "user": user_spec,
            "args": args,
            "env": merge_env(config, options, hostname=env_hostname, home=user.home),
            "cwd": working_dir(config, options),
            "capabilities": {k: list(caps) for k in ("bounding", "effective", "permitted")},
            "rlimits": build_rlimits(
                options, nofile=nofile if nofile is not None else defaults.attainable_nofile()
            ),
            "noNewPrivileges": False,
        },
        "root": {"path": root_path or str(rootfs), "readonly": options.read_only},
        "mounts": build_mounts(options, etc_dir=etc_dir),
        "annotations": build_annotations(options),
        "linux": linux,
    }
    if hostname is not None:
        spec["hostname"] = hostname
    return spec


def write_bundle(
    bundle_dir: Path,
    spec: dict[str, Any],
    *,
    etc_dir: Path | None = None,
    durable: bool = True,
) -> Path:
    """Write `spec` as `bundle_dir/config.json`, atomically; return that path.

    With `etc_dir` (the one given to `build_spec`), first write the container's hostname,
    hosts and resolv.conf there, so config.json never names files that do not exist.
    `durable=False` skips the fsyncs (see `fsutil.atomic_open`).
    """
    import json

    from bareboat.fsutil import atomic_open, atomic_write

    data = json.dumps(spec, indent=2).encode() + b"\n"
    if etc_dir is not None:
        for name, content in etcfiles.etc_files(spec).items():
            with atomic_open(etc_dir / name, durable=durable) as f:
                # Temporary files are 0600; the container's user, often not root, reads these.
                os.fchmod(f.fileno(), 0o644)
                f.write(content)
    path = bundle_dir / "config.json"
    atomic_write(path, data, durable=durable)
    return path


def exec_process(
    process: Mapping[str, Any],
    args: Sequence[str],
    *,
    env: Sequence[str] = (),
    workdir: str | None = None,
    user: User | None = None,
    tty: bool = False,
) -> dict[str, Any]:
    """The `process` for `exec` in a running container, from the container's own one.

    Docker's rules: the container's env with `-e` applied by key (a bare key unsets), TERM
    when a tty is asked for, the container's cwd unless `-w`, its user unless `-u` (resolve
    that with `users.resolve_user` against the image first). The input is not changed.
    """
    if not args:
        raise UsageError("exec needs a command")
    if any("\0" in a for a in args):
        raise UsageError("a command argument contains a NUL byte")
    merged: dict[str, str] = {}
    for key, value in _env_pairs(process.get("env") or (), trusted=False):
        if value is not None:
            merged[key] = value
    if tty:
        merged.setdefault("TERM", "xterm")
    for key, value in _env_pairs(env, trusted=True):
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    import copy  # only here: exec is off the hot path of `run`

    out = copy.deepcopy(dict(process))
    out["args"] = list(args)
    out["env"] = [f"{k}={v}" for k, v in merged.items()]
    out["terminal"] = tty
    if workdir:
        out["cwd"] = working_dir(ImageConfig(), RunOptions(workdir=workdir))
    if user is not None:
        out["user"] = {"uid": user.uid, "gid": user.gid}
        if user.additional_gids:
            out["user"]["additionalGids"] = list(user.additional_gids)
    return out
