"""podman 4.3 with `--runtime bareboat-runtime`: run/exec/stop/rm/pause/update, exit codes and
output unchanged, per isolation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.vmm import assert_confined, cmdline, qemu_pids, vmm_leftovers

from .clients import Podman, podman
from .conftest import TALKER, OneShotServer, assert_same_as_reference, connect_and_read, cpu_quota


@pytest.fixture(scope="module")
def pm(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path) -> Iterator[Podman]:
    with podman(tmp_path_factory.mktemp("podman"), busybox_layout) as p:
        yield p


ISOLATIONS = ["container", "process", "microvm"]


def iso(isolation: str) -> list[str]:
    return ["--annotation", f"io.bareboat.isolation={isolation}"]


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_run_exit_code_and_streams_unchanged(pm: Podman, isolation: str) -> None:
    script = TALKER
    ours = pm("run", "--rm", "--network", "none", *iso(isolation), pm.image, "sh", "-c", script,
              check=False)  # fmt: skip
    ref = pm("run", "--rm", "--network", "none", pm.image, "sh", "-c", script, check=False,
             runtime="runc")  # fmt: skip
    assert_same_as_reference(ours, ref)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_run_missing_command_is_127(pm: Podman, isolation: str) -> None:
    res = pm("run", "--rm", "--network", "none", *iso(isolation), pm.image, "/nonexistent",
             check=False)  # fmt: skip
    assert res.returncode == 127, res.stderr


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_detached_exec_pause_update_stop_rm(pm: Podman, isolation: str) -> None:
    cid = pm("run", "-d", "--network", "none", *iso(isolation), pm.image, "sleep", "100")
    cid = cid.stdout.strip()
    try:
        res = pm("exec", cid, "sh", "-c", "echo exec-ok; exit 3", check=False)
        assert (res.returncode, res.stdout) == (3, "exec-ok\n")
        res = pm("exec", "-t", cid, "sh", "-c", "tty", check=False)
        assert res.returncode == 0 and res.stdout.startswith("/dev/pts/")
        res = pm("exec", "-d", cid, "sleep", "30")
        pm("pause", cid)
        assert pm("inspect", "--format", "{{.State.Status}}", cid).stdout.strip() == "paused"
        pm("unpause", cid)
        if isolation == "container":  # process isolation has no cgroups to update
            pm("update", "--memory", "64m", cid)
        if isolation == "microvm":  # a VM's host CPU can change, its RAM cannot
            pm("update", "--cpus", "0.5", cid)
            state = pm.rtroot / "bareboat-runtime" / "bareboat" / cid / "state.json"
            cgroup = Path(json.loads(state.read_text())["cgroups"][0])
            assert cpu_quota(cgroup) == (50000, 100000)
            # podman's stats read the VM's cgroups: its QEMU's memory is tens of MB.
            usage = pm("stats", "--no-stream", "--format", "{{.MemUsage}}", cid).stdout
            assert usage.split()[0].endswith("MB") and float(usage.split()[0][:-2]) > 20, usage
            assert pm("update", "--memory", "64m", cid, check=False).returncode != 0
        assert (pm.rtroot / "bareboat-runtime" / "bareboat" / f"{cid}.rec").exists()
        pm("stop", "-t", "1", cid)
        state = json.loads(pm("inspect", cid).stdout)[0]["State"]
        assert state["Status"] == "exited"
        # In a PID namespace sleep is PID 1 and ignores TERM, so podman KILLs it.
        assert state["ExitCode"] == (137 if isolation == "container" else 143)
    finally:
        pm("rm", "--force", cid, check=False)
    assert cid not in pm("ps", "-a", "-q", "--no-trunc").stdout
    # The runtime kept its state where podman told it to, and dropped the record.
    records = pm.rtroot / "bareboat-runtime" / "bareboat"
    assert records.is_dir()
    assert not (records / f"{cid}.rec").exists()


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_run_tty(pm: Podman, isolation: str) -> None:
    res = pm("run", "--rm", "-t", "--network", "none", *iso(isolation), pm.image,
             "sh", "-c", "tty; exit 4", check=False)  # fmt: skip
    assert res.returncode == 4
    assert res.stdout.startswith("/dev/pts/")


def test_unavailable_isolation_is_a_clear_error(pm: Podman) -> None:
    res = pm("run", "--rm", "--network", "none", "--annotation", "io.bareboat.isolation=kvm",
             pm.image, "true", check=False)  # fmt: skip
    assert res.returncode != 0
    assert "unknown isolation 'kvm'" in res.stderr


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_run_interactive_stdin(pm: Podman, isolation: str) -> None:
    argv = pm.argv("run", "-i", "--rm", "--network", "none", *iso(isolation), pm.image,
                   "sh", "-c", "cat; echo done; exit 4")  # fmt: skip
    res = subprocess.run(argv, input="hello stdin\n", capture_output=True, text=True, env=pm.env,
                         timeout=120, check=False)  # fmt: skip
    assert (res.returncode, res.stdout) == (4, "hello stdin\ndone\n")


def test_microvm_tmpfs_read_only_user_and_volumes(pm: Podman) -> None:
    vm = ["run", "--rm", "--network", "none", *iso("microvm")]
    res = pm(*vm, "--tmpfs", "/scratch", "--read-only", "--user", "1000:1000", "--memory",
             "300m", "--cpus", "2", pm.image, "sh", "-c",
             "touch /scratch/a && echo tmpfs-ok; touch /x || echo ro-ok; id -u; nproc; "
             "read -r _ kb _ < /proc/meminfo; [ $kb -gt 200000 ] && [ $kb -le 307200 ] && "
             "echo mem-ok", check=False)  # fmt: skip
    # The guest's RAM is --memory and its vCPUs are --cpus.
    assert (res.returncode, res.stdout) == (0, "tmpfs-ok\nro-ok\n1000\n2\nmem-ok\n"), res.stderr
    # A host directory (-v) is shared over virtio-9p: read, and written back.
    host = pm.base / "vol"
    host.mkdir(exist_ok=True)
    (host / "in").write_text("host-data\n")
    res = pm(*vm, "-v", f"{host}:/vol", pm.image, "sh", "-c", "cat /vol/in; echo vm > /vol/out",
             check=False)  # fmt: skip
    assert (res.returncode, res.stdout) == (0, "host-data\n"), res.stderr
    assert (host / "out").read_text() == "vm\n"
    res = pm(*vm, "-v", f"{host}:/vol:ro", pm.image, "sh", "-c", "echo x > /vol/ro", check=False)
    assert res.returncode != 0 and not (host / "ro").exists()
    # A single file (-v FILE:PATH) is shared too, and only that file.
    (host / "one.conf").write_text("one-file\n")
    res = pm(*vm, "-v", f"{host / 'one.conf'}:/etc/one.conf", pm.image, "sh", "-c",
             "cat /etc/one.conf; echo more >> /etc/one.conf", check=False)  # fmt: skip
    assert (res.returncode, res.stdout) == (0, "one-file\n"), res.stderr
    assert (host / "one.conf").read_text() == "one-file\nmore\n"


def test_microvm_reaches_out_through_the_containers_network(pm: Podman) -> None:
    # podman's default network: the VM's QEMU runs in the container's network namespace, so
    # the guest's traffic leaves with the container's address.
    probe = pm("run", "--rm", pm.image, "sh", "-c", "ip route | grep default", runtime="runc",
               check=False)  # fmt: skip
    if probe.returncode != 0 or "via" not in probe.stdout:
        pytest.skip(f"podman's default network does not work here: {probe.stderr.strip()}")
    gateway = probe.stdout.split("via")[1].split()[0]
    server = OneShotServer(b"hello-from-host\n")
    script = f"ip -4 addr show eth0 | grep -q 10.0.2.15 && nc {gateway} {server.port} </dev/null"
    try:
        res = pm("run", "--rm", *iso("microvm"), pm.image, "sh", "-c", script, check=False)
    finally:
        server.close()
    assert (res.returncode, res.stdout) == (0, "hello-from-host\n"), res.stderr
    # From the container's address on podman's network: QEMU in the host's namespace would
    # have connected from the gateway's own address.
    assert server.peers and server.peers[0] not in (gateway, "127.0.0.1")


def test_published_port_reaches_the_guest(pm: Podman) -> None:
    # podman -p maps a host port to the container's address; the port the guest listens on
    # answers there (the agent reports it, QEMU forwards it), with no annotation.
    probe = pm("run", "--rm", pm.image, "sh", "-c", "ip route | grep default", runtime="runc",
               check=False)  # fmt: skip
    if probe.returncode != 0 or "via" not in probe.stdout:
        pytest.skip(f"podman's default network does not work here: {probe.stderr.strip()}")
    gateway = probe.stdout.split("via")[1].split()[0]  # a host address on podman's bridge
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Port 80: the jailed QEMU (no capabilities) forwards it from the container's namespace.
    script = "echo served-from-the-vm | nc -l -p 80"
    cid = pm("run", "-d", *iso("microvm"), "-p", f"{port}:80", pm.image, "sh", "-c", script
             ).stdout.strip()  # fmt: skip
    try:
        assert connect_and_read((gateway, port)) == b"served-from-the-vm\n"
        assert pm("wait", cid).stdout.strip() == "0"
    finally:
        pm("rm", "-f", cid)


def test_microvm_without_network_has_no_nic_and_can_be_a_clone(pm: Podman) -> None:
    # podman --network none: a new namespace no hook configures. The guest gets only
    # loopback, and so the VM may be a template's clone (templates are for VMs without NIC).
    vm = ("run", "--rm", "--network", "none", *iso("microvm"))
    res = pm(*vm, pm.image, "ls", "/sys/class/net")
    assert "lo" in res.stdout.split() and "eth0" not in res.stdout.split()
    tmpl = ("--annotation", "io.bareboat.vm.template=create")
    res = pm(*vm, *tmpl, pm.image, "sh", "-c", "echo cloned", check=False)  # makes it
    assert (res.returncode, res.stdout) == (0, "cloned\n"), res.stderr
    before = qemu_pids(str(pm.rtroot))
    cid = pm("run", "-d", "--network", "none", *iso("microvm"), *tmpl, pm.image, "sleep", "60"
             ).stdout.strip()  # fmt: skip
    try:
        [qemu] = qemu_pids(str(pm.rtroot)) - before
        argv = cmdline(qemu)
        assert argv[argv.index("-incoming") + 1] == "defer"  # a clone loads the template's state
    finally:
        pm("rm", "-f", cid)


@pytest.mark.parametrize("network", ["none", "bridge"])
def test_microvm_qemu_is_jailed(pm: Podman, network: str) -> None:
    # Under podman, in the container's cgroup and (bridge) network namespace, QEMU is still
    # confined: its own uid, no capabilities, seccomp, its own PID/mount/IPC/UTS namespaces.
    before = qemu_pids(str(pm.rtroot))
    cid = pm("run", "-d", "--network", network, *iso("microvm"), pm.image, "sleep", "60"
             ).stdout.strip()  # fmt: skip
    try:
        [qemu] = qemu_pids(str(pm.rtroot)) - before
        uid = assert_confined(qemu)
        netns = os.readlink(f"/proc/{qemu}/ns/net")
        assert netns != os.readlink("/proc/self/ns/net")  # never the host's network
        if network == "bridge":  # the container's, where podman's port mappings lead
            gate = int(pm("inspect", "--format", "{{.State.Pid}}", cid).stdout)
            assert netns == os.readlink(f"/proc/{gate}/ns/net")
    finally:
        pm("rm", "-f", cid)
    assert vmm_leftovers([uid]) == []


def test_nothing_left_behind(pm: Podman) -> None:
    # Runs last in this module: every container above was removed through the runtime.
    pm("run", "--rm", "--network", "none", pm.image, "true")
    ours = pm.rtroot / "bareboat-runtime"
    assert list((ours / "runc").iterdir()) == []
    assert list((ours / "bareboat").iterdir()) == []
