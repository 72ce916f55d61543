"""What the rest of bareboat knows about an image: plain, validated data.

The store parses OCI/Docker JSON at the edge into these; nothing above the images layer
sees raw manifests.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageConfig:
    """The runnable part of an image config (OCI image-spec `config` object)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()  # "80/tcp"
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    architecture: str = ""
    os: str = ""


@dataclass(frozen=True)
class Layer:
    digest: str  # of the blob as stored (compressed)
    media_type: str
    size: int
    diff_id: str = ""  # of the uncompressed tar, from the config


@dataclass(frozen=True)
class Image:
    """One image in the store.

    `id` is the config digest (as docker's image id); `digest` is the manifest digest, which
    `name@digest` references resolve to. `names` are the tags that point at it.
    """

    id: str
    digest: str
    names: tuple[str, ...]
    config: ImageConfig
    layers: tuple[Layer, ...]
    size: int  # sum of compressed layer sizes + config + manifest

    @property
    def short_id(self) -> str:
        return self.id.split(":", 1)[-1][:12]
