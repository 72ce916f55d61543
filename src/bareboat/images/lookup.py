"""The image of `run`, found without the store's decoders.

`run` needs of an image only its config and its unpacked root, and almost always the image is
in the store already, under the name the user gives. The store's own lookup (`ImageStore.get`)
decodes the manifest and the config with the wire Structs, and importing msgspec and defining
them costs more than the rest of a container's start-up in Python here. So a named image is
found from files the store wrote and checked itself, and read with the standard library:

- `names.json`: the name -> manifest digest table;
- `manifests/<hex>.json`: the image's record, present only while the store has every blob;
- `views/<hex>.json`: what `ImageStore.get` made of that manifest (ids, layers, config), kept
  by `remember` after a first lookup through the store. A manifest digest names its content,
  so a view never goes stale; one of an image no longer in the store is never read (its record
  is gone), and `forget_views` removes those.

Anything else (an id or a digest prefix, a name not in the store, a view not kept yet, a file
that does not read back as written) goes to the store, which may pull.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bareboat.images.model import Image, ImageConfig, Layer
from bareboat.images.reference import parse_reference
from bareboat.paths import Roots

TYPE_CHECKING = False  # typing costs import time on every `run`; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any

    from bareboat.images.blobs import BlobStore
    from bareboat.images.store import ImageStore

VIEWS = "views"
# What `ImageStore.get` reads as an image id or digest prefix, never as a name.
_HEX_PREFIX = re.compile(r"(?:sha256:)?[0-9a-f]{3,64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class Images:
    """The engine's image source for `run`: `ensure` and `rootfs` as the store's, through
    the files above where they answer, through the store itself otherwise."""

    def __init__(self, roots: Roots) -> None:
        self.roots = roots
        self.root = roots.make_private().images
        self._store: ImageStore | None = None

    @property
    def store(self) -> ImageStore:
        if self._store is None:
            from bareboat.images.store import ImageStore

            self._store = ImageStore(self.roots)
        return self._store

    def ensure(self, ref: str) -> Image:
        image = find(self.root, ref)
        if image is None:
            image = self.store.ensure(ref)
            remember(self.root, image)
        return image

    @property
    def blobs(self) -> BlobStore:
        """The store's blobs (a Wasm layer is run from its blob)."""
        return self.store.blobs

    def rootfs(self, image: Image) -> Path:
        dest = self.root / "rootfs" / image.id.split(":", 1)[1]
        return dest if dest.is_dir() else self.store.rootfs(image)


def find(root: Path, ref: str) -> Image | None:
    """The image the store has under the name `ref`, from its kept view; None when the store
    must answer."""
    from bareboat.errors import InvalidReference

    if _HEX_PREFIX.fullmatch(ref):
        return None
    try:
        name = parse_reference(ref)
    except InvalidReference:
        return None
    try:
        names = json.loads((root / "names.json").read_bytes())
        digest = names.get(str(name)) or name.digest
        if not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
            return None
        hexd = digest.split(":", 1)[1]
        if not (root / "manifests" / f"{hexd}.json").is_file():
            return None
        view = json.loads((root / VIEWS / f"{hexd}.json").read_bytes())
        return _from_view(view, digest, names)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def remember(root: Path, image: Image) -> None:
    """Keep the view of `image` (just made by the store) for the next `find`."""
    from bareboat.errors import StoreError
    from bareboat.fsutil import atomic_write
    from bareboat.privdir import private_dir

    if not _DIGEST.fullmatch(image.digest):
        return
    c = image.config
    view = {
        "id": image.id,
        "digest": image.digest,
        "size": image.size,
        "layers": [[x.digest, x.media_type, x.size, x.diff_id] for x in image.layers],
        "config": {
            "entrypoint": list(c.entrypoint),
            "cmd": list(c.cmd),
            "env": list(c.env),
            "workdir": c.workdir,
            "user": c.user,
            "exposed_ports": list(c.exposed_ports),
            "labels": dict(c.labels),
            "stop_signal": c.stop_signal,
            "architecture": c.architecture,
            "os": c.os,
        },
    }
    hexd = image.digest.split(":", 1)[1]
    try:
        private_dir(root / VIEWS)
        atomic_write(root / VIEWS / f"{hexd}.json", json.dumps(view).encode(), durable=False)
    except (OSError, StoreError):
        pass  # only a cache: the next run asks the store again


def forget_views(root: Path) -> None:
    """Remove the views of images the store no longer has (after rmi or prune)."""
    try:
        entries = os.listdir(root / VIEWS)
    except FileNotFoundError:
        return
    for e in entries:
        if not (root / "manifests" / e).exists():
            (root / VIEWS / e).unlink(missing_ok=True)


def _strings(value: Any) -> tuple[str, ...]:
    if not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
        raise TypeError("not a list of strings")
    return tuple(value)


def _from_view(view: dict[str, Any], digest: str, names: dict[str, str]) -> Image:
    c = view["config"]
    labels = c["labels"]
    if not isinstance(labels, dict) or view["digest"] != digest:
        raise TypeError("not a view of this image")
    config = ImageConfig(
        entrypoint=_strings(c["entrypoint"]),
        cmd=_strings(c["cmd"]),
        env=_strings(c["env"]),
        workdir=str(c["workdir"]),
        user=str(c["user"]),
        exposed_ports=_strings(c["exposed_ports"]),
        labels={str(k): str(v) for k, v in labels.items()},
        stop_signal=str(c["stop_signal"]),
        architecture=str(c["architecture"]),
        os=str(c["os"]),
    )
    layers = tuple(Layer(str(d), str(m), int(s), str(i)) for d, m, s, i in view["layers"])
    return Image(
        id=str(view["id"]),
        digest=digest,
        names=tuple(sorted(n for n, d in names.items() if d == digest)),
        config=config,
        layers=layers,
        size=int(view["size"]),
    )
