"""Images that are small on the wire and huge on disk, through the real paths: pushed to a
real registry and run by the CLI, or loaded from an archive. The host is checked afterwards:
disk used, files left in the store, images listed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.paths import Roots
from tests.support.bombs import (
    SPARSE_SIZE,
    GiB,
    assert_sparse_file,
    bomb_diff_id,
    sparse_tar,
    streamed_bomb,
)
from tests.support.imagebuild import (
    MT_LAYER,
    MT_MANIFEST,
    Image,
    Layout,
    busybox_entries,
    compress,
    sha256,
    tar_layer,
)
from tests.support.registry import Registry

ROOT = os.geteuid() == 0
X_BOMB = 256 << 20  # 256 MiB of "x" in a 260 KB blob


def add_image(layout: Layout, layers: list[tuple[bytes, str]], tag: str) -> None:
    """An image of ready gzip blobs [(blob, diff_id)] on top of busybox."""
    base = tar_layer(busybox_entries())
    blobs = [(compress(base, "gzip"), sha256(base)), *layers]
    image = Image()
    config = json.dumps(image.config([d for _, d in blobs])).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": layout.descriptor("application/vnd.oci.image.config.v1+json", config),
        "layers": [layout.descriptor(MT_LAYER["gzip"], b) for b, _ in blobs],
    }
    layout.tag(layout.descriptor(MT_MANIFEST, json.dumps(manifest).encode()), tag)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """test/holes: a sparse 10 GiB file (GNU tar -S) and 1 GiB of zeros in a gzip;
    test/xbomb: 256 MiB of "x" in a gzip, which no hole can shrink."""
    work = tmp_path_factory.mktemp("bombs")
    layout = Layout(work / "layout")
    sparse = sparse_tar(work)
    zeros = (streamed_bomb(GiB, b"\0", "zeros"), bomb_diff_id(GiB, b"\0", "zeros"))
    add_image(layout, [(compress(sparse, "gzip"), sha256(sparse)), zeros], "holes")
    add_image(layout, [(streamed_bomb(X_BOMB, b"x"), bomb_diff_id(X_BOMB, b"x"))], "xbomb")
    with Registry(work / "registry") as reg:
        reg.push(work / "layout", "holes", "test/holes:1")
        reg.push(work / "layout", "xbomb", "test/xbomb:1")
        yield reg


def bareboat(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bareboat.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def disk_used(path: Path) -> int:
    """Bytes the files under `path` take on disk (du's count, not their sizes)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def assert_store_empty(roots: Roots) -> None:
    """No image, name, blob, tree or temporary file: what a refused image must leave."""
    assert bareboat("images", "-q").stdout.strip() == ""
    store = roots.images
    for sub in ("manifests", "blobs/sha256", "rootfs", "tmp"):
        d = store / sub
        assert not d.exists() or list(d.iterdir()) == [], sub
    names = store / "names.json"
    assert not names.exists() or json.loads(names.read_text()) == {}
    assert bareboat("ps", "-aq").stdout.strip() == ""


@pytest.fixture
def needs_root() -> None:
    if not ROOT:
        pytest.skip("running images needs root here")


def test_holes_stay_holes_through_pull_and_run(
    roots: Roots, bombs: Registry, needs_root: None
) -> None:
    """A 20 KB sparse tar and a 1 MB gzip of zeros: 11 GiB of files, a few blocks of disk."""
    ref = bombs.ref("test/holes:1")
    out = bareboat(
        "run", "--rm", "--isolation", "process", ref, "stat", "-c", "%s", "/big", "/zeros"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(SPARSE_SIZE), str(GiB)]
    [tree] = (roots.images / "rootfs").iterdir()
    assert_sparse_file(tree / "big")
    assert (tree / "zeros").stat().st_blocks == 0
    assert disk_used(roots.root) < 32 << 20  # busybox and the blobs; not 11 GiB


@pytest.mark.slow
def test_holes_stay_holes_in_a_microvm(roots: Roots, bombs: Registry, needs_root: None) -> None:
    """The VM's disk of that image keeps the holes too (ext4, see backends/microvm/rootfs)."""
    from tests.microvm.test_backend import kernel_or_skip

    kernel_or_skip(roots)
    ref = bombs.ref("test/holes:1")
    script = "stat -c %s /big /zeros; tail -c 4 /big; echo"
    argv = ["run", "--rm", "--isolation", "microvm", "--no-template", ref, "sh", "-c", script]
    out = bareboat(*argv)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(SPARSE_SIZE), str(GiB), "tail"]
    [disk] = (roots.root / "vm-images").glob("*.ext4")
    assert disk.stat().st_blocks * 512 < 64 << 20
    assert disk_used(roots.root) < 96 << 20


def test_bomb_past_the_cap_is_refused_and_leaves_nothing(
    roots: Roots, bombs: Registry, needs_root: None
) -> None:
    """256 MiB of "x" from a 260 KB blob, with a 64 MiB cap: refused while unpacking, with
    one line naming the layer and the sizes; nothing of the image is left."""
    cap = {"BAREBOAT_MAX_IMAGE_SIZE": "64m"}
    out = bareboat(
        "run", "--rm", "--isolation", "process", bombs.ref("test/xbomb:1"), "true", env=cap
    )
    assert out.returncode == 125, out.stderr
    err = out.stderr.strip()
    assert "\n" not in err
    assert "image too large: layer 2 of 2 (sha256:" in err and "at entry 'bomb'" in err
    assert "past 64.0 MiB on disk" in err and "BAREBOAT_MAX_IMAGE_SIZE=64m" in err
    assert_store_empty(roots)
    assert disk_used(roots.root) < 1 << 20


def test_default_cap_is_the_free_space_of_the_store(
    roots: Roots, bombs: Registry, needs_root: None
) -> None:
    """No cap set, and a store on a 128 MiB filesystem: the bomb is refused by the space
    left there (less 5% of it), before it fills it."""
    roots.root.mkdir(parents=True)
    mount = ["mount", "-t", "tmpfs", "-o", "size=128m,mode=0700", "tmpfs", str(roots.root)]
    if subprocess.run(mount, capture_output=True, timeout=30).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        env = {"BAREBOAT_MAX_IMAGE_SIZE": ""}
        out = bareboat(
            "run", "--rm", "--isolation", "process", bombs.ref("test/xbomb:1"), "true", env=env
        )
        assert out.returncode == 125, out.stderr
        assert "image too large: layer 2 of 2" in out.stderr and "free where" in out.stderr
        assert_store_empty(roots)
        assert shutil.disk_usage(roots.root).used < 4 << 20
    finally:
        subprocess.run(["umount", str(roots.root)], check=True, timeout=30)


def test_pull_refuses_blobs_past_the_cap_before_fetching(roots: Roots, bombs: Registry) -> None:
    out = bareboat("pull", bombs.ref("test/holes:1"), env={"BAREBOAT_MAX_IMAGE_SIZE": "100k"})
    assert out.returncode == 125
    err = out.stderr.strip()
    assert "\n" not in err and "image too large: blob " in err and "past 100.0 KiB" in err
    assert_store_empty(roots)


def docker_archive(tmp_path: Path, size: int) -> Path:
    """A docker-archive tar whose layer is a tar of one `size`-byte file of zeros, stored
    as a sparse member (GNU tar -S): a few MB of archive (busybox), a `size`-byte blob."""
    src = tmp_path / "archive-src"
    src.mkdir()
    base = tar_layer(busybox_entries())
    (src / "base.tar").write_bytes(base)
    ti = tarfile.TarInfo("zeros")
    ti.size, ti.mode, ti.mtime = size, 0o644, 1_700_000_000
    header = ti.tobuf(tarfile.GNU_FORMAT)
    with open(src / "layer.tar", "wb") as f:
        f.write(header)
        f.truncate(len(header) + size + 1024)  # the file's zeros and the end blocks: a hole
    h = hashlib.sha256(header)
    zeros = bytes(1 << 20)
    for _ in range(size >> 20):
        h.update(zeros)
    h.update(bytes(1024))
    cfg = Image().config([sha256(base), "sha256:" + h.hexdigest()])
    (src / "config.json").write_text(json.dumps(cfg))
    entry = {"Config": "config.json", "RepoTags": ["zeros:1"], "Layers": ["base.tar", "layer.tar"]}
    (src / "manifest.json").write_text(json.dumps([entry]))
    out = tmp_path / "zeros.tar"
    members = ["manifest.json", "config.json", "base.tar", "layer.tar"]
    subprocess.run(
        ["tar", "-S", "-C", str(src), "-cf", str(out), *members], check=True, timeout=120
    )
    shutil.rmtree(src)
    return out


def test_load_keeps_a_sparse_member_sparse_and_is_capped(
    roots: Roots, tmp_path: Path, needs_root: None
) -> None:
    archive = docker_archive(tmp_path, GiB)
    assert archive.stat().st_size < 4 << 20
    out = bareboat("load", "-i", str(archive), env={"BAREBOAT_MAX_IMAGE_SIZE": "512m"})
    assert out.returncode == 125
    assert "image too large: blob 3 of 3 (layer.tar, 1.0 GiB)" in out.stderr
    assert "past 512.0 MiB" in out.stderr
    assert_store_empty(roots)
    out = bareboat("load", "-i", str(archive))
    assert out.returncode == 0, out.stderr
    assert disk_used(roots.images) < 16 << 20  # the 1 GiB layer blob is a hole
    out = bareboat(
        "run", "--rm", "--isolation", "process", "zeros:1", "stat", "-c", "%s %b", "/zeros"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(GiB), "0"]
    assert disk_used(roots.root) < 32 << 20
