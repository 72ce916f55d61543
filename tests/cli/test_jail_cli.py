"""The CLI's microVMs run jailed: a cold VM and a template's clone side by side, each confined
and apart; a killed QEMU and a killed monitor leave no jail behind. What the host holds
afterwards is checked, not only what the commands said."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.paths import Roots
from tests.cli.conftest import Run, leftovers
from tests.microvm.test_backend import kernel_or_skip
from tests.support.vmm import assert_confined, jail_files, vmm_leftovers

pytestmark = pytest.mark.slow


@pytest.fixture
def vm_bb(roots: Roots, bb: Run) -> Iterator[Run]:
    kernel_or_skip(roots)
    yield bb
    assert leftovers(roots) == []


def _vm_json(roots: Roots, cid: str) -> dict[str, int]:
    path = roots.run / cid / "oci" / "vm" / "vm.json"
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.05)
    data: dict[str, int] = json.loads(path.read_text())
    return data


def _gone(pid: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_cli_vms_cold_and_cloned_are_confined_apart(
    vm_bb: Run, image: str, roots: Roots, tmp_path: Path
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "in.txt").write_text("host\n")
    cold = vm_bb(
        "run", "-d", "--isolation", "microvm", "--no-template", "-v", f"{vol}:/data", image,
        "sh", "-c", "cat /data/in.txt > /data/seen.txt; sleep 300", timeout=120,
    ).stdout.strip()  # fmt: skip
    clone = vm_bb(
        "run", "-d", "--isolation", "microvm", "--template", image, "sleep", "300", timeout=180
    ).stdout.strip()
    assert cold and clone
    a, b = _vm_json(roots, cold)["pid"], _vm_json(roots, clone)["pid"]
    uid_a, uid_b = assert_confined(a), assert_confined(b)
    assert uid_a != uid_b
    assert "-incoming" in Path(f"/proc/{b}/cmdline").read_bytes().decode().split("\0")
    # each jail holds its own VM's files and nothing of the other's
    files_a, files_b = jail_files(a), jail_files(b)
    assert "share/bb0" in files_a and "ram" not in files_a
    assert "ram" in files_b and not any(f.startswith("share") for f in files_b)
    for f in ("kernel", "initrd", "disk0"):
        assert f in files_a and f in files_b
    # what the guest wrote through the volume is root's on the host (QEMU's uid maps to the
    # volume's owner), never the VMM uid's
    deadline = time.monotonic() + 60
    while not (vol / "seen.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    seen = vol / "seen.txt"
    assert seen.read_text() == "host\n" and seen.stat().st_uid == 0
    # a killed QEMU: its monitor ends the container and frees the jail's id and cgroups
    os.kill(a, signal.SIGKILL)
    assert _gone(a)
    r = vm_bb("wait", cold, timeout=60)  # prints the exit code once the container ended
    assert r.stdout.strip().isdigit(), (r.stdout, r.stderr)
    vm_bb("rm", "-f", cold, clone, timeout=60)
    assert _gone(b)
    assert vmm_leftovers([uid_a, uid_b]) == []


def test_a_killed_monitor_leaves_no_jail_behind(vm_bb: Run, image: str, roots: Roots) -> None:
    cid = vm_bb(
        "run", "-d", "--isolation", "microvm", "--no-template", image, "sleep", "300", timeout=120
    ).stdout.strip()  # fmt: skip
    qemu = _vm_json(roots, cid)["pid"]
    uid = assert_confined(qemu)
    monitor = int((roots.run / cid / "monitor.pid").read_text().split()[0])  # pid start
    os.kill(monitor, signal.SIGKILL)
    assert _gone(qemu), "QEMU outlived its monitor"
    vm_bb("rm", "-f", cid, timeout=60)
    assert vmm_leftovers([uid]) == []
    assert "bareboat-vmm" not in Path("/proc/self/mountinfo").read_text()


def _free_low_port() -> int:
    """A port below 1024 that nothing on the host's loopback uses."""
    import socket

    for port in range(990, 900, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024 on this host")


def test_a_jailed_vm_publishes_a_low_port(vm_bb: Run, image: str, roots: Roots) -> None:
    # QEMU has no capabilities; slirp4netns, started by root, binds the host side of -p.
    from tests.cli.test_run_microvm import http_get

    port = _free_low_port()
    script = "mkdir /www && echo served-by-vm > /www/index.html && httpd -f -p 80 -h /www"
    r = vm_bb(
        "run", "-d", "--isolation", "microvm", "--no-template", "--network", "user",
        "-p", f"127.0.0.1:{port}:80", image, "sh", "-c", script, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    try:
        assert_confined(_vm_json(roots, cid)["pid"])
        assert b"served-by-vm" in http_get(port)
    finally:
        vm_bb("rm", "-f", cid, timeout=60)
