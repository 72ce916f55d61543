"""Content-addressed blobs: `blobs/sha256/<hex>`, entered only after their digest checks out.

A blob is written to a temporary file under `tmp/` while its sha256 and size are computed,
then renamed into place. The writer holds an flock on its temporary file, so a cleaner can tell
a live download (locked) from the leftover of a crashed one (unlocked) and remove only those.
A chunk of zeros is left a hole (an archive member can be sparse: 10 KB of archive, 10 GiB of
blob), so a blob takes the disk its data needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bareboat.errors import DigestMismatch, StoreError
from bareboat.images.reference import is_digest
from bareboat.images.wire import MAX_BLOB
from bareboat.privdir import private_dir

CHUNK = 1 << 20


class TailAborted(Exception):
    """The blob a Tail follows will not be completed (its download failed)."""


class Tail:
    """Reads a blob while its download is still writing it, so unpacking can overlap.

    The reader blocks for more bytes and sees end-of-file only after the writer verified
    the whole blob (digest and size); if the download fails, the reader gets TailAborted.
    A retried download writes a new temporary file with the same bytes: the reader goes on
    from where it was, in the new file. Every file it opened stays open until `close`, so
    a read never races a close.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._fds: list[int] = []
        self._written = 0
        self._done = False
        self._failed = False
        self._pos = 0

    # writer side
    def attach(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with self._cond:
            self._fds.append(fd)
            self._written = 0

    def grew(self, n: int) -> None:
        with self._cond:
            self._written += n
            self._cond.notify_all()

    def finish(self, ok: bool) -> None:
        with self._cond:
            if not self._done:
                self._done, self._failed = True, not ok
            self._cond.notify_all()

    # reader side
    def read(self, n: int = -1) -> bytes:
        with self._cond:
            while not self._done and self._written <= self._pos:
                self._cond.wait()
            if self._failed:
                raise TailAborted("the layer download failed")
            avail = self._written - self._pos
            if avail <= 0:
                return b""
            fd = self._fds[-1]
        data = os.pread(fd, avail if n is None or n < 0 else min(n, avail), self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        with self._cond:
            fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)


@dataclass
class BlobWriter:
    """A blob being written; `write` hashes as it goes and refuses more than `expected_size`."""

    file: IO[bytes]
    digest: str
    expected_size: int | None
    written: int = 0
    tail: Tail | None = None

    def __post_init__(self) -> None:
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.expected_size is not None and self.written > self.expected_size:
            raise DigestMismatch(
                f"blob {self.digest} is larger than its declared {self.expected_size} bytes"
            )
        self._hash.update(chunk)
        _append(self.file, chunk, self.written)
        if self.tail is not None:
            self.file.flush()  # the tail reads the file itself, not our buffer
            self.tail.grew(len(chunk))

    def verify(self) -> None:
        if self.expected_size is not None and self.written != self.expected_size:
            raise DigestMismatch(
                f"blob {self.digest} has {self.written} bytes, expected {self.expected_size}"
            )
        got = "sha256:" + self._hash.hexdigest()
        if got != self.digest:
            raise DigestMismatch(f"blob {self.digest} does not match its content ({got})")


def _append(f: IO[bytes], chunk: bytes, end: int) -> None:
    """Write `chunk` at the end of `f`, which then ends at `end`; zeros become a hole."""
    if chunk[:1] == b"\0" and chunk[-1:] == b"\0" and chunk.count(0) == len(chunk):
        f.flush()
        # The file's length stays `end` (a Tail reads up to it), its blocks unallocated.
        os.ftruncate(f.fileno(), end)
        f.seek(end)
    else:
        f.write(chunk)


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
    def writer(
        self, digest: str, size: int | None, tail: Tail | None = None
    ) -> Iterator[BlobWriter]:
        """Write a blob; on a clean exit it is verified and renamed into place, else removed."""
        dest = self.path(digest)
        private_dir(self.tmp)
        private_dir(self.dir)
        fd, name = tempfile.mkstemp(prefix="blob-", suffix=".part", dir=self.tmp)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                if tail is not None:
                    tail.attach(tmp)
                w = BlobWriter(f, digest, size, tail=tail)
                yield w
                w.verify()
                f.flush()
                if tail is not None:
                    # Verified: the unpacker may read to the end while the fsync below runs
                    # (its tree is published only after this blob is in place).
                    tail.finish(ok=True)
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
        private_dir(self.tmp)
        private_dir(self.dir)
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
                    _append(f, chunk, size)
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
