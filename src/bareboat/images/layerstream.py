"""A layer blob as a bounded, uncompressed tar stream: the untrusted bytes before extraction.

The compression is read from the blob's first bytes (the media type only has to say it is a
filesystem layer); decompression errors become LayerError; the stream stops at a byte limit,
so a decompression bomb or a PAX header that claims gigabytes cannot exhaust memory or disk.
"""

from __future__ import annotations

import contextlib
import enum
import io
import tarfile
from collections.abc import Iterator
from typing import Any, BinaryIO

from bareboat.errors import LayerError

_COPY_CHUNK = 1 << 20


class Compression(enum.Enum):
    NONE = "tar"
    GZIP = "gzip"
    ZSTD = "zstd"


_LAYER_MEDIA_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": Compression.NONE,
    "application/vnd.oci.image.layer.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": Compression.NONE,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": Compression.GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": Compression.ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar": Compression.NONE,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": Compression.GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": Compression.GZIP,
}
# Media types that say nothing about the content; we sniff it.
_GENERIC_MEDIA_TYPES = {"", "application/octet-stream", "application/x-tar", "application/tar"}

_MAGIC = {
    b"\x1f\x8b": Compression.GZIP,
    b"\x28\xb5\x2f\xfd": Compression.ZSTD,
}
_UNSUPPORTED_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x04\x22\x4d\x18": "lz4"}
_SNIFF = 6


def compression_for(media_type: str, head: bytes) -> Compression:
    """How to decompress a layer whose blob starts with `head`.

    The magic bytes win over the media type: registries and tools mislabel layers (gzip
    served as `.tar`, zstd as `.tar.gzip`), and the bytes cannot lie about their format.
    """
    if media_type not in _LAYER_MEDIA_TYPES and media_type not in _GENERIC_MEDIA_TYPES:
        raise LayerError(f"media type {media_type!r} is not a filesystem layer")
    for magic, comp in _MAGIC.items():
        if head.startswith(magic):
            return comp
    for magic, name in _UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            raise LayerError(f"layer is {name}-compressed, which OCI images do not use")
    return Compression.NONE


class _Rejoined(io.RawIOBase):
    """The sniffed head of a stream put back in front of the rest."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            data, self._head = self._head[: len(view)], self._head[len(view) :]
        else:
            data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


class LayerStream:
    """A read-only stream that turns decompression errors into LayerError and caps its size.

    The cap bounds what a hostile layer can make us read (a zstd bomb, a PAX header that
    claims to be huge) even before any per-entry check sees it.
    """

    def __init__(self, raw: Any, limit: int, errors: tuple[type[BaseException], ...]) -> None:
        self._raw = raw
        self._limit = limit
        self._errors = errors
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            return b"".join(iter(lambda: self.read(_COPY_CHUNK), b""))
        try:
            data: bytes = self._raw.read(n)
        except self._errors as e:
            raise LayerError(f"corrupt layer data: {one_line(e)}") from e
        self.count += len(data)
        if self.count > self._limit:
            raise LayerError(f"layer expands to more than {self._limit} bytes")
        return data

    def drain(self) -> None:
        """Read to the end, so a corrupt trailer (gzip CRC, zstd checksum) is noticed."""
        while self.read(_COPY_CHUNK):
            pass


def decompressed(blob: BinaryIO, media_type: str, *, max_bytes: int) -> LayerStream:
    """The uncompressed tar stream of a layer blob, at most `max_bytes` long."""
    head = b""
    while len(head) < _SNIFF:
        more = blob.read(_SNIFF - len(head))
        if not more:
            break
        head += more
    comp = compression_for(media_type, head)
    src = _Rejoined(head, blob)
    errors: list[type[BaseException]] = [OSError, EOFError, ValueError]
    raw: Any = src
    if comp is Compression.GZIP:
        from isal import igzip, igzip_lib

        gzip_file: Any = igzip.IGzipFile  # untyped
        raw = gzip_file(fileobj=src, mode="rb")
        isal_error: Any = igzip_lib.IsalError  # typed as an instance in isal's stubs
        errors.append(isal_error)
    elif comp is Compression.ZSTD:
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        errors.append(zstandard.ZstdError)
    return LayerStream(raw, max_bytes, tuple(errors))


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


_LONG_HEADER_TYPES = {
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
}


class _HeaderBudget:
    """The tar's stream while tarfile reads a sparse map from it: at most `limit` bytes.

    GNU sparse maps continue in extension blocks (old GNU format) or in the data area (PAX
    1.0), as many as the archive says; tarfile collects them all in memory, and a gzip of
    repeated blocks makes millions. The map is a header like the others, and as bounded.
    """

    def __init__(self, raw: Any, limit: int) -> None:
        self._raw = raw
        self._left = limit
        self._limit = limit

    def read(self, n: int) -> bytes:
        self._left -= n
        if self._left < 0:
            raise LayerError(f"tar sparse map of more than {self._limit} bytes")
        data: bytes = self._raw.read(n)
        return data

    def tell(self) -> int:
        pos: int = self._raw.tell()
        return pos


@contextlib.contextmanager
def _budget(tar: Any, limit: int) -> Iterator[None]:
    raw = tar.fileobj
    tar.fileobj = _HeaderBudget(raw, limit)
    try:
        yield
    finally:
        tar.fileobj = raw


def bounded_tarinfo(max_header_size: int) -> type[tarfile.TarInfo]:
    class BoundedTarInfo(tarfile.TarInfo):
        """TarInfo that refuses oversized PAX/GNU records and sparse maps before tarfile
        reads them into memory, and reports a corrupt header instead of ending the archive
        there (tarfile takes a bad checksum after the first member for the end of the
        archive)."""

        # tarfile's own readers of the two sparse maps that go on in the stream, run on a
        # budget (private methods: checked by the tests that build such tars with GNU tar).
        def _proc_sparse(self, tarfile_: Any) -> Any:
            with _budget(tarfile_, max_header_size):
                return super()._proc_sparse(tarfile_)  # type: ignore[misc]

        def _proc_gnusparse_10(self, next_: Any, pax_headers: Any, tarfile_: Any) -> Any:
            with _budget(tarfile_, max_header_size):
                return super()._proc_gnusparse_10(next_, pax_headers, tarfile_)  # type: ignore[misc]

        @classmethod
        def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Any:
            obj = super().frombuf(buf, encoding, errors)
            if obj.type in _LONG_HEADER_TYPES and obj.size > max_header_size:
                raise LayerError(
                    f"tar extended header of {obj.size} bytes exceeds the limit of "
                    f"{max_header_size}"
                )
            return obj

        @classmethod
        def fromtarfile(cls, tarfile_: tarfile.TarFile) -> Any:
            try:
                return super().fromtarfile(tarfile_)
            except tarfile.HeaderError as e:
                # End of archive (zero block) and end of data are how a tar ends.
                if type(e).__name__ in ("EOFHeaderError", "EmptyHeaderError"):
                    raise
                offset = getattr(tarfile_, "offset", "?")
                raise LayerError(f"corrupt tar header at offset {offset}: {e}") from e

    return BoundedTarInfo
