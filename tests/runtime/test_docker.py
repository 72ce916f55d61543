"""docker 20.10 with bareboat-runtime in daemon.json `runtimes`: only where a docker daemon can
run. On the build machines it cannot (no systemd, and dockerd's own containerd and iptables
set-up fail there), so this skips with the reason."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def test_docker_runtime() -> None:
    if not shutil.which("dockerd") or not shutil.which("docker"):
        pytest.skip("docker is not installed")
    res = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        pytest.skip(
            "no docker daemon can run here; docker is covered by the recorded calls "
            "(tests/runtime/test_args.py) and the shared client fixtures"
        )
    pytest.skip(
        "a docker daemon is up, but starting a private one with a `runtimes` entry "
        "is not written yet"
    )
