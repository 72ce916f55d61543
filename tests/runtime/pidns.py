"""A PID namespace of the test's own, with its own /proc, for tests of `kill --all` and
`delete --force` of `process` containers.

A runtime that picks processes by a property host processes share kills every process it
sees: inside such a namespace that is the namespace's, never this machine's (the whole host,
other tests and their sessions included). Every test that can reach either call on a
created container, even in its clean-up after a failure, runs its runtime in one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

# PID 1 of the namespace: reaps what is orphaned to it, as a client's subreaper would.
_REAPER = """
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.05)
"""


class PidNamespace:
    """A PID namespace (with its own /proc) that lives as long as its holder process."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
             sys.executable, "-c", _REAPER],
        )  # fmt: skip
        children = Path(f"/proc/{self.holder.pid}/task/{self.holder.pid}/children")
        deadline = time.monotonic() + 10
        while not children.read_text().split():
            assert time.monotonic() < deadline, "the namespace's init did not start"
            time.sleep(0.01)
        self.init = int(children.read_text().split()[0])
        self.enter = ("nsenter", "--target", str(self.init), "--pid", "--mount", "--")
        self.spawned: list[subprocess.Popen[bytes]] = []

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """`argv` inside the namespace; the Popen (nsenter) lives exactly as long as it."""
        proc = subprocess.Popen([*self.enter, *argv], stdin=subprocess.DEVNULL)
        self.spawned.append(proc)
        return proc

    def host_pid(self, pid: int) -> int:
        """The pid, as this machine's /proc names it, of the namespace's process `pid`."""
        ns = os.readlink(f"/proc/{self.init}/ns/pid")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
                same_ns = os.readlink(entry / "ns" / "pid") == ns
            except OSError:
                continue
            nspid = next(
                (ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")), []
            )
            if same_ns and nspid[-1:] == [str(pid)]:
                return int(entry.name)
        raise LookupError(f"no process {pid} in the namespace")

    def close(self) -> None:
        # --kill-child: the holder's death kills the namespace's init, and with it the rest.
        self.holder.kill()
        self.holder.wait(10)
        for proc in self.spawned:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
