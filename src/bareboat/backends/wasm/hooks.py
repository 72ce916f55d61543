"""What the engine asks of the wasm backend before it builds a container's spec.

A Wasm-layer image (its one layer *is* the module) has no filesystem to unpack: the container
gets an empty root, and the module's blob is named in the spec's annotations for the backend
to find (`module.engine_annotations`). Compat images (a `*.wasm` entrypoint in an ordinary
root filesystem) need nothing here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from bareboat.errors import WasmError

from .module import (
    ANN_DIGEST,
    ANN_MODULE,
    COMPAT_KEY,
    engine_annotations,
    is_compat,
    is_wasm_image,
    wasm_layer,
)

if TYPE_CHECKING:
    from bareboat.images.model import Image
    from bareboat.spec.options import RunOptions

PLACEHOLDER_ARGV0 = "module.wasm"


def prepare(
    image: Image, options: RunOptions, *, images: object, empty_root: Path
) -> tuple[RunOptions, Path | None]:
    """(options, root): options with the module's annotations, and the root filesystem to use
    instead of the image's (None: the image's own)."""
    if options.publish:
        raise WasmError("port publishing (-p) is not supported with wasm isolation (no sockets)")
    if wasm_layer(image) is None:
        # The module is the entrypoint: no --label names another. Image labels never become
        # annotations (spec.builder); only the compat mark is carried, as the backend reads
        # it to take a command without `.wasm` for a module of the image's own.
        ann = {ANN_MODULE: "", ANN_DIGEST: ""}
        if is_compat(image):
            ann[COMPAT_KEY] = image.config.labels[COMPAT_KEY]
        return dataclasses.replace(options, labels={**options.labels, **ann}), None
    blobs = getattr(images, "blobs", None)
    path = getattr(blobs, "path", None)
    if path is None:
        raise WasmError("this image source cannot hand out Wasm layer blobs")
    labels = {**options.labels, **engine_annotations(image, path)}
    command = options.command
    config = image.config
    if command is None and options.entrypoint is None and not (config.entrypoint or config.cmd):
        # The spec needs an argv; a Wasm-layer module's argv[0] is only a name.
        command = (PLACEHOLDER_ARGV0,)
    empty_root.mkdir(mode=0o755, parents=True, exist_ok=True)
    return dataclasses.replace(options, labels=labels, command=command), empty_root


def auto_isolation(image: Image, options: RunOptions) -> RunOptions:
    """`--isolation auto`: wasm for a Wasm-layer image or a compat image with a `.wasm`
    entrypoint (module.is_wasm_image), container for everything else."""
    from bareboat.spec.options import Isolation

    wasm = is_wasm_image(image)
    return dataclasses.replace(options, isolation=Isolation.WASM if wasm else Isolation.CONTAINER)
