"""Every way a microVM start can fail: one clear error, the console log kept, nothing left over.

The `vm` fixture (test_backend.py) checks after each test that no QEMU process naming this
test's paths runs and that the VM's state and socket directories are gone.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from bareboat.backends.base import BackendContext
from bareboat.errors import BootTimeout, CommandNotExecutable, CommandNotFound, GuestError
from bareboat.spec.options import Isolation, RunOptions
from tests.microvm import test_backend as tb
from tests.microvm.test_backend import VM

busybox_tree = tb.busybox_tree  # the fixtures, shared
vm = tb.vm

pytestmark = pytest.mark.slow


def console_kept(v: VM) -> str:
    path = v.roots.containers / v.cid / "console.log"
    assert path.exists(), "the console log of a failed start must be kept"
    return path.read_text(errors="replace")


def test_missing_command_is_127(vm: VM) -> None:
    r = vm.run("/no/such/command")
    assert isinstance(r.error, CommandNotFound) and r.error.exit_code == 127
    assert "/no/such/command" in str(r.error)


def test_not_executable_is_126(vm: VM) -> None:
    r = vm.run("/etc/passwd")
    assert isinstance(r.error, CommandNotExecutable) and r.error.exit_code == 126


def test_kernel_panic(vm: VM) -> None:
    # No such init in the initramfs and none in the kernel's fallbacks: "No working init found".
    r = vm.run("true", annotations={"io.bareboat.vm.cmdline": "rdinit=/nonexistent"})
    assert isinstance(r.error, GuestError)
    assert "panicked" in str(r.error) and "console log tail" in str(r.error)
    assert "Kernel panic" in console_kept(vm)


def test_init_failure_on_a_corrupt_image(vm: VM) -> None:
    from bareboat.backends.microvm import rootfs

    opts = RunOptions(isolation=Isolation.MICROVM, command=("true",))
    vm.backend.create(vm.context(opts))
    for image in rootfs.cache_dir(vm.roots).glob("*.erofs"):
        with open(image, "r+b") as f:  # clobber the superblock: a corrupt cache entry
            f.seek(1024)
            f.write(b"\0" * 128)
    r = vm.run("true")
    assert isinstance(r.error, GuestError) and "guest init failed" in str(r.error)
    console_kept(vm)


def test_boot_timeout(vm: VM) -> None:
    vm.backend.boot_timeout = 0.05
    r = vm.run("true")
    assert isinstance(r.error, BootTimeout) and "not ready" in str(r.error)
    console_kept(vm)


def test_qemu_killed_mid_run(vm: VM) -> None:
    def during(ctx: BackendContext, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    r = vm.run("sleep", "100", during=during)
    assert isinstance(r.error, GuestError) and "killed by signal 9" in str(r.error)


def test_ctrl_c_during_boot(vm: VM) -> None:
    # Python's own Ctrl-C handler, whatever this test process inherited: a shell without job
    # control starts a background job (`.ci/run &`) with SIGINT ignored, and Python then
    # keeps it ignored. Under that, this test once saw a boot run to its end.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        r = vm.run("true")
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, before)
    assert isinstance(r.error, KeyboardInterrupt)


def test_nothing_left_in_the_image_cache(vm: VM, tmp_path: Path) -> None:
    assert vm.run("true").code == 0
    from bareboat.backends.microvm import rootfs

    names = sorted(p.name for p in rootfs.cache_dir(vm.roots).iterdir())
    assert [n for n in names if n.endswith(".tmp")] == []
