"""`bareboat template ls|create|rm|prune` and `run --template/--no-template` through the real CLI.

`template create IMAGE` must compute the same key as `run --isolation microvm IMAGE`: a broken
template makes the run say it boots cold, which it only can if it found that template.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bareboat.backends.microvm import template as T
from bareboat.errors import KernelMissing
from bareboat.paths import Roots

pytestmark = pytest.mark.slow


def bb(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bareboat.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def image(roots: Roots, busybox_layout: Path) -> str:
    from bareboat.backends.microvm.kernel import resolve_kernel
    from bareboat.images.store import ImageStore

    if os.geteuid() != 0:
        pytest.skip("microVM runs need root here (overlay rootfs)")
    try:
        resolve_kernel(roots)
    except KernelMissing as e:
        pytest.skip(str(e))
    return ImageStore(roots).load(busybox_layout)[0].names[0]


def test_create_ls_run_rm_prune(roots: Roots, image: str) -> None:
    r = bb("template", "create", image)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert len(key) == 64
    rows = json.loads(bb("template", "ls", "--format", "json").stdout)
    assert [(x["key"], x["valid"]) for x in rows] == [(key, True)]
    assert key[:12] in bb("template", "ls").stdout

    run = ["run", "--rm", "--isolation", "microvm", image, "sh", "-c", "echo $((6*7)); exit 3"]
    r = bb(*run)
    assert (r.returncode, r.stdout, r.stderr) == (3, "42\n", "")

    # break it: the run finds this very template, reports it and boots cold
    os.truncate(roots.templates / key / T.RAM, 4096)
    r = bb(*run)
    assert (r.returncode, r.stdout) == (3, "42\n")
    assert "booting cold" in r.stderr and "RAM file" in r.stderr
    r = bb(*run[:2], "--no-template", *run[2:])
    assert (r.returncode, r.stdout, r.stderr) == (3, "42\n", "")
    assert "broken" in bb("template", "ls").stdout

    assert bb("template", "prune").stdout.split() == [key]
    assert T.list_templates(roots) == []

    # --template makes it on first use; rm removes it
    r = bb(*run[:2], "--template", *run[2:])
    assert (r.returncode, r.stdout, r.stderr) == (3, "42\n", "")
    [entry] = T.list_templates(roots)
    assert entry.key == key and entry.template is not None
    assert bb("template", "rm", key[:8]).returncode == 0
    assert T.list_templates(roots) == []
    r = bb("template", "rm", key[:8])
    assert r.returncode == 125 and "no such template" in r.stderr
