"""Fixtures of the runtime tests: the installed `bareboat-runtime`, a busybox bundle, and
a runtime root of the test's own."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.imagebuild import BUSYBOX

from .pidns import PidNamespace

RUNTIME = Path(sys.executable).parent / "bareboat-runtime"
SCHEMAS = Path("/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema")


def need_runc() -> str:
    path = shutil.which("runc") or ("/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else "")
    if not path:
        pytest.skip("runc is not installed")
    if os.geteuid() != 0:
        pytest.skip("runc containers need root here")
    return path


@pytest.fixture
def rt_root(tmp_path: Path) -> Path:
    return tmp_path / "rtroot"


def make_bundle(
    path: Path,
    args: list[str],
    *,
    annotations: dict[str, str] | None = None,
    terminal: bool = False,
) -> Path:
    """A bundle made by `runc spec` (so the config is the reference runtime's default) with a
    busybox rootfs."""
    runc = need_runc()
    path.mkdir(parents=True)
    rootfs = path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    for d in ("proc", "sys", "dev", "tmp", "etc"):
        (rootfs / d).mkdir()
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in ("sh", "echo", "sleep", "cat", "true", "ps", "ls", "id", "pwd", "env"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    subprocess.run([runc, "spec", "--bundle", str(path)], check=True, timeout=30)
    config = json.loads((path / "config.json").read_text())
    config["process"]["args"] = args
    config["process"]["terminal"] = terminal
    config["root"]["readonly"] = False
    if annotations:
        config["annotations"] = annotations
    (path / "config.json").write_text(json.dumps(config))
    return path


class Runtime:
    """Calls the installed bareboat-runtime with a root of the test's own; deletes every
    container it created when the test ends."""

    def __init__(self, root: Path, log: Path, prefix: tuple[str, ...] = ()) -> None:
        self.root = root
        self.log = log
        self.prefix = prefix  # e.g. nsenter into a PID namespace of the test's own
        self.ids: list[str] = []

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        # Files, not pipes: a created container keeps its stdio open (as with conmon),
        # so reading a pipe to EOF would wait for the workload.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.run(
                [
                    *self.prefix,
                    str(RUNTIME),
                    "--root",
                    str(self.root),
                    "--log",
                    str(self.log),
                    "--log-format=json",
                    *args,
                ],
                stdout=out,
                stderr=err,
                text=True,
                timeout=timeout,
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
            out.seek(0)
            err.seek(0)
            res = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
        if check and res.returncode != 0:
            raise AssertionError(
                f"bareboat-runtime {' '.join(args)}: rc={res.returncode} stderr={res.stderr!r}"
            )
        return res

    def state(self, cid: str) -> dict[str, object]:
        data = json.loads(self("state", cid).stdout)
        assert isinstance(data, dict)
        return data

    def wait_state(self, cid: str, want: str, timeout: float = 10) -> dict[str, object]:
        """The container's state once its status is `want`, or the last one after `timeout`."""
        end = time.monotonic() + timeout
        while True:
            st = self.state(cid)
            if st["status"] == want or time.monotonic() > end:
                return st
            time.sleep(0.02)

    def cleanup(self) -> None:
        for cid in self.ids:
            self("delete", "--force", cid, check=False)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    need_runc()
    rt = Runtime(tmp_path / "rtroot", tmp_path / "runtime.log")
    yield rt
    rt.cleanup()


@pytest.fixture
def ns_runtime(tmp_path: Path) -> Iterator[tuple[Runtime, PidNamespace]]:
    """A Runtime whose calls run in a PID namespace of the test's own (see pidns.py)."""
    need_runc()
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("needs util-linux unshare and nsenter")
    ns = PidNamespace()
    rt = Runtime(tmp_path / "rtroot", tmp_path / "runtime.log", prefix=ns.enter)
    try:
        yield rt, ns
    finally:
        try:
            rt.cleanup()
        finally:
            ns.close()


def cpu_quota(cgroup: Path) -> tuple[int, int]:
    """A cgroup's CPU quota and period, from cgroup v2 or v1 files."""
    if (cgroup / "cpu.max").exists():
        quota, period = (cgroup / "cpu.max").read_text().split()
        return int(quota), int(period)
    return (int((cgroup / "cpu.cfs_quota_us").read_text()),
            int((cgroup / "cpu.cfs_period_us").read_text()))  # fmt: skip


class OneShotServer:
    """A TCP server on every host address that answers one connection with `reply` and
    records where it came from (to tell a container's address from the host's)."""

    def __init__(self, reply: bytes) -> None:
        import socket
        import threading

        self.reply = reply
        self.server = socket.create_server(("0.0.0.0", 0))
        self.server.settimeout(60)
        self.port: int = self.server.getsockname()[1]
        self.peers: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, addr = self.server.accept()
            with conn:
                self.peers.append(addr[0])
                conn.sendall(self.reply)

    def close(self, timeout: float = 30) -> None:
        self.thread.join(timeout)
        self.server.close()


def connect_and_read(addr: tuple[str, int], timeout: float = 60) -> bytes:
    """What a server at `addr` sends, retrying while it is not (yet) reachable."""
    end = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(addr, timeout=5) as conn:
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                if data:
                    return data
        except OSError:
            pass
        # Refused or reset until the guest listens and its port is forwarded.
        if time.monotonic() > end:
            raise AssertionError(f"nothing served at {addr} in {timeout:g}s")
        time.sleep(0.2)


# What every client's exit-code-and-streams test runs (docker, podman, ctr, the runtime's own).
TALKER = "echo out; echo err >&2; exit 7"


def assert_same_as_reference(
    ours: subprocess.CompletedProcess[str], ref: subprocess.CompletedProcess[str]
) -> None:
    """A client's run of TALKER through bareboat-runtime: exit 7 with its streams, and the
    same as through the reference runtime (runc)."""
    got = (ours.returncode, ours.stdout, ours.stderr)
    assert got == (7, "out\n", "err\n")
    assert got == (ref.returncode, ref.stdout, ref.stderr)
