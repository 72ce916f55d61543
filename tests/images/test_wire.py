"""Wire formats: hostile or malformed documents are refused at the edge."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
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


# --- the image config's sizes -----------------------------------------------------------------


def image_config(**container: Any) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": container,
            "rootfs": {"type": "layers", "diff_ids": [D]},
        }
    ).encode()


def test_real_sized_config_decodes() -> None:
    cfg = wire.decode_config(
        image_config(
            Env=[f"V{i}={'x' * 100}" for i in range(500)],
            Entrypoint=["/bin/sh", "-c"],
            Cmd=["x" * 100_000],
            Labels={f"l{i}": "v" * 1000 for i in range(1000)},
            ExposedPorts={f"{p}/tcp": {} for p in range(1000)},
            WorkingDir="/" + "d" * 4000,
        )
    )
    assert cfg.config is not None and len(cfg.config.env or ()) == 500


@pytest.mark.parametrize(
    ("container", "match"),
    [
        ({"Env": ["V=x"] * 200_000}, r"length <= 10000 - at `\$.config.Env`"),
        ({"Env": ["V=" + "x" * 200_000]}, r"length <= 131072 - at `\$.config.Env\[0\]`"),
        ({"Env": ["V=" + "x" * 100_000] * 11}, r"Env holds \d+ bytes, more than the limit of"),
        ({"Cmd": ["x"] * 10_001}, r"length <= 10000 - at `\$.config.Cmd`"),
        ({"Entrypoint": ["x"] * 10_001}, r"length <= 10000 - at `\$.config.Entrypoint`"),
        (
            {"Entrypoint": ["x" * 100_000] * 6, "Cmd": ["x" * 100_000] * 5},
            r"Entrypoint and Cmd hold \d+ bytes, more than the limit of",
        ),
        ({"Labels": {f"l{i}": "" for i in range(10_001)}}, r"at `\$.config.Labels`"),
        ({"Labels": {"k" * 2000: ""}}, r"length <= 1024 - at `key` in `\$.config.Labels`"),
        ({"ExposedPorts": {f"{i}/tcp": {} for i in range(10_001)}}, r"`\$.config.ExposedPorts`"),
        ({"WorkingDir": "/" + "d" * 5000}, r"length <= 4096 - at `\$.config.WorkingDir`"),
        ({"User": "u" * 300}, r"at `\$.config.User`"),
        ({"StopSignal": "S" * 300}, r"at `\$.config.StopSignal`"),
    ],
)
def test_oversized_config_refused(container: dict[str, Any], match: str) -> None:
    with pytest.raises(ManifestError, match=match) as info:
        wire.decode_config(image_config(**container))
    assert "\n" not in str(info.value) and str(info.value).startswith("invalid image config")


def test_200000_env_vars_fail_fast() -> None:
    """crun took 104 s to fail on these; the decoder refuses them at once."""
    import time

    doc = image_config(Env=[f"V{i}=x" for i in range(200_000)])
    start = time.monotonic()
    with pytest.raises(ManifestError, match="Env"):
        wire.decode_config(doc)
    assert time.monotonic() - start < 0.5


def test_documents_carry_the_spec_field_names() -> None:
    """The JSON names the OCI image and distribution specs (and docker's config) give each
    field: camelCase in descriptors, manifests and indexes, PascalCase in the container
    config, `os.version` and `diff_ids` as they are."""
    structs = (
        wire.Platform, wire.Descriptor, wire.Manifest, wire.Index, wire.ContainerConfig,
        wire.RootFS, wire.Config, wire.MediaTypeOnly,
    )  # fmt: skip
    names = {t.__name__: [f.encode_name for f in msgspec.structs.fields(t)] for t in structs}
    assert names == {
        "Platform": ["architecture", "os", "variant", "os.version"],
        "Descriptor": ["mediaType", "digest", "size", "annotations", "platform"],
        "Manifest": ["schemaVersion", "config", "layers", "mediaType", "annotations"],
        "Index": ["schemaVersion", "manifests", "mediaType", "annotations"],
        "ContainerConfig": [
            "User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "WorkingDir", "Labels",
            "StopSignal",
        ],
        "RootFS": ["type", "diff_ids"],
        "Config": ["architecture", "os", "rootfs", "variant", "config"],
        "MediaTypeOnly": ["mediaType", "schemaVersion", "manifests", "layers"],
    }  # fmt: skip
