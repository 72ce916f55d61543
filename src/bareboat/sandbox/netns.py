"""The network namespace a sandbox's processes run in, as an OCI bundle asks for it."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any


def enter_network(config: dict[str, Any]) -> None:
    """In a gate or workload process: the network namespace config.json asks for, as runc
    would make it. A path is joined; an entry without one is a new namespace (lo up), which
    the client's prestart hooks then configure (docker's libnetwork-setkey moves the
    container's interface into the namespace of the pid it is given: that must never be the
    host's). No entry: the host's network."""
    from bareboat.backends.base import CLONE_NEWNET, loopback_up, setns, unshare

    for ns in (config.get("linux") or {}).get("namespaces") or []:
        if not isinstance(ns, dict) or ns.get("type") != "network":
            continue
        path = ns.get("path")
        if path:
            fd = os.open(str(path), os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
        else:
            unshare(CLONE_NEWNET)
            loopback_up()
        return
