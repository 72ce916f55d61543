"""`process` isolation under the OCI contract, driven the way conmon and the shim drive it:
create (blocked before exec) / start / state / exec / ps / pause / kill / delete, hooks, and
the pid file naming the workload itself.

The runtime runs in a PID namespace of each test's own (pidns.py): a test that fails between
`create` and `start` force-deletes a created container in its clean-up, which with a runtime
that took the host's processes for the container's would kill this machine's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.proc import start_time
from bareboat.sandbox import procgroup
from bareboat.sandbox.process import pids as container_pids
from tests.support.imagebuild import BUSYBOX

from .conftest import Runtime, make_bundle
from .pidns import PidNamespace

PROCESS = {"io.bareboat.isolation": "process"}


@pytest.fixture
def runtime(ns_runtime: tuple[Runtime, PidNamespace]) -> Runtime:
    return ns_runtime[0]


@pytest.fixture
def ns(ns_runtime: tuple[Runtime, PidNamespace]) -> PidNamespace:
    return ns_runtime[1]


def test_lifecycle(runtime: Runtime, ns: PidNamespace, tmp_path: Path) -> None:
    bundle = make_bundle(
        tmp_path / "b", ["sh", "-c", "echo started > /tmp/marker; sleep 100"], annotations=PROCESS
    )
    pidfile = tmp_path / "pid"
    runtime("create", "--bundle", str(bundle), "--pid-file", str(pidfile), "p1")
    runtime.ids.append("p1")
    pid = int(pidfile.read_text())
    st = runtime.state("p1")
    assert (st["status"], st["pid"]) == ("created", pid)
    # Not started yet: the workload has not run.
    time.sleep(0.2)
    assert not (bundle / "rootfs" / "tmp" / "marker").exists()

    runtime("start", "p1")
    assert runtime.wait_state("p1", "running")["status"] == "running"
    end = time.monotonic() + 10
    while not (bundle / "rootfs" / "tmp" / "marker").exists() and time.monotonic() < end:
        time.sleep(0.02)
    assert (bundle / "rootfs" / "tmp" / "marker").read_text() == "started\n"
    # The pid file names the workload itself, chrooted into the bundle's rootfs.
    assert os.readlink(f"/proc/{ns.host_pid(pid)}/root") == str((bundle / "rootfs").resolve())

    res = runtime("exec", "--cwd", "/tmp", "-e", "X=42", "p1", "sh", "-c", "echo $X; pwd; exit 3",
                  check=False)  # fmt: skip
    assert (res.returncode, res.stdout) == (3, "42\n/tmp\n")
    pfile = tmp_path / "process.json"
    pfile.write_text(json.dumps({"args": ["cat", "/tmp/marker"], "cwd": "/", "env": []}))
    assert runtime("exec", "--process", str(pfile), "p1").stdout == "started\n"

    listed = json.loads(runtime("list", "--format", "json").stdout)
    assert [(c["id"], c["status"], c["pid"]) for c in listed] == [("p1", "running", pid)]
    assert "p1" in runtime("list").stdout

    pids = json.loads(runtime("ps", "--format", "json", "p1").stdout)
    assert pid in pids

    runtime("pause", "p1")
    assert runtime.state("p1")["status"] == "paused"
    runtime("resume", "p1")
    assert runtime.state("p1")["status"] == "running"

    assert runtime("update", "--resources", "-", "p1", input="{}", check=False).returncode != 0
    assert runtime("delete", "p1", check=False).returncode != 0  # running, no --force

    runtime("kill", "p1", "KILL")
    assert runtime.wait_state("p1", "stopped")["status"] == "stopped"
    runtime("delete", "p1")
    assert not (runtime.root / "bareboat" / "p1").exists()
    assert not (runtime.root / "bareboat" / "p1.rec").exists()
    runtime("delete", "--force", "p1")  # idempotent


def test_hooks_run_in_order(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["true"], annotations=PROCESS)
    log = tmp_path / "hooks.log"
    config = json.loads((bundle / "config.json").read_text())

    def hook(name: str) -> dict[str, object]:
        # The state arrives on stdin: record its status too.
        script = (
            f'read s; echo {name} $(echo "$s" | grep -o "\\"status\\": *\\"[a-z]*\\"") >> {log}'
        )
        return {"path": "/bin/sh", "args": ["sh", "-c", script]}

    kinds = ("createRuntime", "prestart", "poststart", "poststop")
    config["hooks"] = {k: [hook(k)] for k in kinds}
    (bundle / "config.json").write_text(json.dumps(config))
    runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "p2")
    runtime.ids.append("p2")
    runtime("start", "p2")
    runtime.wait_state("p2", "stopped")
    runtime("delete", "p2")
    lines = [line.split()[0] for line in log.read_text().splitlines()]
    assert lines == list(kinds)
    assert '"created"' in log.read_text().splitlines()[0]
    assert '"stopped"' in log.read_text().splitlines()[-1]


def test_failing_hook_fails_create_and_cleans_up(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["sleep", "100"], annotations=PROCESS)
    config = json.loads((bundle / "config.json").read_text())
    config["hooks"] = {"prestart": [{"path": "/bin/false", "args": ["false"]}]}
    (bundle / "config.json").write_text(json.dumps(config))
    res = runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "p3",
                  check=False)  # fmt: skip
    assert res.returncode != 0 and "prestart hook" in res.stderr
    assert not (runtime.root / "bareboat" / "p3.rec").exists()
    assert not (runtime.root / "bareboat" / "p3").exists()
    assert not (tmp_path / "pid").exists()


def test_missing_command_exits_127_through_pid(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["/nonexistent"], annotations=PROCESS)
    runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "p4")
    runtime.ids.append("p4")
    runtime("start", "p4")
    assert runtime.wait_state("p4", "stopped")["status"] == "stopped"
    runtime("delete", "p4")


@pytest.mark.parametrize("bad", ["kvm", "gvisor"])
def test_other_isolations_refused_cleanly(runtime: Runtime, tmp_path: Path, bad: str) -> None:
    bundle = make_bundle(tmp_path / "b", ["true"], annotations={"io.bareboat.isolation": bad})
    res = runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "p5",
                  check=False)  # fmt: skip
    assert res.returncode != 0
    assert not (runtime.root / "bareboat" / "p5.rec").exists()


def test_new_network_namespace_as_runc_makes_it(
    runtime: Runtime, ns: PidNamespace, tmp_path: Path
) -> None:
    # `runc spec` asks for a network namespace without a path: a new one, lo up, not the host's.
    bundle = make_bundle(tmp_path / "b", ["sleep", "100"], annotations=PROCESS)
    runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "p9")
    runtime.ids.append("p9")
    pid = ns.host_pid(int((tmp_path / "pid").read_text()))
    assert os.stat(f"/proc/{pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    runtime("start", "p9")
    res = runtime("exec", "p9", "cat", "/proc/net/dev")
    names = [line.split(":")[0].strip() for line in res.stdout.splitlines()[2:]]
    assert names == ["lo"]
    flags = runtime("exec", "p9", "cat", "/sys/class/net/lo/flags").stdout  # its own sysfs
    assert int(flags, 16) & 1  # IFF_UP
    runtime("delete", "--force", "p9")


# --- which processes are the container's (kill --all, delete, ps, pause) ----------------------


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def _state_of(pid: int) -> dict[str, object]:
    return {"pid": pid, "start_time": str(start_time(pid))}


def test_without_a_cgroup_a_gate_not_yet_chrooted_is_alone(
    procs: list[subprocess.Popen[bytes]],
) -> None:
    # A created gate has not chrooted: its root is the host's, as nearly every process's is.
    # (Only computed here, never signalled: the old rule listed all of them.)
    gate = subprocess.Popen(["sleep", "60"])
    procs.append(gate)
    bystander = subprocess.Popen(["sleep", "60"])
    procs.append(bystander)
    assert container_pids("", _state_of(gate.pid)) == [gate.pid]


def test_without_a_cgroup_the_chrooted_container_is_found_by_its_root(
    procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")

    def chrooted() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["/bin/busybox", "sleep", "60"], preexec_fn=lambda: os.chroot(rootfs)
        )

    gate, execd = chrooted(), chrooted()
    procs += [gate, execd, subprocess.Popen(["sleep", "60"])]
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{execd.pid}/root") != str(rootfs) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert container_pids("", _state_of(gate.pid)) == sorted([gate.pid, execd.pid])


@pytest.mark.parametrize(
    "path",
    [
        "/sys/fs/cgroup/unified",  # the whole host
        "/sys/fs/cgroup/unified/system.slice",
        "/sys/fs/cgroup/unified/bareboat-process",
        "/sys/fs/cgroup/unified/bareboat-process/..",
        "/sys/fs/cgroup/unified/bareboat-process/x/..",
        "/tmp/bareboat-process/x",
        7,
    ],
)
def test_only_a_cgroup_of_our_own_is_taken_from_the_state(path: object) -> None:
    assert procgroup.owned(path) is None
    assert procgroup.owned("/sys/fs/cgroup/unified/bareboat-process/k1-00ff") is not None


# --- an image's symlinks never take a mount point out of the rootfs --------------------------


def _mount_points(pid: int | str = "self") -> list[str]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line.split()[4] for line in f]


def test_mount_points_are_resolved_inside_the_rootfs(
    runtime: Runtime, ns: PidNamespace, tmp_path: Path
) -> None:
    host_etc, host_dir = tmp_path / "host-etc", tmp_path / "host-dir"
    host_etc.mkdir()
    host_dir.mkdir()
    (host_etc / "keep").write_text("host\n")
    bundle = make_bundle(tmp_path / "b", ["sleep", "100"], annotations=PROCESS)
    rootfs = bundle / "rootfs"
    # The image: /etc is an absolute symlink to the host directory, /data a relative one
    # that climbs out towards another.
    (rootfs / "etc").rmdir()
    (rootfs / "etc").symlink_to(host_etc)
    (rootfs / "data").symlink_to("../" * 30 + str(host_dir).lstrip("/"))
    files, volume = tmp_path / "files", tmp_path / "volume"
    files.mkdir()
    volume.mkdir()
    (volume / "v").write_text("volume\n")
    config = json.loads((bundle / "config.json").read_text())
    for name in ("hostname", "hosts", "resolv.conf"):  # as podman binds them
        (files / name).write_text(f"ours {name}\n")
        bind = {"type": "bind", "source": str(files / name), "options": ["rbind", "rw"]}
        config["mounts"].append({"destination": f"/etc/{name}", **bind})
    bind = {"type": "bind", "source": str(volume), "options": ["rbind", "ro"]}
    config["mounts"].append({"destination": "/data/sub", **bind})
    (bundle / "config.json").write_text(json.dumps(config))

    def outside(pid: int | str) -> list[str]:
        return [p for p in _mount_points(pid) if p.startswith((str(host_etc), str(host_dir)))]

    runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "p10")
    runtime.ids.append("p10")
    gate = ns.host_pid(int((tmp_path / "pid").read_text()))
    # The gate's mounts (its own mount namespace), seen from the host's root before `start`.
    assert outside(gate) == []
    assert f"{rootfs}{host_etc}/hostname" in _mount_points(gate)
    runtime("start", "p10")
    assert runtime("exec", "p10", "cat", "/etc/hostname", "/data/sub/v").stdout == (
        "ours hostname\nvolume\n"
    )
    runtime("delete", "--force", "p10")
    assert outside("self") == []
    assert sorted(p.name for p in host_etc.iterdir()) == ["keep"]
    assert list(host_dir.iterdir()) == []


def test_mount_flags_and_a_read_only_root_hold(runtime: Runtime, tmp_path: Path) -> None:
    """What podman asks with --read-only and --tmpfs /x:ro: the root and the tmpfs are
    read-only, a tmpfs keeps nosuid, nodev and noexec, and a bind keeps nosuid (they reached
    the kernel as plain rw mounts before)."""
    bundle = make_bundle(
        tmp_path / "b", ["sh", "-c", "touch /x; touch /ro/x; touch /scratch/x; touch /v/x; "
                         "grep -E ' /(ro|scratch|v) ' /proc/mounts"],
        annotations=PROCESS,
    )  # fmt: skip
    for applet in ("touch", "grep"):
        (bundle / "rootfs" / "bin" / applet).symlink_to("busybox")
    volume = tmp_path / "volume"
    volume.mkdir()
    config = json.loads((bundle / "config.json").read_text())
    config["root"]["readonly"] = True
    config["mounts"] += [
        {"destination": "/ro", "type": "tmpfs", "source": "tmpfs",
         "options": ["ro", "nosuid", "nodev", "noexec"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
         "options": ["rw", "nosuid", "nodev", "noexec", "size=1m"]},
        {"destination": "/v", "type": "bind", "source": str(volume),
         "options": ["rbind", "rw", "nosuid", "nodev"]},
    ]  # fmt: skip
    (bundle / "config.json").write_text(json.dumps(config))
    res = runtime("run", "--bundle", str(bundle), "p11", check=False)
    options = {line.split()[1]: set(line.split()[3].split(",")) for line in res.stdout.splitlines()}
    assert "/x: Read-only file system" in res.stderr and "/ro/x: Read-only" in res.stderr
    assert {"ro", "nosuid", "nodev", "noexec"} <= options["/ro"]
    assert {"rw", "nosuid", "nodev", "noexec"} <= options["/scratch"]
    assert {"rw", "nosuid", "nodev"} <= options["/v"]
    assert not (bundle / "rootfs" / "x").exists() and (volume / "x").exists()
