"""How much disk one image may take: its blobs, its unpacked root filesystem, its VM disk.

An image is small on the wire and can be huge on disk: a 10 KB tar holds a sparse 10 GiB
file, a 2 MB gzip 2 GiB of one byte. Holes stay holes (layers.py); what is left is bounded by
a cap, which each of the three (blobs, tree, VM disk) must stay under:

- `BAREBOAT_MAX_IMAGE_SIZE` (`20g`, `512m`, bytes) when set;
- else the free space of the filesystem that receives it, less a reserve of 5% of that
  filesystem's size, measured when the work begins. Each step is measured again, so
  together they too leave the reserve free: an image never fills the disk the host needs.

A refusal names the layer and the sizes and comes before the bytes are written (blobs, whose
sizes are declared) or as soon as the cap is passed (a tree being unpacked, a VM disk being
built), and what was made is removed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bareboat.errors import ImageTooLarge
from bareboat.units import parse_size, show_size

ENV_MAX_IMAGE_SIZE = "BAREBOAT_MAX_IMAGE_SIZE"
RESERVE_PERCENT = 5  # as ext4 keeps for root: what the host still has when an image is done


@dataclass(frozen=True)
class DiskCap:
    """The most one image may take on disk, and where that number comes from."""

    limit: int
    why: str

    def refusal(self, what: str) -> ImageTooLarge:
        """`what` ("layer 2 of 3 (sha256:…) takes its tree") past the cap, as one line."""
        return ImageTooLarge(
            f"image too large: {what} past {show_size(self.limit)} on disk, the most one "
            f"image may take ({self.why})"
        )

    def check_blobs(self, blobs: list[tuple[str, int]]) -> None:
        """Refuse, before any byte is written, blobs ([(name, size)]) whose declared sizes
        together pass the cap; the first one that passes it is named."""
        total = 0
        for i, (name, size) in enumerate(blobs, 1):
            total += size
            if total > self.limit:
                raise self.refusal(
                    f"blob {i} of {len(blobs)} ({name}, {show_size(size)}) takes its blobs to "
                    f"{show_size(total)},"
                )


def disk_cap(where: Path) -> DiskCap:
    """The cap for an image written under `where` (which need not exist yet)."""
    value = os.environ.get(ENV_MAX_IMAGE_SIZE, "").strip()
    if value:
        return DiskCap(parse_size(value, what=ENV_MAX_IMAGE_SIZE), f"{ENV_MAX_IMAGE_SIZE}={value}")
    fs = _existing(where)
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    reserve = st.f_blocks * st.f_frsize * RESERVE_PERCENT // 100
    return DiskCap(
        max(0, free - reserve),
        f"{show_size(free)} free where {fs} is, less {RESERVE_PERCENT}% of that filesystem "
        f"kept for the host; set {ENV_MAX_IMAGE_SIZE} to change it",
    )


def short_digest(name: str) -> str:
    """`sha256:0123456789ab` for a digest or a blob's file name; other names as they are."""
    hexpart = name.split(":", 1)[-1]
    if len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart):
        return f"sha256:{hexpart[:12]}"
    return name


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
