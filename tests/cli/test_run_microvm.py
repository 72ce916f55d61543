"""`bareboat run --isolation microvm` through the engine: what docker users expect of a VM."""

from __future__ import annotations

import contextlib
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.backends.microvm.backend import socket_dir
from bareboat.control import ControlClient
from bareboat.engine.engine import Engine
from bareboat.images.store import ImageStore
from bareboat.paths import Roots
from bareboat.sandboxdir import AGENT_SOCKET, CONTROL_SOCKET, QMP_SOCKET
from tests.cli.conftest import Run, leftovers
from tests.microvm.test_backend import kernel_or_skip
from tests.support.imagebuild import Image, write_image


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


def listening_tcp_ports() -> set[int]:
    """Every TCP port a socket of the host's network namespace listens on, any address."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def http_get(port: int, timeout: float = 60) -> bytes:
    """GET / from 127.0.0.1:port, retrying until the guest's server answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2) as c:
            c.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := c.recv(4096):
                data += chunk
            if data:
                return data
        time.sleep(0.2)
    return b""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_publish_is_the_operators_not_the_images(
    vm_bb: Run, roots: Roots, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """`-p` from the command line is served at the host port; an image labelled to publish a
    port of its own (or to get a host disk) opens nothing and makes nothing on the host."""
    ours = free_port()
    # The image's port is held bound here (not listening) for the whole test: no other
    # process on this host can take it meanwhile, and a VM that published it would fail to.
    held = socket.socket()
    request.addfinalizer(held.close)
    held.bind(("0.0.0.0", 0))
    theirs = int(held.getsockname()[1])
    image = Image(
        labels={"io.bareboat.publish": f"0.0.0.0:{theirs}:80", "io.bareboat.vm.disk": "20g"}
    )
    write_image(tmp_path / "layout", image, tag="labelled")
    ref = ImageStore(roots).load(tmp_path / "layout")[0].names[0]
    script = "mkdir /www && echo served-by-vm > /www/index.html && httpd -f -p 80 -h /www"
    r = vm_bb(
        "run", "-d", "--isolation", "microvm", "--no-template", "--network", "user",
        "-p", f"127.0.0.1:{ours}:80", ref, "sh", "-c", script,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert b"served-by-vm" in http_get(ours)
    assert ours in listening_tcp_ports()
    assert theirs not in listening_tcp_ports()
    assert not (roots.containers / cid / "vm-disk.ext4").exists()
    assert vm_bb("rm", "-f", cid).returncode == 0


def _sockets(*dirs: Path) -> set[str]:
    found = set()
    for d in dirs:
        for path in d.rglob("*") if d.is_dir() else ():
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    found.add(path.name)
    return found


@pytest.mark.slow
def test_an_engine_run_vm_has_one_control_socket(vm_bb: Run, roots: Roots, image: str) -> None:
    """The monitor's socket is the VM's one control socket: its hub listens on none, and exec
    sessions, pause and resume, and signals for the guest all go through the monitor's."""
    script = "trap 'echo got USR1; exit 7' USR1; echo ready; while :; do sleep 0.1; done"
    r = vm_bb(
        "run", "-d", "--isolation", "microvm", "--no-template", image, "sh", "-c", script,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    engine = Engine(roots)
    try:
        cid = engine.resolve(cid)
        control = engine.paths(cid).socket
        sockets = _sockets(engine.paths(cid).run, socket_dir(roots, cid))
        assert CONTROL_SOCKET not in sockets and control.name in sockets, sockets
        assert sockets - {control.name} <= {QMP_SOCKET, AGENT_SOCKET, "net.sock"}, sockets
        r = vm_bb("exec", cid, "sh", "-c", "echo in the guest; exit 3", timeout=60)
        assert (r.returncode, r.stdout) == (3, "in the guest\n"), r.stderr
        with ControlClient(control, timeout=30) as c:
            c.pause()
            c.resume()
        assert vm_bb("kill", "-s", "USR1", cid, timeout=60).returncode == 0
        r = vm_bb("wait", cid, timeout=60)
        assert r.stdout.strip() == "7", r.stderr
        assert b"got USR1" in b"".join(data for _, _, data in engine.logs(cid))
    finally:
        vm_bb("rm", "-f", cid, timeout=60)


def _qemu_of(engine: Engine, cid: str) -> int | None:
    """The pid of the container's QEMU once the backend recorded it, else None."""
    import json

    pidfile = engine.paths(cid).backend_state / "vm" / "vm.json"
    with contextlib.suppress(OSError, ValueError):
        return int(json.loads(pidfile.read_text())["pid"])
    return None


@pytest.mark.slow
def test_a_foreground_vm_boots_before_its_client_attaches(
    vm_bb: Run, roots: Roots, image: str
) -> None:
    """`run` (foreground) starts the VM's QEMU as soon as the monitor is ready, so the guest
    boots while the client attaches; the workload itself waits for the client. A container
    removed in that window leaves no QEMU, mount or file behind."""
    from bareboat.spec.options import Isolation, RunOptions

    engine = Engine(roots)
    opts = RunOptions(
        isolation=Isolation.MICROVM,
        command=("true",),
        labels={"io.bareboat.vm.template": "off"},
    )
    rec = engine.create(image, opts)
    engine.start(rec.id, wait_attach=True)
    deadline = time.monotonic() + 60
    while (pid := _qemu_of(engine, rec.id)) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pid is not None, "no QEMU ran before the client attached"
    assert b"qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert engine.get(rec.id).state.value == "created"  # the workload waits for its client
    engine.remove(rec.id, force=True)
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid), Path(f"/proc/{pid}/cmdline").read_bytes()


def _running(pid: int) -> bool:
    """Whether `pid` is a process that has not ended (a zombie has, waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
