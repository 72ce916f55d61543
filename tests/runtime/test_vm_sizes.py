"""bareboat-runtime's microVM path reads the VM's size from the client's config.json (podman's
--cpus and --memory): one larger than this host is refused at `create`, in one line, before any
VM or state exists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import Runtime, make_bundle
from .test_vm import VM


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal")


@pytest.mark.parametrize(
    ("resources", "words"),
    [
        ({"cpu": {"quota": 64 * 100_000, "period": 100_000}}, "vCPUs"),
        (
            {"cpu": {"quota": (len(os.sched_getaffinity(0)) + 1) * 100_000, "period": 100_000}},
            "vCPUs",
        ),
        ({"cpu": {"quota": 65 * 1000, "period": 1000}}, "at most 64 vCPUs"),
        ({"memory": {"limit": 2 * _mem_total()}}, "RAM"),
    ],
)
def test_a_vm_larger_than_the_host_is_refused_at_create(
    runtime: Runtime, tmp_path: Path, resources: dict[str, object], words: str
) -> None:
    bundle = make_bundle(tmp_path / "b", ["true"], annotations=VM)
    config = json.loads((bundle / "config.json").read_text())
    config["linux"].setdefault("resources", {}).update(resources)
    (bundle / "config.json").write_text(json.dumps(config))
    pid_file = tmp_path / "pid"
    res = runtime("create", "--bundle", str(bundle), "--pid-file", str(pid_file), "big",
                  check=False, timeout=60)  # fmt: skip
    assert res.returncode != 0
    assert words in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not pid_file.exists()
    assert not (runtime.root / "bareboat" / "big.rec").exists()
    assert not (runtime.root / "bareboat" / "big").exists()
