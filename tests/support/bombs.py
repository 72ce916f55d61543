"""Hostile layers that are small on the wire and huge on disk, built for the tests.

- `sparse_file`/`sparse_tar`: a sparse 10 GiB file with a little data, and a tar of it made
  by GNU tar itself (`-S`, in any of its sparse formats): about 20 KB.
- `streamed_bomb`: a gzip of a tar holding one regular file of N times one byte, made of
  gzip members (a gzip stream may be several, every reader joins them), one compressed MiB
  repeated: 1 GiB of zeros is a 1 MB blob, and costs nothing to make.
- `assert_sparse_file`: the file reads as the sparse one and takes a few blocks of disk.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

GiB = 1 << 30
SPARSE_SIZE = 10 * GiB
SPARSE_DATA = {0: b"head", 5_000_000_000: b"middle", SPARSE_SIZE - 4: b"tail"}


def sparse_file(path: Path, size: int = SPARSE_SIZE) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for at, data in SPARSE_DATA.items():
            if at < size:
                f.seek(at)
                f.write(data)
    return path


def sparse_tar(tmp_path: Path, fmt: str = "--format=gnu", name: str = "big") -> bytes:
    """A tar of one sparse 10 GiB file named `name`, made by GNU tar (`-S` and `fmt`)."""
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    src = tmp_path / "sparse-src"
    src.mkdir()
    sparse_file(src / name)
    out = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "-S", *fmt.split(), "-C", str(src), "-cf", str(out), name],
        check=True,
        timeout=60,
    )
    shutil.rmtree(src)
    data = out.read_bytes()
    out.unlink()
    return data


def assert_sparse_file(path: Path, size: int = SPARSE_SIZE) -> None:
    st = path.stat()
    assert st.st_size == size
    assert st.st_blocks * 512 <= 64 * 1024  # three blocks of data, not gigabytes
    with open(path, "rb") as f:
        for at, data in SPARSE_DATA.items():
            if at < size:
                assert os.pread(f.fileno(), len(data), at) == data
        assert os.pread(f.fileno(), 8, 4096) == bytes(8)


def _bomb_header(size: int, name: str) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = size, 0o644, 1_700_000_000
    return ti.tobuf(tarfile.GNU_FORMAT)


def _bomb_tail(size: int, byte: bytes) -> bytes:
    return byte * (size % (1 << 20)) + b"\0" * (-size % 512 + 1024)


def streamed_bomb(size: int, byte: bytes, name: str = "bomb") -> bytes:
    """The gzip blob of a tar of one file of `size` times `byte`."""
    mib = gzip.compress(byte * (1 << 20), 9)
    return b"".join(
        [
            gzip.compress(_bomb_header(size, name)),
            mib * (size >> 20),
            gzip.compress(_bomb_tail(size, byte)),
        ]
    )


def bomb_diff_id(size: int, byte: bytes, name: str = "bomb") -> str:
    """The sha256 of the uncompressed tar `streamed_bomb` makes (an image config needs it)."""
    h = hashlib.sha256(_bomb_header(size, name))
    mib = byte * (1 << 20)
    for _ in range(size >> 20):
        h.update(mib)
    h.update(_bomb_tail(size, byte))
    return "sha256:" + h.hexdigest()
