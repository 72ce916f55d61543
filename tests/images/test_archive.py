"""load/save: OCI layouts (dir and tar) and docker-archives, checked with skopeo and the schemas."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from bareboat.cli.main import main
from bareboat.errors import DigestMismatch, ImageError, ManifestError
from bareboat.images.store import ImageStore
from bareboat.paths import Roots
from tests.images import ocischema
from tests.support.imagebuild import Image, Layout, host_arch, write_image
from tests.support.treecompare import assert_same_tree


def skopeo(*args: str) -> str:
    out = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def check_layout(root: Path) -> dict[str, object]:
    """Validate a layout with the OCI schemas; return its index."""
    if not ocischema.available():
        pytest.skip("OCI image-spec schemas are not installed")
    ocischema.validate("image-layout-schema.json", json.loads((root / "oci-layout").read_text()))
    index = json.loads((root / "index.json").read_text())
    ocischema.validate("image-index-schema.json", index)
    for desc in index["manifests"]:
        blob = root / "blobs" / "sha256" / desc["digest"].split(":")[1]
        manifest = json.loads(blob.read_bytes())
        ocischema.validate("image-manifest-schema.json", manifest)
        cfg = root / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]
        ocischema.validate("config-schema.json", json.loads(cfg.read_bytes()))
    return index


def test_load_layout_dir_and_tar(roots: Roots, busybox_layout: Path, tmp_path: Path) -> None:
    store = ImageStore(roots)
    [img] = store.load(busybox_layout)
    assert img.names == (f"localhost/{busybox_layout.name}:latest",)
    tar = tmp_path / "bb.tar"
    with tarfile.open(tar, "w") as t:
        for p in ("oci-layout", "index.json", "blobs"):
            t.add(busybox_layout / p, arcname=p)
    [again] = store.load(tar)
    assert again.digest == img.digest and "localhost/bb:latest" in again.names
    # The same layout tarred the usual way (`tar -C DIR .`, so every name starts "./").
    dotted = tmp_path / "dotted.tar"
    subprocess.run(["tar", "-C", str(busybox_layout), "-cf", str(dotted), "."], check=True)
    [third] = store.load(dotted)
    assert third.digest == img.digest and "localhost/dotted:latest" in third.names


@pytest.mark.parametrize("as_tar", [False, True])
def test_save_round_trip_with_skopeo(
    roots: Roots, busybox_layout: Path, tmp_path: Path, as_tar: bool
) -> None:
    store = ImageStore(roots)
    [img] = store.load(busybox_layout)
    store.tag(img.id, "example.com/me/bb:v1")
    out = tmp_path / ("saved.tar" if as_tar else "saved")
    store.save(["example.com/me/bb:v1"], out)
    layout = out
    if as_tar:
        layout = tmp_path / "unpacked"
        with tarfile.open(out) as t:
            t.extractall(layout, filter="data")
    index = check_layout(layout)
    [desc] = index["manifests"]  # type: ignore[index]
    assert desc["annotations"] == {
        "org.opencontainers.image.ref.name": "v1",
        "io.containerd.image.name": "example.com/me/bb:v1",
    }
    # skopeo reads what we wrote, and finds the same digest.
    src = f"oci-archive:{out}:v1" if as_tar else f"oci:{out}:v1"
    info = json.loads(skopeo("inspect", src))
    assert info["Digest"] == img.digest
    copy = tmp_path / "copy"
    skopeo("copy", "--quiet", src, f"oci:{copy}:x")
    # ... and loading it back gives the same image under the saved name.
    fresh = ImageStore(Roots(tmp_path / "r2", tmp_path / "s2", roots.cache))
    [back] = fresh.load(out)
    assert back.digest == img.digest and back.names == ("example.com/me/bb:v1",)


def test_save_refuses_non_empty_dir(roots: Roots, busybox_layout: Path, tmp_path: Path) -> None:
    store = ImageStore(roots)
    [img] = store.load(busybox_layout)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ImageError):
        store.save([img.id], tmp_path / "full")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_docker_archive_load(roots: Roots, busybox_layout: Path, tmp_path: Path) -> None:
    archive = tmp_path / "docker.tar"
    skopeo("copy", "--quiet", f"oci:{busybox_layout}:latest", f"docker-archive:{archive}:myimg:1.0")
    store = ImageStore(roots)
    [img] = store.load(archive)
    assert img.names == ("docker.io/library/myimg:1.0",)
    oci = ImageStore(Roots(tmp_path / "r2", tmp_path / "s2", roots.cache))
    [ref] = oci.load(busybox_layout)
    assert img.id == ref.id  # same config
    assert_same_tree(store.rootfs(img), oci.rootfs(ref))


def test_tampered_layout_blob_rejected(roots: Roots, tmp_path: Path) -> None:
    layout = tmp_path / "bad"
    write_image(layout, Image())
    index = json.loads((layout / "index.json").read_text())
    mblob = layout / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]
    layer = json.loads(mblob.read_bytes())["layers"][0]["digest"].split(":")[1]
    data = bytearray((layout / "blobs/sha256" / layer).read_bytes())
    data[100] ^= 0xFF
    (layout / "blobs/sha256" / layer).write_bytes(bytes(data))
    store = ImageStore(roots)
    with pytest.raises(DigestMismatch):
        store.load(layout)
    assert store.list() == []
    assert list((store.root / "tmp").iterdir()) == []


def test_hostile_archive_names(roots: Roots, tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    manifest = json.dumps([{"Config": "../../etc/passwd", "Layers": [], "RepoTags": []}])
    with tarfile.open(evil, "w") as t:
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(manifest)
        t.addfile(ti, io.BytesIO(manifest.encode()))
    with pytest.raises(ManifestError, match="escapes"):
        ImageStore(roots).load(evil)


def test_cli_round_trip(
    roots: Roots, busybox_layout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["load", "-i", str(busybox_layout)]) == 0
    name = f"localhost/{busybox_layout.name}:latest"
    assert main(["tag", name, "bb:2"]) == 0
    capsys.readouterr()
    assert main(["images"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "SIZE"]
    assert any(line.split()[:2] == ["bb", "2"] for line in lines)
    assert main(["inspect", "bb:2"]) == 0
    [doc] = json.loads(capsys.readouterr().out)
    assert doc["Config"]["Cmd"] == ["/bin/sh"] and "docker.io/library/bb:2" in doc["RepoTags"]
    assert main(["save", "-o", str(tmp_path / "o.tar"), "bb:2"]) == 0
    assert main(["rmi", "bb:2", name]) == 0
    assert main(["image", "prune"]) == 0
    assert main(["inspect", "bb:2"]) == 125
    assert main(["load", "-i", str(tmp_path / "o.tar")]) == 0
    assert "Loaded image: docker.io/library/bb:2" in capsys.readouterr().out


def test_layout_with_index_picks_host(roots: Roots, tmp_path: Path) -> None:
    layout = Layout(tmp_path / "multi")
    other = "arm64" if host_arch() == "amd64" else "amd64"
    host = layout.add_image(Image(labels={"a": host_arch()}))
    foreign = layout.add_image(Image(labels={"a": other}, arch=other))
    layout.tag(layout.add_index([foreign, host]), "1")
    [img] = ImageStore(roots).load(tmp_path / "multi")
    assert img.config.labels == {"a": host_arch()}


def test_load_refuses_oversized_config_fast(
    roots: Roots, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """200,000 env vars took crun 104 s to refuse at run; load refuses them at once, with
    one line, and stores nothing."""
    import time

    write_image(tmp_path / "envbomb", Image(env=[f"V{i}=x" for i in range(200_000)]))
    start = time.monotonic()
    assert main(["load", "-i", str(tmp_path / "envbomb")]) == 125
    assert time.monotonic() - start < 1.0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "$.config.Env" in err and "10000" in err
    assert main(["images", "-q"]) == 0
    assert capsys.readouterr().out.strip() == ""
    blobs = roots.images / "blobs" / "sha256"
    assert not blobs.exists() or list(blobs.iterdir()) == []
