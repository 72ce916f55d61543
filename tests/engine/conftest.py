from __future__ import annotations

import os
from pathlib import Path

import pytest

from bareboat.engine.engine import Engine
from bareboat.paths import Roots
from tests.engine.imagesource import UmociImages


@pytest.fixture(scope="session")
def umoci_images(busybox_layout: Path, tmp_path_factory: pytest.TempPathFactory) -> UmociImages:
    return UmociImages(busybox_layout, tmp_path_factory.mktemp("umoci"))


@pytest.fixture
def engine(roots: Roots, umoci_images: UmociImages) -> Engine:
    if os.geteuid() != 0:
        pytest.skip("containers need root here")
    return Engine(roots, images=umoci_images)
