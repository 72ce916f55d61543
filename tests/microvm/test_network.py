"""The network plan as data, and the host-port check against a real listener."""

from __future__ import annotations

import socket

import pytest

from bareboat.backends.microvm import network
from bareboat.errors import UsageError
from bareboat.spec.options import PortMapping


def test_none_is_no_device() -> None:
    plan = network.plan_network("none")
    assert plan.qemu_args == () and plan.kernel_args == ()


def test_user_with_ports() -> None:
    plan = network.plan_network(
        "user", [PortMapping(8080, 80), PortMapping(5353, 53, "udp", "0.0.0.0")]
    )
    assert plan.qemu_args == (
        "-netdev",
        "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:0.0.0.0:5353-:53",
        "-device",
        "virtio-net-device,netdev=net0",
    )
    assert plan.kernel_args == ("ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off",)
    assert plan.resolv_conf == "nameserver 10.0.2.3\n"


@pytest.mark.parametrize(
    ("mode", "ports", "match"),
    [
        ("none", [PortMapping(1, 2)], "needs --network user"),
        ("host", [], "not possible"),
        ("user", [PortMapping(80, 80, host_ip="::1")], "IPv4 only"),
        ("user", [PortMapping(80, 80), PortMapping(80, 81)], "twice"),
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
