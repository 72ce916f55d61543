"""`wasm` isolation under bareboat-runtime: the bundle's entrypoint is a WASI module in its
rootfs. Driven directly (create/start/state/kill/delete, the exit code and stdio the client's
subreaper sees, a pty through --console-socket, bad modules), then through real podman and
real `ctr run --runc-binary`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from tests.support.imagebuild import Entry, Image, write_image
from tests.wasm import wat

from .clients import Containerd, Podman, containerd, podman
from .conftest import RUNTIME, Runtime, make_bundle

WASM = {"io.bareboat.isolation": "wasm"}


# --- modules -------------------------------------------------------------------------------


def talker(*, code: int = 0, sleep_s: float = 0) -> bytes:
    """Writes `out` to stdout and `err` to stderr, sleeps in the host (poll_oneoff on the
    monotonic clock, so no CPU is burnt), then exits with `code`."""
    wat_text = f"""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 1000) "out\\n")
  (data (i32.const 1010) "err\\n")
  (func $say (param $fd i32) (param $ptr i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (i32.const 4))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (call $say (i32.const 1) (i32.const 1000))
    (call $say (i32.const 2) (i32.const 1010))
    ;; one clock subscription at 64: tag 0 (clock), clock id 1 (monotonic), relative timeout
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const {int(sleep_s * 1e9)}))
    (if (i64.ne (i64.load (i32.const 88)) (i64.const 0))
      (then (drop (call $poll (i32.const 64) (i32.const 200) (i32.const 1) (i32.const 300)))))
    (call $proc_exit (i32.const {code}))))"""
    return bytes(wasmtime.wat2wasm(wat_text))


def no_start() -> bytes:
    return bytes(wasmtime.wat2wasm('(module (func (export "main")))'))


# --- direct runtime calls --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def wasm_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Compiled modules go to a cache of the test's own (the runtime reads BAREBOAT_CACHE)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BAREBOAT_CACHE", str(cache))
    return cache


def wasm_bundle(
    path: Path, module: bytes, args: list[str] | None = None, *, terminal: bool = False
) -> Path:
    bundle = make_bundle(path, args or ["/app/m.wasm"], annotations=WASM, terminal=terminal)
    (bundle / "rootfs" / "app").mkdir()
    (bundle / "rootfs" / "app" / "m.wasm").write_bytes(module)
    return bundle


# A stand-in for conmon / the containerd shim: a child subreaper that runs create and start,
# then waits for the gate (orphaned by create, so reparented to it) and reports its status.
CLIENT = """
import ctypes, json, os, subprocess, sys
rt, bundle, cid, pidfile, out, err, kill = json.loads(sys.argv[1])
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
with open(out, "w") as o, open(err, "w") as e:
    rc = subprocess.run([*rt, "create", "--bundle", bundle, "--pid-file", pidfile, cid],
                        stdin=subprocess.DEVNULL, stdout=o, stderr=e).returncode
if rc:
    print(json.dumps({"create": rc}))
    sys.exit()
pid = int(open(pidfile).read())
subprocess.run([*rt, "start", cid], check=True)
if kill:
    subprocess.run([*rt, "kill", cid, kill], check=True)
_, status = os.waitpid(pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status)}))
"""


def client_run(
    runtime: Runtime, bundle: Path, cid: str, tmp: Path, *, kill: str = ""
) -> tuple[dict[str, int], str, str]:
    """({"code": gate's exit code} or {"create": rc}, the workload's stdout, its stderr)."""
    out, err = tmp / f"{cid}.out", tmp / f"{cid}.err"
    rt = [str(RUNTIME), "--root", str(runtime.root), "--log", str(runtime.log)]
    spec = [rt, str(bundle), cid, str(tmp / f"{cid}.pid"), str(out), str(err), kill]
    runtime.ids.append(cid)
    res = subprocess.run(
        [sys.executable, "-c", CLIENT, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(res.stdout), out.read_text(), err.read_text()


def proc_state(pid: int) -> str:
    """The process's state letter (R, S, T, Z...), "" when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ""
    return stat[stat.rindex(")") + 2]


def assert_gone(runtime: Runtime, cid: str) -> None:
    assert not (runtime.root / "bareboat" / cid).exists()
    assert not (runtime.root / "bareboat" / f"{cid}.rec").exists()


@pytest.mark.parametrize(
    ("module", "want"),
    [
        (talker(code=0), (0, "out\n", "err\n")),
        (talker(code=7), (7, "out\n", "err\n")),
        (wat.trap(), (134, "about to trap\n", "bareboat: wasm trap: ")),
    ],
    ids=["exit0", "exit7", "trap"],
)
def test_exit_code_and_stdio_reach_the_client(
    runtime: Runtime, tmp_path: Path, module: bytes, want: tuple[int, str, str]
) -> None:
    bundle = wasm_bundle(tmp_path / "b", module)
    status, out, err = client_run(runtime, bundle, "w1", tmp_path)
    assert (status.get("code"), out) == want[:2]
    assert err.startswith(want[2])
    runtime("delete", "w1")
    assert_gone(runtime, "w1")


def test_args_and_env_from_config(runtime: Runtime, tmp_path: Path) -> None:
    bundle = wasm_bundle(tmp_path / "b", wat.hello(), ["/app/m.wasm", "one", "two words"])
    status, out, _ = client_run(runtime, bundle, "w2", tmp_path)
    assert status == {"code": 0}
    config = json.loads((bundle / "config.json").read_text())
    env = config["process"]["env"]
    assert out.splitlines() == ["hello", "/app/m.wasm", "one", "two words", *env]
    runtime("delete", "w2")


def test_rootfs_volume_and_timeout_from_config(runtime: Runtime, tmp_path: Path) -> None:
    """The rootfs is the module's `/` (read-only), a directory bind its volume, and the
    timeout annotation ends a module that runs too long with 124."""
    (tmp_path / "vol").mkdir()
    (tmp_path / "vol" / "data.txt").write_text("from the volume\n")
    bundle = wasm_bundle(tmp_path / "b", wat.cat(4, "data.txt"))
    (bundle / "rootfs" / "app" / "cat-root.wasm").write_bytes(wat.cat(3, "etc/motd"))
    (bundle / "rootfs" / "app" / "write-root.wasm").write_bytes(wat.write_file(3, "x", b"x"))
    (bundle / "rootfs" / "app" / "sleep.wasm").write_bytes(talker(sleep_s=100))
    (bundle / "rootfs" / "app" / "spin.wasm").write_bytes(wat.spin())
    (bundle / "rootfs" / "etc" / "motd").write_text("from the rootfs\n")
    config = json.loads((bundle / "config.json").read_text())
    config["mounts"].append(
        {"destination": "/vol", "type": "bind", "source": str(tmp_path / "vol"),
         "options": ["rbind", "ro"]}
    )  # fmt: skip
    (bundle / "config.json").write_text(json.dumps(config))
    assert client_run(runtime, bundle, "v1", tmp_path)[:2] == ({"code": 0}, "from the volume\n")

    def rerun(cid: str, args: list[str], **annotations: str) -> tuple[dict[str, int], str]:
        config["process"]["args"] = args
        config["annotations"] = {**WASM, **annotations}
        (bundle / "config.json").write_text(json.dumps(config))
        return client_run(runtime, bundle, cid, tmp_path)[:2]

    assert rerun("v2", ["/app/cat-root.wasm"]) == ({"code": 0}, "from the rootfs\n")
    assert rerun("v3", ["/app/write-root.wasm"]) == ({"code": wat.ERRNO_PERM}, "")
    start = time.monotonic()
    # Asleep in a host call, where the epoch deadline cannot reach it: the gate ends it.
    code, _ = rerun("v4", ["/app/sleep.wasm"], **{"io.bareboat.wasm.timeout": "0.5"})
    assert code == {"code": 124} and time.monotonic() - start < 30
    assert (tmp_path / "v4.err").read_text() == "err\nbareboat: timed out after 0.5s\n"
    code, _ = rerun("v5", ["/app/spin.wasm"], **{"io.bareboat.wasm.timeout": "0.5"})
    assert code == {"code": 124}
    for cid in ("v1", "v2", "v3", "v4", "v5"):
        runtime("delete", cid)


def test_kill_ends_the_module_with_the_signal(runtime: Runtime, tmp_path: Path) -> None:
    bundle = wasm_bundle(tmp_path / "b", talker(sleep_s=100))
    status, _, _ = client_run(runtime, bundle, "w3", tmp_path, kill="TERM")
    # The gate dies of the signal itself: conmon reports 143, as for a native process.
    assert status == {"code": -15}
    assert runtime.wait_state("w3", "stopped")["status"] == "stopped"
    runtime("delete", "w3")
    assert_gone(runtime, "w3")


def test_lifecycle(runtime: Runtime, tmp_path: Path) -> None:
    bundle = wasm_bundle(tmp_path / "b", talker(sleep_s=100))
    config = json.loads((bundle / "config.json").read_text())
    log = tmp_path / "hooks.log"
    config["hooks"] = {
        k: [{"path": "/bin/sh", "args": ["sh", "-c", f"echo {k} >> {log}"]}]
        for k in ("createRuntime", "prestart", "poststart", "poststop")
    }
    (bundle / "config.json").write_text(json.dumps(config))
    pidfile = tmp_path / "pid"
    runtime("create", "--bundle", str(bundle), "--pid-file", str(pidfile), "w4")
    runtime.ids.append("w4")
    pid = int(pidfile.read_text())
    st = runtime.state("w4")
    assert (st["status"], st["pid"]) == ("created", pid)
    assert log.read_text().split() == ["createRuntime", "prestart"]

    runtime("start", "w4")
    assert runtime.wait_state("w4", "running")["status"] == "running"
    assert json.loads(runtime("ps", "--format", "json", "w4").stdout) == [pid]
    listed = json.loads(runtime("list", "--format", "json").stdout)
    assert [(c["id"], c["status"], c["pid"]) for c in listed] == [("w4", "running", pid)]
    runtime("pause", "w4")
    assert runtime.state("w4")["status"] == "paused"
    assert proc_state(pid) == "T"
    runtime("resume", "w4")
    assert runtime.state("w4")["status"] == "running"

    res = runtime("exec", "w4", "sh", check=False)
    assert res.returncode != 0 and "exec is not possible with wasm isolation" in res.stderr
    res = runtime("update", "--resources", "-", "w4", input="{}", check=False)
    assert res.returncode != 0 and "nothing can be updated" in res.stderr
    assert runtime("delete", "w4", check=False).returncode != 0  # running, no --force

    runtime("kill", "w4", "KILL")
    assert runtime.wait_state("w4", "stopped")["status"] == "stopped"
    res = runtime("kill", "w4", "KILL", check=False)
    assert res.returncode != 0 and "container not running" in res.stderr  # runc's words
    runtime("delete", "w4")
    assert_gone(runtime, "w4")
    assert log.read_text().split() == ["createRuntime", "prestart", "poststart", "poststop"]
    runtime("delete", "--force", "w4")  # idempotent


def test_delete_force_of_created_and_running(runtime: Runtime, tmp_path: Path) -> None:
    bundle = wasm_bundle(tmp_path / "b", talker(sleep_s=100))
    pids = []
    for cid in ("w5", "w6"):
        runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / cid), cid)
        runtime.ids.append(cid)
        pids.append(int((tmp_path / cid).read_text()))
    runtime("start", "w6")
    assert runtime.wait_state("w6", "running")["status"] == "running"
    for cid in ("w5", "w6"):
        runtime("delete", "--force", cid)
        assert_gone(runtime, cid)
    for pid in pids:
        assert proc_state(pid) in ("", "Z")


def test_terminal_through_console_socket(runtime: Runtime, tmp_path: Path) -> None:
    bundle = wasm_bundle(tmp_path / "b", talker(code=3), terminal=True)
    sock_path = tmp_path / "console.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(str(sock_path))
        srv.listen(1)
        srv.settimeout(30)
        runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"),
                "--console-socket", str(sock_path), "w7")  # fmt: skip
        runtime.ids.append("w7")
        conn, _ = srv.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    master = fds[0]
    try:
        runtime("start", "w7")
        got = b""
        while b"err" not in got:
            try:
                data = os.read(master, 1024)
            except OSError:  # EIO: the slave side closed
                break
            if not data:
                break
            got += data
    finally:
        os.close(master)
    assert got.replace(b"\r", b"") == b"out\nerr\n"  # both streams on the terminal
    assert runtime.wait_state("w7", "stopped")["status"] == "stopped"
    runtime("delete", "w7")


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        (b"not wasm at all", None, "is not a WebAssembly module (bad magic)"),
        (b"\0asm\x01\0\0\0\x99garbage", None, "cannot compile Wasm module"),
        (no_start(), None, "no _start function"),
        (talker(), ["/bin/busybox"], "is not a Wasm module (expected a *.wasm entrypoint)"),
        (talker(), ["/app/missing.wasm"], "not found in the image"),
    ],
    ids=["magic", "compile", "no-start", "native", "missing"],
)
def test_bad_module_is_one_clear_line_and_leaves_nothing(
    runtime: Runtime, tmp_path: Path, module: bytes, args: list[str] | None, message: str
) -> None:
    bundle = wasm_bundle(tmp_path / "b", module, args)
    pidfile = tmp_path / "pid"
    res = runtime("create", "--bundle", str(bundle), "--pid-file", str(pidfile), "w8",
                  check=False)  # fmt: skip
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bareboat-runtime: wasm isolation: ")
    assert message in lines[0]
    assert_gone(runtime, "w8")
    assert not pidfile.exists()
    assert list((runtime.root / "bareboat").iterdir()) == []


def test_invoked_name_picks_wasm(runtime: Runtime, tmp_path: Path) -> None:
    """`bareboat-runtime-wasm` (a symlink, one per RuntimeClass) needs no annotation."""
    bundle = make_bundle(tmp_path / "b", ["/app/m.wasm"])
    (bundle / "rootfs" / "app").mkdir()
    (bundle / "rootfs" / "app" / "m.wasm").write_bytes(talker(code=5))
    link = tmp_path / "bin" / "bareboat-runtime-wasm"
    link.parent.mkdir()
    link.symlink_to(RUNTIME)
    err = tmp_path / "create.err"
    with err.open("w") as f:  # a file, not a pipe: the gate keeps the stdio it inherits
        res = subprocess.run(
            [str(link), "--root", str(runtime.root), "create", "--bundle", str(bundle),
             "--pid-file", str(tmp_path / "pid"), "n1"],
            stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=60,
        )  # fmt: skip
    runtime.ids.append("n1")
    assert res.returncode == 0, err.read_text()
    assert (runtime.root / "bareboat" / "n1.rec").read_text() == f"wasm\n{bundle}\n"
    runtime("start", "n1")
    assert runtime.wait_state("n1", "stopped")["status"] == "stopped"
    runtime("delete", "n1")
    assert_gone(runtime, "n1")


def test_control_commands_do_not_import_wasmtime(runtime: Runtime, tmp_path: Path) -> None:
    bundle = wasm_bundle(tmp_path / "b", talker(sleep_s=100))
    runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "w9")
    runtime.ids.append("w9")
    probe = (
        "import sys; from bareboat.runtime.main import main; rc = main(sys.argv[1:]); "
        "sys.stdout.flush(); assert 'wasmtime' not in sys.modules, 'wasmtime imported'; "
        "sys.exit(rc)"
    )
    root = ["--root", str(runtime.root)]
    for args in (["state", "w9"], ["start", "w9"], ["kill", "w9", "KILL"], ["delete", "w9"]):
        if args[0] == "delete":
            runtime.wait_state("w9", "stopped")
        res = subprocess.run([sys.executable, "-c", probe, *root, *args],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert res.returncode == 0, (args, res.stderr)
    assert_gone(runtime, "w9")


# --- podman and containerd -------------------------------------------------------------------


@pytest.fixture(scope="module")
def wasm_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compat image: its entrypoint is a module in an otherwise empty root filesystem."""
    root = tmp_path_factory.mktemp("wasm-layout")
    app = [
        Entry("app", "dir", mode=0o755),
        Entry("app/talk.wasm", data=talker(code=7), mode=0o755),
        Entry("app/sleep.wasm", data=talker(sleep_s=100), mode=0o755),
        Entry("app/trap.wasm", data=wat.trap(), mode=0o755),
        Entry("tmp", "dir", mode=0o1777),
    ]
    image = Image(layers=[app], entrypoint=["/app/talk.wasm"], cmd=None,
                  labels={"module.wasm.image/variant": "compat"})  # fmt: skip
    write_image(root, image)
    return root


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wasm-cache")


@pytest.fixture(scope="module")
def pm(
    tmp_path_factory: pytest.TempPathFactory, wasm_layout: Path, module_cache: Path
) -> Iterator[Podman]:
    with podman(tmp_path_factory.mktemp("pmw"), wasm_layout) as p:
        # podman hands the runtime none of our environment: its wrapper names the cache too.
        script = Path(p.wrappers["bareboat-runtime"])
        body = script.read_text().replace("exec ", f"BAREBOAT_CACHE={module_cache} exec ", 1)
        script.write_text(body)
        yield p


def ann() -> list[str]:
    return ["--annotation", "io.bareboat.isolation=wasm"]


def podman_records(pm: Podman) -> list[Path]:
    return list((pm.rtroot / "bareboat-runtime" / "bareboat").iterdir())


def test_podman_run_exit_code_and_streams(pm: Podman, module_cache: Path) -> None:
    res = pm("run", "--rm", "--network", "none", *ann(), pm.image, check=False)
    assert (res.returncode, res.stdout, res.stderr) == (7, "out\n", "err\n")
    assert list(module_cache.rglob("*.cwasm"))  # compiled into the cache the wrapper names
    res = pm("run", "--rm", "--network", "none", *ann(), "--entrypoint", "/app/trap.wasm",
             pm.image, check=False)  # fmt: skip
    assert (res.returncode, res.stdout) == (134, "about to trap\n")
    assert "wasm trap" in res.stderr
    assert podman_records(pm) == []


def test_podman_tty(pm: Podman) -> None:
    res = pm("run", "--rm", "-t", "--network", "none", *ann(), pm.image, check=False)
    assert res.returncode == 7
    assert res.stdout.replace("\r", "") == "out\nerr\n"


def test_podman_detached_pause_exec_stop_rm(pm: Podman) -> None:
    cid = pm("run", "-d", "--network", "none", *ann(), "--entrypoint", "/app/sleep.wasm",
             pm.image).stdout.strip()  # fmt: skip
    try:
        assert pm("inspect", "--format", "{{.State.Status}}", cid).stdout.strip() == "running"
        pm("pause", cid)
        assert pm("inspect", "--format", "{{.State.Status}}", cid).stdout.strip() == "paused"
        pm("unpause", cid)
        res = pm("exec", cid, "sh", check=False)
        assert res.returncode != 0 and "exec is not possible with wasm isolation" in res.stderr
        pm("stop", "-t", "1", cid)
        state = json.loads(pm("inspect", cid).stdout)[0]["State"]
        # The module does not catch SIGTERM (no signals in WASI): it ends by it, at once.
        assert (state["Status"], state["ExitCode"]) == ("exited", 143)
    finally:
        pm("rm", "--force", cid, check=False)
    assert podman_records(pm) == []


def test_podman_native_entrypoint_is_a_clear_error(pm: Podman) -> None:
    res = pm("run", "--rm", "--network", "none", *ann(), "--entrypoint", "/bin/sh", pm.image,
             check=False)  # fmt: skip
    assert res.returncode != 0
    assert "wasm isolation: /bin/sh is not a Wasm module" in res.stderr
    assert podman_records(pm) == []


@pytest.fixture(scope="module")
def cd(
    tmp_path_factory: pytest.TempPathFactory, wasm_layout: Path, module_cache: Path
) -> Iterator[Containerd]:
    # The shim runs the runtime with containerd's environment, which names the cache.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BAREBOAT_CACHE", str(module_cache))
        with containerd(tmp_path_factory.mktemp("cdw"), wasm_layout) as c:
            yield c


def runtime_flags(cd: Containerd) -> list[str]:
    """The shim passes `--root` itself (from --runc-root), so the binary can be the real one."""
    return [
        "--runc-binary", str(RUNTIME),
        "--runc-root", str(cd.base / "runc-root" / "bareboat-runtime"),
        "--fifo-dir", str(cd.base / "fifo"),
    ]  # fmt: skip


def ctr_records(cd: Containerd) -> list[Path]:
    return list((cd.base / "runc-root" / "bareboat-runtime" / "default" / "bareboat").iterdir())


def test_ctr_run_exit_code_and_output(cd: Containerd) -> None:
    res = cd("run", "--rm", *runtime_flags(cd), *ann(), cd.image, "w1", check=False)
    assert (res.returncode, res.stdout, res.stderr) == (7, "out\n", "err\n")
    assert ctr_records(cd) == []


def test_ctr_detached_kill(cd: Containerd) -> None:
    cd("run", "-d", *runtime_flags(cd), *ann(), cd.image, "w2", "/app/sleep.wasm")
    try:
        assert "RUNNING" in cd("tasks", "list").stdout
        fifo = str(cd.base / "fifo")
        res = cd("tasks", "exec", "--fifo-dir", fifo, "--exec-id", "e1", "w2", "sh",
                 check=False)  # fmt: skip
        assert res.returncode != 0
        cd("tasks", "kill", "--signal", "SIGKILL", "w2")
        cd("tasks", "delete", "w2", check=False, timeout=30)
    finally:
        cd("tasks", "delete", "--force", "w2", check=False)
        cd("containers", "delete", "w2", check=False)
    assert "w2" not in cd("containers", "list", "--quiet").stdout.split()
    assert ctr_records(cd) == []
