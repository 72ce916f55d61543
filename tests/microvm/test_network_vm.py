"""A guest reaches only what it was given: real VMs under TCG, through the real CLI, in a network
namespace the test makes, where the host's loopback holds a server with a secret and another
address (the "outside") holds one that may answer.

`--network user` (the default, isolated) must not reach the loopback server by any way a root
guest has: slirp's gateway 10.0.2.2 and DNS alias 10.0.2.3, the IPv6 gateway fec0::2 (QEMU's
slirp maps it to ::1), and a hand-made route that sends 127.0.0.1 out of the guest's NIC.
The outside answers, `-p` is served, and after QEMU is SIGKILLed its slirp4netns is gone, with
the host port; `rm -f` leaves nothing. `--network user,host-loopback` reaches the loopback.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bareboat.paths import Roots
from tests.cli.conftest import Run, bareboat_argv, leftovers
from tests.microvm.test_backend import kernel_or_skip

pytestmark = pytest.mark.slow

OUTSIDE = "198.51.100.1"  # TEST-NET-2: the namespace's "other address", not loopback

# One line per connection: the peer's first bytes are ignored, the token goes back.
SERVER = """
import socket, sys
addr, token = sys.argv[1], sys.argv[2].encode()
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(2)
    try:
        c.recv(4096)
    except OSError:
        pass
    c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\n" + token + b"\\n")
    c.close()
"""

# busybox in the guest: `get ADDR PORT` prints the token that answered, or "-".
GET = (
    "get() { (printf 'GET / HTTP/1.0\\r\\n\\r\\n'; sleep 1) | timeout 4 nc $1 $2 2>/dev/null"
    " | grep -o 'tok-[0-9a-f]*' || echo -; }; "
)


@dataclass
class NetLab:
    """A network namespace: loopback up, a veth pair with OUTSIDE on one end and a default
    route through it, and token servers on 127.0.0.1, ::1 and OUTSIDE."""

    name: str = field(default_factory=lambda: f"bbnet-{secrets.token_hex(4)}")
    servers: list[subprocess.Popen[str]] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def exec(self, *argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            ["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, **kw
        )

    def up(self) -> None:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.ip("link", "set", "lo", "up")
        self.ip("link", "add", "bb0", "type", "veth", "peer", "name", "bb1")
        self.ip("addr", "add", f"{OUTSIDE}/24", "dev", "bb0")
        self.ip("link", "set", "bb0", "up")
        self.ip("link", "set", "bb1", "up")
        self.ip("route", "add", "default", "via", "198.51.100.254", "dev", "bb0")
        for name, addr in (("lo", "127.0.0.1"), ("lo6", "::1"), ("out", OUTSIDE)):
            token = f"tok-{secrets.token_hex(6)}"
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.name, "python3", "-c", SERVER, addr, token],
                stdout=subprocess.PIPE,
                text=True,
            )
            self.servers.append(proc)
            assert proc.stdout is not None
            self.ports[name] = int(proc.stdout.readline())
            self.tokens[name] = token

    def down(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def listening(self, port: int) -> bool:
        tables = self.exec("cat", "/proc/net/tcp", "/proc/net/tcp6").stdout.splitlines()
        return any(
            f.split()[3] == "0A" and int(f.split()[1].rsplit(":", 1)[1], 16) == port
            for f in tables
            if f.split() and f.split()[0] != "sl"
        )


@pytest.fixture
def image(roots: Roots, busybox_layout: Path) -> str:
    from bareboat.images.store import ImageStore

    return ImageStore(roots).load(busybox_layout)[0].names[0]


@pytest.fixture
def testnet(roots: Roots) -> Iterator[NetLab]:
    kernel_or_skip(roots)
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("slirp4netns"):
        pytest.skip("needs root, iproute2 and slirp4netns")
    net = NetLab()
    try:
        net.up()
        yield net
        bb = in_net(net)
        ids = bb("ps", "-aq", "--no-trunc").stdout.split()
        if ids:
            bb("rm", "-f", *ids)
    finally:
        net.down()
    assert leftovers(roots) == []


def in_net(net: NetLab) -> Run:
    """The CLI run inside the test's namespace (QEMU and its helpers start there)."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return net.exec(*bareboat_argv(*args), timeout=timeout)

    return run


def slirp4netns_of(sockets: Path) -> list[int]:
    """slirp4netns processes serving the VM whose socket directory is `sockets`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"slirp4netns") and any(os.fsencode(sockets) in a for a in argv):
            found.append(int(proc.name))
    return found


def qemu_of(sockets: Path) -> int:
    res = subprocess.run(["pgrep", "-f", f"qemu-system.*{sockets}"], capture_output=True)
    return int(res.stdout.split()[0])


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def logs_until(bb: Run, name: str, mark: str, timeout: float) -> str:
    """The container's output once `mark` is in it (or all of it at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        out = bb("logs", name).stdout
        if mark in out or time.monotonic() > deadline:
            return out
        time.sleep(0.5)


def test_guest_reaches_the_outside_and_its_ports_but_not_host_loopback(
    testnet: NetLab, roots: Roots, image: str
) -> None:
    from bareboat.backends.microvm.backend import socket_dir

    bb, p, tok = in_net(testnet), testnet.ports, testnet.tokens
    host_port = 18080  # in the test's namespace, where nothing else listens
    script = GET + (
        f"echo gw $(get 10.0.2.2 {p['lo']}); echo dns $(get 10.0.2.3 {p['lo']}); "
        f"echo gw6 $(get fec0::2 {p['lo6']}); echo outside $(get {OUTSIDE} {p['out']}); "
        # a root guest routes 127.0.0.1 out of its NIC, to the gateway's MAC
        "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet; "
        "echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet; "
        "ip route del 127.0.0.0/8 dev lo table local; "
        "ip route del local 127.0.0.1 dev lo table local; "
        "ip route add 127.0.0.1/32 via 10.0.2.2 dev eth0; "
        f"echo crafted $(get 127.0.0.1 {p['lo']}); echo PROBES-DONE; "
        "mkdir -p /www && echo tok-fromtheguest > /www/index.html && exec httpd -f -p 80 -h /www"
    )
    r = bb(
        "run", "-d", "--name", "net1", "--isolation", "microvm", "--no-template",
        "--network", "user", "-p", f"127.0.0.1:{host_port}:80", image, "sh", "-c", script,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    sockets = socket_dir(roots, cid)
    logs = logs_until(bb, "net1", "PROBES-DONE", 180)
    seen = dict(line.split(" ", 1) for line in logs.splitlines() if line.count(" ") == 1)
    assert tok["lo"] not in logs and tok["lo6"] not in logs, logs
    assert seen == {"gw": "-", "dns": "-", "gw6": "-", "outside": tok["out"], "crafted": "-"}

    # -p: slirp4netns listens on the namespace's 127.0.0.1 and the guest's httpd answers
    fetch = (
        "import urllib.request as u, time\n"
        "for _ in range(60):\n"
        "    try:\n"
        f"        print(u.urlopen('http://127.0.0.1:{host_port}/', timeout=3).read().decode())\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(0.5)\n"
    )
    assert "tok-fromtheguest" in testnet.exec("python3", "-c", fetch, timeout=60).stdout

    # QEMU killed: its slirp4netns ends with it, and so does the published port
    helpers = slirp4netns_of(sockets)
    assert len(helpers) == 1
    os.kill(qemu_of(sockets), signal.SIGKILL)
    assert wait_for(lambda: not slirp4netns_of(sockets), 10), helpers
    assert not testnet.listening(host_port)
    assert bb("rm", "-f", "net1").returncode == 0
    assert not sockets.exists()


def test_host_loopback_is_an_explicit_opt_in(testnet: NetLab, image: str) -> None:
    bb, p, tok = in_net(testnet), testnet.ports, testnet.tokens
    script = f"{GET} echo gw $(get 10.0.2.2 {p['lo']}); echo out $(get {OUTSIDE} {p['out']})"
    r = bb(
        "run", "--rm", "--isolation", "microvm", "--no-template",
        "--network", "user,host-loopback", image, "sh", "-c", script,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["gw", tok["lo"], "out", tok["out"]]
