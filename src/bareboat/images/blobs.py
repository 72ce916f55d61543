"""Content-addressed blobs: `blobs/sha256/<hex>`, entered only after their digest checks out.

A blob is written to a temporary file under `tmp/` while its sha256 and size are computed,
then renamed into place. The writer holds an flock on its temporary file, so a cleaner can tell
a live download (locked) from the leftover of a crashed one (unlocked) and remove only those.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bareboat.errors import DigestMismatch, StoreError
from bareboat.images.reference import is_digest
from bareboat.images.wire import MAX_BLOB

CHUNK = 1 << 20


@dataclass
class BlobWriter:
    """A blob being written; `write` hashes as it goes and refuses more than `expected_size`."""

    file: IO[bytes]
    digest: str
    expected_size: int | None
    written: int = 0

    def __post_init__(self) -> None:
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.expected_size is not None and self.written > self.expected_size:
            raise DigestMismatch(
                f"blob {self.digest} is larger than its declared {self.expected_size} bytes"
            )
        self._hash.update(chunk)
        self.file.write(chunk)

    def verify(self) -> None:
        if self.expected_size is not None and self.written != self.expected_size:
            raise DigestMismatch(
                f"blob {self.digest} has {self.written} bytes, expected {self.expected_size}"
            )
        got = "sha256:" + self._hash.hexdigest()
        if got != self.digest:
            raise DigestMismatch(f"blob {self.digest} does not match its content ({got})")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "blobs" / "sha256"
        self.tmp = root / "tmp"

    def path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise StoreError(f"invalid digest {digest!r}")
        return self.dir / digest.split(":", 1)[1]

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"blob {digest} is missing from the store") from None

    def digests(self) -> Iterator[str]:
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                if len(p.name) == 64 and not p.name.startswith("."):
                    yield f"sha256:{p.name}"

    @contextlib.contextmanager
    def writer(self, digest: str, size: int | None) -> Iterator[BlobWriter]:
        """Write a blob; on a clean exit it is verified and renamed into place, else removed."""
        dest = self.path(digest)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="blob-", suffix=".part", dir=self.tmp)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                w = BlobWriter(f, digest, size)
                yield w
                w.verify()
                f.flush()
                os.fsync(f.fileno())
                os.chmod(tmp, 0o444)
                # Same content under the same name: a concurrent writer's rename is harmless.
                os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def put(self, data: bytes, digest: str | None = None, size: int | None = None) -> str:
        digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has(digest):
            with self.writer(digest, len(data) if size is None else size) as w:
                w.write(data)
        return digest

    def put_stream(self, chunks: Iterable[bytes], digest: str, size: int | None) -> None:
        with self.writer(digest, size) as w:
            for chunk in chunks:
                w.write(chunk)

    def put_file(self, src: Path, digest: str | None = None) -> tuple[str, int]:
        """Copy a local file in; returns (digest, size). Without a digest it is computed."""
        if digest is None:
            h = hashlib.sha256()
            with src.open("rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
            digest = "sha256:" + h.hexdigest()
        size = src.stat().st_size
        if not self.has(digest):
            with src.open("rb") as f:
                self.put_stream(iter(lambda: f.read(CHUNK), b""), digest, size)
        return digest, size

    def ingest(self, chunks: Iterable[bytes], limit: int = MAX_BLOB) -> tuple[str, int]:
        """Store content whose digest is not known in advance; returns (digest, size)."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="blob-", suffix=".part", dir=self.tmp)
        tmp = Path(name)
        try:
            h = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise DigestMismatch(f"blob larger than {limit} bytes")
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
                digest = "sha256:" + h.hexdigest()
                os.chmod(tmp, 0o444)
                os.replace(tmp, self.path(digest))
            return digest, size
        finally:
            tmp.unlink(missing_ok=True)

    def remove(self, digest: str) -> int:
        p = self.path(digest)
        try:
            size = p.stat().st_size
            p.unlink()
        except FileNotFoundError:
            return 0
        return size

    def clean_tmp(self) -> int:
        """Remove temporary files no live writer holds; returns how many."""
        removed = 0
        if not self.tmp.is_dir():
            return 0
        for p in self.tmp.iterdir():
            try:
                fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed += 1
            except BlockingIOError:
                pass  # a live writer holds it
            finally:
                os.close(fd)
        return removed
