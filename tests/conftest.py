"""Fixtures every test area shares."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.paths import Roots
from tests.support.imagebuild import Image, write_image


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Roots]:
    """Fresh store and state roots for one test; the guest cache stays shared (read-only)."""
    r = Roots(
        root=tmp_path / "root",
        state=tmp_path / "state",
        cache=Path(os.environ.get("BAREBOAT_CACHE") or "/var/cache/bareboat"),
    )
    monkeypatch.setenv("BAREBOAT_ROOT", str(r.root))
    monkeypatch.setenv("BAREBOAT_STATE", str(r.state))
    yield r


@pytest.fixture(scope="session")
def busybox_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout holding the busybox test image, tagged `latest`."""
    root = tmp_path_factory.mktemp("busybox-layout")
    write_image(root, Image())
    return root
