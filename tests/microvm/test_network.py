"""The network plan as data, the host-port check against a real listener, and slirp4netns's
owner with a real slirp4netns (no VM: a process in a network namespace of its own stands in
for QEMU)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.backends.microvm import network
from bareboat.errors import UsageError
from bareboat.spec.options import PortMapping


def test_none_is_no_device() -> None:
    plan = network.plan_network("none")
    assert (plan.mode, plan.ports, plan.isolated) == ("none", (), False)


PORTS = [PortMapping(8080, 80), PortMapping(5353, 53, "udp", "0.0.0.0")]


def test_user_is_isolated_with_ports_published_twice() -> None:
    """QEMU in a namespace of its own: its rules listen on every address there, and
    slirp4netns publishes the host addresses onto the same ports of that namespace."""
    plan = network.plan_network("user", PORTS)
    assert plan.isolated and plan.ports == tuple(PORTS)
    assert [r["arguments"] for r in plan.outer_forwards()] == [
        {"proto": "tcp", "host_addr": "127.0.0.1", "host_port": 8080,
         "guest_addr": network.NETNS_ADDRESS, "guest_port": 8080},
        {"proto": "udp", "host_addr": "0.0.0.0", "host_port": 5353,
         "guest_addr": network.NETNS_ADDRESS, "guest_port": 5353},
    ]  # fmt: skip


def test_slirp4netns_never_maps_the_host_loopback() -> None:
    plan = network.plan_network("user")
    argv = plan.slirp4netns_argv(4242, api_socket=Path("/s/net.sock"), ready_fd=7, exit_fd=8)
    assert argv[0] == "slirp4netns" and argv[-2:] == ["4242", "tap0"]
    for flag in (
        "--configure", "--disable-host-loopback", "--disable-dns", "--enable-sandbox",
        "--enable-seccomp", "--ready-fd=7", "--exit-fd=8", "--api-socket=/s/net.sock",
    ):  # fmt: skip
        assert flag in argv


def test_host_loopback_is_the_opt_in_and_the_client_namespace_keeps_slirp() -> None:
    opted = network.plan_network("user,host-loopback", PORTS)
    assert not opted.isolated and opted.ports == tuple(PORTS)
    # bareboat-runtime in a client's namespace: forwards follow the guest over QMP
    assert not network.plan_network("user", watch_ports=True).isolated


@pytest.mark.parametrize(
    ("mode", "ports", "match"),
    [
        ("none", [PortMapping(1, 2)], "needs --network user"),
        ("host", [], "not possible"),
        ("user", [PortMapping(80, 80, host_ip="::1")], "IPv4 only"),
        ("user", [PortMapping(80, 80), PortMapping(80, 81)], "twice"),
        ("user,bogus", [], "not possible"),
        ("none,host-loopback", [], "not possible"),
    ],
)
def test_refused(mode: str, ports: list[PortMapping], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        network.plan_network(mode, ports)


def test_taken_port_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UsageError, match=f"127.0.0.1:{port}/tcp"):
            network.check_ports_free([PortMapping(port, 80)])
    network.check_ports_free([PortMapping(port, 80)])  # free again once closed


class Monitor:
    """QEMU's human monitor as far as forwards go: the rules it holds, refusing a port that
    is taken (the answer QEMU 7.2 gives)."""

    def __init__(self, taken: set[int]) -> None:
        self.rules: set[int] = set()
        self.taken = taken
        self.lines: list[str] = []

    def __call__(self, line: str) -> str:
        self.lines.append(line)
        verb, netdev, rule = line.split()
        assert netdev == network.NETDEV_ID
        port = int(rule.split(":")[2].split("-")[0])
        if verb == "hostfwd_remove":
            self.rules.discard(port)
            return ""
        if port in self.taken:
            return f"Could not set up host forwarding rule 'tcp::{port}-:{port}'\r\n"
        self.rules.add(port)
        return ""


def test_port_forwarder_follows_the_guest() -> None:
    mon = Monitor(taken={22})
    fwd = network.PortForwarder(mon)
    fwd.update((80, 8080))
    assert mon.rules == {80, 8080}
    assert mon.lines == ["hostfwd_add net0 tcp::80-:80", "hostfwd_add net0 tcp::8080-:8080"]
    fwd.update((22, 8080))  # 80 closed; 22 taken on the host side: tried, not recorded
    assert mon.rules == {8080} and fwd.forwarded == {8080}
    assert "hostfwd_remove net0 tcp::80" in mon.lines
    mon.taken.clear()
    fwd.update((22, 8080))  # the next report tries 22 again
    assert mon.rules == {22, 8080}
    fwd.update(())
    assert mon.rules == set() and fwd.forwarded == set()


# --- slirp4netns's owner, with a real slirp4netns ---------------------------------------------


@pytest.fixture
def netns_proc() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A stand-in for QEMU: a process in a network namespace of its own, holding whatever
    descriptors it is given."""
    if os.geteuid() != 0 or not shutil.which("slirp4netns") or not shutil.which("unshare"):
        pytest.skip("needs root, slirp4netns and unshare")
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def spawn_in_netns(procs: list[subprocess.Popen[bytes]], fd: int) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(["unshare", "--net", "sleep", "60"], pass_fds=(fd,))
    procs.append(p)
    deadline = time.monotonic() + 5
    while os.readlink(f"/proc/{p.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        assert time.monotonic() < deadline
        time.sleep(0.01)  # unshare has not run yet
    return p


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_slirp4netns_publishes_and_ends_with_its_qemu(
    netns_proc: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plan = network.plan_network("user", [PortMapping(port, 80)])
    net = network.Slirp4netns(plan, tmp_path / "net.sock")
    qemu = spawn_in_netns(netns_proc, net.exit_fd)
    net.attach(qemu.pid)
    helper = net.pid
    assert helper is not None and alive(helper)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # slirp4netns listens on the host's side of the published port
    os.kill(qemu.pid, signal.SIGKILL)  # what a crash of QEMU looks like
    qemu.wait()
    deadline = time.monotonic() + 5
    while alive(helper):
        assert time.monotonic() < deadline, "slirp4netns outlived its QEMU"
        time.sleep(0.02)
    net.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert not (tmp_path / "net.sock").exists()


def test_a_taken_port_is_named_and_nothing_is_left(
    netns_proc: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        plan = network.plan_network("user", [PortMapping(port, 80)])
        net = network.Slirp4netns(plan, tmp_path / "net.sock")
        qemu = spawn_in_netns(netns_proc, net.exit_fd)
        with pytest.raises(UsageError, match=f"cannot publish 127.0.0.1:{port}/tcp"):
            net.attach(qemu.pid)
    helper = net.pid
    assert helper is not None and not alive(helper)
    assert not (tmp_path / "net.sock").exists()


def test_a_missing_slirp4netns_is_named(
    netns_proc: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    from bareboat.errors import BackendUnavailable

    net = network.Slirp4netns(
        network.plan_network("user"), tmp_path / "net.sock", binary="no-such-slirp4netns"
    )
    qemu = spawn_in_netns(netns_proc, net.exit_fd)
    with pytest.raises(BackendUnavailable, match="slirp4netns"):
        net.attach(qemu.pid)
