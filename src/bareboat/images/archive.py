"""`load` and `save`: OCI image layouts (directory or tar) and docker-archive tars.

Archives are untrusted like registries: member names are looked up, never extracted as given;
every blob is verified against its digest and size while it is copied into the store; JSON
documents are size bounded and decoded by `wire`. An image's blobs must fit its disk cap
(diskcap.py) by their sizes before any is copied: a tar member can be sparse, so a small
archive can hold a huge blob.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

import msgspec

from bareboat.errors import DigestMismatch, ImageError, InvalidReference, ManifestError
from bareboat.fsutil import atomic_open
from bareboat.images import wire
from bareboat.images.blobs import CHUNK
from bareboat.images.diskcap import disk_cap, short_digest
from bareboat.images.model import Image
from bareboat.images.reference import Reference, parse_reference

if TYPE_CHECKING:
    from bareboat.images.store import ImageStore

_TAG = re.compile(r"[\w][\w.-]{0,127}")


class DockerManifestEntry(
    msgspec.Struct, rename={"config": "Config", "repo_tags": "RepoTags", "layers": "Layers"}
):
    config: str
    layers: list[str]
    repo_tags: list[str] | None = None


# --- sources: a directory or a tar, read by member name ----------------------------------


class Source:
    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def read(self, name: str, limit: int = wire.MAX_DOCUMENT) -> bytes:
        with self.open(name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise ManifestError(f"{name} in the archive is larger than {limit} bytes")
        return data

    def close(self) -> None:
        pass


def _clean(name: str) -> str:
    norm = posixpath.normpath(name.lstrip("/"))
    if norm.startswith("..") or norm == ".":
        raise ManifestError(f"archive member {name!r} escapes the archive")
    return norm


class DirSource(Source):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        p = self.root / _clean(name)
        # Refuse symlinks that lead out of the layout.
        if not p.resolve().is_relative_to(self.root.resolve()):
            raise ManifestError(f"archive member {name!r} escapes the archive")
        return p

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def size(self, name: str) -> int:
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            raise ManifestError(f"{name} is missing from {self.root}") from None

    def open(self, name: str) -> IO[bytes]:
        try:
            return self._path(name).open("rb")
        except FileNotFoundError:
            raise ManifestError(f"{name} is missing from {self.root}") from None


MAX_MEMBERS = 100_000  # an image archive holds a few files per layer, not millions


class TarSource(Source):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
        except (tarfile.TarError, OSError) as err:
            raise ImageError(f"cannot read archive {path}: {err}") from None
        try:
            # Read the member list ourselves, with a bound, instead of getmembers().
            while (m := self.tar.next()) is not None:
                if len(self.members) >= MAX_MEMBERS:
                    raise ManifestError(f"{path} has more than {MAX_MEMBERS} members")
                norm = posixpath.normpath(m.name.lstrip("/"))
                if norm != "." and not norm.startswith(".."):
                    self.members[norm] = m  # escaping names are never looked up
        except (tarfile.TarError, OSError) as err:
            self.tar.close()
            raise ImageError(f"cannot read archive {path}: {err}") from None
        except BaseException:
            self.tar.close()
            raise

    def _member(self, name: str, depth: int = 0) -> tarfile.TarInfo:
        m = self.members.get(_clean(name))
        if m is None:
            raise ManifestError(f"{name} is missing from {self.path}")
        if (m.issym() or m.islnk()) and depth < 4:
            base = posixpath.dirname(_clean(name)) if m.issym() else ""
            return self._member(posixpath.join(base, m.linkname), depth + 1)
        if not m.isfile():
            raise ManifestError(f"{name} in {self.path} is not a regular file")
        return m

    def exists(self, name: str) -> bool:
        return _clean(name) in self.members

    def size(self, name: str) -> int:
        return self._member(name).size

    def open(self, name: str) -> IO[bytes]:
        f = self.tar.extractfile(self._member(name))
        assert f is not None
        return f

    def close(self) -> None:
        self.tar.close()


@contextlib.contextmanager
def open_source(path: Path) -> Iterator[Source]:
    if path.is_dir():
        yield DirSource(path)
        return
    if not path.is_file():
        raise ImageError(f"{path}: no such file or directory")
    src = TarSource(path)
    try:
        yield src
    finally:
        src.close()


# --- load -----------------------------------------------------------------------------------


def _copy_blob(store: ImageStore, src: Source, d: wire.Descriptor) -> None:
    if store.blobs.has(d.digest):
        return
    with src.open(f"blobs/sha256/{d.digest.split(':')[1]}") as f:
        store.blobs.put_stream(iter(lambda: f.read(CHUNK), b""), d.digest, d.size)


def _verified(src: Source, d: wire.Descriptor) -> bytes:
    data = src.read(f"blobs/sha256/{d.digest.split(':')[1]}")
    if len(data) != d.size or store_digest(data) != d.digest:
        raise DigestMismatch(f"blob {d.digest} in the archive does not match its digest or size")
    return data


def store_digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layout_name(desc: wire.Descriptor, stem: str) -> str | None:
    ann = desc.annotations or {}
    for key in (wire.CONTAINERD_NAME, wire.REF_NAME):
        value = ann.get(key, "")
        if not value:
            continue
        if key == wire.REF_NAME and _TAG.fullmatch(value):
            # A bare tag names no repository: use the archive's name, as podman does.
            repo = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("._-") or "image"
            value = f"localhost/{repo}:{value}"
        with contextlib.suppress(InvalidReference):
            return str(parse_reference(value))
    return None


def _load_layout(store: ImageStore, src: Source, stem: str) -> list[Image]:
    from bareboat.images.platform import host_platform, pick_manifest

    index = wire.decode_index(src.read("index.json"))
    out = []
    for desc in index.manifests:
        mdesc = desc
        if desc.media_type in wire.INDEX_TYPES:
            nested = wire.decode_index(_verified(src, desc))
            mdesc = pick_manifest(nested.manifests, host_platform())
        data = _verified(src, mdesc)
        if wire.sniff_media_type(data, mdesc.media_type) not in wire.MANIFEST_TYPES:
            continue  # artifacts and other documents are not images
        man = wire.decode_manifest(data)
        # The config is refused (oversized, malformed) before any blob enters the store.
        wire.decode_config(_verified(src, man.config))
        fetch = {d.digest: d for d in (man.config, *man.layers) if not store.blobs.has(d.digest)}
        disk_cap(store.root).check_blobs([(short_digest(d.digest), d.size) for d in fetch.values()])
        for d in (man.config, *man.layers):
            _copy_blob(store, src, d)
        name = _layout_name(desc, stem)
        out.append(store.commit(data, [name] if name else []))
    return out


def _sniff_layer(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return wire.OCI_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return wire.OCI_LAYER_ZSTD
    return wire.OCI_LAYER


def _load_docker(store: ImageStore, src: Source) -> list[Image]:
    try:
        entries = msgspec.json.decode(src.read("manifest.json"), type=list[DockerManifestEntry])
    except msgspec.MsgspecError as err:
        raise ManifestError(f"invalid docker-archive manifest.json: {err}") from None
    out = []
    for entry in entries:
        cfg_data = src.read(entry.config)
        cfg = wire.decode_config(cfg_data)
        if len(cfg.rootfs.diff_ids) != len(entry.layers):
            raise ManifestError("docker-archive config and manifest.json disagree on layers")
        # No digests to look up the store with: every layer counts, as the archive has it.
        disk_cap(store.root).check_blobs(
            [(entry.config, len(cfg_data))] + [(n, src.size(n)) for n in entry.layers]
        )
        config_digest = store.blobs.put(cfg_data)
        layers = []
        for i, name in enumerate(entry.layers):
            with src.open(name) as f:
                head = f.read(4)
                digest, size = store.blobs.ingest(
                    _chain(head, iter(lambda f=f: f.read(CHUNK), b""))  # type: ignore[misc]
                )
            mt = _sniff_layer(head)
            if mt == wire.OCI_LAYER and digest != cfg.rootfs.diff_ids[i]:
                raise DigestMismatch(
                    f"layer {name} does not match diff_id {cfg.rootfs.diff_ids[i]}"
                )
            layers.append({"mediaType": mt, "digest": digest, "size": size})
        manifest = {
            "schemaVersion": 2,
            "mediaType": wire.OCI_MANIFEST,
            "config": {
                "mediaType": wire.OCI_CONFIG,
                "digest": config_digest,
                "size": len(cfg_data),
            },
            "layers": layers,
        }
        names = []
        for tag in entry.repo_tags or []:
            names.append(str(parse_reference(tag)))
        out.append(store.commit(json.dumps(manifest).encode(), names))
    return out


def _chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


def load(store: ImageStore, path: Path) -> list[Image]:
    stem = path.name.removesuffix(".tar").removesuffix(".tgz") or "image"
    with open_source(path) as src:
        if src.exists("index.json"):
            return _load_layout(store, src, stem)
        if src.exists("manifest.json"):
            return _load_docker(store, src)
    raise ImageError(f"{path} is neither an OCI image layout nor a docker-archive")


# --- save -----------------------------------------------------------------------------------


def _annotations(ref: str, image: Image) -> dict[str, str]:
    r: Reference | None = None
    with contextlib.suppress(InvalidReference):
        r = parse_reference(ref)
    name = str(r) if r is not None and str(r) in image.names else ""
    if not name and image.names:
        name = image.names[0]
    if not name:
        return {}
    parsed = parse_reference(name)
    ann = {wire.CONTAINERD_NAME: name}
    if parsed.tag:
        ann[wire.REF_NAME] = parsed.tag
    return ann


def _write_layout(store: ImageStore, images: list[tuple[str, Image]], root: Path) -> None:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    manifests = []
    for ref, image in images:
        data = store.blobs.read(image.digest)
        mt = wire.sniff_media_type(data)
        man = wire.decode_manifest(data)
        for d in (image.digest, man.config.digest, *(x.digest for x in man.layers)):
            target = blobs / d.split(":")[1]
            if not target.exists():
                shutil.copyfile(store.blobs.path(d), target)
        desc = wire.Descriptor(
            media_type=mt,
            digest=image.digest,
            size=len(data),
            annotations=_annotations(ref, image) or None,
        )
        manifests.append(desc)
    index = wire.Index(schema_version=2, manifests=manifests, media_type=wire.OCI_INDEX)
    (root / "index.json").write_bytes(wire.encode(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


def save(store: ImageStore, images: list[tuple[str, Image]], dest: Path) -> None:
    """Write an OCI image layout at `dest` (a tar when it ends in .tar), all or nothing."""
    dest = dest.absolute()
    as_tar = dest.suffix == ".tar"
    if not as_tar and dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ImageError(f"{dest} exists and is not an empty directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _write_layout(store, images, tmp)
        if as_tar:
            with atomic_open(dest) as f, tarfile.open(fileobj=f, mode="w") as tar:
                for name in ("oci-layout", "index.json", "blobs"):
                    tar.add(tmp / name, arcname=name, filter=_normalize)
        else:
            if dest.exists():
                dest.rmdir()
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _normalize(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mode = 0o755 if ti.isdir() else 0o644
    return ti


__all__ = ["load", "save"]
