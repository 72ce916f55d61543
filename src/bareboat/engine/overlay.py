"""A container's root filesystem: its own overlayfs upper over the shared image rootfs."""

from __future__ import annotations

import shutil
from pathlib import Path

from bareboat.backends.base import MNT_DETACH, mount, mounts_under, umount
from bareboat.errors import ContainerError


class Overlay:
    """One container's root mount.

    A plain class, not a dataclass: creating one costs 1-2 ms at import here, on the
    path of every `run`."""

    __slots__ = ("lower", "target", "upper", "volatile", "work")

    def __init__(
        self, lower: Path, upper: Path, work: Path, target: Path, *, volatile: bool = False
    ) -> None:
        self.lower = lower  # the image rootfs: read-only, shared, never written
        self.upper = upper
        self.work = work
        self.target = target
        # For a container removed when it ends (`--rm`): its upper layer is thrown away, so
        # the overlay need not sync it. Without `volatile`, unmounting an overlay syncs the
        # whole filesystem the upper lives on, which took 20-560 ms here while others wrote.
        self.volatile = volatile

    def options(self) -> str:
        for p in (self.lower, self.upper, self.work):
            # overlayfs splits its options on ',' and ':'; such paths cannot be passed.
            if any(c in str(p) for c in ",:="):
                raise ContainerError(f"path not usable by overlayfs: {p}")
        options = f"lowerdir={self.lower},upperdir={self.upper},workdir={self.work}"
        return options + ",volatile" if self.volatile else options

    def mount(self) -> None:
        for p in (self.upper, self.work, self.target):
            p.mkdir(parents=True, exist_ok=True)
        try:
            mount("overlay", self.target, "overlay", 0, self.options())
        except OSError as err:
            raise ContainerError(f"cannot mount the container's rootfs: {err}") from None

    def unmount(self) -> None:
        """Unmount the overlay and anything mounted below it (process backend binds)."""
        unmount_tree(self.target)
        # overlayfs leaves a work/work dir owned by root with mode 000; remove it with the rest
        shutil.rmtree(self.work, ignore_errors=True)


def unmount_tree(path: Path) -> None:
    for point in mounts_under(path):
        umount(point, MNT_DETACH)
