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
