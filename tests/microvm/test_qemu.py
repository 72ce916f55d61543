"""QEMU microvm: the argv as data, and real boots of our kernel under TCG."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.backends.microvm import kernel
from bareboat.backends.microvm.qemu import (
    Disk,
    PortForward,
    QemuProcess,
    SerialPort,
    VMConfig,
    build_argv,
    host_tsc_khz,
    kernel_cmdline,
    parse_cpuinfo_khz,
    parse_tsc_khz,
)
from bareboat.errors import BackendError, UsageError
from bareboat.paths import Roots


def _cfg(**kw: object) -> VMConfig:
    base: dict[str, object] = {"kernel": Path("/k/vmlinux"), "qmp_socket": Path("/s/qmp.sock")}
    base.update(kw)
    return VMConfig(**base)  # type: ignore[arg-type]


def _after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


# --- build_argv as data ---------------------------------------------------------------------


def test_argv_is_a_bare_microvm_with_direct_kernel_boot() -> None:
    argv = build_argv(_cfg(initrd=Path("/i/initrd"), vcpus=2, memory_mib=256))
    assert argv[0] == "qemu-system-x86_64"
    assert _after(argv, "-M") == ["microvm,rtc=on,acpi=on"]
    for flag in ("-nodefaults", "-no-user-config", "-nographic", "-no-reboot"):
        assert flag in argv
    assert _after(argv, "-kernel") == ["/k/vmlinux"]
    assert _after(argv, "-initrd") == ["/i/initrd"]
    assert _after(argv, "-smp") == ["2"] and _after(argv, "-m") == ["256"]
    assert _after(argv, "-qmp") == ["unix:/s/qmp.sock,server=on,wait=off"]
    # virtio-mmio devices only: no PCI device, no firmware.
    devices = _after(argv, "-device")
    assert devices and all(d.split(",")[0].endswith("-device") for d in devices)
    assert "-bios" not in argv and "-S" not in argv


def test_cmdline_has_console_panic_and_tsc() -> None:
    line = kernel_cmdline(_cfg(tsc_khz=2299998, cmdline=("rdinit=/init", "x=1")))
    parts = line.split()
    assert parts[:3] == ["console=ttyS0", "panic=-1", "reboot=t"]
    assert "quiet" in parts and "tsc_early_khz=2299998" in parts
    # A 1-CPU guest keeps its lock prefixes (boot time); a known TSC frequency is the
    # host's constant TSC, which the watchdog must not swap for jiffies.
    assert "noreplace-smp" in parts and "tsc=reliable" in parts
    assert parts[-2:] == ["rdinit=/init", "x=1"]
    loud = kernel_cmdline(_cfg(quiet=False)).split()
    assert "quiet" not in loud and not any(p.startswith("tsc_early_khz") for p in loud)
    assert "tsc=reliable" not in loud and "noreplace-smp" in loud
    argv = build_argv(_cfg(tsc_khz=1000))
    assert _after(argv, "-append") == [kernel_cmdline(_cfg(tsc_khz=1000))]


@pytest.mark.parametrize("part", ["", "a\nb", "nul\0"])
def test_cmdline_refuses_broken_parts(part: str) -> None:
    with pytest.raises(UsageError):
        build_argv(_cfg(cmdline=(part,)))


def test_accelerators() -> None:
    tcg = build_argv(_cfg(tb_size_mib=16))
    assert _after(tcg, "-accel") == ["tcg,tb-size=16"] and _after(tcg, "-cpu") == ["max"]
    assert _after(build_argv(_cfg()), "-accel") == ["tcg"]
    kvm = build_argv(_cfg(accel="kvm"))
    assert _after(kvm, "-accel") == ["kvm"] and _after(kvm, "-cpu") == ["host"]
    with pytest.raises(UsageError):
        build_argv(_cfg(accel="hvf"))


def test_disks_ports_console_network_rng() -> None:
    cfg = _cfg(
        disks=(
            Disk(Path("/img/rootfs.erofs"), readonly=True, serial="bb-lower"),
            Disk(Path("/vm/upper,1.ext4"), serial="bb-upper"),
        ),
        serial_ports=(SerialPort("bareboat.agent", Path("/s/agent.sock")),),
        console_log=Path("/s/console.log"),
        network="user",
        port_forwards=(PortForward(8080, 80), PortForward(5353, 53, "udp", "127.0.0.1")),
    )
    argv = build_argv(cfg)
    drives = _after(argv, "-drive")
    assert drives[0] == "file=/img/rootfs.erofs,if=none,id=disk0,format=raw,readonly=on"
    # A comma in a path is doubled, or QEMU would read the rest as another option.
    assert drives[1] == "file=/vm/upper,,1.ext4,if=none,id=disk1,format=raw,discard=unmap"
    devices = _after(argv, "-device")
    assert "virtio-blk-device,drive=disk0,serial=bb-lower" in devices
    assert "virtio-blk-device,drive=disk1,serial=bb-upper" in devices
    # one port in use, plus port 0 that virtio-serial keeps for a console
    assert "virtio-serial-device,id=vser0,max_ports=2" in devices
    assert "virtserialport,bus=vser0.0,chardev=port0,name=bareboat.agent" in devices
    chardevs = _after(argv, "-chardev")
    assert "socket,id=port0,path=/s/agent.sock,server=on,wait=off" in chardevs
    assert "file,id=console,path=/s/console.log.fifo" in chardevs  # read into the log
    assert _after(argv, "-serial") == ["chardev:console"]
    assert _after(argv, "-netdev") == [
        "user,id=net0,hostfwd=tcp::8080-:80,hostfwd=udp:127.0.0.1:5353-:53"
    ]
    assert "virtio-net-device,netdev=net0" in devices
    assert "virtio-rng-device,rng=rng0" in devices


def test_own_netns_rules_listen_on_every_address_there() -> None:
    """In QEMU's own network namespace only slirp4netns reaches the forwards, on its tap's
    address, which does not exist yet when QEMU binds."""
    fwd = (PortForward(8080, 80, host_ip="127.0.0.1"),)
    argv = build_argv(_cfg(network="user", own_netns=True, port_forwards=fwd))
    assert _after(argv, "-netdev") == ["user,id=net0,hostfwd=tcp::8080-:80"]


def test_vsock_device_for_kvm_hosts() -> None:
    argv = build_argv(_cfg(accel="kvm", vsock_cid=42))
    assert "vhost-vsock-device,guest-cid=42" in _after(argv, "-device")
    assert not any("vsock" in a for a in build_argv(_cfg()))


def test_defaults_have_no_network_and_a_null_console() -> None:
    argv = build_argv(_cfg(rng=False, paused=True, extra_args=("-d", "guest_errors")))
    assert "-netdev" not in argv and "-drive" not in argv
    assert _after(argv, "-serial") == ["null"]
    assert not any("virtio-rng" in a for a in argv)
    assert "-S" in argv and argv[-2:] == ["-d", "guest_errors"]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"vcpus": 0}, "vCPUs"),
        ({"memory_mib": 8}, "memory"),
        ({"port_forwards": (PortForward(80, 80),)}, "user-mode"),
        ({"network": "user", "port_forwards": (PortForward(0, 80),)}, "out of range"),
        ({"network": "user", "port_forwards": (PortForward(80, 70000),)}, "out of range"),
        (
            {"network": "user", "port_forwards": (PortForward(80, 1), PortForward(80, 2))},
            "twice",
        ),
        ({"network": "user", "port_forwards": (PortForward(80, 1, host_ip="a,b"),)}, "address"),
        ({"network": "bridge"}, "network"),
        ({"own_netns": True}, "namespace"),
        ({"serial_ports": (SerialPort("a,b", Path("/s")),)}, "port name"),
        ({"serial_ports": (SerialPort("a", Path("/1")), SerialPort("a", Path("/2")))}, "same"),
        ({"disks": (Disk(Path("/d"), serial="x" * 21),)}, "serial"),
        ({"disks": (Disk(Path("/d"), serial="a,b"),)}, "serial"),
        ({"tb_size_mib": 0}, "tb-size"),
        ({"vsock_cid": 2}, "CID"),
    ],
)
def test_bad_configs_are_usage_errors(kw: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        build_argv(_cfg(**kw))


# --- the host TSC frequency -------------------------------------------------------------------


def test_tsc_from_kernel_log_prefers_the_refined_value() -> None:
    log = (
        "6,10,0,-;tsc: Detected 2299.998 MHz processor\n"
        "6,90,5,-;tsc: Refined TSC clocksource calibration: 2300.012 MHz\n"
    )
    assert parse_tsc_khz(log) == 2300012
    assert parse_tsc_khz("tsc: Detected 2299.998 MHz processor") == 2299998
    assert parse_tsc_khz("nothing here") is None


def test_tsc_from_cpuinfo_needs_constant_tsc() -> None:
    info = "cpu MHz\t\t: 2299.998\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n"
    assert parse_cpuinfo_khz(info) == 2299998
    assert parse_cpuinfo_khz("cpu MHz\t: 3000\nflags\t: fpu constant_tsc\n") == 3000000
    assert parse_cpuinfo_khz("cpu MHz\t: 800.1\nflags\t: fpu tsc\n") is None


def test_host_tsc_is_plausible() -> None:
    khz = host_tsc_khz()
    if khz is None:
        pytest.skip("this host reports no TSC frequency")
    assert 100_000 < khz < 10_000_000


# --- real QEMU ------------------------------------------------------------------------------

BUSYBOX = Path("/bin/busybox")


def _cpio(tree: Path, out: Path) -> Path:
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    with open(out, "wb") as f:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            input="\n".join(names).encode(),
            stdout=f,
            cwd=tree,
            check=True,
            timeout=60,
        )
    return out


def _initramfs(tmp: Path, script: str) -> Path:
    """An initramfs whose /init is a busybox shell script (needs BINFMT_SCRIPT)."""
    tree = tmp / "initramfs"
    (tree / "bin").mkdir(parents=True)
    for d in ("dev", "proc", "sys"):
        (tree / d).mkdir()
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    init = tree / "init"
    init.write_text("#!/bin/busybox sh\n" + script)
    init.chmod(0o755)
    return _cpio(tree, tmp / "initramfs.cpio")


@pytest.fixture
def vmlinux(roots: Roots) -> Path:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    if not BUSYBOX.exists() or shutil.which("cpio") is None:
        pytest.skip("busybox-static and cpio are needed for the test initramfs")
    try:
        return kernel.resolve_kernel(roots).path
    except kernel.KernelMissing as e:
        pytest.skip(f"no guest kernel: {e}")


@pytest.fixture
def vm_dir(tmp_path: Path) -> Iterator[Path]:
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be long.
    d = Path(f"/tmp/bb-qemu-{os.getpid()}-{time.monotonic_ns()}")
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _boot_cfg(vmlinux: Path, initrd: Path, d: Path, **kw: object) -> VMConfig:
    return VMConfig(
        kernel=vmlinux,
        initrd=initrd,
        qmp_socket=d / "qmp.sock",
        console_log=d / "console.log",
        tsc_khz=host_tsc_khz(),
        **kw,  # type: ignore[arg-type]
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); reaped means gone from /proc.
    return Path(f"/proc/{pid}").exists()


def _assert_no_leftovers(vm: QemuProcess, d: Path) -> None:
    assert vm.pid is not None and not _alive(vm.pid)
    assert not list(d.glob("*.sock")), list(d.iterdir())


@pytest.mark.slow
def test_boot_reaches_init_and_powers_off(vmlinux: Path, tmp_path: Path, vm_dir: Path) -> None:
    initrd = _initramfs(tmp_path, "/bin/busybox echo BOOT-OK\n/bin/busybox poweroff -f\n")
    cfg = _boot_cfg(vmlinux, initrd, vm_dir)
    with QemuProcess(cfg) as vm:
        rc = vm.wait(timeout=60)
        assert rc == 0, (vm.stderr_tail(), cfg.console_log)
        result = vm.result()
    assert result.panic is None
    assert cfg.console_log is not None and b"BOOT-OK" in cfg.console_log.read_bytes()
    _assert_no_leftovers(vm, vm_dir)


@pytest.mark.slow
def test_console_log_is_capped(vmlinux: Path, tmp_path: Path, vm_dir: Path) -> None:
    """A guest that floods its console: the log keeps the newest output, in at most two
    files of the cap (it was one file that grew as long as the guest wrote)."""
    from bareboat.backends.microvm.consolelog import read_tail

    cap = 64 << 10
    script = (
        "/bin/busybox yes 0123456789abcdefghijklmnopqrstuvwxyz | /bin/busybox head -c 1000000\n"
        "/bin/busybox echo CONSOLE-END\n/bin/busybox poweroff -f\n"
    )
    cfg = _boot_cfg(vmlinux, _initramfs(tmp_path, script), vm_dir)
    with QemuProcess(cfg, console_max_size=cap) as vm:
        assert vm.wait(timeout=120) == 0, vm.stderr_tail()
    logs = {p.name: p.stat() for p in vm_dir.glob("console.log*")}
    assert sorted(logs) == ["console.log", "console.log.1"]  # and no FIFO left
    assert all(st.st_size <= cap and st.st_mode & 0o777 == 0o600 for st in logs.values())
    assert cfg.console_log is not None
    tail = read_tail(cfg.console_log, 2 * cap).replace(b"\r", b"")
    assert b"CONSOLE-END" in tail[-200:]
    assert tail.count(b"0123456789abcdefghijklmnopqrstuvwxyz\n") > cap // 37
    _assert_no_leftovers(vm, vm_dir)


@pytest.mark.slow
def test_guest_sees_cpus_memory_and_virtio_devices(
    vmlinux: Path, tmp_path: Path, vm_dir: Path
) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"bareboat-disk".ljust(1 << 20, b"\0"))
    script = (
        "bb=/bin/busybox\n$bb mount -t proc proc /proc\n$bb mount -t sysfs sys /sys\n"
        '$bb echo "CPUS=$($bb grep -c ^processor /proc/cpuinfo)"\n'
        '$bb echo "MEM=$($bb grep MemTotal /proc/meminfo)"\n'
        '$bb echo "SERIAL=$($bb cat /sys/block/vda/serial)"\n'
        '$bb echo "RO=$($bb cat /sys/block/vda/ro)"\n'
        '$bb echo "PORT=$($bb cat /sys/class/virtio-ports/vport*/name)"\n'
        "$bb poweroff -f\n"
    )
    cfg = _boot_cfg(
        vmlinux,
        _initramfs(tmp_path, script),
        vm_dir,
        vcpus=2,
        memory_mib=192,
        disks=(Disk(disk, readonly=True, serial="bb-test"),),
        serial_ports=(SerialPort("bareboat.test", vm_dir / "port.sock"),),
    )
    with QemuProcess(cfg) as vm:
        assert vm.wait(timeout=90) == 0, vm.stderr_tail()
    assert cfg.console_log is not None
    log = cfg.console_log.read_text(errors="replace")
    assert "CPUS=2" in log
    mem_kib = int(log.split("MemTotal:")[1].split()[0])
    assert 150 * 1024 < mem_kib <= 192 * 1024
    assert "SERIAL=bb-test" in log and "RO=1" in log
    assert "PORT=bareboat.test" in log
    _assert_no_leftovers(vm, vm_dir)


@pytest.mark.slow
def test_kernel_panic_ends_qemu_and_is_detected(
    vmlinux: Path, tmp_path: Path, vm_dir: Path
) -> None:
    # init exiting is a panic ("Attempted to kill init!"); panic=-1 + -no-reboot end QEMU.
    cfg = _boot_cfg(vmlinux, _initramfs(tmp_path, "exit 3\n"), vm_dir)
    with QemuProcess(cfg) as vm:
        assert vm.wait(timeout=60) is not None, "a panicked guest must end QEMU"
        result = vm.result()
    assert result.panic is not None and "Attempted to kill init" in result.panic
    _assert_no_leftovers(vm, vm_dir)


@pytest.mark.slow
def test_qmp_status_stop_cont_quit(vmlinux: Path, tmp_path: Path, vm_dir: Path) -> None:
    cfg = _boot_cfg(
        vmlinux, _initramfs(tmp_path, "exec /bin/busybox sleep 600\n"), vm_dir, paused=True
    )
    with QemuProcess(cfg) as vm:
        assert vm.status() == "prelaunch"
        vm.cont()
        assert vm.status() == "running"
        vm.stop()
        assert vm.status() == "paused"
        vm.cont()
        with pytest.raises(BackendError, match="no-such-command"):
            vm.command("no-such-command")
        vm.quit()
        assert vm.wait(timeout=10) is not None
    assert vm.ended_by == "exit"
    _assert_no_leftovers(vm, vm_dir)


@pytest.mark.slow
def test_killed_qemu_leaves_nothing(vmlinux: Path, tmp_path: Path, vm_dir: Path) -> None:
    cfg = _boot_cfg(
        vmlinux,
        _initramfs(tmp_path, "exec /bin/busybox sleep 600\n"),
        vm_dir,
        serial_ports=(SerialPort("p", vm_dir / "port.sock"),),
    )
    with QemuProcess(cfg) as vm:
        assert (vm_dir / "port.sock").exists()
        vm.kill()
        assert vm.wait(timeout=10) == -9
    assert vm.ended_by == "sigkill"
    _assert_no_leftovers(vm, vm_dir)


@pytest.mark.slow
def test_timeout_then_shutdown_escalates_and_reaps(
    vmlinux: Path, tmp_path: Path, vm_dir: Path
) -> None:
    cfg = _boot_cfg(vmlinux, _initramfs(tmp_path, "exec /bin/busybox sleep 600\n"), vm_dir)
    vm = QemuProcess(cfg)
    with pytest.raises(RuntimeError, match="boom"), vm:
        assert vm.wait(timeout=0.5) is None  # still running: wait gives up, QEMU lives on
        raise RuntimeError("boom")
    _assert_no_leftovers(vm, vm_dir)
    vm.shutdown()  # a second call is harmless


@pytest.mark.slow
def test_sigterm_is_used_when_qmp_is_gone(vmlinux: Path, tmp_path: Path, vm_dir: Path) -> None:
    cfg = _boot_cfg(vmlinux, _initramfs(tmp_path, "exec /bin/busybox sleep 600\n"), vm_dir)
    with QemuProcess(cfg) as vm:
        vm._close_qmp()  # as if the monitor connection broke
    assert vm.returncode is not None and vm.ended_by == "sigterm"
    _assert_no_leftovers(vm, vm_dir)


def test_launch_failure_is_one_clear_error_and_leaves_nothing(vm_dir: Path, tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    cfg = VMConfig(kernel=tmp_path / "missing-vmlinux", qmp_socket=vm_dir / "qmp.sock")
    vm = QemuProcess(cfg)
    # Unconfined, QEMU itself fails to open it; confined, the jail cannot bind it.
    with pytest.raises(BackendError, match=r"QEMU exited with 1 at start|VMM's jail") as err:
        vm.launch()
    assert "missing-vmlinux" in str(err.value) and "\n" not in str(err.value)
    assert vm.pid is None or not _alive(vm.pid)
    assert not list(vm_dir.glob("*.sock")), list(vm_dir.iterdir())
    assert vm.uid is None  # no VMM id left leased


def test_missing_qemu_binary_is_backend_unavailable(vm_dir: Path) -> None:
    from bareboat.errors import BackendUnavailable

    cfg = VMConfig(kernel=Path("/k"), qmp_socket=vm_dir / "qmp.sock")
    with pytest.raises(BackendUnavailable, match="not found"):
        QemuProcess(cfg, qemu="/nonexistent/qemu").launch()
    assert not list(vm_dir.iterdir())


def test_shares_are_9p_devices() -> None:
    from bareboat.backends.microvm.qemu import Share

    argv = build_argv(_cfg(shares=(Share(Path("/srv/a,b"), "bb0", readonly=True),)))
    assert _after(argv, "-fsdev") == [
        "local,id=fs0,path=/srv/a,,b,security_model=mapped-xattr,readonly=on"
    ]
    assert _after(argv, "-device")[-2] == "virtio-9p-device,fsdev=fs0,mount_tag=bb0"
    with pytest.raises(UsageError, match="tag"):
        build_argv(_cfg(shares=(Share(Path("/srv"), "bad tag"),)))
