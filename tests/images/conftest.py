"""Images pushed to a real registry, shared by the pull tests of one module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.imagebuild import Entry, Image, Layout, busybox_entries
from tests.support.registry import Registry


@dataclass
class Pushed:
    reg: Registry
    layout: Path


def whiteout_image() -> Image:
    lower = [
        *busybox_entries(),
        Entry("etc/foo", data=b"gone"),
        Entry("d", "dir", mode=0o755),
        Entry("d/old1", data=b"1"),
        Entry("d/old2", data=b"2"),
        Entry("keep", data=b"kept", mode=0o600, uid=1000, gid=50),
        Entry("hl", "hardlink", target="keep"),
    ]
    upper = [
        Entry("etc/.wh.foo"),
        Entry("d", "dir", mode=0o755),
        Entry("d/.wh..wh..opq"),
        Entry("d/new", data=b"new"),
    ]
    return Image(layers=[lower, upper])


def build_layout(root: Path) -> Path:
    layout = Layout(root)
    layout.tag(layout.add_image(Image()), "latest")
    layout.tag(layout.add_image(whiteout_image()), "wh")
    layout.tag(layout.add_image(Image(compression="zstd", labels={"kind": "zstd"})), "zstd")
    layout.tag(layout.add_image(Image(compression=None, labels={"kind": "plain"})), "plain")
    amd = layout.add_image(Image(labels={"arch": "amd64"}, arch="amd64"))
    arm = layout.add_image(Image(labels={"arch": "arm64"}, arch="arm64"))
    layout.tag(layout.add_index([amd, arm]), "multi")
    return root


@pytest.fixture(scope="module")
def image_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_layout(tmp_path_factory.mktemp("layout"))


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, image_layout: Path) -> Iterator[Pushed]:
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        for tag in ("latest", "wh", "zstd", "plain"):
            reg.push(image_layout, tag, f"test/busybox:{tag}")
        reg.push(image_layout, "multi", "test/multi:1", all_images=True)
        reg.push(image_layout, "wh", "test/docker:wh", docker=True)
        reg.push(image_layout, "multi", "test/dmulti:1", all_images=True, docker=True)
        yield Pushed(reg, image_layout)


@pytest.fixture
def fresh_registry(tmp_path: Path, image_layout: Path) -> Iterator[Registry]:
    """A registry of its own, for tests that damage or kill it."""
    with Registry(tmp_path / "registry") as reg:
        reg.push(image_layout, "latest", "test/busybox:latest")
        yield reg


@pytest.fixture(autouse=True)
def _no_user_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the user's registry logins out of the tests."""
    for var in ("BAREBOAT_REGISTRY_USER", "BAREBOAT_REGISTRY_PASSWORD", "DOCKER_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BAREBOAT_AUTH_FILE", str(tmp_path / "no-auth.json"))
    monkeypatch.setenv("HOME", os.environ.get("HOME", "/root"))
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: tmp_path / "home"))
