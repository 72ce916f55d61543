"""Finding the module: Wasm layers, compat images, hostile paths."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bareboat.backends.wasm.module import (
    is_wasm_image,
    module_argv,
    module_from_blob,
    module_from_rootfs,
    resolve_in_root,
    wasm_layer,
)
from bareboat.errors import WasmError
from bareboat.images.model import Image, ImageConfig, Layer

from . import wat

TAR = "application/vnd.oci.image.layer.v1.tar+gzip"
COMPAT = {"module.wasm.image/variant": "compat"}


def image(
    layers: list[str], entrypoint: tuple[str, ...] = (), labels: dict[str, str] | None = None
) -> Image:
    return Image(
        id="sha256:" + "1" * 64,
        digest="sha256:" + "2" * 64,
        names=(),
        config=ImageConfig(entrypoint=entrypoint, labels=labels or {}),
        layers=tuple(
            Layer(digest=f"sha256:{i:064x}", media_type=mt, size=1) for i, mt in enumerate(layers)
        ),
        size=1,
    )


@pytest.mark.parametrize("mt", ["application/wasm", "application/vnd.wasm.content.layer.v1+wasm"])
def test_wasm_layer_images(mt: str) -> None:
    img = image([mt])
    assert is_wasm_image(img)
    assert wasm_layer(img) == img.layers[0]


def test_compat_needs_label_and_wasm_entrypoint() -> None:
    assert is_wasm_image(image([TAR], ("/app/x.wasm",), COMPAT))
    assert not is_wasm_image(image([TAR], ("/app/x.wasm",)))  # a name alone changes nothing
    assert not is_wasm_image(image([TAR], ("/bin/sh",), COMPAT))
    assert not is_wasm_image(image([TAR]))
    assert is_wasm_image(image([TAR], ("/app/x.wasm",)), {"module.wasm.image/variant": "compat"})


def test_module_argv() -> None:
    assert module_argv(("/app/x.wasm", "a"), from_layer=False) == ("/app/x.wasm", "a")
    assert module_argv(("a", "b"), from_layer=True) == ("module.wasm", "a", "b")
    assert module_argv((), from_layer=True) == ("module.wasm",)
    assert module_argv(("x.wasm", "b"), from_layer=True) == ("x.wasm", "b")


def test_module_from_rootfs(tmp_path: Path) -> None:
    data = wat.hello()
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "hello.wasm").write_bytes(data)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "hello").symlink_to("/app/hello.wasm")  # absolute: inside the image
    for argv0 in ("/app/hello.wasm", "app/hello.wasm", "/bin/hello", "/../../app/hello.wasm"):
        ref = module_from_rootfs(tmp_path, argv0)
        assert ref.path == tmp_path / "app" / "hello.wasm"
        assert ref.digest == "sha256:" + hashlib.sha256(data).hexdigest()


def test_symlink_cannot_leave_rootfs(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    (tmp_path / "outside.wasm").write_bytes(wat.hello())
    (root / "escape.wasm").symlink_to("../outside.wasm")
    (root / "abs.wasm").symlink_to(tmp_path / "outside.wasm")
    for name in ("/escape.wasm", "/abs.wasm"):
        with pytest.raises(WasmError, match="not found in the image"):
            module_from_rootfs(root, name)


def test_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(WasmError, match="too many symbolic links"):
        resolve_in_root(tmp_path, "/a")


def test_not_a_module(tmp_path: Path) -> None:
    (tmp_path / "x.wasm").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "d.wasm").mkdir()
    with pytest.raises(WasmError, match="bad magic"):
        module_from_rootfs(tmp_path, "/x.wasm")
    with pytest.raises(WasmError, match="not a regular file"):
        module_from_rootfs(tmp_path, "/d.wasm")
    with pytest.raises(WasmError, match="no command"):
        module_from_rootfs(tmp_path, "")


def test_blob_digest_checked(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(wat.hello())
    good = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert module_from_blob(blob, good).digest == good
    with pytest.raises(WasmError, match="does not match"):
        module_from_blob(blob, "sha256:" + "0" * 64)


_WORDS = ["a", "b", "..", ".", "up", "abs", "loop", "deep", "x.wasm"]


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root whose symlinks try every way out: relative, absolute, loops, chains."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "root"
    (root / "a" / "b").mkdir(parents=True)
    (base / "x.wasm").write_bytes(b"\0asm outside")
    (root / "a" / "x.wasm").write_bytes(b"\0asm inside")
    (root / "up").symlink_to("../../..")
    (root / "a" / "up").symlink_to("../../../x.wasm")
    (root / "abs").symlink_to(base)
    (root / "a" / "abs").symlink_to("/a/b/../../up/x.wasm")
    (root / "loop").symlink_to("loop")
    (root / "a" / "b" / "deep").symlink_to("../up/../abs")
    return root


@given(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=8), st.booleans())
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_resolve_never_leaves_root(hostile_root: Path, words: list[str], absolute: bool) -> None:
    path = ("/" if absolute else "") + "/".join(words)
    try:
        got = resolve_in_root(hostile_root, path)
    except WasmError:
        return  # missing or a loop: refused, which is fine
    real = Path(os.path.realpath(got))
    assert real == hostile_root.resolve() or hostile_root.resolve() in real.parents, (path, real)


def test_prepare_carries_only_the_compat_mark(tmp_path: Path) -> None:
    """Image labels never become annotations; the engine itself carries the compat mark the
    backend reads, and blanks the module annotations."""
    from bareboat.backends.wasm.hooks import prepare
    from bareboat.spec.options import Isolation, RunOptions

    labels = {**COMPAT, "io.bareboat.wasm.timeout": "0.001", "other": "x"}
    img = image([TAR], entrypoint=("/app/main",), labels=labels)
    options, root = prepare(
        img, RunOptions(isolation=Isolation.WASM), images=None, empty_root=tmp_path / "e"
    )
    assert root is None
    assert options.labels == {
        **COMPAT,
        "io.bareboat.wasm.module": "",
        "io.bareboat.wasm.digest": "",
    }
    options, _ = prepare(
        image([TAR]), RunOptions(isolation=Isolation.WASM), images=None, empty_root=tmp_path
    )
    assert "module.wasm.image/variant" not in options.labels
