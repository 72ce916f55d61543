"""A microVM's network as QEMU arguments: none, or user-mode (slirp) with published ports.

With `--network user` the guest sits behind QEMU's slirp NAT at its fixed addresses
(guest 10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3), reaches outward through the host's
sockets, and each `-p HOST:GUEST` becomes a `hostfwd` rule: QEMU listens on the host port
and forwards connections to the guest port. No tap device, bridge or root privilege needed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bareboat.errors import UsageError
from bareboat.spec.options import PortMapping

GUEST_IP = "10.0.2.15"
GATEWAY = "10.0.2.2"
DNS = "10.0.2.3"
NETMASK = "255.255.255.0"
NETDEV_ID = "net0"


@dataclass(frozen=True)
class NetworkPlan:
    """What QEMU and the guest need for one VM's network."""

    mode: str  # "none" | "user"
    qemu_args: tuple[str, ...] = ()
    # the kernel's `ip=` parameter (CONFIG_IP_PNP) brings eth0 up before init runs
    kernel_args: tuple[str, ...] = ()
    resolv_conf: str = ""
    ports: tuple[PortMapping, ...] = ()
    # Forward every TCP port the guest listens on, from the same port of QEMU's network
    # namespace (the container's, where a client's -p or a Service sends connections).
    watch_ports: bool = False


def hostfwd(p: PortMapping) -> str:
    """One slirp forwarding rule: `tcp:127.0.0.1:8080-:80` (guest address left to slirp)."""
    return f"hostfwd={p.protocol}:{p.host_ip}:{p.host_port}-:{p.guest_port}"


def plan_network(
    mode: str, publish: Sequence[PortMapping] = (), *, watch_ports: bool = False
) -> NetworkPlan:
    if mode == "none":
        if publish:
            raise UsageError("publishing ports (-p) needs --network user")
        return NetworkPlan(mode="none")
    if mode != "user":
        raise UsageError(
            f"--network {mode} is not possible with --isolation microvm (use none or user)"
        )
    seen: set[tuple[str, str, int]] = set()
    for p in publish:
        if p.protocol not in ("tcp", "udp"):
            raise UsageError(f"cannot publish {p.protocol} ports")
        if not isinstance(ipaddress.ip_address(p.host_ip), ipaddress.IPv4Address):
            # QEMU 7.2's slirp forwards from IPv4 host addresses only.
            raise UsageError(f"cannot publish on {p.host_ip}: a microVM publishes on IPv4 only")
        if not (0 < p.host_port < 65536 and 0 < p.guest_port < 65536):
            raise UsageError(f"invalid port mapping {p.host_port}:{p.guest_port}")
        key = (p.protocol, p.host_ip, p.host_port)
        if key in seen:
            raise UsageError(f"host port {p.host_ip}:{p.host_port}/{p.protocol} published twice")
        seen.add(key)
    netdev = ",".join(["user", f"id={NETDEV_ID}", *(hostfwd(p) for p in publish)])
    return NetworkPlan(
        mode="user",
        qemu_args=("-netdev", netdev, "-device", f"virtio-net-device,netdev={NETDEV_ID}"),
        kernel_args=(f"ip={GUEST_IP}::{GATEWAY}:{NETMASK}::eth0:off",),
        resolv_conf=f"nameserver {DNS}\n",
        ports=tuple(publish),
        watch_ports=watch_ports,
    )


class PortForwarder:
    """Keeps QEMU's slirp forwards equal to the ports the guest reports (PORTS frames): port
    P of every address of QEMU's network namespace to port P of the guest, as a container's
    own listening socket would be reached. `hmp` runs a human-monitor command (QMP has no
    hostfwd command) and returns its output, empty on success."""

    def __init__(self, hmp: Callable[[str], str]) -> None:
        self.hmp = hmp
        self.forwarded: set[int] = set()

    def update(self, ports: Iterable[int]) -> None:
        want = set(ports)
        for port in sorted(self.forwarded - want):
            self.hmp(f"hostfwd_remove {NETDEV_ID} tcp::{port}")
            self.forwarded.discard(port)
        for port in sorted(want - self.forwarded):
            # A port already taken in the namespace (a static -p, say) stays unforwarded;
            # the guest's next report tries it again.
            if not self.hmp(f"hostfwd_add {NETDEV_ID} tcp::{port}-:{port}").strip():
                self.forwarded.add(port)


def netns_has_links(path: Path) -> bool:
    """True if the network namespace at `path` has an interface besides loopback (a client
    such as podman gave the container a network), by `ip` run inside it."""
    import subprocess

    try:
        res = subprocess.run(
            ["nsenter", f"--net={path}", "--", "ip", "-o", "link", "show"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"cannot look into network namespace {path}: {e}") from None
    if res.returncode != 0:
        raise UsageError(f"cannot enter network namespace {path}: {res.stderr.strip()}")
    names = [line.split(":")[1].strip() for line in res.stdout.splitlines() if ":" in line]
    return any(n != "lo" for n in names)


def check_ports_free(ports: Sequence[PortMapping]) -> None:
    """Fail early, with the port's name, when a host port is taken.

    QEMU would refuse too, but only as "could not set up host forwarding rule" after it has
    started; this check names the port (a race with another binder remains possible, and then
    QEMU's own error is reported).
    """
    for p in ports:
        kind = socket.SOCK_STREAM if p.protocol == "tcp" else socket.SOCK_DGRAM
        with contextlib.closing(socket.socket(socket.AF_INET, kind)) as s:
            # QEMU's slirp sets SO_REUSEADDR on its listeners; do the same so a port in
            # TIME_WAIT from an earlier VM does not count as taken.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((p.host_ip, p.host_port))
            except OSError as e:
                raise UsageError(
                    f"cannot publish {p.host_ip}:{p.host_port}/{p.protocol}: {e.strerror}"
                ) from None
