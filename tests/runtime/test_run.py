"""`bareboat-runtime run` for the isolations bareboat drives itself, as `runc run` behaves:
create + start in one call; in the foreground the container's stdio and exit status are the
call's, signals sent to it reach the workload, and the container is deleted unless --keep;
with --detach it returns once the workload runs."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.wasm import wat

from .conftest import RUNTIME, TALKER, Runtime, make_bundle
from .test_vm import vm_or_skip
from .test_wasm_runtime import wasm_bundle


def gone(runtime: Runtime, cid: str) -> bool:
    root = runtime.root / "bareboat"
    return not (root / cid).exists() and not (root / f"{cid}.rec").exists()


def bundle_for(isolation: str, path: Path) -> Path:
    if isolation == "wasm":
        return wasm_bundle(path, wat.exit_with(7))
    if isolation == "microvm":
        vm_or_skip()
    return make_bundle(path, ["sh", "-c", TALKER], annotations={"io.bareboat.isolation": isolation})


@pytest.mark.parametrize("isolation", ["process", "microvm", "wasm"])
def test_foreground_run_gives_status_and_output_then_deletes(
    runtime: Runtime, tmp_path: Path, isolation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if isolation == "wasm":  # compiled modules go to a cache of the test's own
        monkeypatch.setenv("BAREBOAT_CACHE", str(tmp_path / "cache"))
    bundle = bundle_for(isolation, tmp_path / "b")
    pidfile = tmp_path / "pid"
    res = runtime("run", "--bundle", str(bundle), "--pid-file", str(pidfile), "r1",
                  check=False, timeout=120)  # fmt: skip
    assert res.returncode == 7, res.stderr
    if isolation != "wasm":
        assert (res.stdout, res.stderr) == ("out\n", "err\n")
    assert pidfile.read_text().strip().isdigit()
    assert gone(runtime, "r1")
    # Nothing left running: no gate or QEMU (their argv names the runtime root).
    left = subprocess.run(["pgrep", "-af", str(runtime.root)], capture_output=True, text=True)
    assert left.stdout == ""
    assert json.loads(runtime("list", "--format", "json").stdout or "[]") == []


def test_keep_leaves_a_stopped_container(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["sh", "-c", TALKER], annotations={
        "io.bareboat.isolation": "process"})  # fmt: skip
    runtime.ids.append("r2")
    assert runtime("run", "--keep", "--bundle", str(bundle), "r2", check=False).returncode == 7
    assert runtime.state("r2")["status"] == "stopped"
    runtime("delete", "r2")
    assert gone(runtime, "r2")


def test_detach_returns_with_the_workload_running(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["sleep", "100"], annotations={
        "io.bareboat.isolation": "process"})  # fmt: skip
    runtime.ids.append("r3")
    runtime("run", "--detach", "--bundle", str(bundle), "r3")
    assert runtime.state("r3")["status"] == "running"
    runtime("kill", "r3", "KILL")
    assert runtime.wait_state("r3", "stopped")["status"] == "stopped"
    runtime("delete", "r3")
    assert gone(runtime, "r3")


@pytest.mark.parametrize("isolation", ["process", "container"])
def test_signal_to_run_reaches_the_workload(
    runtime: Runtime, tmp_path: Path, isolation: str
) -> None:
    # The workload says it is ready, then turns SIGTERM into exit 9. Sent at once: the
    # signal must not land between the workload's start and bareboat-runtime's handlers.
    ready = tmp_path / "b" / "rootfs" / "tmp" / "ready"
    script = "trap 'exit 9' TERM; touch /tmp/ready; while true; do sleep 0.1; done"
    bundle = make_bundle(tmp_path / "b", ["sh", "-c", script], annotations={
        "io.bareboat.isolation": isolation})  # fmt: skip
    runtime.ids.append("r4")
    proc = subprocess.Popen(
        [str(RUNTIME), "--root", str(runtime.root), "run", "--bundle", str(bundle), "r4"],
        stdin=subprocess.DEVNULL,
    )
    end = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < end:
        time.sleep(0.02)
    assert ready.exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 9
    assert gone(runtime, "r4")


def test_failed_create_leaves_nothing(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["/nonexistent"], annotations={
        "io.bareboat.isolation": "process"})  # fmt: skip
    res = runtime("run", "--bundle", str(bundle), "r5", check=False)
    assert res.returncode != 0 and "nonexistent" in res.stderr
    assert gone(runtime, "r5")
