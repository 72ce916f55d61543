"""The test image builder writes layouts that a tool no one here wrote accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


@pytest.mark.skipif(not shutil.which("umoci"), reason="umoci not installed")
def test_busybox_layout_unpacks_with_umoci(busybox_layout: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{busybox_layout}:latest", str(bundle)],
        check=True,
        capture_output=True,
    )
    assert (bundle / "rootfs" / "bin" / "busybox").stat().st_size > 100_000
    assert (bundle / "rootfs" / "bin" / "sh").is_symlink()
