"""Find the Wasm module an image runs, and decide whether an image is a Wasm image at all.

Two conventions exist, and both are honoured:

- **Wasm layer** (the OCI Wasm artifact, what `wasm-to-oci` and runwasi use): one layer whose
  media type is `application/wasm` or `application/vnd.wasm.content.layer.v1+wasm` *is* the
  module (raw bytes, not a tar).
- **compat** (crun's Wasm handler, runwasi's "compat" images): an ordinary image whose
  entrypoint is a `*.wasm` file in its root filesystem, marked with the label/annotation
  `module.wasm.image/variant=compat`. With an explicit `--isolation wasm` the annotation is not
  needed; `--isolation auto` needs it, so a `.wasm` name alone never changes how an image runs.

Everything read here is untrusted image content: the entrypoint path is resolved *inside* the
root filesystem (symlinks included) and the file must be a regular file that starts with the
Wasm magic and stays under a size bound.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from bareboat.errors import WasmError

if TYPE_CHECKING:
    from bareboat.images.model import Image, Layer

WASM_MEDIA_TYPES = frozenset({"application/wasm", "application/vnd.wasm.content.layer.v1+wasm"})
COMPAT_KEY = "module.wasm.image/variant"
COMPAT_VALUES = frozenset({"compat", "compat-smart"})
WASM_MAGIC = b"\0asm"
# No real WASI program comes near this; it bounds what a hostile image can make us hash/compile.
MAX_MODULE_BYTES = 256 << 20
_MAX_SYMLINKS = 40
# Spec annotations by which the engine tells the backend where a Wasm layer's module is.
ANN_MODULE = "io.bareboat.wasm.module"
ANN_DIGEST = "io.bareboat.wasm.digest"


@dataclass(frozen=True)
class ModuleRef:
    """A module on the host: where its bytes are and their sha256 digest (the cache key)."""

    path: Path
    digest: str


def wasm_layer(image: Image) -> Layer | None:
    """The layer that is the module, for Wasm-artifact images (the last such layer wins)."""
    found = [layer for layer in image.layers if layer.media_type in WASM_MEDIA_TYPES]
    return found[-1] if found else None


def is_compat(image: Image, annotations: dict[str, str] | None = None) -> bool:
    """True when the image (label) or its manifest (annotation) says `variant=compat`."""
    for source in (image.config.labels, annotations or {}):
        if source.get(COMPAT_KEY, "") in COMPAT_VALUES:
            return True
    return False


def image_argv(image: Image) -> tuple[str, ...]:
    return image.config.entrypoint + image.config.cmd


def is_wasm_image(image: Image, annotations: dict[str, str] | None = None) -> bool:
    """Whether `--isolation auto` should pick wasm for this image."""
    if wasm_layer(image) is not None:
        return True
    argv = image_argv(image)
    return bool(argv) and argv[0].endswith(".wasm") and is_compat(image, annotations)


def engine_annotations(image: Image, blob_path: Callable[[str], Path]) -> dict[str, str]:
    """What the engine adds to the spec's annotations for a Wasm-layer image (else nothing).

    `blob_path` maps a digest to its file in the store (`ImageStore.blobs.path`).
    """
    layer = wasm_layer(image)
    if layer is None:
        return {}
    return {ANN_MODULE: str(blob_path(layer.digest)), ANN_DIGEST: layer.digest}


def module_argv(argv: tuple[str, ...], *, from_layer: bool) -> tuple[str, ...]:
    """The module's WASI argv.

    For compat images argv[0] is the `.wasm` path, as for any process. A Wasm-layer image has
    its module fixed, so when the command does not name a `.wasm` file the words given are the
    module's arguments (argv[1:]) and argv[0] is a placeholder, as runwasi does.
    """
    if from_layer and (not argv or not argv[0].endswith(".wasm")):
        return ("module.wasm", *argv)
    return argv


def resolve_in_root(root: Path, path: str) -> Path:
    """The host path of `path` as the image sees it, following symlinks *inside* `root`.

    Absolute link targets and `..` are taken relative to the image root and can never climb
    above it (the semantics of openat2's RESOLVE_IN_ROOT).
    """
    parts = list(PurePosixPath("/", path).parts[1:])
    resolved: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, name)
        try:
            st = candidate.lstat()
        except (FileNotFoundError, NotADirectoryError):
            raise WasmError(f"module {path!r} not found in the image") from None
        except OSError as err:
            raise WasmError(f"cannot resolve module {path!r}: {err.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise WasmError(f"too many symbolic links resolving module {path!r}")
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                resolved = []
            parts = [p for p in target.parts if p != "/"] + parts
            continue
        resolved.append(name)
    return root.joinpath(*resolved)


def _check_and_hash(path: Path, what: str) -> str:
    """Open without following a final symlink, check type/size/magic, return the digest."""
    try:
        # O_NONBLOCK: a FIFO planted in an image must not hang us at open.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise WasmError(f"cannot open {what}: {err.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise WasmError(f"{what} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_MODULE_BYTES:
            raise WasmError(f"{what} is {st.st_size} bytes, over the {MAX_MODULE_BYTES} limit")
        if f.read(4) != WASM_MAGIC:
            raise WasmError(f"{what} is not a WebAssembly module (bad magic)")
        f.seek(0)
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def module_from_rootfs(rootfs: Path, argv0: str) -> ModuleRef:
    """The compat convention: the entrypoint names a `.wasm` file inside the rootfs."""
    if not argv0:
        raise WasmError("no command given and the image has no entrypoint")
    path = resolve_in_root(rootfs, argv0)
    return ModuleRef(path=path, digest=_check_and_hash(path, f"module {argv0!r}"))


def module_from_blob(path: Path, digest: str = "") -> ModuleRef:
    """A Wasm layer's blob. The store already verified `digest`; we still check the magic."""
    computed = _check_and_hash(path, f"Wasm layer {digest or path.name}")
    if digest and computed != digest:
        raise WasmError(f"Wasm layer {digest} does not match its content ({computed})")
    return ModuleRef(path=path, digest=computed)
