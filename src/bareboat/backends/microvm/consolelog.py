"""A VM's serial console log, bounded: QEMU writes into a FIFO, a thread of ours keeps it.

The console is the guest's to write: its kernel, and any of its root processes through
/dev/console, as fast as QEMU emulates the UART. Written by QEMU to a file (a chardev `file`)
it had no end: `yes` in a VM filled 492 MB in 20 s, in /run (a RAM tmpfs). QEMU's chardevs
have no size limit, and a `ringbuf` chardev dies with QEMU, which is when its tail (a panic)
is wanted. So QEMU writes into a FIFO (still a chardev `file`, which opens it like any path)
and a thread of the process that owns QEMU copies it into `console.log`; when that reaches
`max_size` it becomes `console.log.1` (replacing the one before) and a new `console.log`
starts. At most 2 x max_size on disk, and the newest output is always there.

When the reader falls behind, the FIFO fills and QEMU's UART drops the guest's bytes (it
retries a few times, then discards): the guest never waits for the host, and it costs the
host nothing. `finish` is called once QEMU has exited: the rest of what it wrote is then
taken in, so a reader of the log after QEMU's end (a panic, a failed boot) sees all of it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

CONSOLE_LOG_MAX = 1 << 20  # bytes in console.log before it rotates: 2 MiB per VM at most
_READ = 65536


def fifo_path(log: Path) -> Path:
    """The FIFO QEMU writes the console into, beside the log it ends up in."""
    return log.with_name(log.name + ".fifo")


def rotated_path(log: Path) -> Path:
    return log.with_name(log.name + ".1")


def read_tail(log: Path, limit: int) -> bytes:
    """The last `limit` bytes of the console, across the rotation ('' when there is none)."""
    chunks = []
    for path in (log, rotated_path(log)):
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - limit))
                chunks.append(f.read(limit))
        except OSError:
            continue
        limit -= len(chunks[-1])
        if limit <= 0:
            break
    return b"".join(reversed(chunks))


def read_all(log: Path) -> bytes:
    """The whole console that is kept (at most 2 x max_size), oldest first."""
    return read_tail(log, 2 * CONSOLE_LOG_MAX + _READ)


class ConsoleLog:
    """The FIFO at `fifo_path(path)` and the thread that keeps what comes out of it in `path`.

    Files are 0600: the console of a guest is its own business.
    """

    def __init__(self, path: Path, *, max_size: int = CONSOLE_LOG_MAX) -> None:
        self.path = path
        self.fifo = fifo_path(path)
        self.max_size = max_size
        self._r: int | None = None
        self._w: int | None = None
        self._out: int | None = None
        self._size = 0
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Make the FIFO and start reading it; QEMU may then open it (it will not block)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fifo.unlink(missing_ok=True)
        rotated_path(self.path).unlink(missing_ok=True)
        os.mkfifo(self.fifo, 0o600)
        try:
            self._r = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            # Our own writer: until QEMU has opened the FIFO, a read would see end-of-file.
            self._w = os.open(self.fifo, os.O_WRONLY | os.O_CLOEXEC)
            os.set_blocking(self._r, True)
            self._out = self._open_log()
        except BaseException:
            self._close()
            raise
        self._thread = threading.Thread(target=self._run, name="bareboat-console", daemon=True)
        self._thread.start()

    def writer(self) -> int:
        """A write end of the FIFO, for QEMU to inherit (the caller closes its copy)."""
        return os.open(self.fifo, os.O_WRONLY | os.O_CLOEXEC)  # our reader is open: no wait

    def finish(self, timeout: float = 2.0) -> None:
        """After QEMU has exited: take in what it left in the FIFO, then close everything.
        Safe to call more than once."""
        with self._lock:
            if self._w is not None:
                os.close(self._w)  # with QEMU gone, the reader now meets end-of-file
                self._w = None
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return  # QEMU still holds the FIFO (a caller's mistake): leave it reading
            self._thread = None
        self._close()

    def _run(self) -> None:
        assert self._r is not None
        while True:
            try:
                data = os.read(self._r, _READ)
            except OSError:
                return
            if not data:
                return
            with contextlib.suppress(OSError):  # a full disk loses console output, no more
                self._keep(data)

    def _keep(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._size >= self.max_size:
                self._rotate()
            if self._out is None:
                return  # the new file could not be made: this output is lost
            n = os.write(self._out, view[: self.max_size - self._size])
            self._size += n
            view = view[n:]

    def _rotate(self) -> None:
        assert self._out is not None
        os.close(self._out)
        self._out = None
        os.replace(self.path, rotated_path(self.path))
        self._out = self._open_log()

    def _open_log(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.path, flags, 0o600)
        self._size = 0
        return fd

    def _close(self) -> None:
        for name in ("_r", "_w", "_out"):
            fd = getattr(self, name)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, None)
        self.fifo.unlink(missing_ok=True)
