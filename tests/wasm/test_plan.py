"""Plans are plain data: built from image config + options, checked without running."""

from __future__ import annotations

from pathlib import Path

import pytest

from bareboat.backends.wasm.module import ModuleRef
from bareboat.backends.wasm.plan import Limits, Preopen, WasmPlan, build_plan, merge_env
from bareboat.errors import WasmError
from bareboat.images.model import ImageConfig
from bareboat.spec.options import Isolation, Mount, PortMapping, RunOptions

REF = ModuleRef(Path("/store/m.wasm"), "sha256:" + "a" * 64)
W = Isolation.WASM


def test_argv_env_and_preopens(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    config = ImageConfig(entrypoint=("/app/x.wasm",), cmd=("default",), env=("A=1", "B=2"))
    opts = RunOptions(
        isolation=W,
        command=("given",),
        env=("B=3", "C=4", "NOVALUE"),
        mounts=(Mount("/data", source=str(vol)), Mount("/ro", source=str(vol), readonly=True)),
        memory=1 << 20,
    )
    plan = build_plan(config, opts, REF, rootfs=tmp_path, from_layer=False, timeout=2.5, fuel=10)
    assert plan.args == ("/app/x.wasm", "given")
    assert plan.env == (("A", "1"), ("B", "3"), ("C", "4"))
    assert plan.preopens == (
        Preopen(str(tmp_path), "/", True),
        Preopen(str(vol), "/data", False),
        Preopen(str(vol), "/ro", True),
    )
    assert plan.limits == Limits(memory=1 << 20, timeout=2.5, fuel=10)
    assert WasmPlan.from_json(plan.to_json()) == plan


def test_entrypoint_override_drops_cmd() -> None:
    config = ImageConfig(entrypoint=("/a.wasm",), cmd=("x",))
    plan = build_plan(
        config, RunOptions(isolation=W, entrypoint=("/b.wasm",)), REF, rootfs=None, from_layer=False
    )
    assert plan.args == ("/b.wasm",)
    assert plan.preopens == ()


def test_layer_image_args_are_module_args() -> None:
    plan = build_plan(
        ImageConfig(),
        RunOptions(isolation=W, command=("a", "b")),
        REF,
        rootfs=None,
        from_layer=True,
    )
    assert plan.args == ("module.wasm", "a", "b")


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        (RunOptions(mounts=(Mount("/t", kind="tmpfs"),)), "tmpfs mounts are not supported"),
        (RunOptions(mounts=(Mount("/t", source="/nonexistent/x"),)), "not a directory"),
        (RunOptions(mounts=(Mount("rel", source="/tmp"),)), "must be absolute"),
        (RunOptions(publish=(PortMapping(8080, 80),)), "port publishing"),
        (RunOptions(memory=1000), "at least one Wasm page"),
    ],
)
def test_bad_options(opts: RunOptions, match: str) -> None:
    with pytest.raises(WasmError, match=match):
        build_plan(ImageConfig(cmd=("/x.wasm",)), opts, REF, rootfs=None, from_layer=False)


def test_bad_limits() -> None:
    with pytest.raises(WasmError, match="timeout must be positive"):
        build_plan(ImageConfig(), RunOptions(), REF, rootfs=None, from_layer=True, timeout=0)
    with pytest.raises(WasmError, match="fuel budget"):
        build_plan(ImageConfig(), RunOptions(), REF, rootfs=None, from_layer=True, fuel=-1)


def test_merge_env_later_wins() -> None:
    assert merge_env(("A=1", "A=2"), ("A=3",)) == (("A", "3"),)


def test_malformed_plan_json() -> None:
    with pytest.raises(WasmError, match="malformed Wasm plan"):
        WasmPlan.from_json(b'{"module": 1}')
