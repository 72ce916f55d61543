"""Pulls from a real registry (Debian's docker-registry), checked against skopeo and umoci."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bareboat.errors import DigestMismatch, ImageNotFound, RegistryError
from bareboat.images import wire
from bareboat.images.reference import parse_reference
from bareboat.images.registry import RegistryClient
from bareboat.images.store import ImageStore
from bareboat.paths import Roots
from tests.images.conftest import Pushed
from tests.support.registry import Registry
from tests.support.treecompare import assert_same_tree


def skopeo_digest(ref: str) -> str:
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return str(json.loads(out.stdout)["Digest"])


def umoci_rootfs(ref: str, work: Path) -> Path:
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{ref}",
            f"oci:{work / 'oci'}:x",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        ["umoci", "unpack", "--image", f"{work / 'oci'}:x", str(work / "bundle")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return work / "bundle" / "rootfs"


def store_is_clean(store: ImageStore) -> None:
    """No record, no name, no temp file: what a failed pull must leave."""
    assert store.list() == []
    tmp = store.root / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_pull_by_tag_matches_skopeo_and_umoci(roots: Roots, pushed: Pushed, tmp_path: Path) -> None:
    ref = pushed.reg.ref("test/busybox:latest")
    store = ImageStore(roots)
    img = store.pull(ref, progress=False)
    assert img.digest == skopeo_digest(ref)
    assert img.names == (str(parse_reference(ref)),)
    assert img.config.cmd == ("/bin/sh",) and img.config.os == "linux"
    assert store.get(ref) == store.get(img.short_id) == store.get(img.id)
    rootfs = store.rootfs(img)
    assert store.rootfs(img) == rootfs
    assert_same_tree(rootfs, umoci_rootfs(ref, tmp_path))


def test_pull_by_digest(roots: Roots, pushed: Pushed) -> None:
    ref = pushed.reg.ref("test/busybox:latest")
    digest = skopeo_digest(ref)
    by_digest = pushed.reg.ref(f"test/busybox@{digest}")
    img = ImageStore(roots).pull(by_digest, progress=False)
    assert img.digest == digest
    assert ImageStore(roots).get(by_digest).digest == digest


def test_pull_unknown_digest_and_tag(roots: Roots, pushed: Pushed) -> None:
    store = ImageStore(roots)
    with pytest.raises(ImageNotFound):
        store.pull(pushed.reg.ref("test/busybox:nope"), progress=False)
    with pytest.raises(ImageNotFound):
        store.pull(pushed.reg.ref("test/busybox@sha256:" + "0" * 64), progress=False)
    store_is_clean(store)


def test_index_platform_pick(roots: Roots, pushed: Pushed) -> None:
    store = ImageStore(roots)
    ref = pushed.reg.ref("test/multi:1")
    host = store.pull(ref, progress=False)
    assert host.config.labels == {"arch": "amd64"} and host.config.architecture == "amd64"
    arm = store.pull(ref, platform="linux/arm64", progress=False)
    assert arm.config.labels == {"arch": "arm64"} and arm.config.architecture == "arm64"
    with pytest.raises(ImageNotFound, match="s390x"):
        store.pull(ref, platform="linux/s390x", progress=False)


def test_docker_schema2_and_manifest_list(roots: Roots, pushed: Pushed, tmp_path: Path) -> None:
    store = ImageStore(roots)
    ref = pushed.reg.ref("test/docker:wh")
    img = store.pull(ref, progress=False)
    raw = json.loads(store.blobs.read(img.digest))
    assert raw["mediaType"] == wire.DOCKER_MANIFEST
    assert {x.media_type for x in img.layers} == {wire.DOCKER_LAYER_GZIP}
    assert img.digest == skopeo_digest(ref)
    assert_same_tree(store.rootfs(img), umoci_rootfs(ref, tmp_path))
    arm = store.pull(pushed.reg.ref("test/dmulti:1"), platform="linux/arm64", progress=False)
    assert arm.config.labels == {"arch": "arm64"}


@pytest.mark.parametrize("tag", ["zstd", "plain"])
def test_zstd_and_uncompressed_layers(roots: Roots, pushed: Pushed, tag: str) -> None:
    store = ImageStore(roots)
    img = store.pull(pushed.reg.ref(f"test/busybox:{tag}"), progress=False)
    assert img.config.labels == {"kind": tag}
    assert (store.rootfs(img) / "bin" / "busybox").is_file()


def test_whiteouts_through_the_store(roots: Roots, pushed: Pushed, tmp_path: Path) -> None:
    ref = pushed.reg.ref("test/busybox:wh")
    store = ImageStore(roots)
    rootfs = store.rootfs(store.pull(ref, progress=False))
    assert not (rootfs / "etc" / "foo").exists()
    assert sorted(p.name for p in (rootfs / "d").iterdir()) == ["new"]
    assert (rootfs / "keep").stat().st_ino == (rootfs / "hl").stat().st_ino
    assert_same_tree(rootfs, umoci_rootfs(ref, tmp_path))


def test_corrupted_blob_is_rejected(roots: Roots, fresh_registry: Registry) -> None:
    ref = fresh_registry.ref("test/busybox:latest")
    store = ImageStore(roots)
    # Flip bytes in the stored layer, keeping its size: only the digest can tell.
    layer = ImageStore(roots).pull(ref, progress=False).layers[0]
    store.remove(ref)
    blob = fresh_registry.blob_path(layer.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        store.pull(ref, progress=False)
    store_is_clean(store)
    assert not store.blobs.has(layer.digest)


def test_present_blobs_are_not_fetched_again(roots: Roots, fresh_registry: Registry) -> None:
    ref = fresh_registry.ref("test/busybox:latest")
    store = ImageStore(roots)
    img = store.pull(ref, progress=False)
    # The registry loses the layer: a second pull can only succeed without fetching it.
    fresh_registry.blob_path(img.layers[0].digest).unlink()
    again = store.pull(ref, progress=False)
    assert again == img


def test_registry_dies_mid_pull(roots: Roots, fresh_registry: Registry) -> None:
    ref = fresh_registry.ref("test/busybox:latest")
    store = ImageStore(roots)

    class KillOnFirstChunk:
        def start(self, digest: str, total: int) -> None:
            pass

        def advance(self, digest: str, n: int) -> None:
            fresh_registry.stop()

        def finish(self, digest: str) -> None:
            pass

        def close(self) -> None:
            pass

    # The blob may already be buffered whole; what matters is that an unfinished or
    # unverifiable pull leaves nothing, and a finished one is complete.
    try:
        store.pull(ref, progress=KillOnFirstChunk())
    except RegistryError:
        store_is_clean(store)
    else:
        img = store.get(ref)
        assert all(store.blobs.has(x.digest) for x in img.layers)


PULL_SLOWLY = """
import sys, time
from pathlib import Path
from bareboat.images.store import ImageStore
from bareboat.paths import Roots

class Slow:
    def start(self, digest, total): pass
    def advance(self, digest, n):
        Path(sys.argv[2]).touch()
        time.sleep(60)
    def finish(self, digest): pass
    def close(self): pass

ImageStore(Roots.from_env()).pull(sys.argv[1], progress=Slow())
"""


def test_killed_pull_leaves_no_entry(
    roots: Roots, fresh_registry: Registry, tmp_path: Path
) -> None:
    ref = fresh_registry.ref("test/busybox:latest")
    flag = tmp_path / "downloading"
    proc = subprocess.Popen([sys.executable, "-c", PULL_SLOWLY, ref, str(flag)])
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert proc.poll() is None, "the pull ended before it started downloading"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    store = ImageStore(roots)
    assert store.list() == []
    # The layer's temp file, and the config's or manifest's if one was being written.
    left = list((store.root / "tmp").iterdir())
    assert left, "the killed download left its temp file"
    assert store.prune().temp == len(left)
    assert store.pull(ref, progress=False).names


CONCURRENT = """
import sys
from bareboat.images.store import ImageStore
from bareboat.paths import Roots
print(ImageStore(Roots.from_env()).pull(sys.argv[1], progress=False).digest)
"""


def test_concurrent_pulls_of_one_image(roots: Roots, pushed: Pushed) -> None:
    ref = pushed.reg.ref("test/busybox:wh")
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT, ref], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert len(set(outs)) == 1
    store = ImageStore(roots)
    [img] = store.list()
    assert img.digest == outs[0]
    assert sorted(store.blobs.digests()) == sorted(
        {img.digest, img.id, *(x.digest for x in img.layers)}
    )
    assert list((store.root / "tmp").iterdir()) == []


def test_rmi_and_prune_free_everything(roots: Roots, pushed: Pushed) -> None:
    store = ImageStore(roots)
    ref = pushed.reg.ref("test/busybox:latest")
    img = store.pull(ref, progress=False)
    store.rootfs(img)
    store.tag(ref, "mine:1")
    assert store.get("mine:1").names == tuple(
        sorted((str(parse_reference(ref)), "docker.io/library/mine:1"))
    )
    assert store.remove("mine:1") == ["Untagged: docker.io/library/mine:1"]
    events = store.remove(img.short_id)
    assert events[-1] == f"Deleted: {img.id}"
    assert list(store.blobs.digests()) == []
    assert list((store.root / "rootfs").iterdir()) == []
    with pytest.raises(ImageNotFound):
        store.get(ref)


def test_plain_http_only_for_loopback() -> None:
    assert RegistryClient(parse_reference("example.com/x")).scheme == "https"
    assert RegistryClient(parse_reference("example.com/x"), insecure=True).scheme == "http"
    for host in ("localhost:5000", "127.0.0.1:5000", "[::1]:5000", "localhost"):
        assert RegistryClient(parse_reference(f"{host}/x")).scheme == "http"


def test_unpack_while_downloading(roots: Roots, pushed: Pushed, tmp_path: Path) -> None:
    ref = pushed.reg.ref("test/busybox:wh")
    store = ImageStore(roots)
    img = store.pull(ref, unpack=True, progress=False)
    trees = list((store.root / "rootfs").iterdir())
    assert [p.name for p in trees] == [img.id.split(":")[1]]
    assert store.rootfs(img) == trees[0]
    # The same tree as the unpack-after-pull path builds.
    other = ImageStore(Roots(tmp_path / "r2", tmp_path / "s2", roots.cache))
    assert_same_tree(trees[0], other.rootfs(other.pull(ref, progress=False)))
    # A second pull with the tree in place changes nothing.
    assert store.pull(ref, unpack=True, progress=False) == img


def test_unpack_while_downloading_corrupt_blob(roots: Roots, fresh_registry: Registry) -> None:
    ref = fresh_registry.ref("test/busybox:latest")
    store = ImageStore(roots)
    layer = store.pull(ref, progress=False).layers[0]
    store.remove(ref)
    blob = fresh_registry.blob_path(layer.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) - 100] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        store.pull(ref, unpack=True, progress=False)
    store_is_clean(store)
    rootfs = store.root / "rootfs"
    assert not rootfs.exists() or list(rootfs.iterdir()) == []


def test_ensure_pulls_and_unpacks(roots: Roots, pushed: Pushed) -> None:
    store = ImageStore(roots)
    ref = pushed.reg.ref("test/busybox:zstd")
    img = store.ensure(ref)
    assert (store.root / "rootfs" / img.id.split(":")[1] / "bin" / "busybox").is_file()
    assert store.ensure(ref, pull=False) == img
