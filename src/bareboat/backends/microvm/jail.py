"""The VMM jail: each QEMU process runs as a uid of its own, with no capabilities and
`no_new_privs`, in new PID, IPC, UTS and mount namespaces (and a new network namespace, unless its
user-mode network must be the caller's: `--network user,host-loopback`, or a namespace a client
of bareboat-runtime made), its root a small read-only tmpfs that holds only what it must open, in
cgroups that bound its memory, CPU and tasks, under QEMU's own seccomp filter.

Plan, then execute, as Firecracker's jailer does: `plan_jail` turns a VM's config into a
`JailPlan` (what is bound where, which ids, which namespaces) and a config whose paths are the
ones inside the jail; tests check both as data. `jailer.Jailer.preexec` is the one place that
executes a plan, in QEMU's process between fork and exec, in a fixed order: namespaces, the
jail's tmpfs and its binds (idmapped for volumes), device nodes made here, `pivot_root`, the
root made read-only, the bounding and ambient capability sets emptied, the ids dropped (which
empties the permitted and effective sets), `no_new_privs`, the parent-death signal; then QEMU
is exec'd, and its owner moves it into its cgroups (vmmhost.VmmCgroups.attach) while it starts.

Why Python before exec and not `bwrap` + `setpriv`: measured here, the pair added ~23 ms to a
`true` (two more execs, a monitor process outside the PID namespace, and bwrap cannot change the
uid as root without a user namespace), against ~1 ms for these system calls.
QEMU 7.2's own `-runas` together with `-sandbox elevateprivileges=deny` kills QEMU at start, so
the ids are dropped here and QEMU keeps the whole `-sandbox` set.

What the jail holds (paths inside it):
- `/usr` read-only (QEMU, its libraries and firmware), with `/lib`, `/lib64`, `/bin` as on the
  host (symlinks on a merged-/usr host, read-only binds otherwise);
- `/vm/kernel`, `/vm/initrd`, `/vm/disk<N>` (the shared EROFS image read-only), `/vm/ram` (a
  template's RAM file), `/vm/share/<tag>` (volumes), each bound from the host;
- `/dev/kvm`, made here and owned by the VM's uid, when KVM is used.
QMP, the agent channel, the console log and migration streams are file descriptors QEMU
inherits: it never opens their paths.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bareboat.errors import BackendError

if TYPE_CHECKING:
    from .qemu import VMConfig

ENV_JAIL = "BAREBOAT_VMM_JAIL"  # "off" runs QEMU unconfined (benchmarks, debugging)
JAIL_VM = "/vm"
# QEMU's own threads: main, RCU, one per vCPU, and the block/9p worker pool (up to 64).
PIDS_BASE = 96
# What a QEMU process uses beyond guest RAM, TCG's code cache aside: measured RSS minus guest
# RAM of an idle 1-vCPU microVM here was ~30 MiB; this bound leaves room for 9p and slirp.
OVERHEAD_BYTES = 96 << 20
# TCG's translation cache is bounded by tb-size; QEMU's default is up to 1 GiB, mapped lazily.
TCG_DEFAULT_TB_BYTES = 1 << 30


def enabled() -> bool:
    return os.environ.get(ENV_JAIL, "").strip().lower() not in ("off", "0", "no", "false")


# --- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bind:
    """A host path bound into the jail at `target`."""

    source: Path
    target: str
    writable: bool = False
    directory: bool = False
    # Volumes: the source's owner (uid, gid) as the host sees it appears as the VM's ids, so
    # QEMU's 9p server can write what that owner can, and what it creates belongs to that
    # owner on the host. None: a plain bind.
    idmap: tuple[int, int] | None = None


@dataclass(frozen=True)
class Node:
    """A character device made in the jail, owned by the VM's ids (mode 0600), or by root
    and open to all (0666) when `public`."""

    target: str
    major: int
    minor: int
    public: bool = False


# QEMU opens /dev/null at start (to probe for open-file-description locks).
DEV_NULL = Node("/dev/null", 1, 3, public=True)


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    pids: int
    cpu_quota_us: int | None = None
    cpu_period_us: int | None = None


@dataclass(frozen=True)
class JailPlan:
    uid: int
    gid: int
    binds: tuple[Bind, ...] = ()
    links: tuple[tuple[str, str], ...] = ()  # (path in the jail, what it points to)
    nodes: tuple[Node, ...] = ()
    new_network: bool = True
    limits: Limits | None = None
    hostname: str = "bareboat-vmm"
    env: dict[str, str] = field(default_factory=lambda: {"PATH": "/usr/bin:/bin"})


def system_binds(qemu: Path) -> tuple[tuple[Bind, ...], tuple[tuple[str, str], ...]]:
    """What any QEMU needs: /usr read-only, and /lib, /lib64, /bin as the host has them."""
    binds = [Bind(Path("/usr"), "/usr", directory=True)]
    links = []
    for name in ("/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"):
        p = Path(name)
        if p.is_symlink():
            links.append((name, os.readlink(p)))
        elif p.is_dir():
            binds.append(Bind(p, name, directory=True))
    if not any(qemu.is_relative_to(b.source) for b in binds):
        binds.append(Bind(qemu, str(qemu)))
    return tuple(binds), tuple(links)


def memory_limit(cfg: VMConfig) -> int:
    """Guest RAM, TCG's code cache and QEMU's own overhead."""
    ram = cfg.memory_mib << 20
    tb = 0
    if cfg.accel == "tcg":
        tb = (cfg.tb_size_mib << 20) if cfg.tb_size_mib else TCG_DEFAULT_TB_BYTES
    return ram + tb + OVERHEAD_BYTES


def plan_jail(
    cfg: VMConfig,
    uid: int,
    gid: int,
    *,
    qemu: Path,
    cpu_quota_us: int | None = None,
    cpu_period_us: int | None = None,
) -> tuple[JailPlan, VMConfig]:
    """The jail for `cfg` and the config QEMU is started with inside it. Pure: reads only the
    owners of the shared paths and whether /lib is a symlink."""
    from .qemu import Disk, Share

    binds, links = system_binds(qemu)
    extra: list[Bind] = [_read_only(cfg.kernel, f"{JAIL_VM}/kernel")]
    changes: dict[str, Any] = {"kernel": Path(f"{JAIL_VM}/kernel")}
    if cfg.initrd is not None:
        extra.append(_read_only(cfg.initrd, f"{JAIL_VM}/initrd"))
        changes["initrd"] = Path(f"{JAIL_VM}/initrd")
    disks = []
    for i, d in enumerate(cfg.disks):
        target = f"{JAIL_VM}/disk{i}"
        if d.readonly:
            extra.append(_read_only(d.path, target))
        else:
            extra.append(Bind(d.path, target, writable=True))
        disks.append(Disk(Path(target), d.readonly, d.serial))
    changes["disks"] = tuple(disks)
    if cfg.ram_file is not None:
        # A template VM writes its RAM into the file; a clone maps it privately, but QEMU 7.2
        # opens it for writing either way (see template.py on how a changed file is caught).
        extra.append(Bind(cfg.ram_file, f"{JAIL_VM}/ram", writable=True))
        changes["ram_file"] = Path(f"{JAIL_VM}/ram")
    shares = []
    for sh in cfg.shares:
        target = f"{JAIL_VM}/share/{sh.tag}"
        if sh.file is None:
            extra.append(Bind(sh.path, target, not sh.readonly, True, _owner(sh.path)))
            shares.append(Share(Path(target), sh.tag, sh.readonly))
        else:
            # The directory QEMU serves is the jail's own (read-only tmpfs): it holds the one
            # file and nothing else, and the guest can add nothing beside it.
            extra.append(
                Bind(sh.file, f"{target}/{_shared_file()}", not sh.readonly, False, _owner(sh.file))
            )
            shares.append(Share(Path(target), sh.tag, sh.readonly))
    changes["shares"] = tuple(shares)
    nodes: tuple[Node, ...] = (DEV_NULL,)
    if cfg.accel == "kvm":
        st = os.stat("/dev/kvm")
        nodes += (Node("/dev/kvm", os.major(st.st_rdev), os.minor(st.st_rdev)),)
    limits = Limits(
        memory_bytes=memory_limit(cfg),
        pids=PIDS_BASE + cfg.vcpus,
        cpu_quota_us=cpu_quota_us,
        cpu_period_us=cpu_period_us,
    )
    plan = JailPlan(
        uid=uid,
        gid=gid,
        binds=(*binds, *extra),
        links=links,
        nodes=nodes,
        # QEMU's slirp (user networking) needs the network it was given, unless slirp4netns
        # connects a namespace of QEMU's own outward (cfg.own_netns); any other VM gets a
        # network namespace with nothing in it.
        new_network=cfg.network == "none" or cfg.own_netns,
        limits=limits,
    )
    return plan, replace(cfg, **changes)


def _read_only(path: Path, target: str) -> Bind:
    """A read-only bind of a file the VMM only reads. One that others may not read (a kernel
    or init image kept 0600) is bound idmapped, its owner appearing as the VM's uid: readable
    through this read-only mount and nowhere else."""
    st = _stat(path)
    private = not st.st_mode & stat.S_IROTH
    return Bind(path, target, idmap=(st.st_uid, st.st_gid) if private else None)


def _owner(path: Path) -> tuple[int, int]:
    st = _stat(path)
    return st.st_uid, st.st_gid


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        raise BackendError(f"cannot put {path} in the VMM's jail: {e.strerror}") from None


def _shared_file() -> str:
    from .qemu import SHARED_FILE

    return SHARED_FILE


def check_plan(plan: JailPlan) -> None:
    """No bind may land inside another (it would write into the host's tree)."""
    import itertools

    targets = sorted(b.target for b in plan.binds)
    for outer, inner in itertools.pairwise(targets):
        if inner.startswith(outer.rstrip("/") + "/"):
            raise BackendError(f"jail plan binds {inner} inside {outer}")
    for target in targets:
        if not target.startswith("/") or ".." in target.split("/"):
            raise BackendError(f"jail plan target {target!r} is not a clean absolute path")
    if plan.uid == 0 or plan.gid == 0:
        raise BackendError("a jailed VMM never runs as root")
