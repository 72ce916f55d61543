"""Small filesystem helpers every layer uses: atomic writes and safe temporary names."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

TYPE_CHECKING = False  # typing costs import time on every `run`; mypy treats this as true
if TYPE_CHECKING:
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
    fd, tmp = _create_beside(path)
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


def _create_beside(path: Path) -> tuple[int, str]:
    """A new file (0600) with an unused name beside `path`, as tempfile.mkstemp makes one:
    importing tempfile (random, hashlib) cost every `bareboat run` milliseconds."""
    for _ in range(100):
        tmp = os.path.join(path.parent, f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary name beside {path}")


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    with atomic_open(path, durable=durable) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str, *, durable: bool = True) -> None:
    atomic_write(path, text.encode(), durable=durable)


@contextlib.contextmanager
def exclusive_lock(
    path: Path,
    *,
    timeout: float,
    mode: int = 0o644,
    on_timeout: Callable[[], Exception] | None = None,
) -> Iterator[None]:
    """An exclusive flock on `path` (created), held while the block runs.

    Waits up to `timeout` seconds (0 tries once), then raises `on_timeout()` or a StoreError
    naming the lock. The kernel drops the lock if we die, so a crash never leaves it held.
    The lock file itself stays: unlinking one another process holds would let a third lock
    a new inode beside it.
    """
    from bareboat.errors import StoreError

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    if on_timeout is not None:
                        raise on_timeout() from None
                    raise StoreError(f"timed out waiting for the lock {path}") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
