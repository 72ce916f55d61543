"""/etc/hostname, /etc/hosts and /etc/resolv.conf for a container, as docker gives them.

The files live in the bundle (`etc/` beside config.json) and are bind-mounted over the
image's own, so the image is never changed and each container has its own copies. The
builder only adds the mounts (`build_spec(..., etc_dir=...)`); `etc_files` says what goes
in them, read from the spec it made; `write_bundle(..., etc_dir=...)` writes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bareboat.spec.defaults import NETWORK_ANNOTATION

TYPE_CHECKING = False  # typing costs import time on every `run`; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any

# The file in `etc_dir` for each path in the container.
ETC_FILES = {
    "/etc/hostname": "hostname",
    "/etc/hosts": "hosts",
    "/etc/resolv.conf": "resolv.conf",
}
# QEMU user-mode networking (slirp) answers DNS here; "user" networks use it.
SLIRP_DNS = "10.0.2.3"
_MAX_HOST_FILE = 64 * 1024


def etc_mounts(etc_dir: Path, skip: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """Bind mounts of the bundle's files over the image's (those in `skip` are left out)."""
    return [
        {
            "destination": dest,
            "type": "bind",
            "source": str(etc_dir / name),
            "options": ["rbind", "rprivate", "rw"],
        }
        for dest, name in ETC_FILES.items()
        if dest not in skip
    ]


def _host_file(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(_MAX_HOST_FILE)
    except OSError:
        return b""


def _without_loopback_nameservers(resolv: bytes) -> bytes:
    """A nameserver on the host's loopback is unreachable from another network namespace."""
    lines = []
    for line in resolv.splitlines(keepends=True):
        words = line.split()
        if (
            len(words) >= 2
            and words[0] == b"nameserver"
            and (words[1].startswith(b"127.") or words[1] == b"::1")
        ):
            continue
        lines.append(line)
    return b"".join(lines)


def etc_files(spec: Mapping[str, Any], *, host_etc: Path = Path("/etc")) -> dict[str, bytes]:
    """File name in `etc_dir` -> contents, for the spec `build_spec` made.

    With the host's network (no network namespace) the container sees the host's hosts and
    resolv.conf; with its own it gets localhost plus its hostname, and for a "user" (slirp)
    network the slirp resolver; with none, the host's resolvers minus loopback ones (as
    docker does, though nothing can reach them).
    """
    namespaces = {n.get("type") for n in spec.get("linux", {}).get("namespaces", [])}
    own_network = "network" in namespaces
    hostname = str(spec.get("hostname") or "")
    if not own_network:
        import socket

        hostname = socket.gethostname()
        hosts = _host_file(host_etc / "hosts")
        resolv = _host_file(host_etc / "resolv.conf")
    else:
        hosts = (
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"127.0.1.1\t{hostname}\n"
        ).encode()
        network = str(spec.get("annotations", {}).get(NETWORK_ANNOTATION, ""))
        user_net = network.split(",")[0] == "user"
        if user_net:
            resolv = f"nameserver {SLIRP_DNS}\n".encode()
        else:
            resolv = _without_loopback_nameservers(_host_file(host_etc / "resolv.conf"))
    return {
        ETC_FILES["/etc/hostname"]: f"{hostname}\n".encode(),
        ETC_FILES["/etc/hosts"]: hosts,
        ETC_FILES["/etc/resolv.conf"]: resolv,
    }
