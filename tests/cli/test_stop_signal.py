"""`stop` with the image's StopSignal, which is the image author's data: one that names no
signal falls back to SIGTERM with a warning (as docker does) instead of failing the stop and
leaving the container running."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bareboat.images.store import ImageStore
from bareboat.paths import Roots
from tests.cli.conftest import Run, leftovers
from tests.microvm.test_backend import kernel_or_skip
from tests.support.imagebuild import Image, write_image

# Traps both signals with its own codes, so the exit code tells which signal stopped it (a
# SIGKILL after the timeout would give 137).
TRAPS = "trap 'exit 7' TERM; trap 'exit 8' USR1; touch /tmp/ready; while :; do sleep 0.1; done"


def _load(roots: Roots, tmp_path: Path, stop_signal: str) -> str:
    layout = tmp_path / f"layout-{stop_signal}"
    write_image(layout, Image(stop_signal=stop_signal))
    return ImageStore(roots).load(layout)[0].names[0]


def _started(bb: Run, cid: str) -> None:
    deadline = time.monotonic() + 60
    while bb("exec", cid, "test", "-e", "/tmp/ready").returncode != 0:
        assert time.monotonic() < deadline, "the workload never set its traps"
        time.sleep(0.2)


def _end(bb: Run, cid: str) -> tuple[str, int]:
    rec = json.loads(bb("inspect", cid).stdout)[0]
    return rec["state"], rec["exit_code"]


@pytest.mark.parametrize(
    "isolation",
    ["process", "container", pytest.param("microvm", marks=pytest.mark.slow)],
)
def test_a_stop_signal_that_is_no_signal_falls_back_to_sigterm(
    bb: Run, image: str, roots: Roots, tmp_path: Path, isolation: str
) -> None:
    if isolation == "microvm":
        kernel_or_skip(roots)
    ref = _load(roots, tmp_path, "SIGNOPE")
    cid = bb(
        "run", "-d", "--isolation", isolation, "--no-template", ref, "sh", "-c", TRAPS,
        timeout=120,
    ).stdout.strip()  # fmt: skip
    _started(bb, cid)
    r = bb("stop", "-t", "30", cid, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "StopSignal 'SIGNOPE' is not a signal" in r.stderr and "SIGTERM" in r.stderr
    assert _end(bb, cid) == ("exited", 7)  # SIGTERM, not the SIGKILL after the timeout
    assert bb("rm", cid).returncode == 0
    assert leftovers(roots) == []


@pytest.mark.parametrize("stop_signal", ["SIGUSR1", "usr1", "10"])
def test_the_images_stop_signal_is_sent(
    bb: Run, image: str, roots: Roots, tmp_path: Path, stop_signal: str
) -> None:
    ref = _load(roots, tmp_path, stop_signal)
    cid = bb("run", "-d", "--isolation", "process", ref, "sh", "-c", TRAPS).stdout.strip()
    _started(bb, cid)
    r = bb("stop", "-t", "30", cid)
    assert (r.returncode, r.stderr) == (0, "")
    assert _end(bb, cid) == ("exited", 8)


@pytest.mark.parametrize("stop_signal", ["0", "65", "KILL; rm -rf /"])
def test_numbers_out_of_range_fall_back_too(
    bb: Run, image: str, roots: Roots, tmp_path: Path, stop_signal: str
) -> None:
    ref = _load(roots, tmp_path, stop_signal)
    cid = bb("run", "-d", "--isolation", "process", ref, "sh", "-c", TRAPS).stdout.strip()
    _started(bb, cid)
    r = bb("stop", "-t", "30", cid)
    assert r.returncode == 0 and "is not a signal" in r.stderr, r.stderr
    assert _end(bb, cid) == ("exited", 7)
