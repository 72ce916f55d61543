"""Jailed QEMU processes spoken to over QMP, as a guest that escaped into QEMU would use it.
The CLI's VMs (cold, cloned, killed) are in tests/cli/test_jail_cli.py."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.backends.microvm.qemu import Disk, QemuProcess, SerialPort, VMConfig
from bareboat.errors import BackendError
from bareboat.paths import Roots
from tests.microvm.test_backend import kernel_or_skip
from tests.support.vmm import assert_confined, jail_files, vmm_leftovers

pytestmark = pytest.mark.slow


# --- QMP, as an escaped guest in QEMU would use it ------------------------------------------------


@pytest.fixture
def two_vms(roots: Roots, tmp_path: Path) -> Iterator[tuple[QemuProcess, QemuProcess, Path]]:
    """Two jailed QEMUs (vCPUs stopped), the second with a writable disk of its own."""
    kernel_or_skip(roots)
    from bareboat.backends.microvm.initbuild import build_initramfs
    from bareboat.backends.microvm.kernel import resolve_kernel

    kernel = resolve_kernel(roots).path
    initrd = build_initramfs(roots)
    disk_b = tmp_path / "b.img"
    disk_b.write_bytes(b"\0" * (1 << 20))

    def cfg(name: str, disks: tuple[Disk, ...]) -> VMConfig:
        d = tmp_path / name
        d.mkdir()
        return VMConfig(
            kernel=kernel,
            initrd=initrd,
            qmp_socket=d / "qmp.sock",
            serial_ports=(SerialPort("bareboat.agent", d / "agent.sock"),),
            console_log=d / "console.log",
            disks=disks,
            paused=True,
            name=str(d),
        )

    with (
        QemuProcess(cfg("a", ()), jailed=True) as a,
        QemuProcess(cfg("b", (Disk(disk_b, serial="b"),)), jailed=True) as b,
    ):
        yield a, b, disk_b
    assert vmm_leftovers([u for u in (a.uid, b.uid) if u is not None]) == []


def test_qmp_cannot_open_host_files_or_another_vms_disk(
    two_vms: tuple[QemuProcess, QemuProcess, Path],
) -> None:
    a, b, disk_b = two_vms
    assert a.pid and b.pid and a.uid != b.uid
    assert_confined(a.pid), assert_confined(b.pid)
    for path in ("/etc/shadow", str(disk_b), f"/proc/{b.pid}/root/vm/disk0", "/dev/vda"):
        with pytest.raises(BackendError, match="blockdev-add failed"):
            a.command("blockdev-add", driver="file", filename=path, **{"node-name": "x"})
    # B's own disk is B's, owned by its uid while it runs and by root afterwards
    assert disk_b.stat().st_uid == b.uid
    assert "disk0" in jail_files(b.pid) and "disk0" not in jail_files(a.pid)


def test_seccomp_kills_a_vmm_that_starts_a_program(
    two_vms: tuple[QemuProcess, QemuProcess, Path],
) -> None:
    a, b, _ = two_vms
    # `exec:` migration forks and runs a program: -sandbox spawn=deny ends QEMU (SIGSYS)
    with pytest.raises(BackendError):
        a.command("migrate", uri="exec:/usr/bin/true")
    assert a.wait(10) == -signal.SIGSYS
    assert b.status() == "prelaunch"  # the other VM is untouched


def test_a_vms_disk_is_handed_back_when_it_ends(
    two_vms: tuple[QemuProcess, QemuProcess, Path],
) -> None:
    _, b, disk_b = two_vms
    b.shutdown()
    assert disk_b.stat().st_uid == 0
