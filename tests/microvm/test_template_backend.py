"""Templates through the microVM backend: `--template` creates and clones, `auto` clones when a
template exists, `--no-template` boots cold, a broken template falls back to a cold boot.

Drives the backend as test_backend.py does (real QEMU under TCG; skipped without a kernel).
"""

from __future__ import annotations

import os

import pytest

from bareboat.backends.microvm import template as T
from tests.microvm.test_backend import VM, busybox_tree, vm  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow

SCRIPT = 'echo "$FOO $(hostname)"; cat /proc/sys/kernel/random/uuid; exit 5'


def templates(v: VM) -> list[T.Entry]:
    return T.list_templates(v.roots)


def test_template_created_on_first_use_then_cloned(vm: VM) -> None:  # noqa: F811
    create = {T.ANN_TEMPLATE: "create"}
    r1 = vm.run("/bin/sh", "-c", SCRIPT, env=("FOO=one",), hostname="h1", annotations=create)
    assert (r1.error, r1.code) == (None, 5)
    assert r1.stdout.splitlines()[0] == b"one h1"
    [entry] = templates(vm)
    assert entry.template is not None and vm.backend.template_used == entry.key

    r2 = vm.run("/bin/sh", "-c", SCRIPT, env=("FOO=two",), hostname="h2")
    assert (r2.error, r2.code) == (None, 5)
    assert r2.stdout.splitlines()[0] == b"two h2"
    assert vm.backend.template_used == entry.key
    # clones of one template do not share the kernel's RNG state
    assert r1.stdout.splitlines()[1] != r2.stdout.splitlines()[1]

    r3 = vm.run("/bin/sh", "-c", SCRIPT, env=("FOO=three",), annotations={T.ANN_TEMPLATE: "off"})
    assert (r3.error, r3.code) == (None, 5) and vm.backend.template_used is None


def test_no_template_by_default(vm: VM) -> None:  # noqa: F811
    r = vm.run("/bin/sh", "-c", "true")
    assert (r.error, r.code) == (None, 0)
    assert templates(vm) == [] and vm.backend.template_used is None


@pytest.mark.parametrize("damage", ["state", "ram", "ram-in-place", "version"])
def test_broken_template_falls_back_to_cold_boot(
    vm: VM,  # noqa: F811
    damage: str,
) -> None:
    r = vm.run("/bin/sh", "-c", "true", annotations={T.ANN_TEMPLATE: "create"})
    assert r.code == 0
    [entry] = templates(vm)
    assert entry.template is not None
    t = entry.template
    if damage == "state":
        data = bytearray(t.state.read_bytes())
        data[-10] ^= 1
        t.state.write_bytes(bytes(data))
    elif damage == "ram":
        os.truncate(t.ram, 1 << 20)
    elif damage == "ram-in-place":  # same size: the file's changed ctime shows it
        size = t.ram.stat().st_size
        with t.ram.open("r+b") as f:
            f.write(os.urandom(size))
    else:
        path = t.path / T.MANIFEST
        old = f'"version": {T.FORMAT_VERSION}'
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, '"version": 99'))
    r = vm.run("/bin/sh", "-c", "echo cold; exit 4")
    assert (r.error, r.code, r.stdout) == (None, 4, b"cold\n")
    assert vm.backend.template_used is None
    assert r.stderr.startswith(b"bareboat: template not used, booting cold: ")


def test_template_asked_for_a_networked_vm_boots_cold_and_says_so(vm: VM) -> None:  # noqa: F811
    r = vm.run(
        "/bin/sh",
        "-c",
        "echo ok",
        annotations={T.ANN_TEMPLATE: "create", "io.bareboat.network": "user"},
    )
    assert (r.error, r.code, r.stdout) == (None, 0, b"ok\n")
    assert b"booting cold: templates are made only for VMs without network" in r.stderr
    assert templates(vm) == [] and vm.backend.template_used is None
