"""The microVM backend driven as the engine's monitor drives it, booting real QEMU under TCG.

Each test builds a bundle (config.json from the real spec builder, rootfs = an unpacked busybox
tree), then create → start → relay stdio → wait for QEMU → exit_code → delete, and checks that
no QEMU process, socket or VM directory is left. Skipped when no guest kernel is built (run
`bareboat guest build`, or point $BAREBOAT_KERNEL at a vmlinux).
"""

from __future__ import annotations

import io
import os
import signal
import socket
import stat
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bareboat.backends.base import BackendContext, Stdio
from bareboat.errors import KernelMissing
from bareboat.images.model import ImageConfig
from bareboat.paths import Roots
from bareboat.spec.options import Isolation, Mount, RunOptions
from tests.support.imagebuild import busybox_entries, tar_layer

pytestmark = pytest.mark.slow


def kernel_or_skip(roots: Roots) -> None:
    from bareboat.backends.microvm.kernel import resolve_kernel

    try:
        resolve_kernel(roots)
    except KernelMissing as err:
        pytest.skip(str(err))
    if not Path("/usr/bin/qemu-system-x86_64").exists():
        pytest.skip("qemu-system-x86 is not installed")


@pytest.fixture(scope="session")
def busybox_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("busybox") / "rootfs"
    tree.mkdir()
    with tarfile.open(fileobj=io.BytesIO(tar_layer(busybox_entries()))) as tar:
        tar.extractall(tree, numeric_owner=True, filter="fully_trusted")
    return tree


@dataclass
class Result:
    code: int | None
    stdout: bytes
    stderr: bytes
    error: BaseException | None = None


@dataclass
class VM:
    """One container's bundle and the backend, with the monitor's part played by the test."""

    roots: Roots
    tree: Path
    tmp: Path
    cid: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        from bareboat.backends.microvm.backend import MicrovmBackend

        self.backend = MicrovmBackend(self.roots)
        (self.roots.containers / self.cid).mkdir(parents=True)

    def context(
        self, options: RunOptions, annotations: dict[str, str] | None = None
    ) -> BackendContext:
        from bareboat.spec.builder import build_spec

        config = ImageConfig(env=("PATH=/bin",), cmd=("/bin/sh",))
        spec = build_spec(config, options, rootfs=self.tree, container_id=self.cid)
        spec["annotations"].update(annotations or {})
        bundle = self.roots.run / self.cid / "bundle"
        (bundle).mkdir(parents=True, exist_ok=True)
        os.symlink(self.tree, bundle / "rootfs") if not (bundle / "rootfs").exists() else None
        return BackendContext(self.cid, bundle, self.roots.run / self.cid / "oci", spec)

    def run(
        self,
        *args: str,
        stdin: bytes | None = None,
        tty: bool = False,
        annotations: dict[str, str] | None = None,
        during: Any = None,
        **opts: Any,
    ) -> Result:
        options = RunOptions(
            isolation=Isolation.MICROVM, command=args, interactive=stdin is not None, tty=tty,
            **opts,
        )  # fmt: skip
        ctx = self.context(options, annotations)
        b = self.backend
        out: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        if tty:
            master, slave = os.openpty()
            stdio = Stdio(slave, os.dup(slave), os.dup(slave), tty=True)
        else:
            in_r, in_w = os.pipe()
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            stdio = Stdio(in_r, out_w, err_w)
        try:
            b.create(ctx)
            pid = b.start(ctx, stdio)
        except BaseException as err:  # noqa: BLE001 - the result carries it
            b.delete(ctx, force=True)
            return Result(None, b"", b"", err)
        finally:
            for fd in {stdio.stdin, stdio.stdout, stdio.stderr}:
                os.close(fd)
        readers = []
        if tty:
            readers.append(threading.Thread(target=_drain, args=(master, out, "stdout")))
            if stdin is not None:
                os.write(master, stdin)
        else:
            readers += [
                threading.Thread(target=_drain, args=(out_r, out, "stdout")),
                threading.Thread(target=_drain, args=(err_r, out, "stderr")),
            ]
            if stdin is not None:
                os.write(in_w, stdin)
            os.close(in_w)
        for t in readers:
            t.start()
        if during is not None:
            during(ctx, pid)
        _, status = os.waitpid(pid, 0)
        for t in readers:
            t.join(10)
        try:
            code: int | None = b.exit_code(ctx, status)
            error = None
        except BaseException as err:  # noqa: BLE001
            code, error = None, err
        finally:
            b.delete(ctx, force=True)
        return Result(code, out["stdout"], out["stderr"], error)


def _drain(fd: int, out: dict[str, bytes], name: str) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            break
        out[name] += data
    os.close(fd)


def qemu_processes(marker: str) -> list[str]:
    res = subprocess.run(["pgrep", "-af", "qemu-system"], capture_output=True, text=True)
    return [line for line in res.stdout.splitlines() if marker in line]


@pytest.fixture
def vm(roots: Roots, busybox_tree: Path, tmp_path: Path) -> Iterator[VM]:
    kernel_or_skip(roots)
    v = VM(roots, busybox_tree, tmp_path)
    yield v
    # nothing of the VM may outlive the test
    assert qemu_processes(str(roots.state)) == []
    assert not (roots.run / v.cid / "oci" / "vm").exists()
    assert not v.backend.vmdir(v.context(RunOptions(command=("true",)))).sockets.exists()


def test_boot_and_run(vm: VM) -> None:
    r = vm.run("/bin/sh", "-c", "echo out; echo err >&2")
    assert (r.error, r.code, r.stdout, r.stderr) == (None, 0, b"out\n", b"err\n")


@pytest.mark.parametrize(("script", "code"), [("exit 3", 3), ("kill -TERM $$", 143), ("true", 0)])
def test_exit_codes(vm: VM, script: str, code: int) -> None:
    assert vm.run("/bin/sh", "-c", script).code == code


def test_env_cwd_user(vm: VM) -> None:
    r = vm.run(
        "/bin/sh", "-c", 'echo "$FOO|$(pwd)|$(id -u):$(id -g)|$(id -G)|$(hostname)"',
        env=("FOO=bar baz",), workdir="/home/app", user="app", hostname="vmhost",
    )  # fmt: skip
    assert r.error is None
    assert r.stdout == b"bar baz|/home/app|1000:1000|1000 50|vmhost\n"


def test_stdin(vm: VM) -> None:
    data = bytes(range(256)) * 1024
    r = vm.run("/bin/sh", "-c", "cat | md5sum", stdin=data)
    import hashlib

    assert r.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


def test_tty(vm: VM) -> None:
    r = vm.run("/bin/sh", "-c", "test -t 0 && test -t 1 && echo tty; stty size", tty=True)
    assert r.code == 0
    assert b"tty\r\n" in r.stdout


def test_limits(vm: VM) -> None:
    r = vm.run("/bin/sh", "-c", "nproc; grep MemTotal /proc/meminfo", cpus=1.5, memory=192 << 20)
    lines = r.stdout.decode().split("\n")
    assert lines[0] == "2"
    mem_kb = int(lines[1].split()[1])
    assert 150 * 1024 < mem_kb <= 192 * 1024


def test_tmpfs_mount(vm: VM) -> None:
    r = vm.run(
        "/bin/sh", "-c", "grep ' /scratch ' /proc/mounts",
        mounts=(Mount("/scratch", kind="tmpfs", options=("size=8m",)),),
    )  # fmt: skip
    assert r.stdout.startswith(b"tmpfs /scratch tmpfs")


def test_tmpfs_flag_words_reach_the_mount(vm: VM) -> None:
    # docker's --tmpfs defaults (nosuid,nodev,noexec) are flags, not data: a copied binary
    # on the mount must not run (EACCES -> 126), and /proc/mounts shows the flags
    script = "grep ' /x ' /proc/mounts; cp /bin/busybox /x/true; /x/true; echo rc=$?"
    r = vm.run("/bin/sh", "-c", script, mounts=(Mount("/x", kind="tmpfs", options=("size=8m",)),))
    line, *rest = r.stdout.decode().splitlines()
    flags = line.split()[3].split(",")
    assert {"nosuid", "nodev", "noexec"} <= set(flags), line
    assert "size=8192k" in flags, line
    assert rest[-1] == "rc=126", r.stdout


def test_tmpfs_exec_word_allows_exec(vm: VM) -> None:
    script = "grep ' /x ' /proc/mounts; cp /bin/busybox /x/true; /x/true; echo rc=$?"
    opts = ("exec", "noatime", "ro")
    r = vm.run("/bin/sh", "-c", script, mounts=(Mount("/x", kind="tmpfs", options=opts[:2]),))
    line, *rest = r.stdout.decode().splitlines()
    flags = line.split()[3].split(",")
    assert "noexec" not in flags and {"nosuid", "nodev", "noatime"} <= set(flags), line
    assert rest[-1] == "rc=0", r.stdout
    ro = (Mount("/x", kind="tmpfs", options=opts),)
    r = vm.run("/bin/sh", "-c", "grep ' /x ' /proc/mounts; touch /x/f", mounts=ro)
    assert r.stdout.split()[3].split(b",")[0] == b"ro" and r.code != 0, r


def test_loopback_is_up_without_network(vm: VM) -> None:
    # init brings lo up itself: a server on 127.0.0.1 answers a client in the same guest
    script = (
        "cat /sys/class/net/lo/flags; ip addr show lo | grep -o 'inet [0-9./]*';"
        "ls /sys/class/net | tr '\\n' ' '; echo;"
        "mkdir -p /www && echo hello-lo > /www/index.html && httpd -p 127.0.0.1:8080 -h /www &&"
        "wget -q -O - http://127.0.0.1:8080/index.html"
    )
    r = vm.run("/bin/sh", "-c", script)
    lines = r.stdout.decode().splitlines()
    assert r.code == 0, r
    assert int(lines[0], 16) & 1, lines  # IFF_UP
    assert lines[1] == "inet 127.0.0.1/8"
    assert "eth0" not in lines[2].split()  # no NIC with network none
    assert lines[3] == "hello-lo"


def test_bind_mount_shares_a_host_directory(vm: VM, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from the host\n")
    script = "cat /data/in.txt && echo from-the-guest > /data/out.txt && id -u > /data/uid"
    r = vm.run("/bin/sh", "-c", script, mounts=(Mount("/data", source=str(shared)),))
    assert (r.code, r.stdout) == (0, b"from the host\n"), r.stderr
    assert (shared / "out.txt").read_text() == "from-the-guest\n"  # back on the host
    # A hostile guest's setuid file and device node stay harmless on the host.
    planted = vm.run("/bin/sh", "-c", "touch /data/s && chmod 4755 /data/s && "
                     "mknod /data/null c 1 3 && ls -l /data/s /data/null",
                     mounts=(Mount("/data", source=str(shared)),))  # fmt: skip
    assert planted.code == 0, planted.stderr
    assert b"rws" in planted.stdout  # the guest sees what it asked for
    assert not (shared / "s").stat().st_mode & 0o6000
    assert stat.S_ISREG((shared / "null").lstat().st_mode)
    ro = vm.run("/bin/sh", "-c", "echo x > /data/x",
                mounts=(Mount("/data", source=str(shared), readonly=True),))  # fmt: skip
    assert ro.code != 0 and not (shared / "x").exists()


def test_bind_mount_of_a_single_file(vm: VM, tmp_path: Path) -> None:
    # A file volume (-v /host/app.conf:/etc/app.conf): the guest reads and writes that one
    # file through; its neighbours on the host stay out of the guest's reach.
    (tmp_path / "app.conf").write_text("from the host\n")
    (tmp_path / "secret").write_text("neighbour\n")
    conf = Mount("/etc/app.conf", source=str(tmp_path / "app.conf"))
    script = (
        "cat /etc/app.conf && echo from-the-guest >> /etc/app.conf && "
        "ls /etc/ | grep -c '^app.conf$' && ! grep -rqs neighbour /mnt /etc /data"
    )
    r = vm.run("/bin/sh", "-c", script, mounts=(conf,))
    assert (r.code, r.stdout) == (0, b"from the host\n1\n"), r.stderr
    assert (tmp_path / "app.conf").read_text() == "from the host\nfrom-the-guest\n"
    # A target the image lacks, in a directory it lacks, is made; read-only holds.
    ro = Mount("/new/dir/f", source=str(tmp_path / "app.conf"), readonly=True)
    r = vm.run("/bin/sh", "-c", "head -1 /new/dir/f; echo x > /new/dir/f", mounts=(ro,))
    assert (r.code != 0, r.stdout) == (True, b"from the host\n"), r.stderr
    assert (tmp_path / "app.conf").read_text() == "from the host\nfrom-the-guest\n"


@pytest.mark.parametrize("kind", ["missing", "fifo"])
def test_bind_mount_of_a_special_or_missing_file_is_refused(
    vm: VM, tmp_path: Path, kind: str
) -> None:
    from bareboat.errors import UsageError

    source = tmp_path / "f"
    if kind == "fifo":
        os.mkfifo(source)
    r = vm.run("true", mounts=(Mount("/data", source=str(source)),))
    want = "does not exist" if kind == "missing" else "is a special file"
    assert isinstance(r.error, UsageError) and want in str(r.error), r.error


def test_writes_go_to_the_vm_not_the_image(vm: VM) -> None:
    r = vm.run("/bin/sh", "-c", "echo x > /bin/new && rm /bin/cat && ls /bin/new")
    assert r.code == 0
    assert not (vm.tree / "bin/new").exists() and (vm.tree / "bin/cat").exists()
    assert vm.run("/bin/sh", "-c", "test -e /bin/cat").code == 0


def test_persistent_disk(vm: VM) -> None:
    ann = {"io.bareboat.vm.disk": "64m"}
    assert vm.run("/bin/sh", "-c", "echo kept > /root/f", annotations=ann).code == 0
    r = vm.run("/bin/sh", "-c", "cat /root/f", annotations=ann)
    assert r.stdout == b"kept\n"
    assert (vm.roots.containers / vm.cid / "vm-disk.ext4").exists()


def test_kill_and_exec(vm: VM) -> None:
    seen: dict[str, Any] = {}

    def during(ctx: BackendContext, pid: int) -> None:
        b = vm.backend
        r, w = os.pipe()
        saved = os.dup(1)
        os.dup2(w, 1)
        try:
            proc = {"args": ["/bin/sh", "-c", "echo in-vm; exit 4"], "env": ["PATH=/bin"]}
            seen["exec"] = b.exec(ctx, proc, detach=False)
        finally:
            os.dup2(saved, 1)
            os.close(w)
            os.close(saved)
        seen["exec_out"] = os.read(r, 100)
        os.close(r)
        b.kill(ctx, pid, signal.SIGTERM)

    r = vm.run("/bin/sh", "-c", "trap 'exit 42' TERM; while :; do sleep 0.1; done", during=during)
    assert seen == {"exec": 4, "exec_out": b"in-vm\n"}
    assert r.code == 42


def test_sigkill_is_137(vm: VM) -> None:
    r = vm.run("sleep", "100", during=lambda ctx, pid: vm.backend.kill(ctx, pid, signal.SIGKILL))
    assert r.code == 137


def test_port_publishing(vm: VM) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got: dict[str, bytes] = {}

    def during(ctx: BackendContext, pid: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                    c.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                    data = b""
                    while chunk := c.recv(4096):
                        data += chunk
                    if data:
                        got["reply"] = data
                        break
            except OSError:
                pass
            time.sleep(0.2)
        vm.backend.kill(ctx, pid, signal.SIGKILL)

    # init configures lo and eth0 itself (slirp's 10.0.2.15/24 via 10.0.2.2): the workload
    # only reports what it sees and serves
    script = (
        "ip addr show eth0 | grep -o 'inet [0-9./]*'; ip route | grep default;"
        "mkdir -p /www && echo hello-from-vm > /www/index.html && httpd -f -p 80 -h /www"
    )
    from bareboat.spec.options import PortMapping

    pub = f"127.0.0.1:{port}:80"
    r = vm.run(
        "/bin/sh", "-c", script, during=during,
        annotations={"io.bareboat.network": "user", "io.bareboat.publish": pub},
        network="user", publish=(PortMapping(port, 80),),
    )  # fmt: skip
    assert r.code == 137
    assert b"hello-from-vm" in got.get("reply", b"")
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "inet 10.0.2.15/24", r.stdout
    assert lines[1].startswith("default via 10.0.2.2 dev eth0"), r.stdout
