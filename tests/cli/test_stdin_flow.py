"""stdin through the monitor: megabytes both ways, and signals past a backed-up stdin.

The monitor wrote a client's stdin with a blocking write, so while the workload was not reading
it the whole monitor stood still, the workload's output with it: `run -i IMAGE cat` of a few MB
deadlocked (cat blocked on its full stdout, the monitor on cat's full stdin) until the client
was dropped, and a Ctrl-C waited behind the stdin it could not send.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

import pytest

from bareboat.paths import Roots
from tests.cli.conftest import Run, bareboat_argv, leftovers
from tests.microvm.test_backend import kernel_or_skip


@pytest.mark.parametrize(
    "isolation",
    ["process", "container", pytest.param("microvm", marks=pytest.mark.slow)],
)
def test_megabytes_through_cat(bb: Run, image: str, roots: Roots, isolation: str) -> None:
    if isolation == "microvm":
        kernel_or_skip(roots)
    data = os.urandom(4 << 20)  # far over every pipe and socket buffer on the way
    r = subprocess.run(
        bareboat_argv("run", "--rm", "-i", "--isolation", isolation, "--no-template", image, "cat"),
        input=data,
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == len(data) and r.stdout == data
    assert leftovers(roots) == []


@pytest.mark.parametrize("isolation", ["process", "container"])
def test_ctrl_c_reaches_a_workload_that_reads_no_stdin(
    bb: Run, image: str, roots: Roots, isolation: str
) -> None:
    script = "trap 'exit 9' INT; touch /tmp/ready; while :; do sleep 0.1; done"
    cli = subprocess.Popen(
        bareboat_argv("run", "--rm", "-i", "--isolation", isolation, image, "sh", "-c", script),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert cli.stdin is not None

    def feed() -> None:  # more than the monitor keeps for a workload that does not read it
        with contextlib.suppress(OSError):
            for _ in range(64):
                cli.stdin.write(bytes(64 << 10))  # type: ignore[union-attr]
                cli.stdin.flush()  # type: ignore[union-attr]

    writer = threading.Thread(target=feed, daemon=True)
    try:
        deadline = time.monotonic() + 60
        while not any(
            (p / "rootfs/tmp/ready").exists() for p in roots.run.glob("*/bundle") if p.is_dir()
        ):
            assert time.monotonic() < deadline and cli.poll() is None, "the workload never ran"
            time.sleep(0.1)
        writer.start()
        time.sleep(1.0)  # the stdin backs up: pipe, monitor, sockets
        cli.send_signal(signal.SIGINT)
        assert cli.wait(30) == 9, cli.stderr.read() if cli.stderr else b""
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
        with contextlib.suppress(OSError):
            cli.stdin.close()
        writer.join(10)
    assert leftovers(roots) == []


def test_a_process_workload_can_trap_what_the_monitor_survives(bb: Run, image: str) -> None:
    """The monitor outlives SIGINT, SIGHUP, SIGTTIN and SIGTTOU; its children must not start
    with them ignored (sh cannot trap a signal it was started ignoring)."""
    script = "trap 'exit 9' INT; trap 'exit 8' HUP; while :; do sleep 0.1; done"
    for sig, code in (("INT", 9), ("HUP", 8)):
        cid = bb("run", "-d", "--isolation", "process", image, "sh", "-c", script).stdout.strip()
        time.sleep(0.3)
        assert bb("kill", "-s", sig, cid).returncode == 0
        w = bb("wait", cid, timeout=30)
        assert w.stdout == f"{code}\n", (sig, w.stdout, w.stderr)
        assert bb("rm", cid).returncode == 0
