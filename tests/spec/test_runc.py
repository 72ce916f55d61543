"""The oracle that matters most: real `runc run` accepts our config.json and does what it says.

The bundle's rootfs is the busybox test image unpacked by umoci (a tool no one here wrote).
crun runs the same bundles too, with cgroup2 hidden from it on hybrid-cgroup hosts (DESIGN.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bareboat.images.model import ImageConfig
from bareboat.paths import Roots
from bareboat.spec.builder import build_spec, exec_process, write_bundle
from bareboat.spec.options import RunOptions
from bareboat.spec.parse import parse_memory, parse_tmpfs, parse_volume
from bareboat.spec.users import resolve_user
from tests.spec.schema import validate_config

IMAGE = ImageConfig(cmd=("/bin/sh",), env=("PATH=/usr/local/bin:/usr/bin:/bin",))


@dataclass
class Runc:
    bundle: Path
    state: Path  # runc --root: per test, never /run/runc
    runtime: str = "runc"

    def _argv(self, *args: str) -> list[str]:
        argv = [self.runtime, "--root", str(self.state), *args]
        if self.runtime == "crun" and os.path.ismount("/sys/fs/cgroup/unified"):
            # crun 1.8 refuses hybrid cgroups; in a private mount namespace, hide cgroup2.
            script = 'umount /sys/fs/cgroup/unified && exec "$@"'
            return [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                *argv,
            ]
        return argv

    def run(
        self, options: RunOptions, config: ImageConfig = IMAGE
    ) -> subprocess.CompletedProcess[str]:
        cid = "bbspec-" + uuid.uuid4().hex[:12]
        etc = self.bundle / "etc"
        spec = build_spec(
            config,
            options,
            rootfs=self.bundle / "rootfs",
            container_id=cid,
            root_path="rootfs",
            etc_dir=etc,
        )
        validate_config(spec)
        write_bundle(self.bundle, spec, etc_dir=etc)
        argv = self._argv("run", "--bundle", str(self.bundle), cid)
        try:
            return subprocess.run(
                argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
            )
        finally:
            subprocess.run(
                self._argv("delete", "--force", cid),
                capture_output=True,
                timeout=60,
            )


@pytest.fixture
def runc(roots: Roots, busybox_layout: Path, tmp_path: Path) -> Iterator[Runc]:
    for tool in ("runc", "umoci"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if os.geteuid() != 0:
        pytest.skip("runc needs root here")
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{busybox_layout}:latest", str(bundle)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    yield Runc(bundle, roots.state / "runc")


def test_echo_and_exit_code(runc: Runc) -> None:
    r = runc.run(RunOptions(command=("sh", "-c", "echo hello; echo oops >&2; exit 3")))
    assert (r.returncode, r.stdout, r.stderr) == (3, "hello\n", "oops\n")


def test_user_by_name_gets_groups(runc: Runc) -> None:
    r = runc.run(RunOptions(command=("id",), user="app"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "uid=1000(app) gid=1000(app) groups=50(staff)"


def test_image_entrypoint_env_workdir_hostname(runc: Runc) -> None:
    config = ImageConfig(
        entrypoint=("/bin/sh", "-c"),
        cmd=("exit 9",),
        env=("PATH=/bin", "FROM_IMAGE=1"),
        workdir="/tmp",
    )
    script = 'echo "$(pwd) $FROM_IMAGE $A $HOME $(hostname) $(ulimit -n)"'
    r = runc.run(RunOptions(command=(script,), env=("A=2",), hostname="box"), config)
    assert r.returncode == 0, r.stderr
    nofile = r.stdout.split()[-1]
    assert r.stdout.split()[:-1] == ["/tmp", "1", "2", "/root", "box"]
    assert int(nofile) >= 1024


def test_read_only_root_with_tmpfs_and_binds(runc: Runc, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from host\n")
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "touch /newfile 2>/dev/null && echo root-writable;"
        "echo tmp > /scratch/f && cat /scratch/f;"
        "cat /in/in.txt; touch /in/x 2>/dev/null && echo in-writable;"
        "echo result > /out/r.txt"
    )
    r = runc.run(
        RunOptions(
            command=("sh", "-c", script),
            read_only=True,
            mounts=(
                parse_tmpfs("/scratch:size=1m"),
                parse_volume(f"{shared}:/in:ro"),
                parse_volume(f"{out}:/out"),
            ),
        )
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "tmp\nfrom host\n"
    assert (out / "r.txt").read_text() == "result\n"
    assert not (shared / "x").exists()


def test_limits_are_enforced(runc: Runc) -> None:
    # A pids limit of 5 leaves no room for 10 sleeping children.
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 2 & done; echo started"
    r = runc.run(RunOptions(command=("sh", "-c", script), pids_limit=5))
    assert "started" not in r.stdout and "fork" in r.stderr, r.stderr
    # A memory hog is killed at --memory (swap == limit, so it cannot page out).
    hog = 'x="$(head -c 64000000 /dev/zero | tr "\\0" a)"; echo survived ${#x}'
    r = runc.run(RunOptions(command=("sh", "-c", hog), memory=parse_memory("16m")))
    assert "survived" not in r.stdout
    assert r.returncode != 0
    # ... and the same hog with room to spare lives (so the test can tell the difference).
    r = runc.run(RunOptions(command=("sh", "-c", hog), memory=parse_memory("512m")))
    assert r.stdout == "survived 64000000\n", r.stderr


def test_no_network_but_loopback(runc: Runc) -> None:
    script = "ls /sys/class/net; cat /proc/sys/net/ipv4/ip_unprivileged_port_start"
    r = runc.run(RunOptions(command=("sh", "-c", script), user="app"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["lo", "0"]


def test_etc_files_are_the_containers(runc: Runc) -> None:
    r = runc.run(
        RunOptions(
            command=("sh", "-c", "cat /etc/hostname; grep box /etc/hosts; cat /etc/resolv.conf"),
            hostname="box",
            user="app",  # the files must be readable by a user that is not root
        )
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("box\n127.0.1.1\tbox\n")
    # The image's rootfs holds at most the empty mount point runc made, never our file.
    image_file = runc.bundle / "rootfs" / "etc" / "hostname"
    assert (image_file.read_bytes() if image_file.exists() else b"") == b""


def test_crun_runs_the_same_bundles(runc: Runc) -> None:
    if shutil.which("crun") is None or shutil.which("unshare") is None:
        pytest.skip("crun (or unshare) is not installed")
    crun = Runc(runc.bundle, runc.state.parent / "crun", runtime="crun")
    r = crun.run(RunOptions(command=("sh", "-c", "echo hello; echo oops >&2; exit 3")))
    assert (r.returncode, r.stdout, r.stderr) == (3, "hello\n", "oops\n")
    r = crun.run(RunOptions(command=("id",), user="app", read_only=True, pids_limit=50))
    assert (r.returncode, r.stdout) == (0, "uid=1000(app) gid=1000(app) groups=50(staff)\n")
    assert r.stdout == runc.run(RunOptions(command=("id",), user="app")).stdout


@pytest.mark.parametrize("runtime", ["runc", "crun"])
def test_seccomp_refuses_what_capabilities_allow(runc: Runc, runtime: str) -> None:
    """A user namespace needs no capability; only the seccomp filter refuses it."""
    if shutil.which(runtime) is None:
        pytest.skip(f"{runtime} is not installed")
    rt = Runc(runc.bundle, runc.state.parent / runtime, runtime=runtime)
    script = "unshare -U true && echo unshared; grep -c . /proc/self/status >/dev/null"
    r = rt.run(RunOptions(command=("sh", "-c", script), user="app"))
    assert "unshared" not in r.stdout and "not permitted" in r.stderr, r.stderr
    r = rt.run(RunOptions(command=("sh", "-c", script), user="app", seccomp=False))
    if "unshared" not in r.stdout:
        pytest.skip(f"user namespaces are not available in a container here: {r.stderr}")


def test_exec_process_runs_in_a_running_container(runc: Runc, tmp_path: Path) -> None:
    cid = "bbspec-" + uuid.uuid4().hex[:12]
    spec = build_spec(
        IMAGE,
        RunOptions(command=("sleep", "60"), env=("FROM_RUN=1",)),
        rootfs=runc.bundle / "rootfs",
        container_id=cid,
        root_path="rootfs",
    )
    write_bundle(runc.bundle, spec)
    process = exec_process(
        spec["process"],
        ["sh", "-c", 'id; echo "$FROM_RUN $X $(pwd)"'],
        env=("X=2",),
        workdir="/tmp",
        user=resolve_user(runc.bundle / "rootfs", "app"),
    )
    (tmp_path / "process.json").write_text(json.dumps(process))
    try:
        # The container keeps the stdio it is given: pipes would never reach EOF here.
        subprocess.run(
            runc._argv("run", "--detach", "--bundle", str(runc.bundle), cid),
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        r = subprocess.run(
            runc._argv("exec", "--process", str(tmp_path / "process.json"), cid),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    finally:
        subprocess.run(runc._argv("delete", "--force", cid), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "uid=1000(app) gid=1000(app) groups=50(staff)\n1 2 /tmp\n"
