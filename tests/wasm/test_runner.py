"""The runner against real wasmtime: WASI args/env/stdio, exit codes, limits, preopens."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bareboat.backends.wasm.plan import Limits, Preopen, WasmPlan
from bareboat.backends.wasm.runner import EXIT_TIMEOUT, EXIT_TRAP
from bareboat.errors import WasmError
from bareboat.paths import Roots

from . import wat
from .conftest import Runner


def test_hello_prints_args_and_env(run_wasm: Runner) -> None:
    r = run_wasm(wat.hello(), "one", "two words", env=(("GREETING", "hi"), ("EMPTY", "")))
    assert r.code == 0
    assert r.stdout == "hello\nm.wasm\none\ntwo words\nGREETING=hi\nEMPTY=\n"
    assert r.outcome.error == ""


@pytest.mark.parametrize("code", [0, 1, 42, 125])
def test_proc_exit_code(run_wasm: Runner, code: int) -> None:
    assert run_wasm(wat.exit_with(code)).code == code


def test_trap_gives_134_and_message_on_stderr(run_wasm: Runner) -> None:
    r = run_wasm(wat.trap())
    assert r.code == EXIT_TRAP
    assert r.stdout == "about to trap\n"
    assert "wasm trap" in r.outcome.error and "unreachable" in r.outcome.error
    assert r.stderr.startswith("bareboat: wasm trap")


def test_infinite_loop_times_out(run_wasm: Runner) -> None:
    t = time.monotonic()
    r = run_wasm(wat.spin(), limits=Limits(timeout=0.3))
    assert r.code == EXIT_TIMEOUT
    assert r.outcome.error == "timed out after 0.3s"
    assert "timed out after 0.3s" in r.stderr
    assert time.monotonic() - t < 30  # it did end; the bound only guards a hang


def test_infinite_loop_runs_out_of_fuel(run_wasm: Runner) -> None:
    r = run_wasm(wat.spin(), limits=Limits(fuel=100_000))
    assert r.code == EXIT_TIMEOUT
    assert r.outcome.error == "out of fuel (budget 100000)"


def test_fuel_enough_for_a_small_program(run_wasm: Runner) -> None:
    r = run_wasm(wat.hello(), limits=Limits(fuel=1_000_000))
    assert r.code == 0 and r.stdout.startswith("hello\n")


def test_memory_grow_fails_beyond_limit(run_wasm: Runner) -> None:
    # 1 page initial + 4 more = 320 KiB: allowed under 1 MiB, refused under 128 KiB.
    assert run_wasm(wat.grow(4), limits=Limits(memory=1 << 20)).stdout == "grew\n"
    r = run_wasm(wat.grow(4), limits=Limits(memory=128 << 10))
    assert (r.code, r.stdout) == (1, "grow failed\n")


def test_initial_memory_beyond_limit_is_a_clear_error(run_wasm: Runner) -> None:
    with pytest.raises(WasmError, match="more linear memory than --memory allows"):
        run_wasm(wat.big_memory(64), limits=Limits(memory=1 << 20))


def test_reads_file_from_readonly_root(run_wasm: Runner, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "greeting").write_text("from the image\n")
    r = run_wasm(wat.cat(3, "etc/greeting"), preopens=(Preopen(str(root), "/", readonly=True),))
    assert (r.code, r.stdout) == (0, "from the image\n")


def test_readonly_root_refuses_writes(run_wasm: Runner, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    r = run_wasm(wat.write_file(3, "new", b"x"), preopens=(Preopen(str(root), "/", readonly=True),))
    assert r.code not in (0, EXIT_TRAP)  # an errno, seen by the module
    assert not (root / "new").exists()


def test_writes_to_rw_volume(run_wasm: Runner, tmp_path: Path) -> None:
    root, vol = tmp_path / "rootfs", tmp_path / "vol"
    root.mkdir()
    vol.mkdir()
    preopens = (Preopen(str(root), "/", True), Preopen(str(vol), "/data", readonly=False))
    r = run_wasm(wat.write_file(4, "out.txt", b"written by wasm\n"), preopens=preopens)
    assert r.code == 0
    assert (vol / "out.txt").read_text() == "written by wasm\n"


@pytest.mark.parametrize("path", ["../secret", "../../secret", "/secret", "sub/../../secret"])
def test_cannot_open_outside_preopens(run_wasm: Runner, tmp_path: Path, path: str) -> None:
    (tmp_path / "secret").write_text("host secret\n")
    root = tmp_path / "rootfs"
    (root / "sub").mkdir(parents=True)
    r = run_wasm(wat.cat(3, path), preopens=(Preopen(str(root), "/", readonly=True),))
    # The module gets an errno back (not a host error, not a trap) and reads nothing.
    assert r.code in (wat.ERRNO_NOTCAPABLE, wat.ERRNO_PERM, wat.ERRNO_NOENT), r
    assert "host secret" not in r.stdout


def test_symlink_in_preopen_cannot_escape(run_wasm: Runner, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("host secret\n")
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "link").symlink_to(tmp_path / "secret")
    r = run_wasm(wat.cat(3, "link"), preopens=(Preopen(str(root), "/", readonly=True),))
    assert r.code != 0 and "host secret" not in r.stdout


def test_no_preopens_means_no_files(run_wasm: Runner) -> None:
    r = run_wasm(wat.cat(3, "etc/passwd"))
    assert r.code == 8  # EBADF: there is no fd 3


def test_invalid_module_is_a_wasm_error(run_wasm: Runner) -> None:
    with pytest.raises(WasmError, match="cannot compile"):
        run_wasm(b"\0asm\x01\0\0\0garbage")


def test_module_without_start(run_wasm: Runner) -> None:
    import wasmtime

    with pytest.raises(WasmError, match="no _start"):
        run_wasm(wasmtime.wat2wasm("(module)"))


def test_stdin_from_file(run_wasm: Runner, tmp_path: Path) -> None:
    from bareboat.backends.wasm.runner import run_plan

    ref = run_wasm.module(wat.echo_stdin())
    (tmp_path / "in").write_bytes(b"line one\nline two\n" * 2000)
    plan = WasmPlan(
        module=str(ref.path),
        digest=ref.digest,
        args=("echo",),
        stdin=str(tmp_path / "in"),
        stdout=str(tmp_path / "out"),
    )
    assert run_plan(plan, run_wasm.cache).exit_code == 0
    assert (tmp_path / "out").read_bytes() == (tmp_path / "in").read_bytes()
    # no stdin given: the module reads EOF at once
    plan = WasmPlan(
        module=str(ref.path), digest=ref.digest, args=("e",), stdout=str(tmp_path / "o2")
    )
    assert run_plan(plan, run_wasm.cache).exit_code == 0
    assert (tmp_path / "o2").read_bytes() == b""


def test_stack_overflow_is_a_trap(run_wasm: Runner) -> None:
    r = run_wasm(wat.recurse())
    assert r.code == EXIT_TRAP
    assert "stack" in r.outcome.error


def test_concurrent_cold_starts_share_one_entry(run_wasm: Runner, roots: Roots) -> None:
    """Processes compiling the same module at once each write atomically; all succeed."""
    import subprocess
    import sys

    ref = run_wasm.module(wat.hello())
    plans = []
    for i in range(4):
        out = run_wasm.tmp / f"cc{i}"
        plan = WasmPlan(module=str(ref.path), digest=ref.digest, args=("m",), stdout=str(out))
        path = run_wasm.tmp / f"plan{i}.json"
        path.write_bytes(plan.to_json())
        plans.append((path, out))
    argv = [sys.executable, "-m", "bareboat.backends.wasm"]
    procs = [subprocess.Popen([*argv, str(p), str(roots.wasm_cache)]) for p, _ in plans]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    assert all(out.read_text().startswith("hello\n") for _, out in plans)
    assert len(list(roots.wasm_cache.glob("*.cwasm"))) == 1
    assert not list(roots.wasm_cache.glob(".*.tmp"))
