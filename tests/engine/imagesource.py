"""An image source for engine tests: the test image unpacked by umoci (a real OCI tool).

Used where the engine is tested without the image store; the CLI tests use the store.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bareboat.images.model import Image, ImageConfig


class UmociImages:
    def __init__(self, layout: Path, workdir: Path) -> None:
        self.layout = layout
        self.workdir = workdir
        self._unpacked: dict[str, Path] = {}

    def ensure(self, ref: str) -> Image:
        bundle = self.workdir / ref.replace("/", "_").replace(":", "_")
        if not bundle.exists():
            if not shutil.which("umoci"):
                pytest.skip("umoci is not installed")
            subprocess.run(
                ["umoci", "unpack", "--image", f"{self.layout}:{ref}", str(bundle)],
                check=True,
                capture_output=True,
                timeout=120,
            )
        self._unpacked[ref] = bundle / "rootfs"
        cfg = json.loads((bundle / "config.json").read_text())
        proc = cfg["process"]
        config = ImageConfig(cmd=tuple(proc["args"]), env=tuple(proc["env"][:1]))
        return Image(id=f"sha256:{ref}", digest="", names=(ref,), config=config, layers=(), size=0)

    def rootfs(self, image: Image) -> Path:
        return self._unpacked[image.names[0]]
