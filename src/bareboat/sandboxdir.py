"""One sandbox directory layout: the files a sandbox keeps, named once for every front end
and backend.

A sandbox's state directory is where its front end puts it: bareboat-runtime's
`<root>/bareboat/<id>/`, the engine's backend state `<roots.run>/<id>/oci/`. Inside it:

  state.json   the supervisor's pid and start time, creation time, annotations (runtime)
  exec.fifo    while created: the gate that `start` opens (runtime)
  paused       while paused (runtime)
  vm/          a microVM's files: console and QEMU logs, exit, pid and VMM records, one-file
               shares (the backend's `VmDir.path`)

A VM's unix sockets do not fit a deep path (a sockaddr_un holds 108 bytes): they live in a
short directory of their own, which the front end names (`short_socket_dir`).

Plain strings and `os` only: bareboat-runtime reads this on every call.
"""

from __future__ import annotations

import os

STATE = "state.json"
FIFO = "exec.fifo"
PAUSED = "paused"
VM = "vm"
VM_RECORD = "vm.json"  # QEMU's pid and start time, written by the backend when it launches
# A VM's control socket, in its socket directory, where its hub serves the sandbox's (under
# bareboat-runtime; the engine's is the monitor's)
CONTROL_SOCKET = "hub.sock"
QMP_SOCKET = "qmp.sock"
AGENT_SOCKET = "agent.sock"
SOCKET_ROOM = len("/agent.sock")  # the longest socket name a VM's socket directory holds

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from pathlib import Path


class SandboxDir:
    """The files of one sandbox, under its state directory `path`."""

    __slots__ = ("fifo", "path", "paused", "state", "vm", "vm_record")

    def __init__(self, path: str) -> None:
        self.path = path
        self.state = f"{path}/{STATE}"
        self.fifo = f"{path}/{FIFO}"
        self.paused = f"{path}/{PAUSED}"
        self.vm = f"{path}/{VM}"
        self.vm_record = f"{path}/{VM}/{VM_RECORD}"


class FileIn:
    """A layout's file, named once: `FileIn("sockets", QMP_SOCKET)` on a class is the file of
    that name in the directory (a Path) the instance holds in its attribute `sockets`."""

    __slots__ = ("name", "where")

    def __init__(self, where: str, name: str) -> None:
        self.where = where
        self.name = name

    def __get__(self, obj: object, owner: type | None = None) -> Path:
        directory: Path = getattr(obj, self.where)
        return directory / self.name


def short_socket_dir(preferred: str, key: str) -> str:
    """A directory for one VM's sockets whose paths fit a sockaddr_un: `preferred` where it
    fits, else one under the temporary directory named by a digest of `key` (the same for
    every process that asks with the same key)."""
    if len(os.fsencode(preferred)) + SOCKET_ROOM < 100:
        return preferred
    import hashlib
    import tempfile

    digest = hashlib.sha256(os.fsencode(key)).hexdigest()[:16]
    return f"{tempfile.gettempdir()}/bareboat-vm-{digest}"
