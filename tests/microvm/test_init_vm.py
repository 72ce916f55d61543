"""The guest init as PID 1 of a real QEMU microvm (TCG here): boot, START, exec, exit, power off.

The image is the busybox test image as an EROFS (umoci unpack + mkfs.erofs), the initramfs holds
only our init, the agent channel is a virtio-serial port on a unix socket the test listens on.
Skipped where the guest kernel is not built (`bareboat guest build`, or $BAREBOAT_KERNEL).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bareboat.backends.microvm.agent import (
    AgentClient,
    ErrorKind,
    Exited,
    File,
    Mount,
    ProcessSpec,
    Started,
    StartSpec,
)
from bareboat.backends.microvm.initbuild import build_initramfs
from bareboat.errors import KernelMissing
from bareboat.paths import Roots

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("musl-gcc", "umoci", "mkfs.erofs", "qemu-system-x86_64")),
        reason="needs musl-gcc, umoci, mkfs.erofs and qemu-system-x86_64",
    ),
]

PATH = "PATH=/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Assets:
    kernel: Path
    initramfs: Path
    erofs: Path


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path) -> Assets:
    from bareboat.backends.microvm.kernel import resolve_kernel

    shared = Roots.from_env()
    try:
        kernel = resolve_kernel(shared).path
    except KernelMissing as e:
        pytest.skip(str(e))
    d = tmp_path_factory.mktemp("vm-assets")
    initramfs = build_initramfs(Roots(root=d / "root", state=d / "state", cache=d / "cache"))
    bundle = d / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{busybox_layout}:latest", str(bundle)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    erofs = d / "rootfs.erofs"
    subprocess.run(
        ["mkfs.erofs", "-Enoinline_data", str(erofs), str(bundle / "rootfs")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return Assets(kernel, initramfs, erofs)


@dataclass
class Guest:
    client: AgentClient
    vm: object  # QemuProcess
    console: Path
    boot_s: float  # QEMU launch → HELLO


@contextmanager
def boot(assets: Assets, tmp: Path, upper: Path | None = None) -> Iterator[Guest]:
    from bareboat.backends.microvm.qemu import (
        Disk,
        QemuProcess,
        SerialPort,
        VMConfig,
        host_tsc_khz,
    )

    sock_path = tmp / "agent.sock"
    # we listen, QEMU connects at start: the guest's first HELLO cannot be lost
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    listener.settimeout(15)
    cfg = VMConfig(
        kernel=assets.kernel,
        qmp_socket=tmp / "qmp.sock",
        initrd=assets.initramfs,
        memory_mib=128,
        disks=(
            Disk(assets.erofs, readonly=True, serial="image"),
            *([Disk(upper, serial="upper")] if upper else []),
        ),
        serial_ports=(SerialPort("bareboat.agent", sock_path, server=False),),
        console_log=tmp / "console.log",
        tsc_khz=host_tsc_khz(),
    )
    t0 = time.monotonic()
    try:
        with QemuProcess(cfg) as vm:
            conn, _ = listener.accept()
            with AgentClient(conn) as client:
                try:
                    client.wait_hello(60)
                except Exception:
                    print((tmp / "console.log").read_text(errors="replace"))
                    raise
                yield Guest(client, vm, tmp / "console.log", time.monotonic() - t0)
    finally:
        listener.close()
        sock_path.unlink(missing_ok=True)


def start_spec(script: str, **kw: object) -> StartSpec:
    fields: dict[str, object] = {
        "process": ProcessSpec(args=["sh", "-c", script], env=[PATH]),
        "hostname": "bb-guest",
        "time_ns": time.time_ns(),
        "entropy": os.urandom(64),
        "lower": "serial=image",
        **kw,
    }
    return StartSpec(**fields)  # type: ignore[arg-type]


def test_vm_runs_execs_and_powers_off(assets: Assets, tmp_path: Path) -> None:
    with boot(assets, tmp_path) as g:
        c = g.client
        t_start = time.monotonic()
        c.start(
            start_spec(
                "echo hello; read x; echo got $x; exit 3",
                mounts=[Mount("/data", "tmpfs", options="size=1m", readonly=False)],
                files=[File("/etc/hostname", b"bb-guest\n", readonly=True)],
            )
        )
        first = c.next_event(30)
        t_started = time.monotonic() - t_start

        s1 = c.exec(
            ProcessSpec(
                args=[
                    "sh",
                    "-c",
                    "hostname; cat /etc/hostname; grep -c ' /data tmpfs' /proc/mounts;"
                    " echo x > /etc/hostname || echo ro; date +%Y; id -u",
                ],
                env=[PATH],
                uid=1000,
                gid=1000,
            )
        )
        r1 = c.wait(s1, timeout=30)
        assert r1.exit.code == 0, r1.stderr
        lines = r1.stdout.decode().split("\n")
        assert lines[0:3] == ["bb-guest", "bb-guest", "1"]
        assert lines[3] == "ro"
        assert lines[4] == time.strftime("%Y")
        assert lines[5] == "1000"

        s2 = c.exec(ProcessSpec(args=["no-such-command"], env=[PATH]))
        r2 = c.wait(s2, timeout=30)
        assert r2.exit == Exited(s2, 127, None)
        assert r2.errors[0].kind == ErrorKind.NOT_FOUND

        # the image is read-only, the overlay is not
        s3 = c.exec(
            ProcessSpec(args=["sh", "-c", "echo new > /bin/new && cat /bin/new"], env=[PATH])
        )
        assert c.wait(s3, timeout=30).stdout == b"new\n"

        res = c.wait(0, timeout=30, stdin=b"go\n")
        assert res.stdout == b"hello\ngot go\n"
        assert res.exit == Exited(0, 3, None)
        assert isinstance(first, Started) and first.boot is not None

        c.poweroff()
        assert g.vm.wait(30) is not None  # type: ignore[attr-defined]
        assert g.vm.result().panic is None  # type: ignore[attr-defined]
        log = g.console.read_text(errors="replace")
    print(f"\nboot to HELLO {g.boot_s:.3f}s, START to STARTED {t_started * 1000:.1f} ms")
    print(f"init: {first.boot}")
    assert "init to exec" in log


def test_vm_missing_command_and_signal_exit(assets: Assets, tmp_path: Path) -> None:
    with boot(assets, tmp_path) as g:
        spec = start_spec("")
        g.client.start(
            StartSpec(**{**spec.__dict__, "process": ProcessSpec(args=["/no/such/thing"])})
        )
        res = g.client.wait(0, timeout=30)
        assert res.exit.code == 127 and res.errors[0].kind == ErrorKind.NOT_FOUND
        g.client.poweroff()
        assert g.vm.wait(30) is not None  # type: ignore[attr-defined]


def test_vm_terminal_exec(assets: Assets, tmp_path: Path) -> None:
    with boot(assets, tmp_path) as g:
        c = g.client
        c.start(start_spec("sleep 60"))
        s = c.exec(
            ProcessSpec(
                args=["sh", "-c", "tty; stty size"], env=[PATH], terminal=True, rows=33, cols=77
            )
        )
        res = c.wait(s, timeout=30)
        out = res.stdout.decode().replace("\r", "").split("\n")
        assert out[0].startswith("/dev/pts/") and out[1] == "33 77"
        c.signal(0, 9)
        assert c.wait(0, timeout=30).exit == Exited(0, None, 9)
        c.poweroff()
        assert g.vm.wait(30) is not None  # type: ignore[attr-defined]


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="mkfs.ext4 is missing")
def test_vm_persistent_ext4_upper(assets: Assets, tmp_path: Path) -> None:
    upper = tmp_path / "upper.ext4"
    with upper.open("wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(upper)], check=True, timeout=60)
    image_before = assets.erofs.read_bytes()
    for i, script in enumerate(["echo kept > /root/state; sync", "cat /root/state"]):
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        with boot(assets, run_dir, upper=upper) as g:
            g.client.start(start_spec(script, upper="serial=upper"))
            res = g.client.wait(0, timeout=30)
            assert res.exit.code == 0, (res.stderr, res.errors)
            g.client.poweroff()
            assert g.vm.wait(30) is not None  # type: ignore[attr-defined]
    assert res.stdout == b"kept\n"
    assert assets.erofs.read_bytes() == image_before  # the shared image is never written


def test_vm_bad_lower_is_a_rootfs_error(assets: Assets, tmp_path: Path) -> None:
    with boot(assets, tmp_path) as g:
        g.client.start(start_spec("true", lower="serial=nonexistent"))
        res = g.client.wait(0, timeout=30)
        assert res.exit.code == 125 and res.errors[0].kind == ErrorKind.ROOTFS
        assert "nonexistent" in res.errors[0].message
        g.client.poweroff()
        assert g.vm.wait(30) is not None  # type: ignore[attr-defined]


def test_vm_mount_flag_words_and_bad_word(assets: Assets, tmp_path: Path) -> None:
    # straight at the agent: flag words become MS_* flags, a word it does not know is a
    # ROOTFS error rather than data the filesystem might read some other way
    with boot(assets, tmp_path) as g:
        opts = "noexec,nosuid,nodev,noatime,size=1m,mode=0700"
        g.client.start(
            start_spec("grep ' /x ' /proc/mounts", mounts=[Mount("/x", "tmpfs", options=opts)])
        )
        res = g.client.wait(0, timeout=30)
        assert res.exit.code == 0, res.stderr
        flags = set(res.stdout.split()[3].split(b","))
        assert {
            b"rw",
            b"nosuid",
            b"nodev",
            b"noexec",
            b"noatime",
            b"size=1024k",
            b"mode=700",
        } <= flags
    (tmp_path / "bad").mkdir()
    with boot(assets, tmp_path / "bad") as g:
        g.client.start(start_spec("true", mounts=[Mount("/x", "tmpfs", options="nosuid,bind")]))
        res = g.client.wait(0, timeout=30)
        assert res.exit.code == 125 and res.errors[0].kind == ErrorKind.ROOTFS
        assert "bad options" in res.errors[0].message
