"""`make_in_root`: a mount point made and opened inside a hostile tree, never outside it."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.images.openat2 import make_in_root


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    """(rootfs, a host directory the image's symlinks aim at, an fd of the rootfs)."""
    root, host = tmp_path / "rootfs", tmp_path / "host"
    root.mkdir()
    host.mkdir()
    (host / "keep").write_text("host\n")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield root, host, fd
    os.close(fd)
    assert sorted(p.name for p in host.iterdir()) == ["keep"], "the host directory changed"


def where(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def test_absolute_symlink_parent_is_followed_inside(tree: tuple[Path, Path, int]) -> None:
    root, host, fd = tree
    (root / "etc").symlink_to(host)
    assert where(make_in_root(fd, "/etc/hostname", directory=False)) == f"{root}{host}/hostname"
    assert (root / str(host).lstrip("/") / "hostname").is_file()


def test_climbing_relative_symlink_stops_at_the_root(tree: tuple[Path, Path, int]) -> None:
    root, host, fd = tree
    (root / "a").mkdir()
    (root / "a" / "data").symlink_to("../" * 30 + str(host).lstrip("/"))
    assert where(make_in_root(fd, "/a/data/sub/deeper", directory=True)) == (
        f"{root}{host}/sub/deeper"
    )


def test_dot_dot_in_the_destination_stays_inside(tree: tuple[Path, Path, int]) -> None:
    root, host, fd = tree
    rel = os.path.relpath(host, root)  # ../host
    assert where(make_in_root(fd, f"/x/../{rel}/f", directory=False)) == f"{root}/host/f"


def test_dangling_symlink_gets_its_target_made_inside(tree: tuple[Path, Path, int]) -> None:
    root, host, fd = tree
    (root / "etc").mkdir()
    (root / "etc" / "resolv.conf").symlink_to(f"{host}/stub-resolv.conf")
    (root / "run").symlink_to("../../../../" + str(host).lstrip("/") + "/run")
    assert where(make_in_root(fd, "/etc/resolv.conf", directory=False)) == (
        f"{root}{host}/stub-resolv.conf"
    )
    assert where(make_in_root(fd, "/run/shm", directory=True)) == f"{root}{host}/run/shm"


def test_what_exists_is_opened_as_it_is(tree: tuple[Path, Path, int]) -> None:
    root, _, fd = tree
    (root / "file").write_text("x")
    assert where(make_in_root(fd, "/file", directory=True)) == f"{root}/file"
    assert (root / "file").read_text() == "x"
    assert where(make_in_root(fd, "/", directory=True)) == str(root)


def test_symlink_loop_is_an_error(tree: tuple[Path, Path, int]) -> None:
    root, _, fd = tree
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(OSError) as err:
        make_in_root(fd, "/a/x", directory=True)
    assert err.value.errno == errno.ELOOP
