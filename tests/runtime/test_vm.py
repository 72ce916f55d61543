"""`microvm` isolation under the OCI contract, driven as conmon and the containerd shim drive it:
create boots the VM without starting the workload; the pid file names a gate process that a
subreaper waits on and that carries the workload's exit status; start, state, exec, ps,
pause/resume (vCPUs), kill, delete --force; hooks; bad input leaves nothing behind."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.paths import Roots

from .conftest import RUNTIME, OneShotServer, Runtime, connect_and_read, cpu_quota, make_bundle

VM = {"io.bareboat.isolation": "microvm"}

# A subreaper, as conmon and the shim are: runs `create`, says so, then waits for the gate
# (reparented to it when create exits) and prints its exit status.
SUBREAPER = r"""
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
rc = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL).returncode
os.write(2, f"created {rc}\n".encode())
if rc:
    sys.exit(0)
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    os.write(2, f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())
"""


def vm_or_skip() -> None:
    from bareboat.backends.microvm.kernel import resolve_kernel
    from bareboat.errors import KernelMissing

    try:
        resolve_kernel(Roots.from_env())
    except KernelMissing as err:
        pytest.skip(str(err))
    if not any(Path(d, "qemu-system-x86_64").exists() for d in ("/usr/bin", "/usr/local/bin")):
        pytest.skip("qemu-system-x86 is not installed")


@pytest.fixture(autouse=True)
def _vm(runtime: Runtime) -> Iterator[None]:
    vm_or_skip()
    yield
    # Nothing of this test's VMs outlives it: no QEMU (its argv names the console log under
    # the runtime root), no gate (its argv names the root).
    left = subprocess.run(["pgrep", "-af", str(runtime.root)], capture_output=True, text=True)
    assert left.stdout == "", left.stdout


class Reaped:
    """A runtime call under a subreaper (`create`, `exec --detach`): the output of what it
    leaves running and the exit status of every process the subreaper inherits."""

    def __init__(self, runtime: Runtime, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SUBREAPER, str(RUNTIME), "--root", str(runtime.root), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
        )  # fmt: skip
        assert self.proc.stderr is not None
        # Unbuffered: a buffered readline could swallow the exit lines that follow at once.
        line = self.proc.stderr.readline().decode()
        assert line.startswith("created"), line
        self.create_rc = int(line.split()[1])

    def finish(self, timeout: float = 60) -> tuple[str, str, dict[int, int]]:
        out_b, err_b = self.proc.communicate(timeout=timeout)
        out, err = out_b.decode(), err_b.decode()
        exits = {}
        rest = []
        for line in err.splitlines():
            if line.startswith("exit "):
                _, pid, code = line.split()
                exits[int(pid)] = int(code)
            else:
                rest.append(line)
        return out, "\n".join(rest), exits


def create(runtime: Runtime, bundle: Path, cid: str, pidfile: Path) -> Reaped:
    return Reaped(runtime, "create", "--bundle", str(bundle), "--pid-file", str(pidfile), cid)


def test_create_boots_start_runs_gate_carries_status(runtime: Runtime, tmp_path: Path) -> None:
    script = "echo out; echo err >&2; cat /proc/sys/kernel/hostname; exit 7"
    bundle = make_bundle(tmp_path / "b", ["sh", "-c", script], annotations=VM)
    config = json.loads((bundle / "config.json").read_text())
    config["hostname"] = "vmhost"
    (bundle / "config.json").write_text(json.dumps(config))
    pidfile = tmp_path / "pid"
    reaped = create(runtime, bundle, "v1", pidfile)
    runtime.ids.append("v1")
    assert reaped.create_rc == 0
    gate = int(pidfile.read_text())
    st = runtime.state("v1")
    assert (st["status"], st["pid"]) == ("created", gate)
    # Booted but not started: QEMU runs, the workload has not printed anything.
    ps = json.loads(runtime("ps", "--format", "json", "v1").stdout)
    assert ps[0] == gate and len(ps) == 2
    assert b"qemu-system" in Path(f"/proc/{ps[1]}/cmdline").read_bytes()
    runtime("start", "v1")
    out, err, exits = reaped.finish()
    assert out == "out\nvmhost\n"
    assert "err" in err.splitlines()
    assert exits == {gate: 7}
    assert runtime.state("v1")["status"] == "stopped"
    runtime("delete", "v1")
    assert not (runtime.root / "bareboat" / "v1").exists()
    assert not (runtime.root / "bareboat" / "v1.rec").exists()


def test_exec_pause_kill_delete(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["sleep", "100"], annotations=VM)
    pidfile = tmp_path / "pid"
    reaped = create(runtime, bundle, "v2", pidfile)
    runtime.ids.append("v2")
    gate = int(pidfile.read_text())
    runtime("start", "v2")
    assert runtime.state("v2")["status"] == "running"

    res = runtime("exec", "--cwd", "/tmp", "-e", "X=42", "v2", "sh", "-c", "echo $X; pwd; exit 3",
                  check=False)  # fmt: skip
    assert (res.returncode, res.stdout) == (3, "42\n/tmp\n")
    res = runtime("exec", "v2", "/nonexistent", check=False)
    assert res.returncode == 127

    # A detached exec: its gate is named by the pid file and ends with the session's status.
    epid = tmp_path / "exec.pid"
    pfile = tmp_path / "process.json"
    pfile.write_text(json.dumps({"args": ["sh", "-c", "exit 5"], "cwd": "/", "env": []}))
    execd = Reaped(runtime, "exec", "--detach", "--pid-file", str(epid), "--process", str(pfile),
                   "v2")  # fmt: skip
    assert execd.create_rc == 0
    egate = int(epid.read_text())
    assert egate != gate
    assert execd.finish()[2] == {egate: 5}
    res = runtime("exec", "--detach", "--pid-file", str(tmp_path / "bad.pid"), "v2", "/nope",
                  check=False)  # fmt: skip
    assert res.returncode != 0 and "no such file or directory" in res.stderr
    assert not (tmp_path / "bad.pid").exists()

    runtime("pause", "v2")
    assert runtime.state("v2")["status"] == "paused"
    # Stopped vCPUs: an exec cannot start until the VM is resumed.
    runtime("resume", "v2")
    assert runtime.state("v2")["status"] == "running"
    assert runtime("exec", "v2", "true", check=False).returncode == 0

    # The gate and its QEMU run in the container's cgroups (every one of them, for the
    # client's stats); update changes the VM's host CPU, never its RAM.
    state = json.loads((runtime.root / "bareboat" / "v2" / "state.json").read_text())
    cgroups = [Path(d) for d in state["cgroups"]]
    cgroup = cgroups[0]
    pids = json.loads(runtime("ps", "--format", "json", "v2").stdout)
    for d in cgroups:
        for pid in pids:  # in the container's cgroup or below it (the jailed QEMU's own)
            assert _in_or_below(pid, d), (pid, d, Path(f"/proc/{pid}/cgroup").read_text())
    runtime("update", "--resources", "-", "v2", input='{"cpu": {"quota": 50000, "period": 100000}}')
    assert cpu_quota(cgroup) == (50000, 100000)
    runtime("update", "--cpu-quota", "25000", "v2")
    assert cpu_quota(cgroup) == (25000, 100000)
    res = runtime("update", "--resources", "-", "v2", input='{"memory": {"limit": 1073741824}}',
                  check=False)  # fmt: skip
    assert res.returncode != 0 and "memory is fixed" in res.stderr
    assert runtime("delete", "v2", check=False).returncode != 0  # running, no --force
    runtime("kill", "v2", "TERM")
    _, _, exits = reaped.finish()
    assert exits == {gate: 143}  # sleep is not PID 1 in the guest: TERM ends it
    runtime("delete", "v2")
    assert not any(d.exists() for d in cgroups)
    runtime("delete", "--force", "v2")  # idempotent


def test_delete_force_of_running_vm_and_kill_of_created(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["sleep", "100"], annotations=VM)
    reaped = create(runtime, bundle, "v3", tmp_path / "pid")
    runtime.ids.append("v3")
    runtime("start", "v3")
    gate = int((tmp_path / "pid").read_text())
    runtime("delete", "--force", "v3")
    _, _, exits = reaped.finish()
    # The gate was killed; its QEMU, orphaned to the subreaper, died with it (PDEATHSIG).
    assert exits[gate] == -9 and set(exits.values()) == {-9}
    assert not (runtime.root / "bareboat" / "v3").exists()

    reaped = create(runtime, bundle, "v4", tmp_path / "pid4")
    runtime.ids.append("v4")
    gate = int((tmp_path / "pid4").read_text())
    runtime("kill", "v4", "KILL")  # created, never started
    _, _, exits = reaped.finish()
    assert exits[gate] == -9 and set(exits.values()) == {-9}
    assert runtime.state("v4")["status"] == "stopped"
    runtime("delete", "v4")


def test_hooks_run_in_order(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["true"], annotations=VM)
    log = tmp_path / "hooks.log"
    config = json.loads((bundle / "config.json").read_text())
    kinds = ("createRuntime", "prestart", "poststart", "poststop")
    config["hooks"] = {
        k: [{"path": "/bin/sh", "args": ["sh", "-c", f"echo {k} >> {log}"]}] for k in kinds
    }
    (bundle / "config.json").write_text(json.dumps(config))
    reaped = create(runtime, bundle, "v5", tmp_path / "pid")
    runtime.ids.append("v5")
    runtime("start", "v5")
    reaped.finish()
    runtime("delete", "v5")
    assert log.read_text().split() == list(kinds)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [(["/nonexistent"], 127, "no such file or directory"), (["/etc"], 126, "permission denied")],
)
def test_bad_command_fails_create_and_leaves_nothing(
    runtime: Runtime, tmp_path: Path, args: list[str], code: int, words: str
) -> None:
    bundle = make_bundle(tmp_path / "b", args, annotations=VM)
    res = runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "v6",
                  check=False)  # fmt: skip
    assert res.returncode != 0
    assert words in res.stderr.lower()
    assert not (runtime.root / "bareboat" / "v6.rec").exists()
    assert not (runtime.root / "bareboat" / "v6").exists()
    assert not (tmp_path / "pid").exists()
    del code  # the runtime exits 1 like runc; the client maps the words to 127/126


def test_guest_crash_is_reported_and_cleaned(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["true"], annotations=VM)
    config = json.loads((bundle / "config.json").read_text())
    # A kernel command line that makes the guest panic before the agent is up.
    config["annotations"]["io.bareboat.vm.cmdline"] = "rdinit=/nonexistent panic=-1"
    (bundle / "config.json").write_text(json.dumps(config))
    res = runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "v7",
                  check=False, timeout=120)  # fmt: skip
    assert res.returncode != 0
    assert "panic" in res.stderr.lower() or "stopped during boot" in res.stderr
    assert not (runtime.root / "bareboat" / "v7").exists()
    assert not os.path.exists(tmp_path / "pid")


@pytest.fixture
def overlay_bundle(tmp_path: Path) -> Iterator[Path]:
    """A bundle whose rootfs is an overlay of a busybox tree, as podman and containerd mount
    it; unmounted at the end."""
    base = make_bundle(tmp_path / "img", ["true"], annotations=VM)
    bundle = tmp_path / "b"
    (bundle / "rootfs").mkdir(parents=True)
    for d in ("upper", "work"):
        (tmp_path / d).mkdir()
    (bundle / "config.json").write_text((base / "config.json").read_text())
    opts = f"lowerdir={base / 'rootfs'},upperdir={tmp_path / 'upper'},workdir={tmp_path / 'work'}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(bundle / "rootfs")],
                   check=True)  # fmt: skip
    try:
        yield bundle
    finally:
        subprocess.run(["umount", "-l", str(bundle / "rootfs")], check=False)


def _run_in_vm(runtime: Runtime, bundle: Path, cid: str, args: list[str]) -> tuple[str, int, bool]:
    """The output and status of `args` in a VM, and whether it had a disk of its own."""
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = args
    (bundle / "config.json").write_text(json.dumps(config))
    pidfile = bundle.parent / f"{cid}.pid"
    reaped = create(runtime, bundle, cid, pidfile)
    runtime.ids.append(cid)
    gate = int(pidfile.read_text())
    private = any((runtime.root / "bareboat" / cid).glob("rootfs.*"))
    runtime("start", cid)
    out, _, exits = reaped.finish()
    runtime("delete", cid)
    return out, exits[gate], private


def test_rootfs_overlay_content_reaches_the_guest(
    runtime: Runtime, overlay_bundle: Path, tmp_path: Path
) -> None:
    rootfs = overlay_bundle / "rootfs"
    # Only mount-point placeholders in the upper dir: the image's cached disk serves.
    (rootfs / "etc" / "hosts").touch()
    out, code, private = _run_in_vm(runtime, overlay_bundle, "v8", ["sh", "-c", "echo ok"])
    assert (out, code, private) == ("ok\n", 0, False)
    # The client changed the tree (a file, a deletion): the VM sees exactly the merged view.
    (rootfs / "data.txt").write_text("from the client\n")
    (rootfs / "bin" / "ls").unlink()
    script = "cat /data.txt; test -e /bin/ls || echo no-ls"
    out, code, private = _run_in_vm(runtime, overlay_bundle, "v9", ["sh", "-c", script])
    assert (out, code, private) == ("from the client\nno-ls\n", 0, True)


def test_emptied_image_file_is_not_a_placeholder(
    runtime: Runtime, overlay_bundle: Path, tmp_path: Path
) -> None:
    # An empty file over a non-empty one of the image is a change, not a mount point.
    lower = tmp_path / "img" / "rootfs"
    (lower / "etc" / "motd").write_text("welcome\n")
    (overlay_bundle / "rootfs" / "etc" / "motd").write_text("")
    out, code, private = _run_in_vm(runtime, overlay_bundle, "v14",
                                    ["sh", "-c", "wc -c < /etc/motd"])  # fmt: skip
    assert (out.strip(), code, private) == ("0", 0, True)


def _console(path: Path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    return server


def _take_master(server: socket.socket) -> int:
    conn, _ = server.accept()
    with conn:
        _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    return fds[0]


def _set_size(master: int, rows: int, cols: int) -> None:
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _read_all(master: int, timeout: float = 30) -> str:
    out = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            continue
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: every slave end is closed
            break
        if not data:
            break
        out += data
    return out.decode(errors="replace").replace("\r", "")


def test_tty_size_and_resize_reach_the_guest(runtime: Runtime, tmp_path: Path) -> None:
    script = "busybox stty size; sleep 2; busybox stty size"
    bundle = make_bundle(tmp_path / "b", ["sh", "-c", script], annotations=VM, terminal=True)
    server = _console(tmp_path / "console.sock")
    reaped = Reaped(runtime, "create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"),
                    "--console-socket", str(server.getsockname()), "v10")  # fmt: skip
    runtime.ids.append("v10")
    master = _take_master(server)
    try:
        _set_size(master, 30, 90)  # as conmon does once it has the master
        runtime("start", "v10")
        time.sleep(1)
        _set_size(master, 40, 100)  # the gate gets SIGWINCH and resizes the guest's pty
        assert _read_all(master).split("\n")[:2] == ["30 90", "40 100"]
    finally:
        os.close(master)
        server.close()
    reaped.finish()
    runtime("delete", "v10")


def test_exec_tty_resize(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["sleep", "100"], annotations=VM)
    reaped = create(runtime, bundle, "v11", tmp_path / "pid")
    runtime.ids.append("v11")
    runtime("start", "v11")
    server = _console(tmp_path / "console.sock")
    pfile = tmp_path / "process.json"
    script = "sleep 1; busybox stty size; sleep 2; busybox stty size"
    pfile.write_text(json.dumps({"args": ["sh", "-c", script], "cwd": "/", "terminal": True}))
    execd = Reaped(runtime, "exec", "--detach", "--tty", "--console-socket",
                   str(server.getsockname()), "--pid-file", str(tmp_path / "exec.pid"),
                   "--process", str(pfile), "v11")  # fmt: skip
    master = _take_master(server)
    try:
        _set_size(master, 30, 90)
        time.sleep(2)
        _set_size(master, 40, 100)
        assert _read_all(master).split("\n")[:2] == ["30 90", "40 100"]
    finally:
        os.close(master)
        server.close()
    assert list(execd.finish()[2].values()) == [0]
    runtime("kill", "v11", "KILL")
    reaped.finish()
    runtime("delete", "v11")


def test_create_killed_mid_boot_leaves_no_vm(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["true"], annotations=VM)
    config = json.loads((bundle / "config.json").read_text())
    config["annotations"]["io.bareboat.vm.template"] = "off"  # a cold boot: time to kill it
    (bundle / "config.json").write_text(json.dumps(config))
    proc = subprocess.Popen([str(RUNTIME), "--root", str(runtime.root), "create", "--bundle",
                             str(bundle), "--pid-file", str(tmp_path / "pid"), "v12"])  # fmt: skip
    runtime.ids.append("v12")
    end = time.monotonic() + 30
    while not _procs(runtime, b"qemu-system") and time.monotonic() < end:
        time.sleep(0.01)
    assert _procs(runtime, b"qemu-system"), "QEMU never started"
    proc.kill()
    proc.wait()
    end = time.monotonic() + 10
    while _procs(runtime, b"") and time.monotonic() < end:
        time.sleep(0.05)
    assert _procs(runtime, b"") == []  # the gate and QEMU died with create
    state = json.loads((runtime.root / "bareboat" / "v12" / "state.json").read_text())
    runtime("delete", "--force", "v12")
    assert not (runtime.root / "bareboat" / "v12").exists()
    assert not any(Path(d).exists() for d in state["cgroups"])  # the gate had made them


def _in_or_below(pid: int, cgroup: Path) -> bool:
    """Whether `pid` is in the cgroup directory `cgroup` or a descendant of it."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        path = Path(line.split(":", 2)[2])
        while str(path) != "/":
            if str(cgroup).endswith(str(path)):
                return True
            path = path.parent
    return False


def _procs(runtime: Runtime, name: bytes) -> list[int]:
    """Live (not zombie) processes whose argv names this test's runtime root (and `name`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if os.fsencode(runtime.root) in argv and name in argv and state != "Z":
            found.append(int(entry.name))
    return found


def test_installed_vm_name_picks_microvm(runtime: Runtime, tmp_path: Path) -> None:
    # The `bareboat-runtime-vm` script the package installs: no annotation, still a VM.
    bundle = make_bundle(tmp_path / "b", ["true"])
    vm_runtime = RUNTIME.with_name("bareboat-runtime-vm")
    subprocess.run([str(vm_runtime), "--root", str(runtime.root), "create", "--bundle",
                    str(bundle), "--pid-file", str(tmp_path / "pid"), "v13"], check=True,
                   timeout=60)  # fmt: skip
    runtime.ids.append("v13")
    assert (runtime.root / "bareboat" / "v13.rec").read_text().split("\n")[0] == "microvm"
    assert len(json.loads(runtime("ps", "--format", "json", "v13").stdout)) == 2  # gate, QEMU
    runtime("delete", "--force", "v13")


HOOK_VETH = r"""
set -e
pid=$(sed 's/.*"pid": *\([0-9]*\).*/\1/')
ip link add {host} type veth peer name {ctr}
ip link set {ctr} netns "$pid"
ip addr add 10.199.{n}.1/24 dev {host}
ip link set {host} up
nsenter --net=/proc/$pid/ns/net ip addr add 10.199.{n}.2/24 dev {ctr}
nsenter --net=/proc/$pid/ns/net ip link set {ctr} up
"""


@contextlib.contextmanager
def veth_hooked_bundle(path: Path, script: str, n: int) -> Iterator[Path]:
    """A VM bundle asking for a new network namespace, with docker's kind of prestart hook:
    a veth whose host end is 10.199.n.1 and whose container end, in the namespace of the pid
    the hook is given, 10.199.n.2. `script` may name `{n}`. The veth goes at the end."""
    bundle = make_bundle(path, ["sh", "-c", script.format(n=n)], annotations=VM)
    config = json.loads((bundle / "config.json").read_text())
    hook = HOOK_VETH.format(host=f"bbh{n}", ctr=f"bbc{n}", n=n)
    config["hooks"] = {"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", hook]}]}
    (bundle / "config.json").write_text(json.dumps(config))
    try:
        yield bundle
    finally:
        subprocess.run(["ip", "link", "del", f"bbh{n}"], capture_output=True, check=False)


def test_new_network_namespace_configured_by_a_hook(runtime: Runtime, tmp_path: Path) -> None:
    # As docker does it: config.json asks for a new network namespace, and a prestart hook
    # configures the namespace of the pid it is given. That is the gate's own (never the
    # host's), the VM's QEMU runs in it, and the guest reaches out through it.
    n = os.getpid() % 200
    server = OneShotServer(b"hello-through-the-hook\n")
    script = f"nc 10.199.{{n}}.1 {server.port}"
    with veth_hooked_bundle(tmp_path / "b", script, n) as bundle:
        try:
            reaped = create(runtime, bundle, "v15", tmp_path / "pid")
            runtime.ids.append("v15")
            gate = int((tmp_path / "pid").read_text())
            assert os.stat(f"/proc/{gate}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
            runtime("start", "v15")
            out, err, exits = reaped.finish()
            server.close(10)
        finally:
            server.close()
    assert (out, exits[gate]) == ("hello-through-the-hook\n", 0), err
    assert server.peers == [f"10.199.{n}.2"]  # from the container's namespace, not the host's
    runtime("delete", "v15")


def test_guest_listening_port_is_reached_at_the_containers_address(
    runtime: Runtime, tmp_path: Path
) -> None:
    # A port mapping of the client's (docker -p, a Service) ends at the container's address:
    # the port the guest listens on must answer there, without any annotation.
    n = (os.getpid() + 1) % 200
    script = "echo served-from-the-vm | nc -l -p 8080"
    with veth_hooked_bundle(tmp_path / "b", script, n) as bundle:
        reaped = create(runtime, bundle, "v16", tmp_path / "pid")
        runtime.ids.append("v16")
        gate = int((tmp_path / "pid").read_text())
        runtime("start", "v16")
        assert connect_and_read((f"10.199.{n}.2", 8080)) == b"served-from-the-vm\n"
        _, err, exits = reaped.finish()
    assert exits[gate] == 0, err
    runtime("delete", "v16")


@pytest.mark.slow
def test_console_flood_is_capped_under_the_gate(runtime: Runtime, tmp_path: Path) -> None:
    """The guest's root writes its console without end: the gate's QEMU keeps the newest
    MiB in console.log and the one before in console.log.1 (it was one file that grew)."""
    from bareboat.backends.microvm.consolelog import CONSOLE_LOG_MAX

    flood = "/bin/busybox yes console-flood | /bin/busybox head -c 1500000 > /dev/console"
    bundle = make_bundle(tmp_path / "b", ["sh", "-c", f"{flood}; sleep 100"], annotations=VM)
    reaped = create(runtime, bundle, "v9", tmp_path / "pid")
    runtime.ids.append("v9")
    runtime("start", "v9")
    vm = runtime.root / "bareboat" / "v9" / "vm"
    try:
        deadline = time.monotonic() + 90
        while not (vm / "console.log.1").exists():
            assert time.monotonic() < deadline, sorted(p.name for p in vm.iterdir())
            time.sleep(0.2)
        time.sleep(2)
        logs = {p.name: p.stat() for p in vm.glob("console.log*") if p.is_file()}
        assert sorted(logs) == ["console.log", "console.log.1"]
        for st in logs.values():
            assert st.st_size <= CONSOLE_LOG_MAX and st.st_mode & 0o777 == 0o600
        assert b"console-flood\n" in (vm / "console.log.1").read_bytes()[-100:].replace(b"\r", b"")
    finally:
        runtime("delete", "--force", "v9", check=False)
        reaped.finish()
