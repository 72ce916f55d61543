"""The host-side CPU limits of a VM's QEMU: parsing the spec's resources, the cgroup's place,
and a real cgroup on this host (a plain process stands in for QEMU)."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from bareboat.backends.microvm import hostcgroup
from bareboat.backends.microvm.hostcgroup import CpuLimits, cpu_limits, relative_path
from bareboat.errors import BackendError, UsageError


def test_cpu_limits_from_resources() -> None:
    assert cpu_limits(None).empty
    assert cpu_limits({"memory": {"limit": 1 << 30}}).empty
    got = cpu_limits({"cpu": {"quota": 50000, "period": 100000, "shares": 512}})
    assert got == CpuLimits(50000, 100000, 512)
    assert cpu_limits({"cpu": {"quota": -1}}) == CpuLimits(quota=-1)


@pytest.mark.parametrize(
    "resources",
    [
        [],
        {"cpu": []},
        {"cpu": {"quota": "50000"}},
        {"cpu": {"quota": True}},
        {"cpu": {"period": 10}},
        {"cpu": {"shares": 1 << 20}},
    ],
)
def test_bad_resources_are_usage_errors(resources: object) -> None:
    with pytest.raises(UsageError):
        cpu_limits(resources)


def test_relative_path() -> None:
    assert relative_path("/libpod_parent/libpod-abc", "abc") == "libpod_parent/libpod-abc"
    assert relative_path("", "abc") == "bareboat/abc"
    assert relative_path("system.slice:libpod:abc", "abc") == "bareboat/abc"
    with pytest.raises(UsageError):
        relative_path("/a/../../etc", "abc")


def test_real_cgroup_limits_a_process() -> None:
    if os.geteuid() != 0:
        pytest.skip("cgroups need root here")
    cid = f"test-{uuid.uuid4().hex[:12]}"
    try:
        d = hostcgroup.cgroup_dir("", cid)
    except BackendError as err:
        pytest.skip(str(err))
    proc = subprocess.Popen(["sleep", "30"])
    try:
        hostcgroup.attach(d, proc.pid)
        assert str(proc.pid) in (d / "cgroup.procs").read_text().split()
        hostcgroup.apply(d, CpuLimits(period=50000))
        hostcgroup.apply(d, CpuLimits(quota=25000))
        got = hostcgroup.read(d)
        assert (got.quota, got.period) == (25000, 50000)
        hostcgroup.apply(d, CpuLimits(quota=-1))
        assert hostcgroup.read(d).quota == -1
    finally:
        proc.kill()
        proc.wait()
        hostcgroup.remove(d)
    assert not d.exists()
