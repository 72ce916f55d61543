"""The image store: content-addressed blobs, one record per image, names -> digests.

Layout under `roots.images`:

    blobs/sha256/<hex>     every manifest, config and layer blob, verified before entry
    tmp/                   downloads in flight (flocked by their writer; leftovers are removed)
    manifests/<hex>.json   one record per image (manifest digest); written only after all
                           of the image's blobs are in `blobs/`, so a record never lies
    names.json             {"docker.io/library/busybox:latest": "sha256:<manifest>"}
    rootfs/<id hex>/       the unpacked root filesystem, once per image id, shared, read-only
    locks/                 gc.lock (shared by writers, exclusive for prune/rmi),
                           names.lock, rootfs-<hex>.lock

Every write is a temp file + rename, so a store opened after a crash is consistent. The store
and its blobs/, tmp/ and rootfs/ are 0700 (bareboat.privdir): unpacked trees keep the image's
setuid files and device nodes, which no other local user may reach.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from bareboat.errors import (
    AuthError,
    ImageNotFound,
    ImageTooLarge,
    InvalidReference,
    ManifestError,
    RegistryError,
    StoreError,
)
from bareboat.fsutil import atomic_write
from bareboat.images import wire
from bareboat.images.blobs import BlobStore, Tail
from bareboat.images.diskcap import disk_cap, short_digest
from bareboat.images.model import Image, ImageConfig, Layer
from bareboat.images.progress import Progress, make_progress
from bareboat.images.reference import DIGEST_RE, Reference, is_digest, parse_reference
from bareboat.paths import Roots
from bareboat.privdir import private_dir

if TYPE_CHECKING:
    from bareboat.images.auth import Credentials
    from bareboat.images.registry import RegistryClient
    from bareboat.images.unpack import StreamingUnpack

PARALLEL_DOWNLOADS = 4
DOWNLOAD_ATTEMPTS = 3
_HEX_PREFIX = re.compile(r"(?:sha256:)?([0-9a-f]{3,64})")


@dataclass(frozen=True)
class PruneResult:
    images: int = 0
    blobs: int = 0
    bytes: int = 0
    rootfs: int = 0
    temp: int = 0


class Record(msgspec.Struct, frozen=True):
    digest: str
    config: str


class _Cancelled(Exception):
    pass


@contextlib.contextmanager
def _flock(path: Path, exclusive: bool) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def image_config(cfg: wire.Config) -> ImageConfig:
    c = cfg.config or wire.ContainerConfig()
    return ImageConfig(
        entrypoint=tuple(c.entrypoint or ()),
        cmd=tuple(c.cmd or ()),
        env=tuple(c.env or ()),
        workdir=c.working_dir,
        user=c.user,
        exposed_ports=tuple(sorted(c.exposed_ports or {})),
        labels=dict(c.labels or {}),
        stop_signal=c.stop_signal,
        architecture=cfg.architecture,
        os=cfg.os,
    )


class ImageStore:
    def __init__(self, roots: Roots) -> None:
        self.root = roots.make_private().images
        self.blobs = BlobStore(self.root)
        self._records = self.root / "manifests"
        self._names = self.root / "names.json"
        self._rootfs = self.root / "rootfs"
        self._locks = self.root / "locks"

    # --- locks and names ------------------------------------------------------------------

    def _gc_lock(self, exclusive: bool = False) -> contextlib.AbstractContextManager[None]:
        """Writers share it; prune and rmi take it alone, so no blob vanishes mid-pull."""
        return _flock(self._locks / "gc.lock", exclusive)

    def _read_names(self) -> dict[str, str]:
        try:
            data = self._names.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            names = msgspec.json.decode(data, type=dict[str, str])
        except msgspec.MsgspecError:
            raise StoreError(f"{self._names} is corrupt; remove it to forget all names") from None
        return names

    @contextlib.contextmanager
    def _edit_names(self) -> Iterator[dict[str, str]]:
        with _flock(self._locks / "names.lock", True):
            names = self._read_names()
            yield names
            atomic_write(self._names, msgspec.json.encode(dict(sorted(names.items()))))

    # --- records --------------------------------------------------------------------------

    def _record_path(self, digest: str) -> Path:
        return self._records / f"{digest.split(':', 1)[1]}.json"

    def _records_all(self) -> builtins.list[Record]:
        out = []
        if self._records.is_dir():
            for p in sorted(self._records.glob("*.json")):
                rec = self._load_record(p)
                if rec is not None:
                    out.append(rec)
        return out

    def _load_record(self, path: Path) -> Record | None:
        try:
            return msgspec.json.decode(path.read_bytes(), type=Record)
        except FileNotFoundError:
            return None
        except msgspec.MsgspecError:
            raise StoreError(f"image record {path} is corrupt") from None

    def _image(self, rec: Record, names: dict[str, str]) -> Image:
        mdata = self.blobs.read(rec.digest)
        man = wire.decode_manifest(mdata)
        cfg = wire.decode_config(self.blobs.read(man.config.digest))
        diff_ids = cfg.rootfs.diff_ids
        layers = tuple(
            Layer(d.digest, d.media_type, d.size, diff_ids[i] if i < len(diff_ids) else "")
            for i, d in enumerate(man.layers)
        )
        return Image(
            id=man.config.digest,
            digest=rec.digest,
            names=tuple(sorted(n for n, d in names.items() if d == rec.digest)),
            config=image_config(cfg),
            layers=layers,
            size=sum(x.size for x in man.layers) + man.config.size + len(mdata),
        )

    def commit(self, manifest: bytes, names: builtins.list[str]) -> Image:
        """Enter an image whose config and layer blobs are already in `blobs/`.

        The manifest blob and the record are written last: a record exists only when every
        blob it needs does.
        """
        man = wire.decode_manifest(manifest)
        for d in (man.config, *man.layers):
            if not self.blobs.has(d.digest):
                raise StoreError(f"blob {d.digest} is missing; cannot record the image")
        cfg = wire.decode_config(self.blobs.read(man.config.digest))
        if len(cfg.rootfs.diff_ids) != len(man.layers):
            raise ManifestError(
                f"image config lists {len(cfg.rootfs.diff_ids)} layers, manifest {len(man.layers)}"
            )
        digest = self.blobs.put(manifest)
        atomic_write(
            self._record_path(digest), msgspec.json.encode(Record(digest, man.config.digest))
        )
        with self._edit_names() as table:
            for n in names:
                table[n] = digest
            snapshot = dict(table)
        return self._image(Record(digest, man.config.digest), snapshot)

    # --- lookups --------------------------------------------------------------------------

    def list(self) -> builtins.list[Image]:
        names = self._read_names()
        return [self._image(r, names) for r in self._records_all()]

    def get(self, ref_or_id: str) -> Image:
        """By name (`busybox`, `host:5000/x:tag`), `name@digest`, or full/short image id."""
        names = self._read_names()
        m = _HEX_PREFIX.fullmatch(ref_or_id)
        if m:
            prefix = m.group(1)
            recs = self._records_all()
            found = [r for r in recs if r.config.split(":")[1].startswith(prefix)]
            if not found and is_digest(ref_or_id):
                found = [r for r in recs if r.digest == ref_or_id]
            if len({r.config for r in found}) > 1:
                raise ImageNotFound(f"image id prefix {prefix!r} is ambiguous")
            if found:
                # Several manifests may share one config; prefer a named one.
                found.sort(key=lambda r: r.digest not in names.values())
                return self._image(found[0], names)
        try:
            ref = parse_reference(ref_or_id)
        except InvalidReference:
            if m:
                raise ImageNotFound(f"no image with id {ref_or_id}") from None
            raise
        digest = names.get(str(ref))
        if digest is None and ref.digest:
            digest = ref.digest
        if digest is not None:
            rec = self._load_record(self._record_path(digest))
            if rec is not None:
                return self._image(rec, names)
        raise ImageNotFound(f"image {ref_or_id} not found in the store")

    def ensure(self, ref: str, *, pull: bool = True) -> Image:
        """The image for `run`: from the store, else pulled (and unpacked as it downloads)."""
        try:
            return self.get(ref)
        except ImageNotFound:
            if not pull:
                raise
        return self.pull(ref, unpack=True)

    # --- pull -----------------------------------------------------------------------------

    def pull(
        self,
        ref: str,
        *,
        platform: str | None = None,
        insecure: bool = False,
        auth: Credentials | None = None,
        progress: bool | Progress = True,
        unpack: bool = False,
    ) -> Image:
        """Pull `ref` into the store. With `unpack`, the root filesystem is built while the
        layers download (what `rootfs` would build after), for an image about to run; an
        image too large to unpack here is then not entered at all (ImageTooLarge).

        The blobs to fetch must fit the image's disk cap (diskcap.py) by their declared
        sizes, which the download holds them to, or nothing is fetched."""
        added: builtins.list[str] = []
        try:
            return self._pull(ref, platform, insecure, auth, progress, unpack, added)
        except ImageTooLarge:
            self._forget(added)
            raise

    def _pull(
        self,
        ref: str,
        platform: str | None,
        insecure: bool,
        auth: Credentials | None,
        progress: bool | Progress,
        unpack: bool,
        added: builtins.list[str],
    ) -> Image:
        from bareboat.images.platform import parse_platform, pick_manifest
        from bareboat.images.registry import RegistryClient

        r = parse_reference(ref)
        want = parse_platform(platform)
        self.blobs.clean_tmp()
        with self._gc_lock(), RegistryClient(r, insecure=insecure, credentials=auth) as client:
            top = client.manifest(r.reference)
            mt = wire.sniff_media_type(top.data, top.media_type)
            doc = top
            if mt in wire.INDEX_TYPES:
                index = wire.decode_index(top.data)
                desc = pick_manifest(index.manifests, want)
                doc = client.manifest(desc.digest, desc.digest)
                if wire.sniff_media_type(doc.data, doc.media_type) not in wire.MANIFEST_TYPES:
                    raise ManifestError(f"{r}: index entry {desc.digest} is not a manifest")
            man = wire.decode_manifest(doc.data)
            fetch = {d.digest: d for d in (man.config, *man.layers) if not self.blobs.has(d.digest)}
            disk_cap(self.root).check_blobs(
                [(short_digest(d.digest), d.size) for d in fetch.values()]
            )
            # Verified documents, written (each with its fsync) while the layers download.
            writes: builtins.list[tuple[bytes, str, int]] = []
            if man.config.digest in fetch:
                data = client.blob_bytes(man.config.digest, man.config.size)
                wire.decode_config(data)
                writes.append((data, man.config.digest, man.config.size))
            if not self.blobs.has(doc.digest):
                writes.append((doc.data, doc.digest, len(doc.data)))
            added.extend(digest for _, digest, _ in writes)
            missing = {d.digest: d for d in man.layers if d.digest in fetch}
            added.extend(missing)
            tails: dict[str, Tail] = {}
            job = self._start_unpack(man, missing, tails) if unpack else None
            try:
                # _Cancelled: the unpack refused the image, and its error is raised below.
                with contextlib.suppress(_Cancelled):
                    self._download(
                        client,
                        list(missing.values()),
                        make_progress(progress),
                        tails,
                        stop=(lambda: job.too_large) if job is not None else None,
                        writes=writes,
                    )
                # The record is written while the tree's syncfs runs.
                if job is not None and isinstance(err := job.wait_applied(), ImageTooLarge):
                    raise err
                name = str(r.with_digest(r.digest)) if r.digest else str(r.with_tag(r.tag))
                image = self.commit(doc.data, [name])
                if job is not None:
                    with _flock(self._locks / f"rootfs-{job.dest.name}.lock", True):
                        job.publish()
                return image
            finally:
                for tail in tails.values():
                    tail.finish(ok=False)  # wakes the unpacker if a download never finished
                if job is not None:
                    # A layer refused here is refused again, with its error, by rootfs().
                    job.discard(self._remove_tree)
                for tail in tails.values():
                    tail.close()

    def _start_unpack(
        self,
        man: wire.Manifest,
        missing: dict[str, wire.Descriptor],
        tails: dict[str, Tail],
    ) -> StreamingUnpack | None:
        from bareboat.images.unpack import StreamingUnpack

        dest = self._rootfs / man.config.digest.split(":", 1)[1]
        if dest.is_dir() or any(d.media_type in wire.WASM_LAYER_TYPES for d in man.layers):
            return None
        sources: builtins.list[tuple[Callable[[], BinaryIO | Tail], str, str]] = []
        for d in man.layers:
            if d.digest in missing:
                tail = tails.setdefault(d.digest, Tail())
                sources.append((lambda t=tail: t, d.media_type, d.digest))  # type: ignore[misc]
            else:
                path = self.blobs.path(d.digest)
                sources.append((lambda p=path: p.open("rb"), d.media_type, d.digest))  # type: ignore[misc]
        return StreamingUnpack(dest, sources).start()

    def _download(
        self,
        client: RegistryClient,
        layers: builtins.list[wire.Descriptor],
        progress: Progress,
        tails: dict[str, Tail],
        *,
        stop: Callable[[], bool] | None = None,
        writes: Sequence[tuple[bytes, str, int]] = (),
    ) -> None:
        """Fetch `layers` in parallel; `stop` is asked as bytes come in, and when it says so
        every download ends with _Cancelled (the unpack following them gave up). `writes`
        ([(data, digest, size)], verified small blobs) are put into the store meanwhile."""
        if not layers:
            for data, digest, size in writes:
                self.blobs.put(data, digest, size)
            progress.close()
            return
        cancel = threading.Event()

        def one(d: wire.Descriptor) -> None:
            got = 0

            def tick(n: int) -> None:
                nonlocal got
                if cancel.is_set() or (stop is not None and stop()):
                    raise _Cancelled
                got += n
                progress.advance(d.digest, n)

            progress.start(d.digest, d.size)
            tail = tails.get(d.digest)
            for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
                try:
                    with self.blobs.writer(d.digest, d.size, tail) as w:
                        client.blob_into(d.digest, w, tick)
                    if tail is not None:
                        tail.finish(ok=True)  # verified: the reader may see its end
                    break
                except AuthError:
                    raise
                except RegistryError:
                    # A dropped connection or a 5xx: start the blob again, a few times.
                    if attempt == DOWNLOAD_ATTEMPTS or cancel.wait(0.2 * attempt):
                        raise
                    progress.advance(d.digest, -got)
                    got = 0
            progress.finish(d.digest)

        # Threads of our own, not concurrent.futures (~7 ms of imports here): each takes the
        # next layer; the first failure stops the others, and the lowest layer's is raised.
        todo = list(enumerate(layers))
        errors: dict[int, BaseException] = {}
        lock = threading.Lock()

        def worker() -> None:
            while not cancel.is_set():
                with lock:
                    if not todo:
                        return
                    i, d = todo.pop(0)
                try:
                    one(d)
                except BaseException as err:  # noqa: BLE001 - raised below, in the caller
                    errors[i] = err
                    cancel.set()

        threads = [
            threading.Thread(target=worker, name=f"bareboat-pull-{n}")
            for n in range(min(PARALLEL_DOWNLOADS, len(layers)))
        ]
        try:
            for t in threads:
                t.start()
            # Here, not in a download thread: a layer never waits for a document's fsync.
            for data, digest, size in writes:
                self.blobs.put(data, digest, size)
            for t in threads:
                t.join()
        except BaseException:
            cancel.set()
            for t in threads:
                if t.is_alive():
                    t.join()
            raise
        finally:
            progress.close()
        if errors:
            real = [e for _, e in sorted(errors.items()) if not isinstance(e, _Cancelled)]
            raise (real or list(errors.values()))[0]

    # --- names ----------------------------------------------------------------------------

    def tag(self, src: str, dst: str) -> None:
        img = self.get(src)
        r = parse_reference(dst)
        if r.digest:
            raise InvalidReference(f"cannot tag with a digest: {dst}")
        with self._edit_names() as table:
            table[str(r)] = img.digest

    def remove(self, ref: str, force: bool = False) -> builtins.list[str]:
        """Untag `ref`; delete the image when no name is left. Returns what happened."""
        img = self.get(ref)
        events: builtins.list[str] = []
        key: str | None = None
        with contextlib.suppress(InvalidReference):
            key = str(parse_reference(ref))
        with self._gc_lock(exclusive=True):
            with self._edit_names() as table:
                if key in table and table[key] == img.digest:
                    del table[key]
                    events.append(f"Untagged: {key}")
                elif len(img.names) > 1 and not force:
                    raise StoreError(
                        f"image {img.short_id} has {len(img.names)} names; "
                        "remove them one by one or use -f"
                    )
                else:
                    for n in img.names:
                        table.pop(n, None)
                        events.append(f"Untagged: {n}")
                left = [n for n, d in table.items() if d == img.digest]
            if not left:
                events += self._delete(img.digest)
        return events

    def _delete(self, digest: str) -> builtins.list[str]:
        """Delete a record and what only it used (caller holds the gc lock exclusively)."""
        rec = self._load_record(self._record_path(digest))
        if rec is None:
            return []
        self._record_path(digest).unlink(missing_ok=True)
        others = self._records_all()
        keep = self._referenced(others)
        with contextlib.suppress(StoreError, ManifestError):
            man = wire.decode_manifest(self.blobs.read(digest))
            for d in (man.config, *man.layers):
                if d.digest not in keep:
                    self.blobs.remove(d.digest)
        if digest not in keep:
            self.blobs.remove(digest)
        if all(r.config != rec.config for r in others):
            self._remove_tree(self._rootfs / rec.config.split(":")[1])
        return [f"Deleted: {rec.config}"]

    def _forget(self, digests: builtins.list[str]) -> None:
        """Remove blobs a failed pull added, unless an image now uses them (a pull of another
        image sharing them may have committed meanwhile); alone, as prune does."""
        if not digests:
            return
        with self._gc_lock(exclusive=True):
            keep = self._referenced(self._records_all())
            for digest in digests:
                if digest not in keep:
                    self.blobs.remove(digest)

    def _referenced(self, records: builtins.list[Record]) -> set[str]:
        keep: set[str] = set()
        for r in records:
            keep.add(r.digest)
            keep.add(r.config)
            with contextlib.suppress(StoreError, ManifestError):
                man = wire.decode_manifest(self.blobs.read(r.digest))
                keep.update(d.digest for d in man.layers)
        return keep

    @staticmethod
    def _remove_tree(path: Path) -> None:
        # Unpacked trees may hold directories without write permission; layers.remove_tree
        # makes them writable without following symlinks, then deletes.
        from bareboat.images.layers import remove_tree

        if path.is_dir() and not path.is_symlink():
            remove_tree(path)

    # --- root filesystems -----------------------------------------------------------------

    def rootfs(self, image: Image) -> Path:
        """The image's unpacked root filesystem; built once, shared, never to be written."""
        dest = self._rootfs / image.id.split(":", 1)[1]
        if dest.is_dir():
            return dest
        from bareboat.images.layers import unpack_rootfs

        with self._gc_lock(), _flock(self._locks / f"rootfs-{dest.name}.lock", True):
            if dest.is_dir():
                return dest
            for layer in image.layers:
                if not self.blobs.has(layer.digest):
                    raise StoreError(f"layer {layer.digest} is missing; pull the image again")
            private_dir(self._rootfs)
            unpack_rootfs(dest, [(self.blobs.path(x.digest), x.media_type) for x in image.layers])
        return dest

    # --- load / save / prune --------------------------------------------------------------

    def load(self, path: Path) -> builtins.list[Image]:
        from bareboat.images.archive import load

        with self._gc_lock():
            return load(self, path)

    def save(self, refs: builtins.list[str], dest: Path) -> None:
        from bareboat.images.archive import save

        images = [(ref, self.get(ref)) for ref in refs]
        with self._gc_lock():
            save(self, images, dest)

    def prune(self) -> PruneResult:
        """Remove unnamed images, unreferenced blobs, orphaned rootfs trees and temp files."""
        with self._gc_lock(exclusive=True):
            names = self._read_names()
            named = set(names.values())
            images = 0
            for rec in self._records_all():
                if rec.digest not in named:
                    self._record_path(rec.digest).unlink(missing_ok=True)
                    images += 1
            records = self._records_all()
            keep = self._referenced(records)
            nblobs = nbytes = 0
            for digest in list(self.blobs.digests()):
                if digest not in keep:
                    nbytes += self.blobs.remove(digest)
                    nblobs += 1
            ids = {r.config.split(":")[1] for r in records}
            ntrees = 0
            if self._rootfs.is_dir():
                for p in self._rootfs.iterdir():
                    if p.name not in ids:
                        if p.is_dir() and not p.is_symlink():
                            self._remove_tree(p)
                        else:
                            p.unlink()
                        ntrees += 1
            temp = self.blobs.clean_tmp()
        return PruneResult(images, nblobs, nbytes, ntrees, temp)


def short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12] if DIGEST_RE.fullmatch(digest) else digest


__all__ = ["ImageStore", "PruneResult", "Reference"]
