"""Plans made without running anything: runtime choice and argv, process-backend mounts."""

from __future__ import annotations

from pathlib import Path

import pytest

from bareboat.backends.base import MS_BIND, MS_RDONLY
from bareboat.backends.container.runtime import OciRuntime, select_runtime
from bareboat.backends.process.backend import plan_mounts
from bareboat.errors import BackendUnavailable
from bareboat.proc import wait_status_to_code


def test_runtime_override_and_default() -> None:
    assert select_runtime({"BAREBOAT_OCI_RUNTIME": "runc"}).kind == "runc"
    crun = select_runtime({"BAREBOAT_OCI_RUNTIME": "crun"})
    assert crun.kind == "crun"
    assert select_runtime({}).kind == "crun"  # measured faster here
    with pytest.raises(BackendUnavailable):
        select_runtime({"BAREBOAT_OCI_RUNTIME": "/nonexistent/runtime"})


def test_runtime_argv() -> None:
    rt = OciRuntime("/usr/bin/runc", "runc")
    root = Path("/s")
    assert rt.run(root, Path("/b"), "id") == [
        "/usr/bin/runc",
        "--root",
        "/s",
        "run",
        "--bundle",
        "/b",
        "id",
    ]
    assert rt.kill(root, "id", 15)[-2:] == ["id", "15"]
    assert rt.delete(root, "id")[-2:] == ["--force", "id"]
    assert "--tty" in rt.exec(root, "id", Path("/p.json"), tty=True, detach=False)


def test_process_backend_mount_plan() -> None:
    spec = {
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
        ]
    }
    plan = plan_mounts(spec)
    assert plan[0][:2] == ("/proc", "/proc")
    assert [p[1] for p in plan] == ["/proc", "/data", "/tmp"]
    assert plan[1][3] & MS_BIND and plan[1][3] & MS_RDONLY
    assert plan[2] == ("tmpfs", "/tmp", "tmpfs", 0, "size=1m")


def test_wait_status() -> None:
    assert wait_status_to_code(3 << 8) == 3
    assert wait_status_to_code(9) == 137
