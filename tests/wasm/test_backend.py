"""The backend protocol with a real bundle spec (from the spec builder) and the shim process."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bareboat.backends.base import BackendContext, Stdio
from bareboat.backends.wasm import WasmBackend
from bareboat.backends.wasm.backend import ANN_FUEL, ANN_TIMEOUT, SHIM_ENV, spec_plan
from bareboat.backends.wasm.module import ANN_DIGEST, ANN_MODULE, engine_annotations
from bareboat.backends.wasm.plan import Preopen
from bareboat.errors import WasmError
from bareboat.images.model import Image, ImageConfig, Layer
from bareboat.paths import Roots
from bareboat.spec.builder import build_spec
from bareboat.spec.options import Isolation, Mount, RunOptions
from bareboat.spec.users import User

from . import wat

COMPAT = {"module.wasm.image/variant": "compat"}


@dataclass
class Bundle:
    ctx: BackendContext
    out: Path
    err: Path


def make_bundle(
    tmp: Path,
    module: bytes,
    options: RunOptions,
    *,
    files: dict[str, bytes] | None = None,
    annotations: dict[str, str] | None = None,
) -> BackendContext:
    bundle = tmp / "bundle"
    rootfs = bundle / "rootfs"
    (rootfs / "app").mkdir(parents=True)
    (rootfs / "app" / "hello.wasm").write_bytes(module)
    for name, data in (files or {}).items():
        (rootfs / name).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / name).write_bytes(data)
    config = ImageConfig(entrypoint=("/app/hello.wasm",), env=("PATH=/bin",), labels=COMPAT)
    spec = build_spec(config, options, rootfs=rootfs, container_id="c1", user=User(0, 0))
    # as the engine marks a compat image's bundle (wasm.hooks.prepare): labels stay labels
    spec["annotations"].update({**COMPAT, **(annotations or {})})
    return BackendContext(id="c1", bundle=bundle, state_dir=tmp / "state", spec=spec)


@pytest.fixture(params=["fork", "exec"])
def backend(
    roots: Roots, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WasmBackend]:
    """Both ways `start` makes the workload: fork of the caller, or a fresh shim process."""
    monkeypatch.setenv(SHIM_ENV, request.param)
    yield WasmBackend()


def run_to_end(
    b: WasmBackend, ctx: BackendContext, tmp: Path, *, stop_after: float | None = None
) -> tuple[int, str, str]:
    b.create(ctx)
    out, err = tmp / "stdout", tmp / "stderr"
    with open(os.devnull, "rb") as i, out.open("wb") as o, err.open("wb") as e:
        pid = b.start(ctx, Stdio(i.fileno(), o.fileno(), e.fileno())).pid
    if stop_after is not None:
        time.sleep(stop_after)
        b.kill(ctx, pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    code = b.exit_code(ctx, status)
    b.delete(ctx)
    assert not list(ctx.state_dir.glob("wasm*"))
    return code, out.read_text(), err.read_text()


def test_compat_bundle_runs(backend: WasmBackend, tmp_path: Path) -> None:
    opts = RunOptions(isolation=Isolation.WASM, command=("arg1",), env=("X=y",))
    ctx = make_bundle(tmp_path, wat.hello(), opts)
    code, out, _ = run_to_end(backend, ctx, tmp_path)
    assert code == 0
    lines = out.splitlines()
    assert lines[:3] == ["hello", "/app/hello.wasm", "arg1"]
    assert "X=y" in lines and "PATH=/bin" in lines


def test_exit_code_through_shim(backend: WasmBackend, tmp_path: Path) -> None:
    ctx = make_bundle(tmp_path, wat.exit_with(7), RunOptions(isolation=Isolation.WASM))
    assert run_to_end(backend, ctx, tmp_path)[0] == 7


def test_trap_through_shim(backend: WasmBackend, tmp_path: Path) -> None:
    ctx = make_bundle(tmp_path, wat.trap(), RunOptions(isolation=Isolation.WASM))
    code, out, err = run_to_end(backend, ctx, tmp_path)
    assert (code, out) == (134, "about to trap\n")
    assert "wasm trap" in err and "unreachable" in err


def test_stop_ends_a_spinning_module(backend: WasmBackend, tmp_path: Path) -> None:
    ctx = make_bundle(tmp_path, wat.spin(), RunOptions(isolation=Isolation.WASM))
    code, _, _ = run_to_end(backend, ctx, tmp_path, stop_after=0.5)
    assert code == 128 + signal.SIGTERM


def test_timeout_annotation(backend: WasmBackend, tmp_path: Path) -> None:
    ctx = make_bundle(
        tmp_path, wat.spin(), RunOptions(isolation=Isolation.WASM), annotations={ANN_TIMEOUT: "0.5"}
    )
    code, _, err = run_to_end(backend, ctx, tmp_path)
    assert code == 124 and "timed out after 0.5s" in err


def test_fuel_annotation(backend: WasmBackend, tmp_path: Path) -> None:
    ctx = make_bundle(
        tmp_path, wat.spin(), RunOptions(isolation=Isolation.WASM), annotations={ANN_FUEL: "5000"}
    )
    code, _, err = run_to_end(backend, ctx, tmp_path)
    assert code == 124 and "out of fuel" in err


def test_memory_from_resources(backend: WasmBackend, tmp_path: Path) -> None:
    ctx = make_bundle(tmp_path, wat.grow(8), RunOptions(isolation=Isolation.WASM, memory=256 << 10))
    code, out, _ = run_to_end(backend, ctx, tmp_path)
    assert (code, out) == (1, "grow failed\n")


def test_rootfs_file_and_volumes(backend: WasmBackend, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    opts = RunOptions(
        isolation=Isolation.WASM,
        mounts=(Mount("/data", source=str(vol)), Mount("/scratch", kind="tmpfs")),
    )
    ctx = make_bundle(tmp_path, wat.write_file(4, "result", b"ok\n"), opts)
    plan = spec_plan(ctx.spec, ctx.rootfs, ctx.state_dir / "tmpfs")
    assert plan.preopens[:2] == (
        Preopen(str(ctx.rootfs), "/", True),
        Preopen(str(vol.resolve()), "/data", False),
    )
    assert plan.preopens[2].guest == "/scratch"
    assert run_to_end(backend, ctx, tmp_path)[0] == 0
    assert (vol / "result").read_text() == "ok\n"


def test_reads_image_file(backend: WasmBackend, tmp_path: Path) -> None:
    opts = RunOptions(isolation=Isolation.WASM)
    ctx = make_bundle(tmp_path, wat.cat(3, "etc/motd"), opts, files={"etc/motd": b"welcome\n"})
    assert run_to_end(backend, ctx, tmp_path)[:2] == (0, "welcome\n")


def test_wasm_layer_via_annotations(backend: WasmBackend, tmp_path: Path) -> None:
    import hashlib

    data = wat.hello()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob = tmp_path / "store" / "blobs" / "sha256" / digest[7:]
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    image = Image(
        id=digest,
        digest=digest,
        names=(),
        config=ImageConfig(),
        layers=(Layer(digest, "application/wasm", blob.stat().st_size),),
        size=1,
    )
    ann = engine_annotations(image, lambda d: blob)
    assert ann == {ANN_MODULE: str(blob), ANN_DIGEST: digest}
    opts = RunOptions(isolation=Isolation.WASM, command=("x", "y"))
    ctx = make_bundle(tmp_path, b"", opts, annotations=ann)
    ctx.spec["process"]["args"] = ["x", "y"]  # a Wasm-layer image has no entrypoint file
    code, out, _ = run_to_end(backend, ctx, tmp_path)
    assert code == 0 and out.splitlines()[:4] == ["hello", "module.wasm", "x", "y"]


def test_bad_module_fails_create(backend: WasmBackend, tmp_path: Path) -> None:
    ctx = make_bundle(tmp_path, b"\0asm\x01\0\0\0junk", RunOptions(isolation=Isolation.WASM))
    with pytest.raises(WasmError, match="cannot compile"):
        backend.create(ctx)
    assert not (ctx.state_dir / "wasm-plan.json").exists()


def test_non_wasm_entrypoint_refused(backend: WasmBackend, tmp_path: Path) -> None:
    ctx = make_bundle(tmp_path, wat.hello(), RunOptions(isolation=Isolation.WASM))
    ctx.spec["process"]["args"] = ["/bin/sh"]
    ctx.spec["annotations"].pop("module.wasm.image/variant")
    with pytest.raises(WasmError, match="not a Wasm module"):
        backend.create(ctx)


def test_exec_unsupported(backend: WasmBackend, tmp_path: Path) -> None:
    ctx = make_bundle(tmp_path, wat.hello(), RunOptions(isolation=Isolation.WASM))
    with pytest.raises(WasmError, match="exec is not supported"):
        backend.exec(ctx, {"args": ["x"]})


@pytest.mark.parametrize("where", ["not-a-blob", "wrong-name", "wrong-content"])
def test_forged_module_annotation_refused(backend: WasmBackend, tmp_path: Path, where: str) -> None:
    """A module annotation is checked all the same: only a store blob matching its digest."""
    import hashlib

    data = wat.exit_with(9)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs = tmp_path / "store" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    if where == "not-a-blob":
        path = tmp_path / "evil.wasm"
        path.write_bytes(data)
    elif where == "wrong-name":
        path = blobs / ("0" * 64)
        path.write_bytes(data)
    else:
        path = blobs / digest[7:]
        path.write_bytes(wat.exit_with(10))
    ann = {ANN_MODULE: str(path), ANN_DIGEST: digest}
    ctx = make_bundle(tmp_path, wat.hello(), RunOptions(isolation=Isolation.WASM), annotations=ann)
    with pytest.raises(WasmError, match=r"not a blob of the image store|does not match"):
        backend.create(ctx)
