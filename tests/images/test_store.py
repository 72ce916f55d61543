"""The store on its own: lookups, names, rootfs sharing, and what a crash leaves behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bareboat.errors import ImageNotFound, InvalidReference, StoreError
from bareboat.images.store import ImageStore
from bareboat.paths import Roots
from tests.support.imagebuild import Image, Layout


def test_lookups(roots: Roots, busybox_layout: Path) -> None:
    store = ImageStore(roots)
    [img] = store.load(busybox_layout)
    name = img.names[0]
    for key in (name, img.id, img.id.split(":")[1], img.short_id, img.short_id[:4], img.digest):
        assert store.get(key) == img
    assert store.get(f"localhost/{busybox_layout.name}@{img.digest}") == img
    with pytest.raises(ImageNotFound):
        store.get("nothere:1")
    with pytest.raises(ImageNotFound):
        store.get("abcdef0123")
    with pytest.raises(InvalidReference):
        store.get("Not A Ref")
    with pytest.raises(InvalidReference):
        store.tag(img.id, f"x@{img.digest}")
    assert store.ensure(name, pull=False) == img
    with pytest.raises(ImageNotFound):
        store.ensure("nothere:1", pull=False)


def test_rmi_needs_force_for_many_names(roots: Roots, busybox_layout: Path) -> None:
    store = ImageStore(roots)
    [img] = store.load(busybox_layout)
    store.tag(img.id, "a:1")
    with pytest.raises(StoreError, match="-f"):
        store.remove(img.short_id)
    events = store.remove(img.short_id, force=True)
    assert events[-1] == f"Deleted: {img.id}" and store.list() == []


def test_shared_blobs_survive_rmi(roots: Roots, tmp_path: Path) -> None:
    layout = Layout(tmp_path / "two")
    layout.tag(layout.add_image(Image(labels={"n": "1"})), "one")
    layout.tag(layout.add_image(Image(labels={"n": "2"})), "two")
    store = ImageStore(roots)
    one, two = store.load(tmp_path / "two")
    assert one.layers == two.layers
    store.remove(one.names[0])
    assert store.blobs.has(two.layers[0].digest)
    assert (store.rootfs(two) / "bin" / "busybox").is_file()


ROOTFS = """
import sys
from bareboat.images.store import ImageStore
from bareboat.paths import Roots
s = ImageStore(Roots.from_env())
print(s.rootfs(s.get(sys.argv[1])))
"""


def test_rootfs_once_under_concurrency(roots: Roots, busybox_layout: Path) -> None:
    store = ImageStore(roots)
    [img] = store.load(busybox_layout)
    procs = [
        subprocess.Popen([sys.executable, "-c", ROOTFS, img.id], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert outs == {str(store.rootfs(img))}
    assert [p.name for p in (store.root / "rootfs").iterdir()] == [img.id.split(":")[1]]


def test_crash_leftovers_are_ignored_then_pruned(roots: Roots, busybox_layout: Path) -> None:
    store = ImageStore(roots)
    [img] = store.load(busybox_layout)
    # What a crash can leave: a temp download, an unpack in progress, a blob no record uses.
    (store.root / "tmp" / "blob-x.part").write_bytes(b"partial")
    (store.root / "rootfs").mkdir()
    (store.root / "rootfs" / ".abc.unpacking").mkdir()
    orphan = store.blobs.put(b"orphan")
    again = ImageStore(roots)
    assert again.list() == [img]
    result = again.prune()
    assert (result.blobs, result.rootfs, result.temp) == (1, 1, 1)
    assert not again.blobs.has(orphan) and again.list() == [img]
    assert (again.rootfs(img) / "bin" / "busybox").is_file()
    assert again.prune().rootfs == 0  # the live tree stays


def test_corrupt_names_file_is_a_clear_error(roots: Roots, busybox_layout: Path) -> None:
    store = ImageStore(roots)
    store.load(busybox_layout)
    (store.root / "names.json").write_text("{not json")
    with pytest.raises(StoreError, match="corrupt"):
        store.list()
