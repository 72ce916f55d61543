"""`bareboat run --isolation microvm` through the engine: what docker users expect of a VM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bareboat.paths import Roots
from tests.cli.conftest import Run, leftovers
from tests.microvm.test_backend import kernel_or_skip


@pytest.fixture
def vm_bb(roots: Roots, bb: Run) -> Iterator[Run]:
    kernel_or_skip(roots)
    yield bb
    assert leftovers(roots) == []


def test_vm_gets_the_containers_etc_files(vm_bb: Run, image: str) -> None:
    r = vm_bb(
        "run", "--rm", "--isolation", "microvm", "--no-template", "--hostname", "vmhost", image,
        "sh", "-c", "cat /etc/hostname; grep -c vmhost /etc/hosts; test -s /etc/resolv.conf",
        timeout=120,
    )  # fmt: skip
    assert (r.returncode, r.stdout.split()) == (0, ["vmhost", "1"]), r.stderr


def test_read_only_rootfs_in_a_vm(vm_bb: Run, image: str) -> None:
    r = vm_bb(
        "run", "--rm", "--isolation", "microvm", "--no-template", "--read-only", image,
        "sh", "-c", "touch /x",
        timeout=120,
    )  # fmt: skip
    assert r.returncode != 0
    assert "Read-only file system" in r.stderr
