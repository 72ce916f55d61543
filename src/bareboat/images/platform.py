"""Platforms (`os/arch[/variant]`) and picking one manifest out of an index."""

from __future__ import annotations

import platform as _platform
from collections.abc import Sequence
from dataclasses import dataclass

from bareboat.errors import ImageNotFound, UsageError
from bareboat.images.wire import Descriptor

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


@dataclass(frozen=True)
class PlatformSpec:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def host_platform() -> PlatformSpec:
    machine = _platform.machine()
    return PlatformSpec("linux", _ARCH.get(machine, machine))


def parse_platform(text: str | None) -> PlatformSpec:
    """`linux/arm64/v8` -> PlatformSpec; None -> the host's."""
    if not text:
        return host_platform()
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise UsageError(f"invalid platform {text!r}: want os/arch[/variant]")
    arch = _ARCH.get(parts[1], parts[1])
    return PlatformSpec(parts[0].lower(), arch.lower(), parts[2].lower() if len(parts) == 3 else "")


def _matches(want: PlatformSpec, desc: Descriptor) -> bool:
    p = desc.platform
    if p is None or p.os != want.os or p.architecture != want.architecture:
        return False
    if not want.variant:
        return True
    have = p.variant or _DEFAULT_VARIANT.get(p.architecture, "")
    return have == want.variant


def pick_manifest(manifests: Sequence[Descriptor], want: PlatformSpec) -> Descriptor:
    """The first entry for `want` (docker's rule: index order decides among equals).

    Without a variant asked, an entry with no variant or the architecture's default variant
    is preferred over other variants.
    """
    found = [d for d in manifests if _matches(want, d)]
    if not found:
        have = sorted(
            str(PlatformSpec(d.platform.os, d.platform.architecture, d.platform.variant))
            for d in manifests
            if d.platform
        )
        raise ImageNotFound(
            f"no image for platform {want} in the index (has: {', '.join(have) or 'none'})"
        )
    if not want.variant:
        for d in found:
            assert d.platform is not None
            if d.platform.variant in ("", _DEFAULT_VARIANT.get(want.architecture, "")):
                return d
    return found[0]
