"""The VM image builder, checked against erofs-utils' and e2fsprogs' own readers."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.backends.microvm import rootfs
from bareboat.errors import BackendError, StoreError, UsageError
from bareboat.paths import Roots
from tests.support.imagebuild import Entry, busybox_entries, tar_layer

needs_erofs = pytest.mark.skipif(not shutil.which("mkfs.erofs"), reason="erofs-utils missing")
needs_ext4 = pytest.mark.skipif(not shutil.which("mkfs.ext4"), reason="e2fsprogs missing")

EXTRA = [
    Entry("home/app/owned", "file", b"mine\n", mode=0o600, uid=1000, gid=1000),
    Entry("etc/hard", "hardlink", target="etc/passwd"),
    Entry("var/fifo", "fifo", mode=0o644),
    Entry("var/setuid", "file", b"#!/bin/sh\n", mode=0o4755),
    Entry("var/empty", "file", b""),
]


def unpack(entries: list[Entry], dest: Path) -> Path:
    """Unpack our own trusted test tar (owners, modes, links kept) into `dest`."""
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(tar_layer(entries))) as tar:
        tar.extractall(dest, numeric_owner=True, filter="fully_trusted")
    return dest


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return unpack(busybox_entries() + EXTRA, tmp_path / "tree")


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything about a tree that the guest can see: types, modes, owners, links, data."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if rel == "lost+found":
                continue
            st = p.lstat()
            extra: object = None
            if p.is_symlink():
                extra = os.readlink(p)
            elif p.is_file():
                extra = hashlib.sha256(p.read_bytes()).hexdigest()
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, extra)
    return out


@contextlib.contextmanager
def mounted(image: Path, fstype: str, where: Path) -> Iterator[Path]:
    """Loop-mount an image read-only: the host kernel is the reader no one here wrote."""
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", fstype, "-o", "ro,loop", str(image), str(where)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot loop-mount {fstype} here: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, timeout=30)


def cached_files(roots: Roots) -> list[str]:
    return sorted(p.name for p in rootfs.cache_dir(roots).iterdir() if not p.name.endswith(".lock"))


@needs_erofs
def test_erofs_image_holds_the_tree(roots: Roots, tree: Path, tmp_path: Path) -> None:
    img = rootfs.ensure_image(roots, tree, key=rootfs.cache_key("sha256:" + "a" * 64))
    assert img.fstype == "erofs"
    assert img.path == rootfs.cache_dir(roots) / f"sha256-{'a' * 64}.erofs"
    subprocess.run(["fsck.erofs", str(img.path)], check=True, capture_output=True, timeout=60)
    assert img.path.stat().st_mode & 0o777 == 0o444
    with mounted(img.path, "erofs", tmp_path / "mnt") as mnt:
        assert snapshot(mnt) == snapshot(tree)
        assert os.stat(mnt / "etc/hard").st_ino == os.stat(mnt / "etc/passwd").st_ino


@needs_ext4
def test_ext4_fallback_holds_the_tree(roots: Roots, tree: Path, tmp_path: Path) -> None:
    img = rootfs.ensure_image(roots, tree, key="k1", fstype="ext4")
    assert img.fstype == "ext4" and img.path.name == "k1.ext4"
    subprocess.run(["e2fsck", "-fn", str(img.path)], check=True, capture_output=True, timeout=60)
    with mounted(img.path, "ext4", tmp_path / "mnt") as mnt:
        assert snapshot(mnt) == snapshot(tree)


@needs_ext4
def test_ext4_when_erofs_is_missing(
    roots: Roots, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A host without erofs-utils: a PATH that holds mkfs.ext4 and nothing else.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mkfs.ext4").symlink_to(shutil.which("mkfs.ext4") or "/sbin/mkfs.ext4")
    monkeypatch.setenv("PATH", str(bindir))
    assert rootfs.available_fstype("erofs") == "ext4"
    assert rootfs.ensure_image(roots, tree, key="k0").fstype == "ext4"
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(BackendError, match=r"neither mkfs\.erofs"):
        rootfs.available_fstype("erofs")


@needs_erofs
def test_second_call_is_a_cache_hit(roots: Roots, tree: Path) -> None:
    first = rootfs.ensure_image(roots, tree, key="k2")
    before = first.path.stat()
    shutil.rmtree(tree)
    tree.mkdir()  # a different tree under the same key must not be rebuilt
    second = rootfs.ensure_image(roots, tree, key="k2")
    assert second == first
    after = second.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@needs_erofs
def test_concurrent_builders_make_one_file(roots: Roots, tree: Path) -> None:
    results: list[rootfs.RootfsImage] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(rootfs.ensure_image(roots, tree, key="k3"))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert len({r.path for r in results}) == 1 and len(results) == 4
    assert cached_files(roots) == ["k3.erofs"]


@needs_erofs
def test_concurrent_processes_make_one_file(roots: Roots, tree: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from bareboat.paths import Roots;"
        "from bareboat.backends.microvm import rootfs;"
        "r = Roots(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[2]));"
        "print(rootfs.ensure_image(r, Path(sys.argv[3]), key='k4').path)"
    )
    argv = [sys.executable, "-c", code, str(roots.root), str(roots.state), str(tree)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert len(set(outs)) == 1
    assert cached_files(roots) == ["k4.erofs"]


def test_bad_key_and_missing_tree(roots: Roots, tree: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        rootfs.ensure_image(roots, tree, key="../escape")
    with pytest.raises(UsageError):
        rootfs.cache_key("sha256:../../x")
    with pytest.raises(StoreError):
        rootfs.ensure_image(roots, tmp_path / "missing", key="k5")
    assert not rootfs.cache_dir(roots).exists() or cached_files(roots) == []


@needs_erofs
def test_failed_build_leaves_nothing(
    roots: Roots, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cache on a 1 MiB tmpfs: mkfs.erofs runs out of space writing a 2 MiB busybox (the
    # cap set above the free space, which by default would refuse the build before mkfs).
    monkeypatch.setenv("BAREBOAT_MAX_IMAGE_SIZE", "1g")
    d = rootfs.cache_dir(roots)
    d.mkdir(parents=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True, timeout=30
    )
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(BackendError, match=r"mkfs\.erofs failed"):
            rootfs.ensure_image(roots, tree, key="k6")
        assert cached_files(roots) == []
    finally:
        subprocess.run(["umount", str(d)], check=True, timeout=30)


@needs_erofs
def test_build_timeout_leaves_nothing(roots: Roots, tree: Path) -> None:
    with pytest.raises(BackendError, match="took longer"):
        rootfs.ensure_image(roots, tree, key="k7", timeout=0.001)
    assert cached_files(roots) == []
    # and the next build succeeds, with no stale temporary in the way
    assert rootfs.ensure_image(roots, tree, key="k7").path.is_file()


def test_stale_temporaries_are_swept(roots: Roots, tree: Path) -> None:
    d = rootfs.cache_dir(roots)
    d.mkdir(parents=True)
    (d / ".k8.99999.tmp").write_bytes(b"half an image from a builder that died")
    rootfs.ensure_image(roots, tree, key="k8")
    assert [n for n in cached_files(roots) if n.endswith(".tmp")] == []


def test_remove_image(roots: Roots, tree: Path) -> None:
    img = rootfs.ensure_image(roots, tree, key="k9")
    assert rootfs.remove_image(roots, "k9")
    assert not img.path.exists()
    assert not rootfs.remove_image(roots, "k9")


@needs_ext4
def test_persistent_disk_is_sparse_ext4_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "vm" / "disk.ext4"
    layer = rootfs.make_disk(path, 256 << 20)
    assert layer.kind == "disk" and layer.size == 256 << 20
    st = path.stat()
    assert st.st_size == 256 << 20
    assert st.st_blocks * 512 < 32 << 20  # sparse: mkfs wrote only metadata
    subprocess.run(["e2fsck", "-fn", str(path)], check=True, capture_output=True, timeout=60)
    with mounted(path, "ext4", tmp_path / "mnt"):
        pass
    # a second call keeps what is there (that is the persistence)
    path.chmod(0o600)
    before = path.stat().st_ino
    assert rootfs.make_disk(path, 512 << 20).disk == path
    assert path.stat().st_ino == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["disk.ext4"]


def test_disk_too_small_and_failures_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="at least"):
        rootfs.make_disk(tmp_path / "d", 1 << 20)
    with pytest.raises(BackendError):
        rootfs.make_disk(tmp_path / "d2", 64 << 20, timeout=0.0001)
    assert list(tmp_path.iterdir()) == []


def test_plans_are_plain_data(tmp_path: Path) -> None:
    assert rootfs.erofs_argv(Path("/t"), Path("/o")) == [
        "mkfs.erofs", "--quiet", "--preserve-mtime", "/o", "/t",
    ]  # fmt: skip
    argv = rootfs.ext4_argv(tmp_path, Path("/o"), 32 << 20)
    assert argv[-2:] == ["/o", "32768k"] and "^has_journal" in argv and "-d" in argv
    assert rootfs.disk_argv(Path("/d"), 1 << 30)[-2:] == ["/d", "1048576k"]
    assert rootfs.WritableLayer().kind == "tmpfs"


# --- sparse trees and the disk cap ------------------------------------------------------------


@needs_ext4
def test_sparse_tree_makes_a_sparse_vm_disk(roots: Roots, tree: Path, tmp_path: Path) -> None:
    """A sparse 10 GiB file in the image: EROFS would write its holes (mkfs.erofs 1.5), so
    the disk is ext4, which keeps them; building it takes no time and no space."""
    import time

    from tests.support.bombs import SPARSE_SIZE, assert_sparse_file, sparse_file

    sparse_file(tree / "big")
    start = time.monotonic()
    img = rootfs.ensure_image(roots, tree, key="sparse")
    assert time.monotonic() - start < 10
    assert img.fstype == "ext4"
    assert img.path.stat().st_blocks * 512 < 64 << 20
    with mounted(img.path, "ext4", tmp_path / "mnt") as mnt:
        assert_sparse_file(mnt / "big", SPARSE_SIZE)
        assert (mnt / "bin/busybox").read_bytes() == (tree / "bin/busybox").read_bytes()


@needs_erofs
def test_vm_disk_past_the_cap_is_refused(
    roots: Roots, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bareboat.errors import ImageTooLarge

    monkeypatch.setenv("BAREBOAT_MAX_IMAGE_SIZE", "1m")
    with pytest.raises(ImageTooLarge) as info:
        rootfs.ensure_image(roots, tree, key="big")
    msg = str(info.value)
    assert "\n" not in msg and f"the VM disk of {tree} needs" in msg
    assert "past 1.0 MiB on disk" in msg and "BAREBOAT_MAX_IMAGE_SIZE=1m" in msg
    assert cached_files(roots) == []


@needs_erofs
def test_vm_disk_build_is_stopped_at_the_cap(
    roots: Roots, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the estimate be short, mkfs itself cannot write past the cap (RLIMIT_FSIZE)."""
    from bareboat.errors import ImageTooLarge

    monkeypatch.setenv("BAREBOAT_MAX_IMAGE_SIZE", "1m")
    monkeypatch.setattr(rootfs, "tree_size", lambda _tree: rootfs.TreeSize(0, 0, 0))
    with pytest.raises(ImageTooLarge, match=r"needs more than 1\.0 MiB"):
        rootfs.ensure_image(roots, tree, key="big")
    assert cached_files(roots) == []
