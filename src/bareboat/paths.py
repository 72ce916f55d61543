"""Every path bareboat uses, derived from three roots.

- `root`  (BAREBOAT_ROOT,  default /var/lib/bareboat): images, container records, templates.
- `state` (BAREBOAT_STATE, default /run/bareboat): runtime state that dies with the host
  (sockets, pid files, mounts of running containers).
- `cache` (BAREBOAT_CACHE, default /var/cache/bareboat): rebuildable artifacts shared by every
  store on the host, such as the guest kernel and init built by `bareboat guest build`.

Tests give each run roots of their own; nothing in a test touches the defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("/var/lib/bareboat")
DEFAULT_STATE = Path("/run/bareboat")
DEFAULT_CACHE = Path("/var/cache/bareboat")


@dataclass(frozen=True)
class Roots:
    root: Path
    state: Path
    cache: Path

    @classmethod
    def from_env(
        cls,
        *,
        root: Path | None = None,
        state: Path | None = None,
        cache: Path | None = None,
    ) -> Roots:
        """Explicit arguments win over the environment, which wins over the defaults."""
        env = os.environ
        return cls(
            root=Path(root or env.get("BAREBOAT_ROOT") or DEFAULT_ROOT),
            state=Path(state or env.get("BAREBOAT_STATE") or DEFAULT_STATE),
            cache=Path(cache or env.get("BAREBOAT_CACHE") or DEFAULT_CACHE),
        )

    # images
    @property
    def images(self) -> Path:
        return self.root / "images"

    # containers
    @property
    def containers(self) -> Path:
        return self.root / "containers"

    @property
    def run(self) -> Path:
        return self.state / "containers"

    # microVM templates
    @property
    def templates(self) -> Path:
        return self.root / "templates"

    # guest kernel and init
    @property
    def guest(self) -> Path:
        return self.cache / "guest"

    # compiled Wasm modules
    @property
    def wasm_cache(self) -> Path:
        return self.cache / "wasm"
