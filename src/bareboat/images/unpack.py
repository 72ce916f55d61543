"""Unpack an image's layers while they download, and publish the tree only if all went well.

A pull that will be run right away (`ImageStore.ensure`, `pull(unpack=True)`) should not wait
for the last byte before it starts writing files: each layer is read in order, from its blob
when the store has it, else from a `Tail` that follows the download. Nothing is published
before every blob has been verified: a Tail gives end-of-file only after its blob's digest
and size checked out, and the store renames the tree into place only after the image record
is written. A failed download or a refused layer leaves no tree behind. The image's disk cap
(diskcap.py) is measured when the unpack starts; a layer that passes it fails the pull.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from bareboat.errors import ImageTooLarge
from bareboat.images.blobs import Tail
from bareboat.images.diskcap import disk_cap
from bareboat.images.layers import DEFAULT_LIMITS, LayerStats, apply_layer, remaining, too_large
from bareboat.images.openat2 import syncfs

Source = Callable[[], "BinaryIO | Tail"]


class StreamingUnpack:
    """One image's tree being built in a thread, in a scratch directory beside `dest`, from
    `layers` ([(source, media type, digest)], lowest first)."""

    def __init__(self, dest: Path, layers: Sequence[tuple[Source, str, str]]) -> None:
        self.dest = dest
        self.layers = layers
        self.tmp: Path | None = None
        self.error: BaseException | None = None
        self._applied = threading.Event()  # every layer applied (or the unpack failed)
        self._thread = threading.Thread(target=self._run, name="bareboat-unpack", daemon=True)

    def start(self) -> StreamingUnpack:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(
            tempfile.mkdtemp(
                prefix=f".{self.dest.name}.", suffix=".unpacking", dir=self.dest.parent
            )
        )
        self.tmp.chmod(0o755)  # as unpack_rootfs: an image without "./" gets a 0755 root
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self.tmp is not None
        try:
            cap = disk_cap(self.tmp)
            total = LayerStats()
            for i, (open_source, media_type, digest) in enumerate(self.layers, 1):
                left = remaining(DEFAULT_LIMITS, cap, total)
                src = open_source()
                try:
                    total += apply_layer(self.tmp, src, media_type, limits=left)  # type: ignore[arg-type]
                except ImageTooLarge as e:
                    raise too_large(cap, i, len(self.layers), digest, e) from None
                finally:
                    if not isinstance(src, Tail):
                        src.close()
            self._applied.set()
            fd = os.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                syncfs(fd)  # a tree that exists after a crash is whole
            finally:
                os.close(fd)
        except BaseException as err:  # noqa: BLE001 - handed to the caller by wait()
            self.error = err
        finally:
            self._applied.set()

    def wait_applied(self) -> BaseException | None:
        """Wait until every layer is applied, not for the flush after: the image may be
        recorded meanwhile (its tree is published only after `wait`)."""
        self._applied.wait()
        return self.error

    def wait(self) -> BaseException | None:
        self._thread.join()
        return self.error

    @property
    def too_large(self) -> bool:
        """Whether the image was refused for its size (the thread has then ended)."""
        return isinstance(self.error, ImageTooLarge)

    def publish(self) -> bool:
        """Rename the finished tree to `dest` (caller holds the image's rootfs lock)."""
        if self.wait() is not None or self.tmp is None:
            return False
        if self.dest.exists():
            return False  # another process made it first; ours is thrown away
        self.tmp.rename(self.dest)
        self.tmp = None
        return True

    def discard(self, remove: Callable[[Path], None]) -> None:
        self.wait()
        if self.tmp is not None:
            remove(self.tmp)
            self.tmp = None
