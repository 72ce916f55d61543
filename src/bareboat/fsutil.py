"""Small filesystem helpers every layer uses: atomic writes and safe temporary names."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb", *, durable: bool = True) -> Iterator[IO[bytes]]:
    """Write to a temporary file beside `path`, fsync it and rename it into place.

    Readers see the old file or the whole new one, never a partial one; if the body raises,
    the temporary file is removed and `path` is untouched. `durable=False` skips the fsync:
    still atomic for readers, but a host crash may lose the file (fine for state that dies
    with the container anyway, and the fsync costs milliseconds on the `run --rm` path).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    with atomic_open(path, durable=durable) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode())
