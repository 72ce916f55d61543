"""Real containers through the real CLI: the test image is loaded into a store of the test's
own roots; each test's containers are force-removed after it, whatever happened."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bareboat.paths import Roots

Run = Callable[..., subprocess.CompletedProcess[str]]


def bareboat_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "bareboat.cli.main", *args]


@pytest.fixture
def image(roots: Roots, busybox_layout: Path) -> str:
    if os.geteuid() != 0:
        pytest.skip("containers need root here")
    if not (shutil.which("crun") or shutil.which("runc")):
        pytest.skip("no OCI runtime installed")
    from bareboat.images.store import ImageStore

    loaded = ImageStore(roots).load(busybox_layout)
    return loaded[0].names[0]


@pytest.fixture
def bb(roots: Roots, image: str) -> Iterator[Run]:
    def run(*args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            bareboat_argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,  # type: ignore[call-overload]
        )

    yield run
    ids = run("ps", "-aq", "--no-trunc").stdout.split()
    if ids:
        run("rm", "-f", *ids)


def leftovers(roots: Roots) -> list[str]:
    """Mounts, processes and records still there under these roots."""
    found = []
    with open("/proc/mounts") as f:
        for line in f:
            point = line.split()[1]
            if point.startswith((str(roots.root), str(roots.state))):
                found.append(f"mount {point}")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(roots.state) in cmdline:
            found.append(f"process {proc.name}: {cmdline[:80]}")
            continue
        # a monitor is a fork of the CLI: it shows by the files it holds under the roots
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith((str(roots.root), str(roots.state))):
                    found.append(f"process {proc.name} holds {target}")
                    break
    if roots.containers.exists():
        found += [
            f"record {p.name}" for p in roots.containers.iterdir() if not p.name.startswith(".")
        ]
    if roots.run.exists():
        found += [f"state {p.name}" for p in roots.run.iterdir()]
    return found


def cgroups_of(cid: str) -> list[Path]:
    """Cgroup directories named after the container (v1 controllers and cgroup2)."""
    base = Path("/sys/fs/cgroup")
    return [d for d in base.glob("*/*") if cid in d.name] + [d for d in base.glob(f"*{cid}*")]


def read_pty(
    pid: int, fd: int, *, timeout: float = 30.0, answer: tuple[bytes, bytes] | None = None
) -> tuple[int, bytes]:
    """Read the pty master `fd` of the child `pid` to its end, reap the child, close `fd`.

    With `answer=(prompt, reply)`, `reply` is typed once `prompt` has appeared, as a user
    would. Returns the child's exit code and everything it printed.
    """
    import select
    import time

    out = b""
    pending = answer
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child side closed
            break
        if not chunk:
            break
        out += chunk
        if pending is not None and pending[0] in out:
            os.write(fd, pending[1])
            pending = None
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out
