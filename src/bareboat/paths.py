"""Every path bareboat uses, derived from three roots.

- `root`  (BAREBOAT_ROOT,  default /var/lib/bareboat): images, container records, templates.
- `state` (BAREBOAT_STATE, default /run/bareboat): runtime state that dies with the host
  (sockets, pid files, mounts of running containers).
- `cache` (BAREBOAT_CACHE, default /var/cache/bareboat): rebuildable artifacts shared by every
  store on the host, such as the guest kernel and init built by `bareboat guest build`.

Every root, and every directory of image or container content in them, is 0700 (see
`privdir`): `Roots.make_private()` makes them so, and tightens those of an older installation,
whenever a store, an engine or a backend opens the roots.

Tests give each run roots of their own; nothing in a test touches the defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bareboat.privdir import private_dir

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

    def make_private(self) -> Roots:
        """Make (or tighten) the roots and their content directories 0700; returns self.

        Once per process and roots: the directories do not go away while bareboat runs.
        """
        if self not in _PRIVATE:
            for d in self.content_dirs():
                private_dir(d)
            _PRIVATE.add(self)
        return self

    def content_dirs(self) -> tuple[Path, ...]:
        """The directories that hold image or container content, roots first. The cache root
        itself is not among them: it may be a directory shared with other programs."""
        return (
            self.root,
            self.state,
            self.images,
            self.containers,
            self.templates,
            self.vm_images,
            self.run,
            self.vm_sockets,
            self.guest,
            self.wasm_cache,
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

    # microVMs: templates, read-only image disks, sockets
    @property
    def templates(self) -> Path:
        return self.root / "templates"

    @property
    def vm_images(self) -> Path:
        return self.root / "vm-images"

    @property
    def vm_sockets(self) -> Path:
        return self.state / "vm"

    # guest kernel and init
    @property
    def guest(self) -> Path:
        return self.cache / "guest"

    # compiled Wasm modules
    @property
    def wasm_cache(self) -> Path:
        return self.cache / "wasm"


_PRIVATE: set[Roots] = set()
