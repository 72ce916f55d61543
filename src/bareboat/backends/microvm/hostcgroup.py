"""The host-side CPU limits of a VM: its QEMU process in a cgroup of its own.

A VM's memory and vCPU count are fixed when it boots (guest RAM, `-smp`), but how much host CPU
its QEMU may use can change at any time, which is what `update` of a VM means. The cgroup is the
container's `linux.cgroupsPath` (cgroupfs style, as podman and containerd give it; a systemd
`slice:prefix:name` path becomes `bareboat/ID`), in the unified hierarchy where it has the cpu
controller, else in the cgroup v1 `cpu` hierarchy (hybrid hosts).

Written by hand rather than through a library: it is three files per hierarchy, and this runs
on every `create` of a VM through bareboat-runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bareboat.cgroupfs import remove_when_empty
from bareboat.errors import BackendError, UsageError

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CPU = ("cpu", "cpu,cpuacct")  # names the v1 cpu hierarchy is mounted under
# v1 hierarchies the VM joins too (no limits), so that a client's `stats` reads its usage.
V1_ACCOUNTING = ("cpuacct", "memory", "pids")


@dataclass(frozen=True)
class CpuLimits:
    quota: int | None = None  # µs per period; -1 or None: no limit
    period: int | None = None  # µs
    shares: int | None = None  # relative weight, cgroup v1 units (2..262144)

    @property
    def empty(self) -> bool:
        return self.quota is None and self.period is None and self.shares is None


def cpu_limits(resources: Any) -> CpuLimits:
    """The CPU part of an OCI LinuxResources object (config.json or an `update` file)."""
    if resources is None:
        return CpuLimits()
    if not isinstance(resources, dict):
        raise UsageError("resources must be a JSON object")
    cpu = resources.get("cpu")
    if cpu is None:
        cpu = {}
    if not isinstance(cpu, dict):
        raise UsageError("resources.cpu must be a JSON object")

    def num(name: str, low: int, high: int) -> int | None:
        value = cpu.get(name)
        if value is None or value == 0:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise UsageError(f"resources.cpu.{name} must be an integer in [{low}, {high}]")
        return value

    return CpuLimits(
        quota=num("quota", -1, 1 << 50),
        period=num("period", 1000, 1_000_000),
        shares=num("shares", 2, 262_144),
    )


def relative_path(cgroups_path: str, cid: str) -> str:
    """The cgroup's path below a hierarchy's root."""
    path = cgroups_path.strip()
    if not path or ":" in path:  # none given, or systemd's slice:prefix:name
        path = f"bareboat/{cid}"
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise UsageError(f"invalid cgroupsPath {cgroups_path!r}")
    return "/".join(parts)


def _unified_has_cpu() -> bool:
    try:
        return "cpu" in (CGROUP_ROOT / "cgroup.controllers").read_text().split()
    except OSError:
        return False


def cgroup_dir(cgroups_path: str, cid: str) -> Path:
    """Where the VM's cgroup lives on this host (not created)."""
    rel = relative_path(cgroups_path, cid)
    if _unified_has_cpu():
        return CGROUP_ROOT / rel
    for name in V1_CPU:
        if (CGROUP_ROOT / name / "cpu.shares").exists():
            return CGROUP_ROOT / name / rel
    raise BackendError("no cgroup cpu controller on this host: cannot limit a VM's host CPU")


def cgroup_dirs(cgroups_path: str, cid: str) -> list[Path]:
    """Every cgroup the VM joins: the cpu one first (where limits apply), then, on v1, the
    same path in the accounting hierarchies (each once, however they are co-mounted)."""
    cpu = cgroup_dir(cgroups_path, cid)
    if _is_v2(cpu):
        return [cpu]
    rel = cpu.relative_to(CGROUP_ROOT).parts[1:]
    dirs, seen = [cpu], {os.path.realpath(CGROUP_ROOT / cpu.relative_to(CGROUP_ROOT).parts[0])}
    for name in V1_ACCOUNTING:
        hierarchy = CGROUP_ROOT / name
        if (hierarchy / "cgroup.procs").exists() and os.path.realpath(hierarchy) not in seen:
            seen.add(os.path.realpath(hierarchy))
            dirs.append(hierarchy.joinpath(*rel))
    return dirs


def _is_v2(d: Path) -> bool:
    """Whether `d` is in the unified hierarchy (mounted at the root itself), not a v1 one."""
    parts = d.relative_to(CGROUP_ROOT).parts
    v1 = bool(parts) and parts[0] in (*V1_CPU, *V1_ACCOUNTING)
    return not v1 and (CGROUP_ROOT / "cgroup.controllers").exists()


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise BackendError(f"cannot write {value!r} to {path}: {e.strerror}") from None


def attach(d: Path, pid: int) -> None:
    """Create the cgroup and move `pid` (every thread of it) into it."""
    if _is_v2(d):
        # The cpu controller must be enabled in every ancestor's subtree_control.
        parts = d.relative_to(CGROUP_ROOT).parts
        for i in range(len(parts)):
            parent = CGROUP_ROOT.joinpath(*parts[:i])
            if "cpu" not in (parent / "cgroup.subtree_control").read_text().split():
                _write(parent / "cgroup.subtree_control", "+cpu")
            (parent / parts[i]).mkdir(exist_ok=True)
    else:
        d.mkdir(parents=True, exist_ok=True)
    _write(d / "cgroup.procs", str(pid))


def apply(d: Path, limits: CpuLimits) -> None:
    if _is_v2(d):
        if limits.quota is not None or limits.period is not None:
            current = (d / "cpu.max").read_text().split()
            quota = limits.quota if limits.quota is not None else current[0]
            period = limits.period if limits.period is not None else int(current[1])
            _write(d / "cpu.max", f"{'max' if quota in (-1, 'max') else quota} {period}")
        if limits.shares is not None:
            # runc's conversion of v1 shares [2, 262144] to v2 weight [1, 10000].
            weight = 1 + ((limits.shares - 2) * 9999) // 262142
            _write(d / "cpu.weight", str(weight))
        return
    # v1: a period must be valid before a quota that depends on it.
    if limits.period is not None:
        _write(d / "cpu.cfs_period_us", str(limits.period))
    if limits.quota is not None:
        _write(d / "cpu.cfs_quota_us", str(limits.quota))
    if limits.shares is not None:
        _write(d / "cpu.shares", str(limits.shares))


def read(d: Path) -> CpuLimits:
    """What the cgroup holds now (for tests and `update` reports)."""
    if _is_v2(d):
        quota, period = (d / "cpu.max").read_text().split()
        return CpuLimits(-1 if quota == "max" else int(quota), int(period), None)
    return CpuLimits(
        int((d / "cpu.cfs_quota_us").read_text()),
        int((d / "cpu.cfs_period_us").read_text()),
        int((d / "cpu.shares").read_text()),
    )


def remove(d: Path) -> None:
    """Remove the cgroup once its processes are gone."""
    remove_when_empty(d)
