"""A container's log: JSON lines, rotated as docker's json-file driver rotates its files.

The monitor appends one line per chunk of output, `{"t": time, "s": "stdout"|"stderr",
"d": text}` (bytes that are not UTF-8 kept as surrogate escapes), to `log.jsonl`. Before a
line would take that file past `max_size` it is renamed `log.jsonl.1`, the older ones move up
(`.1` to `.2`, ...) and the oldest, `log.jsonl.<max_file - 1>`, is dropped: the log never takes
more than max_size x max_file on disk, whatever the workload writes. A chunk whose line alone
would pass `max_size` is split over several lines.

`read_log` gives the entries back oldest first, across the rotated files, and with `follow`
keeps reading as the monitor writes and rotates.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

TYPE_CHECKING = False  # typing costs import time on every `run`; mypy treats this as true
if TYPE_CHECKING:
    from typing import BinaryIO

Entry = tuple[float, str, bytes]
_FOLLOW_POLL_S = 0.1


def rotated(path: Path, n: int) -> Path:
    """The n-th rotated file of the log at `path` (`log.jsonl.1` is the newest of them)."""
    return path.with_name(f"{path.name}.{n}")


def encode(t: float, stream: str, data: bytes) -> bytes:
    entry = {"t": t, "s": stream, "d": data.decode("utf-8", "surrogateescape")}
    return json.dumps(entry).encode() + b"\n"


class LogWriter:
    """Appends entries to the log at `path`, rotating it; files are made 0600."""

    def __init__(self, path: Path, *, max_size: int, max_file: int) -> None:
        self.path = path
        self.max_size = max_size
        self.max_file = max_file
        self._fd = self._open()
        # A restarted container goes on with the file it had.
        self._size = os.fstat(self._fd).st_size

    def write(self, stream: str, data: bytes, t: float | None = None) -> None:
        t = time.time() if t is None else t
        line = encode(t, stream, data)
        if len(line) > self.max_size and len(data) > 1:
            half = len(data) // 2
            self.write(stream, data[:half], t)
            self.write(stream, data[half:], t)
            return
        if self._size and self._size + len(line) > self.max_size:
            self._rotate()
        view = memoryview(line)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self._size += n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
        return os.open(self.path, flags, 0o600)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        if self.max_file > 1:
            for n in range(self.max_file - 1, 1, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(rotated(self.path, n - 1), rotated(self.path, n))
            os.replace(self.path, rotated(self.path, 1))
        else:
            self.path.unlink(missing_ok=True)
        self._fd = self._open()
        self._size = 0


# --- reading --------------------------------------------------------------------------------


def _chain(path: Path) -> list[Path]:
    """The log's files that exist, oldest first."""
    numbered = []
    for p in path.parent.glob(f"{path.name}.*"):
        suffix = p.name[len(path.name) + 1 :]
        if suffix.isdigit():
            numbered.append((int(suffix), p))
    return [p for _, p in sorted(numbered, reverse=True)] + ([path] if path.exists() else [])


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _fd_inode(f: BinaryIO) -> tuple[int, int]:
    st = os.fstat(f.fileno())
    return st.st_dev, st.st_ino


def _open_chain(path: Path) -> list[BinaryIO]:
    """The log's files, open, oldest first, as they were at one moment: a rotation while
    they are being opened is noticed (a name now holding another file), and they are opened
    again."""
    for attempt in range(20):
        names = _chain(path)
        files: list[BinaryIO] = []
        for p in names:
            with contextlib.suppress(FileNotFoundError):
                files.append(open(p, "rb"))  # noqa: SIM115 - returned to the caller
        opened = [_fd_inode(f) for f in files]
        if attempt == 19 or (len(files) == len(names) and opened == [_inode(p) for p in names]):
            return files
        for f in files:
            f.close()
    raise AssertionError("unreachable")


def _entries(f: BinaryIO, *, partial_ok: bool) -> Iterator[Entry]:
    """Complete lines from `f`'s position on; a last line without its newline (still being
    written) is left for later, unless `partial_ok`. Lines that do not decode are skipped."""
    while True:
        line = f.readline()
        if not line:
            return
        if not line.endswith(b"\n") and not partial_ok:
            f.seek(-len(line), os.SEEK_CUR)
            return
        try:
            e = json.loads(line)
            yield float(e["t"]), str(e["s"]), str(e["d"]).encode("utf-8", "surrogateescape")
        except (ValueError, KeyError, TypeError):
            continue


def _snapshot(path: Path) -> list[tuple[Path, tuple[int, int] | None]]:
    """The log's files and their inodes, oldest first, read twice alike: a rotation is a
    burst of renames, and between them the names do not say which file is which."""
    last: list[tuple[Path, tuple[int, int] | None]] = []
    for _ in range(50):
        now = [(p, _inode(p)) for p in _chain(path)]
        if now == last:
            break
        last = now
    return last


def _successor(path: Path, current: BinaryIO) -> BinaryIO | None:
    """The log file written after `current`, once the writer has rotated `current` away."""
    ident = _fd_inode(current)
    if _inode(path) in (ident, None):
        return None  # still the newest file (or none yet): nothing comes after it
    for _ in range(50):
        chain = _snapshot(path)
        inodes = [ino for _, ino in chain]
        # `current` is held open, so its inode number cannot be reused meanwhile. Gone from
        # the chain, every file there is newer than it: go on with the oldest.
        start = inodes.index(ident) + 1 if ident in inodes else 0
        if start >= len(chain):
            return None
        name, want = chain[start]
        try:
            f = open(name, "rb")  # noqa: SIM115 - the caller's to close
        except FileNotFoundError:
            continue
        if _fd_inode(f) == want:
            return f
        f.close()  # rotated again meanwhile: look again
    return None


def read_log(path: Path, *, until: Callable[[], bool] | None = None) -> Iterator[Entry]:
    """(time, stream, data) entries of the log at `path` and its rotated files, oldest first.

    With `until` (follow), keep reading as more is written and rotated, until `until()` says
    the writer is done; what it wrote up to then is read before the end.
    """
    files = _open_chain(path)
    if not files:
        return
    current = files.pop()
    try:
        for f in files:
            yield from _entries(f, partial_ok=True)
        if until is None:
            yield from _entries(current, partial_ok=False)
            return
        done = False
        while True:
            yield from _entries(current, partial_ok=False)
            nxt = _successor(path, current)
            if nxt is not None:
                yield from _entries(current, partial_ok=True)  # the writer is past it
                current.close()
                current = nxt
                continue
            if done:
                return
            if until():
                done = True  # one more pass: read what came before the end
                continue
            time.sleep(_FOLLOW_POLL_S)
    finally:
        current.close()
        for f in files:
            f.close()
