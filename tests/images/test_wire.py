"""Wire formats: hostile or malformed documents are refused at the edge."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bareboat.errors import ImageNotFound, ManifestError, UsageError
from bareboat.images import wire
from bareboat.images.platform import PlatformSpec, parse_platform, pick_manifest

D = "sha256:" + "b" * 64


def manifest(**over: Any) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": wire.OCI_MANIFEST,
        "config": {"mediaType": wire.OCI_CONFIG, "digest": D, "size": 10},
        "layers": [{"mediaType": wire.OCI_LAYER_GZIP, "digest": D, "size": 5}],
    }
    doc.update(over)
    return json.dumps(doc).encode()


def test_valid_manifest() -> None:
    m = wire.decode_manifest(manifest())
    assert m.config.digest == D and m.layers[0].size == 5
    assert wire.sniff_media_type(manifest()) == wire.OCI_MANIFEST


@pytest.mark.parametrize(
    "doc",
    [
        manifest(schemaVersion=1),
        manifest(config={"mediaType": "x", "digest": "sha256:abc", "size": 1}),
        manifest(config={"mediaType": "x", "digest": "md5:" + "a" * 32, "size": 1}),
        manifest(config={"mediaType": "x", "digest": D, "size": -1}),
        manifest(config={"mediaType": "x", "digest": D, "size": 1 << 50}),
        manifest(layers=[{"mediaType": "text/plain", "digest": D, "size": 1}]),
        manifest(layers=[{"mediaType": wire.OCI_LAYER, "digest": D, "size": 1}] * 1001),
        b"{",
        b"[]",
        b" " * (wire.MAX_DOCUMENT + 1),
    ],
)
def test_bad_manifests(doc: bytes) -> None:
    with pytest.raises(ManifestError) as info:
        wire.decode_manifest(doc)
    assert "\n" not in str(info.value)


def test_sniff() -> None:
    assert wire.sniff_media_type(b'{"manifests": []}') == wire.OCI_INDEX
    assert wire.sniff_media_type(b"{}", wire.DOCKER_LIST) == wire.DOCKER_LIST
    with pytest.raises(ManifestError):
        wire.sniff_media_type(
            b'{"mediaType": "application/vnd.docker.distribution.manifest.v1+json"}'
        )


@given(st.binary(max_size=200))
def test_garbage_never_crashes(data: bytes) -> None:
    for decode in (wire.decode_manifest, wire.decode_index, wire.decode_config):
        with contextlib.suppress(ManifestError):
            decode(data)


def desc(arch: str, variant: str = "") -> wire.Descriptor:
    return wire.Descriptor(wire.OCI_MANIFEST, D, 1, platform=wire.Platform(arch, "linux", variant))


def test_platform_pick() -> None:
    entries = [desc("arm", "v6"), desc("arm", "v7"), desc("arm64", "v8"), desc("amd64")]
    assert pick_manifest(entries, parse_platform("linux/amd64")) is entries[3]
    assert pick_manifest(entries, parse_platform("linux/arm")) is entries[1]
    assert pick_manifest(entries, parse_platform("linux/arm/v6")) is entries[0]
    assert pick_manifest(entries, parse_platform("linux/aarch64")) is entries[2]
    assert pick_manifest([desc("arm64")], parse_platform("linux/arm64/v8")).platform
    with pytest.raises(ImageNotFound, match="linux/riscv64"):
        pick_manifest(entries, PlatformSpec("linux", "riscv64"))
    for bad in ("linux", "linux/", "a/b/c/d"):
        with pytest.raises(UsageError):
            parse_platform(bad)
