"""A microVM's network as data, and the helper process that keeps the host's loopback closed.

With `--network user` the guest sits behind QEMU's user-mode NAT (slirp) at its fixed
addresses (guest 10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3), reaches outward through
sockets QEMU opens, and each `-p HOST:GUEST` becomes a forwarding rule. No tap device,
bridge or root-owned route on the host.

QEMU's slirp maps the gateway 10.0.2.2 (and fec0::2, to ::1) to the loopback of the network
namespace QEMU runs in, and QEMU 7.2 has no option to turn that off; nor does a user-mode
stack refuse a packet for 127.0.0.1 that a root guest routes out of its NIC by hand. So by
default QEMU runs in a network namespace of its own (`isolated`), whose loopback holds
nothing, and slirp4netns, started with `--disable-host-loopback --disable-dns`, connects
that namespace outward: its gateway is refused, and the packets it gets come from our
namespace's kernel, never straight from the guest. A published port is then two rules:
slirp4netns listens on the host address and forwards to the namespace (`NETNS_ADDRESS`),
where QEMU forwards to the guest. `--network user,host-loopback` is the explicit opt-in:
QEMU's slirp in the caller's namespace, as before.

Measured here (TCG, 100 MB through nc, two runs each beside QEMU's slirp alone): slirp4netns
is ready ~12 ms after it starts; host->guest 23-27 s against 24-30 s, guest->host 104-138 s
against 103-105 s (the guest's emulated TCP dominates; runs vary with the machine's load).
passt with `--no-map-gw` was faster (24 s each way), but connects to the host's 127.0.0.1
when the guest sends a SYN there (seen in its pcap), so it too needs a namespace of QEMU's and
something to connect that outward; behind slirp4netns it took 86 s and 51 s.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bareboat.closing import Closing
from bareboat.errors import BackendError, BackendUnavailable, UsageError
from bareboat.spec.options import PortMapping

NETDEV_ID = "net0"
# slirp4netns's tap in QEMU's own namespace (`--configure` gives it this address and a
# default route via its gateway 10.0.2.2; slirp4netns's network is not the guest's, which
# lives inside QEMU's slirp).
NETNS_TAP = "tap0"
NETNS_ADDRESS = "10.0.2.100"
# slirp4netns's largest MTU (rootless podman's value): fewer, larger segments on the tap.
NETNS_MTU = 65520
SLIRP4NETNS = "slirp4netns"
SLIRP4NETNS_READY_S = 10.0


@dataclass(frozen=True)
class NetworkPlan:
    """One VM's network, as `qemu.VMConfig` (the virtio-net card and slirp's rules) and
    slirp4netns take it. The guest's side needs nothing from here: its init gives eth0 slirp's
    fixed addresses, and /etc/resolv.conf comes with the container's files."""

    mode: str  # "none" | "user"
    ports: tuple[PortMapping, ...] = ()
    # Forward every TCP port the guest listens on, from the same port of QEMU's network
    # namespace (the container's, where a client's -p or a Service sends connections).
    watch_ports: bool = False
    # QEMU in a network namespace of its own, connected outward by slirp4netns (see the
    # module's text); False: QEMU's slirp in the caller's namespace.
    isolated: bool = False

    def slirp4netns_argv(
        self, pid: int, *, api_socket: Path, ready_fd: int, exit_fd: int,
        binary: str = SLIRP4NETNS,
    ) -> list[str]:  # fmt: skip
        """slirp4netns for QEMU's namespace (`pid`'s): ready is written to `ready_fd`, and it
        exits when `exit_fd` (a pipe whose only writer is QEMU) reaches its end."""
        return [
            binary, "--configure", f"--mtu={NETNS_MTU}",
            # The gateway and 10.0.2.0/24 are refused instead of mapped to the host's
            # loopback; 10.0.2.3 would be mapped to the host's resolver, a loopback one
            # included, at any port.
            "--disable-host-loopback", "--disable-dns",
            # Its own mount namespace, no capability but CAP_NET_BIND_SERVICE, and a
            # seccomp filter: it parses packets a guest wrote.
            "--enable-sandbox", "--enable-seccomp",
            f"--ready-fd={ready_fd}", f"--exit-fd={exit_fd}", f"--api-socket={api_socket}",
            str(pid), NETNS_TAP,
        ]  # fmt: skip

    def outer_forwards(self) -> list[dict[str, object]]:
        """slirp4netns's `add_hostfwd` requests for the published ports: host address and
        port to the same port of QEMU's namespace, where QEMU's own rule takes over."""
        return [
            {
                "execute": "add_hostfwd",
                "arguments": {
                    "proto": p.protocol,
                    "host_addr": p.host_ip,
                    "host_port": p.host_port,
                    "guest_addr": NETNS_ADDRESS,
                    "guest_port": p.host_port,
                },
            }
            for p in self.ports
        ]


def plan_network(
    value: str, publish: Sequence[PortMapping] = (), *, watch_ports: bool = False
) -> NetworkPlan:
    """The network for `--network value` (`none`, `user` or `user,host-loopback`).

    `watch_ports` is for a namespace a client made for the container (bareboat-runtime): QEMU
    stays there, where the slirp gateway leads to the container's own loopback, since the
    forwards follow the guest at run time (hostfwd_add over QMP)."""
    from bareboat.spec.parse import network_mode

    try:
        mode, options = network_mode(value)
    except UsageError:
        mode, options = value, frozenset()
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
    return NetworkPlan(
        mode="user",
        isolated="host-loopback" not in options and not watch_ports,
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


class Slirp4netns(Closing):
    """Owns the slirp4netns that connects an isolated VM's QEMU namespace outward.

    ```
    with Slirp4netns(plan, api_socket) as net:
        qemu = Popen(..., pass_fds=(net.exit_fd,))   # QEMU unshares its network namespace
        net.attach(qemu.pid)                          # ready, ports published
    ```

    QEMU inherits the only write end of slirp4netns's exit pipe, so slirp4netns ends when
    QEMU does, however QEMU ends (SIGKILL included), and QEMU itself dies with its owner
    (PDEATHSIG): nothing outlives the VM. `close` still stops and reaps it at once.
    """

    def __init__(self, plan: NetworkPlan, api_socket: Path, *, binary: str = SLIRP4NETNS):
        self.plan = plan
        self.api_socket = api_socket
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._exit_r: int | None = None
        self._exit_w: int | None = None

    @property
    def exit_fd(self) -> int:
        """The write end of the exit pipe, for QEMU to inherit (`pass_fds`); made on first
        use, so an owner that never launches holds no descriptor."""
        if self._proc is not None:
            raise BackendError("slirp4netns was already started")
        if self._exit_w is None:
            self._exit_r, self._exit_w = os.pipe()
        return self._exit_w

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def attach(self, pid: int, *, timeout: float = SLIRP4NETNS_READY_S) -> None:
        """Connect QEMU's namespace (process `pid`'s) outward and publish the plan's ports;
        on failure slirp4netns is stopped again and the error names the cause."""
        if self._proc is not None:
            raise BackendError("slirp4netns was already started")
        if self._exit_r is None:
            raise BackendError("QEMU was not given slirp4netns's exit pipe (exit_fd)")
        # QEMU holds its copy now: ours must go, or the pipe never ends.
        self._close_fd("_exit_w")
        self.api_socket.unlink(missing_ok=True)
        ready_r, ready_w = os.pipe()
        argv = self.plan.slirp4netns_argv(
            pid, api_socket=self.api_socket, ready_fd=ready_w, exit_fd=self._exit_r,
            binary=self.binary,
        )  # fmt: skip
        try:
            # A file, not a pipe: nobody reads while the VM runs, and a full pipe would
            # stop slirp4netns.
            self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
            try:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=self._stderr,
                    pass_fds=(ready_w, self._exit_r),
                    start_new_session=True,
                )
            except FileNotFoundError:
                raise BackendUnavailable(
                    f"{self.binary} not found (install the slirp4netns package, or use "
                    "--network user,host-loopback)"
                ) from None
            finally:
                os.close(ready_w)
            self._close_fd("_exit_r")
            self._await_ready(ready_r, timeout)
            for request in self.plan.outer_forwards():
                self._api(request)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(ready_r)

    def _await_ready(self, ready_r: int, timeout: float) -> None:
        import select

        assert self._proc is not None
        ready, _, _ = select.select([ready_r], [], [], timeout)
        if ready and os.read(ready_r, 1) == b"1":
            return
        why = f"was not ready in {timeout:g} s" if not ready else "stopped"
        raise BackendError(f"slirp4netns {why}: {self._stderr_tail()}")

    def _api(self, request: dict[str, object]) -> None:
        """One request on slirp4netns's API socket (one JSON object each way)."""
        args = request["arguments"]
        assert isinstance(args, dict)
        what = f"{args['host_addr']}:{args['host_port']}/{args['proto']}"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5.0)
                s.connect(str(self.api_socket))
                s.sendall(json.dumps(request).encode())
                s.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                    if len(data) > 65536:
                        break
            answer = json.loads(data)
        except (OSError, ValueError) as e:
            raise BackendError(f"cannot publish {what}: slirp4netns did not answer: {e}") from None
        if not isinstance(answer, dict) or "return" not in answer:
            desc = answer.get("error", {}).get("desc") if isinstance(answer, dict) else answer
            # slirp4netns says only "slirp_add_hostfwd failed": the usual cause is a port
            # taken between check_ports_free and now.
            raise UsageError(f"cannot publish {what}: {desc} (is the port in use?)")

    def close(self, *, timeout: float = 2.0) -> None:
        """Stop slirp4netns if it runs (SIGTERM, then SIGKILL), reap it, remove its socket.
        Safe to call more than once."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
        self._close_fd("_exit_w")
        self._close_fd("_exit_r")
        with contextlib.suppress(OSError):
            self.api_socket.unlink(missing_ok=True)

    def _close_fd(self, name: str) -> None:
        fd = getattr(self, name)
        if fd is not None:
            setattr(self, name, None)
            with contextlib.suppress(OSError):
                os.close(fd)

    def _stderr_tail(self) -> str:
        proc, err = self._proc, self._stderr
        if proc is None or err is None or err.closed:
            return ""
        err.seek(0)
        text = err.read(65536).decode(errors="replace")
        lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("*")]
        return " | ".join(lines[-3:]) or f"exit status {proc.returncode}"
