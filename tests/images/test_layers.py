"""Layer extraction: real tar streams, real filesystem, hostile layers that must not escape.

Every hostile test builds its rootfs beside a sentinel directory and checks afterwards that
the sentinel is exactly as it was and that nothing else appeared next to the rootfs.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bareboat.errors import LayerError, StoreError
from bareboat.images.layers import LayerLimits, LayerStats, apply_layer, entry_parts, unpack_rootfs
from bareboat.images.layerstream import Compression, compression_for
from tests.support.bombs import GiB, assert_sparse_file, sparse_tar, streamed_bomb
from tests.support.imagebuild import (
    MT_LAYER,
    Entry,
    Image,
    busybox_entries,
    compress,
    tar_layer,
    write_image,
)
from tests.support.treecompare import assert_same_tree, diff_trees, snapshot

MT_TAR = MT_LAYER[None]
MT_GZIP = MT_LAYER["gzip"]
MT_ZSTD = MT_LAYER["zstd"]
MT_DOCKER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
AS_ROOT = os.geteuid() == 0


@dataclass
class Work:
    """A rootfs with a sentinel directory beside it that no layer may touch."""

    base: Path

    @property
    def rootfs(self) -> Path:
        return self.base / "rootfs"

    @property
    def sentinel(self) -> Path:
        return self.base / "sentinel"

    def apply(
        self,
        entries: list[Entry] | bytes,
        compression: str | None = None,
        media_type: str | None = None,
        limits: LayerLimits | None = None,
    ) -> LayerStats:
        raw = entries if isinstance(entries, bytes) else tar_layer(entries)
        blob = io.BytesIO(compress(raw, compression))
        mt = media_type or MT_LAYER[compression]
        if limits is None:
            return apply_layer(self.rootfs, blob, mt)
        return apply_layer(self.rootfs, blob, mt, limits=limits)

    def refused(self, entries: list[Entry] | bytes, match: str, **kw: object) -> None:
        with pytest.raises(LayerError, match=match) as info:
            self.apply(entries, **kw)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)

    def assert_contained(self) -> None:
        assert sorted(os.listdir(self.base)) == ["rootfs", "sentinel"]
        assert sorted(os.listdir(self.sentinel)) == ["secret"]
        assert (self.sentinel / "secret").read_bytes() == b"keep me"
        assert stat.S_IMODE((self.sentinel / "secret").stat().st_mode) == 0o600


@pytest.fixture
def work(tmp_path: Path) -> Work:
    w = Work(tmp_path / "work")
    w.rootfs.mkdir(parents=True)
    w.sentinel.mkdir()
    (w.sentinel / "secret").write_bytes(b"keep me")
    (w.sentinel / "secret").chmod(0o600)
    return w


def lstat(p: Path) -> os.stat_result:
    return os.lstat(p)


def pax_tar(entries: list[Entry], pax: dict[str, dict[str, str]]) -> bytes:
    """A tar of `entries` with extra PAX records for some paths (xattrs, odd values)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            ti = e.tarinfo()
            ti.pax_headers = pax.get(e.path, {})
            tar.addfile(ti, io.BytesIO(e.data) if e.kind == "file" else None)
    return buf.getvalue()


# cap_net_raw+ep, as `setcap cap_net_raw+ep` writes it (VFS_CAP_REVISION_2).
CAP_NET_RAW = (b"\x01\x00\x00\x02" + (1 << 13).to_bytes(4, "little") + bytes(12)).decode(
    "utf-8", "surrogateescape"
)


# --- plain data: media types, names ---------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "head", "want"),
    [
        (MT_TAR, b"bin/\0\0", Compression.NONE),
        (MT_GZIP, b"\x1f\x8b\x08\0\0\0", Compression.GZIP),
        (MT_ZSTD, b"\x28\xb5\x2f\xfd\0\0", Compression.ZSTD),
        (MT_DOCKER, b"\x1f\x8b\x08\0\0\0", Compression.GZIP),
        # The bytes win over a lying or generic media type.
        (MT_TAR, b"\x1f\x8b\x08\0\0\0", Compression.GZIP),
        (MT_DOCKER, b"\x28\xb5\x2f\xfd\0\0", Compression.ZSTD),
        ("application/octet-stream", b"\x28\xb5\x2f\xfd\0\0", Compression.ZSTD),
        ("", b"etc/\0\0", Compression.NONE),
    ],
)
def test_compression_for(media_type: str, head: bytes, want: Compression) -> None:
    assert compression_for(media_type, head) is want


def test_compression_for_refuses_non_layers_and_other_compressors() -> None:
    with pytest.raises(LayerError, match="not a filesystem layer"):
        compression_for("application/vnd.oci.image.config.v1+json", b"{}")
    with pytest.raises(LayerError, match="bzip2"):
        compression_for(MT_TAR, b"BZh91A")
    with pytest.raises(LayerError, match="xz"):
        compression_for(MT_GZIP, b"\xfd7zXZ\x00")


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("bin/sh", ("bin", "sh")),
        ("./bin/sh", ("bin", "sh")),
        ("/bin//sh/", ("bin", "sh")),
        ("a/../b", ("b",)),
        ("a/./b/..", ("a",)),
        ("./", ()),
        ("/", ()),
    ],
)
def test_entry_parts(name: str, parts: tuple[str, ...]) -> None:
    assert entry_parts(name) == parts


@pytest.mark.parametrize("name", ["..", "../etc/passwd", "a/../../x", "/../x", "a/b/../../../x"])
def test_entry_parts_refuses_escapes(name: str) -> None:
    with pytest.raises(LayerError, match="escapes the root filesystem"):
        entry_parts(name)


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", ".wh.a"]), max_size=8))
def test_entry_parts_never_climbs(comps: list[str]) -> None:
    name = "/".join(comps)
    try:
        parts = entry_parts(name)
    except LayerError:
        return
    assert all(p not in ("", ".", "..") for p in parts)
    assert os.path.normpath(os.path.join("/r", *parts)).startswith("/r")


# --- formats --------------------------------------------------------------------------------


SMALL = [
    Entry("etc", "dir", mode=0o755),
    Entry("etc/hostname", "file", b"bareboat\n"),
    Entry("bin/tool", "file", b"#!/bin/sh\n", mode=0o755),  # implicit parent
]


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_formats(work: Work, compression: str | None) -> None:
    stats = work.apply(SMALL, compression)
    assert (work.rootfs / "etc/hostname").read_bytes() == b"bareboat\n"
    assert stat.S_IMODE(lstat(work.rootfs / "bin").st_mode) == 0o755
    assert stat.S_IMODE(lstat(work.rootfs / "bin/tool").st_mode) == 0o755
    assert lstat(work.rootfs / "etc/hostname").st_mtime == 1_700_000_000
    # two directories, two one-block files and the three names
    names = len("etc") + len("hostname") + len("tool") + 3 * 8
    assert stats == LayerStats(entries=3, bytes=19, disk=4 * 4096 + names, whiteouts=0, skipped=0)


@pytest.mark.parametrize(
    ("compression", "media_type"),
    [("gzip", MT_TAR), ("zstd", MT_DOCKER), (None, MT_GZIP), ("gzip", "application/octet-stream")],
)
def test_media_type_lies(work: Work, compression: str | None, media_type: str) -> None:
    work.apply(SMALL, compression, media_type=media_type)
    assert (work.rootfs / "etc/hostname").read_bytes() == b"bareboat\n"


def test_multi_member_gzip(work: Work) -> None:
    raw = tar_layer(SMALL)
    blob = compress(raw[:1024], "gzip") + compress(raw[1024:], "gzip")
    apply_layer(work.rootfs, io.BytesIO(blob), MT_GZIP)
    assert (work.rootfs / "bin/tool").read_bytes() == b"#!/bin/sh\n"


def test_long_and_unicode_names(work: Work) -> None:
    deep = "/".join(["d" * 60] * 5) + "/" + "f" * 200
    work.apply([Entry(deep, "file", b"long"), Entry("caf\u00e9/\u6587\u4ef6", "file", b"u")])
    assert (work.rootfs / deep).read_bytes() == b"long"
    assert (work.rootfs / "caf\u00e9/\u6587\u4ef6").read_bytes() == b"u"


# --- corrupt data ---------------------------------------------------------------------------


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


BIG = [Entry(f"f{i}", "file", os.urandom(4096)) for i in range(8)]


def _compress_checked(raw: bytes, compression: str) -> bytes:
    """As registries' tools write them: zstd with its content checksum (gzip always has one)."""
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    return compress(raw, compression)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_corrupt_compressed_data(work: Work, compression: str) -> None:
    blob = _compress_checked(tar_layer(BIG), compression)
    bad = _flip(blob, len(blob) // 2)
    with pytest.raises(LayerError, match="corrupt"):
        apply_layer(work.rootfs, io.BytesIO(bad), MT_LAYER[compression])


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_compressed_data(work: Work, compression: str) -> None:
    blob = compress(tar_layer(BIG), compression)
    with pytest.raises(LayerError, match="corrupt"):
        apply_layer(work.rootfs, io.BytesIO(blob[: len(blob) * 2 // 3]), MT_LAYER[compression])


def test_corrupt_gzip_trailer(work: Work) -> None:
    blob = compress(tar_layer(SMALL), "gzip")
    bad = _flip(blob, len(blob) - 6)  # the CRC32, read only when the stream is drained
    with pytest.raises(LayerError, match="corrupt"):
        apply_layer(work.rootfs, io.BytesIO(bad), MT_GZIP)


def test_garbage_is_not_a_tar(work: Work) -> None:
    with pytest.raises(LayerError, match="corrupt"):
        apply_layer(work.rootfs, io.BytesIO(os.urandom(4096)), MT_TAR)


def test_corrupt_tar_header_midway(work: Work) -> None:
    raw = tar_layer([Entry("a", "file", b"x"), Entry("b", "file", b"y")])
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        second = tar.getmember("b").offset
    with pytest.raises(LayerError, match="corrupt tar header"):
        work.apply(_flip(raw, second + 100))


def test_truncated_tar(work: Work) -> None:
    raw = tar_layer([Entry("a", "file", b"x" * 5000)])
    with pytest.raises(LayerError, match="corrupt"):
        work.apply(raw[:3000])


# --- hostile layers -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "../sentinel/secret"])
def test_dotdot_refused(work: Work, name: str) -> None:
    work.refused([Entry(name, "file", b"pwned")], match="escapes the root filesystem")
    work.assert_contained()


def test_absolute_names_are_rootfs_relative(work: Work) -> None:
    work.apply([Entry(f"{work.sentinel}/secret", "file", b"pwned")])
    assert (work.rootfs / str(work.sentinel).lstrip("/") / "secret").read_bytes() == b"pwned"
    work.assert_contained()


@pytest.mark.parametrize("target", ["sentinel-abs", "../sentinel", "../../../../../../.."])
def test_write_through_escaping_symlink_is_contained(work: Work, target: str) -> None:
    if target == "sentinel-abs":
        target = str(work.sentinel)
    work.apply([Entry("evil", "symlink", target=target)])
    work.apply(
        [
            Entry("evil/pwned", "file", b"pwned"),
            Entry("evil/sub/deeper", "file", b"pwned"),
            Entry("evil/secret", "file", b"pwned"),
        ]
    )
    work.assert_contained()
    # Resolved as if the rootfs were "/": the files land inside it.
    assert os.path.islink(work.rootfs / "evil")
    found = [p for p in work.rootfs.rglob("pwned")]
    assert found and all(work.rootfs in p.parents for p in found)


def test_symlink_in_same_layer_is_contained(work: Work) -> None:
    work.apply(
        [Entry("evil", "symlink", target=str(work.sentinel)), Entry("evil/x", "file", b"pwned")]
    )
    work.assert_contained()


def test_replacing_escaping_symlink_does_not_write_its_target(work: Work) -> None:
    secret = str(work.sentinel / "secret")
    work.apply([Entry("f", "symlink", target=secret), Entry("d", "symlink", target=secret)])
    work.apply([Entry("f", "file", b"pwned", mode=0o777), Entry("d", "dir", mode=0o777)])
    work.assert_contained()
    assert (work.rootfs / "f").read_bytes() == b"pwned"
    assert stat.S_ISDIR(lstat(work.rootfs / "d").st_mode)


def test_metadata_never_follows_symlinks(work: Work) -> None:
    secret = str(work.sentinel / "secret")
    work.apply([Entry("s", "symlink", target=secret, uid=1234, gid=1234, mode=0o777)])
    work.assert_contained()
    assert os.stat(work.sentinel / "secret").st_uid == os.geteuid()
    if AS_ROOT:
        assert lstat(work.rootfs / "s").st_uid == 1234


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("../sentinel/secret", "escapes the root filesystem"),
        ("/../../sentinel/secret", "escapes the root filesystem"),
        ("missing", "does not exist"),
        ("evil/secret", "does not exist"),  # evil -> sentinel, resolved in-root: nothing there
        ("", "hard link to the root"),
        ("..", "escapes"),
    ],
)
def test_hostile_hardlinks(work: Work, target: str, match: str) -> None:
    work.apply([Entry("evil", "symlink", target=str(work.sentinel))])
    work.refused([Entry("link", "hardlink", target=target)], match=match)
    work.assert_contained()
    assert not os.path.lexists(work.rootfs / "link")


def test_hardlink_to_directory_refused(work: Work) -> None:
    work.refused([Entry("d", "dir"), Entry("l", "hardlink", target="d")], "hard link to a dir")


@pytest.mark.parametrize(
    "name", ["evil/.wh.secret", "evil/.wh..wh..opq", "a/.wh..", "../.wh.sentinel", ".wh..."]
)
def test_hostile_whiteouts(work: Work, name: str) -> None:
    work.apply([Entry("evil", "symlink", target=str(work.sentinel))])
    try:
        work.apply([Entry(name, "file")])
    except LayerError as e:
        assert "\n" not in str(e)
    work.assert_contained()


def test_whiteout_of_dotdot_refused(work: Work) -> None:
    work.refused([Entry("a/.wh...", "file")], match="whiteout of '..'")
    work.refused([Entry(".wh..", "file")], match="whiteout of '.'")


def test_huge_size_claim_fails_fast(work: Work) -> None:
    ti = tarfile.TarInfo("huge")
    ti.size = 1 << 40  # 1 TiB and no data behind it
    raw = ti.tobuf(tarfile.GNU_FORMAT) + b"\0" * 1024
    work.refused(raw, match="exceeds the per-file limit")
    assert os.listdir(work.rootfs) == []


def test_total_size_limit(work: Work) -> None:
    limits = LayerLimits(max_entry_size=1000, max_total_size=2500)
    entries = [Entry(f"f{i}", "file", b"x" * 1000) for i in range(3)]
    work.refused(entries, match="total limit of 2500", limits=limits)


def test_entry_count_limit(work: Work) -> None:
    limits = LayerLimits(max_entries=5)
    work.refused([Entry(f"f{i}", "file") for i in range(6)], "more than 5 entries", limits=limits)


def test_huge_pax_header_refused(work: Work) -> None:
    limits = LayerLimits(max_header_size=512)
    work.refused([Entry("x" * 2000, "file")], match="extended header", limits=limits)


def test_decompression_bomb_bounded(work: Work) -> None:
    raw = tar_layer(SMALL) + b"\0" * (8 << 20)  # tiny when compressed, 8 MiB when not
    limits = LayerLimits(max_total_size=1 << 20, max_entries=10)
    work.refused(raw, match="expands to more than", compression="zstd", limits=limits)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(
        st.lists(st.sampled_from(["a", "b", "..", ".", "", ".wh.a", ".wh..wh..opq", "evil"]))
        .map("/".join)
        .filter(bool),
        min_size=1,
        max_size=6,
    ),
    kinds=st.lists(st.sampled_from(["file", "dir", "symlink", "hardlink"]), min_size=6),
)
@example(names=["evil/a"], kinds=["file"] * 6)
@example(names=["evil/.wh.secret", "evil/b/../.wh..wh..opq"], kinds=["file"] * 6)
def test_random_names_never_escape(work: Work, names: list[str], kinds: list[str]) -> None:
    shutil.rmtree(work.rootfs)
    work.rootfs.mkdir()
    base = [Entry("evil", "symlink", target=str(work.sentinel))]
    entries = [
        Entry(n, k, b"pwned", target=str(work.sentinel) if k == "symlink" else "a")
        for n, k in zip(names, kinds, strict=False)
    ]
    for layer in (base, entries, entries):
        try:
            work.apply(layer)
        except LayerError as e:
            assert "\n" not in str(e)
    work.assert_contained()


# --- whiteouts ------------------------------------------------------------------------------


LOWER = [
    Entry("etc", "dir", mode=0o755),
    Entry("etc/keep", "file", b"k"),
    Entry("etc/gone", "file", b"g"),
    Entry("etc/sub", "dir", mode=0o755),
    Entry("etc/sub/deep", "file", b"d"),
    Entry("opq", "dir", mode=0o750),
    Entry("opq/old", "file", b"o"),
    Entry("opq/olddir/x", "file", b"o"),
    Entry("opq/mixed/old", "file", b"o"),
]


def test_whiteout_file_and_dir(work: Work) -> None:
    work.apply(LOWER)
    stats = work.apply(
        [Entry("etc/.wh.gone", "file"), Entry("etc/.wh.sub", "file"), Entry(".wh.nothing", "file")]
    )
    assert sorted(os.listdir(work.rootfs / "etc")) == ["keep"]
    assert stats.whiteouts == 3
    assert not list(work.rootfs.rglob(".wh.*"))


@pytest.mark.parametrize("opaque_first", [True, False])
def test_opaque_directory(work: Work, opaque_first: bool) -> None:
    work.apply(LOWER)
    upper = [Entry("opq/new", "file", b"n"), Entry("opq/mixed/new", "file", b"n")]
    marker = [Entry("opq/.wh..wh..opq", "file")]
    work.apply(marker + upper if opaque_first else upper + marker)
    assert sorted(os.listdir(work.rootfs / "opq")) == ["mixed", "new"]
    assert os.listdir(work.rootfs / "opq/mixed") == ["new"]
    assert stat.S_IMODE(lstat(work.rootfs / "opq").st_mode) == 0o750
    assert not list(work.rootfs.rglob(".wh.*"))


def test_opaque_marker_for_new_directory(work: Work) -> None:
    work.apply([Entry("fresh/.wh..wh..opq", "file"), Entry("fresh/f", "file")])
    assert os.listdir(work.rootfs / "fresh") == ["f"]


def test_whiteout_hides_only_lower_layers(work: Work) -> None:
    work.apply([Entry("a", "file", b"lower")])
    work.apply([Entry("a", "file", b"same layer"), Entry(".wh.a", "file")])
    assert (work.rootfs / "a").read_bytes() == b"same layer"
    work.apply([Entry(".wh.a", "file"), Entry("a", "file", b"recreated")])
    assert (work.rootfs / "a").read_bytes() == b"recreated"


def test_aufs_metadata_ignored(work: Work) -> None:
    work.apply([Entry(".wh..wh.plnk/1.2", "file"), Entry(".wh..wh.aufs", "file")])
    assert os.listdir(work.rootfs) == []


# --- links, types, modes, owners, devices --------------------------------------------------


def test_hardlinks(work: Work) -> None:
    work.apply(
        [
            Entry("bin/busybox", "file", b"elf", mode=0o755),
            Entry("bin/sh", "hardlink", target="bin/busybox"),
            Entry("usr/bin/env", "hardlink", target="/bin/busybox"),
            Entry("ln", "symlink", target="bin/busybox"),
            Entry("ln2", "hardlink", target="ln"),  # links the symlink itself
        ]
    )
    ino = lstat(work.rootfs / "bin/busybox").st_ino
    assert lstat(work.rootfs / "bin/sh").st_ino == ino
    assert lstat(work.rootfs / "usr/bin/env").st_ino == ino
    assert os.readlink(work.rootfs / "ln2") == "bin/busybox"
    # A later layer rewriting the file makes a new inode, leaving the other links alone.
    work.apply([Entry("bin/busybox", "file", b"new")])
    assert (work.rootfs / "bin/sh").read_bytes() == b"elf"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("dir", "file"),
        ("file", "dir"),
        ("symlink", "dir"),
        ("dir", "symlink"),
        ("file", "symlink"),
        ("symlink", "file"),
        ("fifo", "file"),
    ],
)
def test_type_replacement(work: Work, before: str, after: str) -> None:
    lower = [Entry("x", before, b"old", target="/etc")]
    if before == "dir":
        lower.append(Entry("x/child", "file", b"c"))
    work.apply(lower)
    work.apply([Entry("x", after, b"new", target="somewhere", mode=0o640)])
    st_ = lstat(work.rootfs / "x")
    want = {"file": stat.S_ISREG, "dir": stat.S_ISDIR, "symlink": stat.S_ISLNK}[after]
    assert want(st_.st_mode)
    if after == "dir":
        assert os.listdir(work.rootfs / "x") == []


def test_parent_replaced_in_the_same_layer(work: Work) -> None:
    # The entries after a replaced directory or symlink go where the path leads now (the
    # extractor keeps the last parent's fd open across entries).
    work.apply(
        [
            Entry("d", "dir", mode=0o755),
            Entry("d/a", "file", b"a"),
            Entry("d", "symlink", target="/e"),
            Entry("d/b", "file", b"b"),
            Entry("d/c", "symlink", target="x"),
            Entry("s", "symlink", target="/d"),
            Entry("s/f", "file", b"f"),
            Entry("s", "dir", mode=0o755),
            Entry("s/g", "file", b"g"),
        ]
    )
    assert os.path.islink(work.rootfs / "d")
    assert sorted(os.listdir(work.rootfs / "e")) == ["b", "c", "f"]
    assert os.listdir(work.rootfs / "s") == ["g"]
    work.assert_contained()


def test_parent_through_a_replaced_child(work: Work) -> None:
    # `a` leads to t through t's child u (a -> t/u/..): once u is a file, a/ leads nowhere,
    # also for the entries that follow in a/, whose parent's fd the extractor had kept.
    work.refused(
        [
            Entry("t", "dir", mode=0o755),
            Entry("t/u", "dir", mode=0o755),
            Entry("a", "symlink", target="t/u/.."),
            Entry("a/x", "file", b"x"),
            Entry("a/u", "file", b"u"),
            Entry("a/y", "file", b"y"),
        ],
        match="Not a directory",
    )
    assert not (work.rootfs / "t" / "y").exists()


def test_directory_merges_with_lower(work: Work) -> None:
    work.apply([Entry("d", "dir", mode=0o755), Entry("d/a", "file")])
    work.apply([Entry("d", "dir", mode=0o700), Entry("d/b", "file")])
    assert sorted(os.listdir(work.rootfs / "d")) == ["a", "b"]
    assert stat.S_IMODE(lstat(work.rootfs / "d").st_mode) == 0o700


def test_parent_that_is_a_file_refused(work: Work) -> None:
    work.apply([Entry("f", "file")])
    work.refused([Entry("f/x", "file")], match="layer entry 'f/x': Not a directory")


def test_modes_and_owners(work: Work) -> None:
    work.apply(
        [
            Entry("suid", "file", b"x", mode=0o4755, uid=1000, gid=50),
            Entry("sgid", "file", b"x", mode=0o2711),
            Entry("tmp", "dir", mode=0o1777),
            Entry("ro", "dir", mode=0o500, uid=1000, gid=1000),
            Entry("ro/inside", "file", b"i", mode=0o400),  # made after its read-only parent
            Entry("link", "symlink", target="suid", uid=1000, gid=1000),
            Entry("./", "dir", mode=0o711),
        ]
    )
    r = work.rootfs
    assert stat.S_IMODE(lstat(r / "suid").st_mode) == 0o4755
    assert stat.S_IMODE(lstat(r / "sgid").st_mode) == 0o2711
    assert stat.S_IMODE(lstat(r / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(lstat(r / "ro").st_mode) == 0o500
    assert (r / "ro/inside").read_bytes() == b"i"
    assert stat.S_IMODE(lstat(r).st_mode) == 0o711
    if AS_ROOT:
        assert (lstat(r / "suid").st_uid, lstat(r / "suid").st_gid) == (1000, 50)
        assert (lstat(r / "ro").st_uid, lstat(r / "link").st_uid) == (1000, 1000)


def test_device_nodes(work: Work) -> None:
    stats = work.apply(
        [
            Entry("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
            Entry("dev/loop9", "block", mode=0o660, devmajor=7, devminor=9, gid=6),
            Entry("run/fifo", "fifo", mode=0o620),
        ]
    )
    assert stat.S_ISFIFO(lstat(work.rootfs / "run/fifo").st_mode)
    assert stat.S_IMODE(lstat(work.rootfs / "run/fifo").st_mode) == 0o620
    if not AS_ROOT:
        assert stats.skipped == 2
        pytest.skip("device nodes need root")
    if stats.skipped:
        pytest.skip("mknod not permitted here (user namespace?)")
    null = lstat(work.rootfs / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1
    assert os.minor(null.st_rdev) == 3 and stat.S_IMODE(null.st_mode) == 0o666
    loop = lstat(work.rootfs / "dev/loop9")
    assert stat.S_ISBLK(loop.st_mode) and os.minor(loop.st_rdev) == 9 and loop.st_gid == 6


def test_xattrs(work: Work) -> None:
    pax = {
        "ping": {"SCHILY.xattr.security.capability": CAP_NET_RAW},
        "d": {"SCHILY.xattr.user.note": "hello", "SCHILY.xattr.user.bin": "\udcff\x00x"},
        "f": {"SCHILY.xattr.security.selinux": "system_u:object_r:bin_t:s0"},
    }
    work.apply(
        pax_tar(
            [Entry("ping", "file", b"elf", mode=0o755), Entry("d", "dir"), Entry("f", "file")],
            pax,
        )
    )
    assert os.getxattr(work.rootfs / "d", "user.note") == b"hello"
    assert os.getxattr(work.rootfs / "d", "user.bin") == b"\xff\x00x"
    assert "security.selinux" not in os.listxattr(work.rootfs / "f")
    if AS_ROOT:
        got = os.getxattr(work.rootfs / "ping", "security.capability")
        assert got == CAP_NET_RAW.encode("utf-8", "surrogateescape")


@pytest.mark.parametrize(
    ("entry", "pax", "match"),
    [
        (Entry("l", "symlink", target="x"), {"linkpath": "a\x00b"}, "null"),
        (Entry("f", "file", uid=0), {"uid": str(1 << 40)}, "layer entry 'f'"),
        (Entry("f", "file"), {"mtime": "nan"}, None),
        (Entry("f", "file"), {"mtime": "1e300"}, None),
    ],
)
def test_odd_pax_values(work: Work, entry: Entry, pax: dict[str, str], match: str | None) -> None:
    raw = pax_tar([entry], {entry.path: pax})
    if match is None:
        work.apply(raw)
        assert (work.rootfs / entry.path).exists()
    elif entry.kind == "file" and not AS_ROOT:
        work.apply(raw)  # no chown without root
    else:
        work.refused(raw, match=match)
    work.assert_contained()


def test_directory_times_set_after_contents(work: Work) -> None:
    work.apply([Entry("d", "dir"), Entry("d/f", "file"), Entry("d/g", "file")])
    assert lstat(work.rootfs / "d").st_mtime == 1_700_000_000


# --- unpack_rootfs --------------------------------------------------------------------------


def _blobs(tmp_path: Path, layers: list[bytes], compression: str | None = "gzip") -> list:
    out = []
    for i, raw in enumerate(layers):
        p = tmp_path / f"layer{i}"
        p.write_bytes(compress(raw, compression))
        out.append((p, MT_LAYER[compression]))
    return out


def test_unpack_rootfs(tmp_path: Path) -> None:
    layers = _blobs(tmp_path, [tar_layer(LOWER), tar_layer([Entry("etc/.wh.gone", "file")])])
    dest = tmp_path / "images" / "abc" / "rootfs"
    stats = unpack_rootfs(dest, layers)
    assert sorted(os.listdir(dest / "etc")) == ["keep", "sub"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert stats.entries == len(LOWER) + 1 and stats.whiteouts == 1 and stats.bytes == 6
    assert os.listdir(dest.parent) == ["rootfs"]


@pytest.mark.parametrize(
    "bad",
    [
        tar_layer([Entry("ok", "file"), Entry("../escape", "file")]),
        b"\x1f\x8b\x08\x00" + os.urandom(300),
    ],
)
def test_unpack_rootfs_failure_leaves_nothing(tmp_path: Path, bad: bytes) -> None:
    layers = _blobs(tmp_path, [tar_layer(LOWER)])
    layers.append((tmp_path / "bad", MT_TAR))
    (tmp_path / "bad").write_bytes(bad)
    parent = tmp_path / "store"
    parent.mkdir()
    with pytest.raises(LayerError):
        unpack_rootfs(parent / "rootfs", layers)
    assert os.listdir(parent) == []
    assert sorted(os.listdir(tmp_path)) == ["bad", "layer0", "store"]


def test_unpack_rootfs_total_limit_spans_layers(tmp_path: Path) -> None:
    one = tar_layer([Entry("f", "file", b"x" * 600)])
    layers = _blobs(tmp_path, [one, one])
    with pytest.raises(LayerError, match="total limit"):
        unpack_rootfs(tmp_path / "r", layers, limits=LayerLimits(max_total_size=1000))
    assert not (tmp_path / "r").exists()


def test_unpack_rootfs_refuses_existing_dest(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    with pytest.raises(StoreError, match="already exists"):
        unpack_rootfs(tmp_path / "r", [])


def test_unpack_rootfs_missing_blob(tmp_path: Path) -> None:
    layers = _blobs(tmp_path, [tar_layer(LOWER)])
    with pytest.raises(StoreError, match="cannot read layer blob"):
        unpack_rootfs(tmp_path / "store" / "r", [*layers, (tmp_path / "gone", MT_TAR)])
    assert os.listdir(tmp_path / "store") == []


# --- oracle: umoci --------------------------------------------------------------------------


UPPER = [
    Entry("bin/.wh.vi", "file"),
    Entry("etc/.wh.group", "file"),
    Entry("home/.wh..wh..opq", "file"),
    Entry("home/guest", "dir", mode=0o750, uid=1001, gid=1001),
    Entry("home/guest/.profile", "file", b"export PS1='$ '\n", uid=1001, gid=1001),
    Entry("bin/su", "file", b"not really su", mode=0o4755),
    Entry("bin/sh2", "hardlink", target="bin/busybox"),
    Entry("var/run", "symlink", target="/run"),
    Entry("run", "dir", mode=0o755),
    Entry("run/lock", "dir", mode=0o1777),
    Entry("opt/app/bin/tool", "file", b"implicit parents", mode=0o700, uid=7),
    Entry("dev/null", "char", mode=0o666, devmajor=1, devminor=3),
    Entry("dev/sda", "block", mode=0o660, devmajor=8, devminor=0, gid=6),
    Entry("dev/initctl", "fifo", mode=0o600),
    Entry("tmp", "file", b"a dir became a file"),
    Entry("etc/passwd", "symlink", target="../etc/passwd.real"),
    Entry("etc/passwd.real", "file", b"root:x:0:0::/:/bin/sh\n", mode=0o600),
    Entry("bin/sh-link", "hardlink", target="bin/sh"),  # a hard link to a symlink
    Entry("usr/share/" + "long-name-" * 20 + "/" + "x" * 200, "file", b"pax path"),
    Entry("usr/share/caf\u00e9/\u6587\u4ef6.txt", "file", b"utf-8 names", uid=65534, gid=65534),
    Entry("usr/share/caf\u00e9/link", "symlink", target="\u6587\u4ef6.txt"),
]


# Directories the upper layer makes without listing them get "now" as mtime, in umoci too.
IMPLICIT = {"opt", "opt/app", "opt/app/bin", "usr", "usr/share", "usr/share/caf\u00e9"}
IMPLICIT.add("usr/share/" + "long-name-" * 20)


@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_matches_umoci(tmp_path: Path, compression: str | None) -> None:
    """umoci (gzip; this version reads no zstd) and we (any compression) build one tree."""
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed")
    if not AS_ROOT:
        pytest.skip("comparing owners and device nodes with umoci needs root")
    pax = {
        "bin/ping": {"SCHILY.xattr.security.capability": CAP_NET_RAW},
        "home/guest": {"SCHILY.xattr.user.note": "hi"},
    }
    upper = [*UPPER, Entry("bin/ping", "file", b"ping", mode=0o755)]
    layers: list[list[Entry] | bytes] = [busybox_entries(), pax_tar(upper, pax)]
    write_image(tmp_path / "gzip", Image(layers=layers, compression="gzip"))
    layout = tmp_path / str(compression)
    if compression != "gzip":
        write_image(layout, Image(layers=layers, compression=compression))
    theirs = tmp_path / "umoci-rootfs"
    proc = subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{tmp_path / 'gzip'}:latest", str(theirs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    blobs = layout / "blobs" / "sha256"
    ours = tmp_path / "ours"
    unpack_rootfs(ours, [(blobs / d.split(":")[1], mt) for d, mt in _manifest_layers(layout)])
    diffs = diff_trees(ours, theirs, times=True)
    assert [d for d in diffs if d.split(":")[0] not in IMPLICIT or "mtime" not in d] == []
    snap = snapshot(ours)
    assert snap["dev/null"].rdev == (1, 3)
    assert snap["bin/sh2"].links == ("bin/busybox", "bin/sh2")
    assert snap["home/guest"].xattrs == (("user.note", b"hi"),)
    assert [n for n, _ in snap["bin/ping"].xattrs] == ["security.capability"]
    assert "bin/vi" not in snap and "etc/group" not in snap and "tmp" in snap
    assert sorted(p for p in snap if p.startswith("home/")) == ["home/guest", "home/guest/.profile"]
    assert_same_tree(ours, theirs)


def _manifest_layers(layout: Path) -> list[tuple[str, str]]:
    import json

    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs" / "sha256" / digest).read_text())
    return [(d["digest"], d["mediaType"]) for d in manifest["layers"]]


# --- without root ---------------------------------------------------------------------------

UNPRIVILEGED = """
import os, sys
from pathlib import Path
from bareboat.errors import LayerError
from bareboat.images.layers import unpack_rootfs
from tests.support.imagebuild import Entry, tar_layer

d = Path(sys.argv[1])
(d / "l1").write_bytes(tar_layer([
    Entry("ro", "dir", mode=0o500), Entry("ro/f", "file", b"x", mode=0o400),
    Entry("dev/null", "char", devmajor=1, devminor=3), Entry("p", "fifo"),
    Entry("dev/null2", "hardlink", target="dev/null"),
    Entry("shut", "dir", mode=0), Entry("shut/f", "file"),
]))
(d / "l2").write_bytes(tar_layer([Entry("ro/g", "file", b"y"), Entry(".wh.shut", "file")]))
(d / "bad").write_bytes(b"garbage" * 100)
l1, l2, bad = (d / "l1", ""), (d / "l2", ""), (d / "bad", "")
stats = unpack_rootfs(d / "r", [l1, l2])
assert stats.skipped == 2, stats
assert sorted(os.listdir(d / "r")) == ["dev", "p", "ro"], os.listdir(d / "r")
assert (d / "r/ro/g").read_bytes() == b"y"
try:
    unpack_rootfs(d / "r2", [l1, l2, bad])
except LayerError:
    pass
assert sorted(os.listdir(d)) == ["bad", "l1", "l2", "r"], os.listdir(d)
print("ok")
"""


def test_unprivileged_unpack() -> None:
    """Without root: device nodes are skipped, read-only directories keep u+rwx so later
    layers and clean-up can still enter them."""
    if not AS_ROOT or shutil.which("setpriv") is None:
        pytest.skip("needs root (to drop to nobody) and setpriv")
    import sys
    import tempfile

    # Under /tmp itself: pytest's own temp dirs are closed to other users.
    d = Path(tempfile.mkdtemp(prefix="bareboat-layers-"))
    try:
        os.chown(d, 65534, 65534)
        repo = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": f"{repo / 'src'}:{repo}"}
        setpriv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        proc = subprocess.run(
            [*setpriv, sys.executable, "-c", UNPRIVILEGED, str(d)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        if "Permission denied" in proc.stderr and "python" in proc.stderr.splitlines()[0]:
            pytest.skip(f"nobody cannot run this interpreter: {proc.stderr[:200]}")
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    finally:
        shutil.rmtree(d)


def test_dangling_symlinked_parent_made_inside(work: Work) -> None:
    work.apply([Entry("var/run", "symlink", target="/run"), Entry("rel", "symlink", target="a/b")])
    work.apply([Entry("var/run/lock", "file", b"l"), Entry("rel/c", "file", b"c")])
    assert (work.rootfs / "run/lock").read_bytes() == b"l"
    assert (work.rootfs / "a/b/c").read_bytes() == b"c"
    assert stat.S_IMODE(lstat(work.rootfs / "run").st_mode) == 0o755
    work.assert_contained()


@pytest.mark.parametrize(
    "links", [[("loop", "loop")], [("a", "b"), ("b", "a")], [("a", "a/x")], [("a", "/a/../a")]]
)
def test_symlink_loops_refused(work: Work, links: list[tuple[str, str]]) -> None:
    work.apply([Entry(name, "symlink", target=t) for name, t in links])
    work.refused([Entry(f"{links[0][0]}/x", "file")], match="layer entry")
    work.assert_contained()


FUZZ_BASE = pax_tar(
    [
        Entry("d", "dir", mode=0o755),
        Entry("d/f", "file", b"hello" * 40, mode=0o644, uid=1000),
        Entry("d/l", "symlink", target="/etc/passwd"),
        Entry("d/h", "hardlink", target="d/f"),
        Entry("d/.wh.x", "file"),
        Entry("p", "fifo"),
        Entry("long/" + "n" * 150, "file", b"x"),
    ],
    {"d/f": {"SCHILY.xattr.user.a": "b", "mtime": "1700000000.5"}},
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flips=st.lists(
        st.tuples(st.integers(0, len(FUZZ_BASE) - 1), st.integers(0, 255)), min_size=1, max_size=4
    )
)
def test_mutated_tars_fail_cleanly(work: Work, flips: list[tuple[int, int]]) -> None:
    """Damaged headers and data: a LayerError or a tree inside the rootfs, nothing else."""
    data = bytearray(FUZZ_BASE)
    for at, value in flips:
        data[at] = value
    shutil.rmtree(work.rootfs)
    work.rootfs.mkdir()
    try:
        work.apply(bytes(data))
    except LayerError as e:
        assert "\n" not in str(e)
    work.assert_contained()


@pytest.mark.parametrize("name", ["a" * 300, "/".join(["d" * 250] * 20)])
def test_names_too_long_refused(work: Work, name: str) -> None:
    work.refused([Entry(name, "file", b"x")], match="too long")
    work.assert_contained()


# --- holes and the disk cap -----------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt",
    [
        "--format=gnu",
        "--format=posix --sparse-version=0.0",
        "--format=posix --sparse-version=0.1",
        "--format=posix --sparse-version=1.0",
    ],
)
def test_sparse_entries_stay_sparse(work: Work, tmp_path: Path, fmt: str) -> None:
    """A 20 KB tar of a sparse 10 GiB file became a real 10 GiB file; its holes stay holes."""
    raw = sparse_tar(tmp_path, fmt)
    assert len(raw) < 64 * 1024
    stats = work.apply(raw)
    assert_sparse_file(work.rootfs / "big")
    assert stats.bytes == 10 * GiB and stats.disk <= 64 * 1024


def test_zero_runs_become_holes(work: Work) -> None:
    """1 GiB of zeros in a 1 MB gzip: a regular entry, unpacked as a hole."""
    blob = streamed_bomb(1 * GiB, b"\0")
    assert len(blob) < 2 << 20
    stats = apply_layer(work.rootfs, io.BytesIO(blob), MT_GZIP)
    st = (work.rootfs / "bomb").stat()
    assert st.st_size == GiB and st.st_blocks == 0 and stats.disk == len("bomb") + 8  # its name


def test_partial_zero_blocks_are_data(work: Work) -> None:
    data = b"a" + bytes(4095) + bytes(8192) + b"b" * 10 + bytes(5000) + b"c"
    work.apply([Entry("f", "file", data)])
    path = work.rootfs / "f"
    assert path.read_bytes() == data
    assert path.stat().st_blocks * 512 == 3 * 4096  # the middle two blocks are a hole


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(
        st.tuples(st.sampled_from([b"\0", b"x", b"\0x"]), st.integers(0, 9000)), max_size=8
    ),
    pos=st.integers(0, 10_000),
)
def test_data_runs_rebuild_the_data(pieces: list[tuple[bytes, int]], pos: int) -> None:
    """Writing only the runs, holes read back as zeros: the data comes back whole, and no
    whole aligned block of zeros is ever written."""
    from bareboat.images.layers import data_runs

    data = b"".join((b * n)[:n] for b, n in pieces)
    runs = data_runs(data, pos)
    rebuilt = bytearray(len(data))
    for start, stop in runs:
        assert 0 <= start < stop <= len(data)
        rebuilt[start:stop] = data[start:stop]
    assert bytes(rebuilt) == data
    for start, stop in runs:
        for off in range(start, stop):
            if (pos + off) % 4096 == 0 and off + 4096 <= stop:
                assert data[off : off + 4096] != bytes(4096)


def test_layer_past_the_disk_cap_refused(work: Work) -> None:
    from bareboat.errors import ImageTooLarge

    blob = streamed_bomb(64 << 20, b"x")
    assert len(blob) < 1 << 20
    with pytest.raises(ImageTooLarge, match=r"'bomb' takes the layer past 8\.0 MiB") as info:
        apply_layer(work.rootfs, io.BytesIO(blob), MT_GZIP, limits=LayerLimits(max_disk=8 << 20))
    assert "\n" not in str(info.value)
    # Refused before the cap was passed: what was written is at most the cap.
    assert (work.rootfs / "bomb").stat().st_blocks * 512 <= 8 << 20


def test_unpack_rootfs_refusal_names_the_layer_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bareboat.errors import ImageTooLarge

    monkeypatch.setenv("BAREBOAT_MAX_IMAGE_SIZE", "16m")
    ok = tmp_path / ("a" * 64)
    ok.write_bytes(compress(tar_layer(LOWER), "gzip"))
    bomb = tmp_path / ("b" * 64)
    bomb.write_bytes(streamed_bomb(64 << 20, b"x"))
    parent = tmp_path / "store"
    with pytest.raises(ImageTooLarge) as info:
        unpack_rootfs(parent / "rootfs", [(ok, MT_GZIP), (bomb, MT_GZIP)])
    msg = str(info.value)
    assert "\n" not in msg
    assert "layer 2 of 2 (sha256:bbbbbbbbbbbb, at entry 'bomb')" in msg
    assert "past 16.0 MiB on disk" in msg and "BAREBOAT_MAX_IMAGE_SIZE=16m" in msg
    assert os.listdir(parent) == []


def test_default_cap_is_the_free_space_less_a_reserve(tmp_path: Path) -> None:
    """A tmpfs of 64 MiB: an image may take what is free less 5% of it (3.2 MiB)."""
    from bareboat.errors import ImageTooLarge
    from bareboat.images.diskcap import disk_cap

    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
        capture_output=True,
        timeout=30,
    )
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        cap = disk_cap(mnt / "not" / "made" / "yet")
        assert cap.limit == (64 << 20) - (64 << 20) * 5 // 100
        assert "free where" in cap.why and "BAREBOAT_MAX_IMAGE_SIZE" in cap.why
        bomb = tmp_path / "bomb"
        bomb.write_bytes(streamed_bomb(256 << 20, b"x"))
        with pytest.raises(ImageTooLarge, match=r"past 60\.8 MiB on disk.*free where"):
            unpack_rootfs(mnt / "rootfs", [(bomb, MT_GZIP)])
        assert os.listdir(mnt) == []
        assert shutil.disk_usage(mnt).used < 1 << 20
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def test_hostile_sparse_map_refused(work: Work) -> None:
    """A PAX 0.1 sparse map that goes backwards (tarfile reads it without checking)."""
    ti = tarfile.TarInfo("s")
    ti.size = 8
    ti.pax_headers = {
        "GNU.sparse.map": "4096,4,0,4",
        "GNU.sparse.realsize": "8192",
        "GNU.sparse.name": "s",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(ti, io.BytesIO(b"abcdefgh"))
    work.refused(buf.getvalue(), match="invalid sparse map")
    work.assert_contained()


def _many_extents(tmp_path: Path, fmt: str) -> bytes:
    """A GNU tar of a sparse file of 26 extents: past what a header's map holds, so the map
    goes on in the stream (extension blocks, or the data area in PAX 1.0)."""
    src = tmp_path / "f"
    with open(src, "wb") as f:
        f.truncate(26 * 131072)
        for i in range(26):
            f.seek(i * 131072)
            f.write(b"x" * 10)
    out = tmp_path / "s.tar"
    subprocess.run(
        ["tar", "-S", *fmt.split(), "-C", str(tmp_path), "-cf", str(out), "f"],
        check=True,
        timeout=60,
    )
    return out.read_bytes()


@pytest.mark.parametrize("fmt", ["--format=gnu", "--format=posix --sparse-version=1.0"])
def test_endless_sparse_map_refused(work: Work, tmp_path: Path, fmt: str) -> None:
    """A sparse map that goes on for millions of extents in a small gzip (100,000 GNU
    extension blocks, or 2.5 million PAX 1.0 numbers): tarfile would hold them all in
    memory; the map is bounded like any header. The honest tar still unpacks."""
    raw = _many_extents(tmp_path, fmt)
    if fmt == "--format=gnu":
        assert raw[156:157] == b"S" and raw[482] == 1 and raw[512 + 504] == 1
        hostile = raw[:512] + raw[512:1024] * 100_000 + raw[1024:]
    else:
        assert raw[1536:1539] == b"27\n"  # the map, after the PAX header and the member's
        hostile = raw[:1536] + b"99999999\n" + b"1\n" * 2_500_000 + raw[2048:]
    blob = compress(hostile, "gzip")
    assert len(blob) < 1 << 20
    match = "sparse map of more than 1048576 bytes"
    work.refused(blob, match, compression=None, media_type=MT_GZIP)
    work.apply(raw)
    data = (work.rootfs / "f").read_bytes()
    assert data == (b"x" * 10 + bytes(131062)) * 26
