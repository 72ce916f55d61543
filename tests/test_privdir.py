"""Private directories and files: made 0700/0600, tightened when an older installation left them
open, refused when they are not ours to close."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bareboat.errors import StoreError
from bareboat.paths import Roots
from bareboat.privdir import private_dir, private_file


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_made_with_missing_parents_0700(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    private_dir(tmp_path / "a" / "b" / "c")
    for d in ("a", "a/b", "a/b/c"):
        assert mode(tmp_path / d) == 0o700, d
    assert mode(tmp_path) == 0o755  # a parent that existed is never changed
    private_dir(tmp_path / "a" / "b" / "c")  # and again: nothing to do


def test_an_open_directory_is_tightened(tmp_path: Path) -> None:
    d = tmp_path / "old"
    d.mkdir()
    for m in (0o755, 0o777, 0o2775, 0o711):
        d.chmod(m)
        private_dir(d)
        assert mode(d) == 0o700, oct(m)
    d.chmod(0o500)
    private_dir(d)
    assert mode(d) == 0o500  # nothing to take away from others; the owner's bits are its own


def test_not_ours_to_close(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory away")
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(StoreError, match="owned by uid 65534"):
        private_dir(theirs)
    assert mode(theirs) == 0o755
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(StoreError, match="shared directory"):
        private_dir(shared)
    assert mode(shared) == 0o1777
    (tmp_path / "file").touch()
    with pytest.raises(StoreError, match="not a directory"):
        private_dir(tmp_path / "file")


def test_private_file(tmp_path: Path) -> None:
    new = tmp_path / "new.log"
    with open(new, "ab", opener=private_file) as f:
        f.write(b"x")
    assert mode(new) == 0o600
    old = tmp_path / "old.log"
    old.write_bytes(b"kept\n")
    old.chmod(0o644)
    with open(old, "ab", opener=private_file) as f:
        f.write(b"more\n")
    assert mode(old) == 0o600 and old.read_bytes() == b"kept\nmore\n"


def test_roots_of_an_older_installation_are_closed(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    r = Roots(root=tmp_path / "root", state=tmp_path / "state", cache=tmp_path / "cache")
    for d in (r.images / "rootfs", r.containers, r.run, r.guest / "kernel"):
        d.mkdir(parents=True)
    for d in tmp_path.rglob("*"):
        d.chmod(0o755)
    assert r.make_private() is r
    for d in r.content_dirs():
        assert mode(d) == 0o700, d
    assert mode(r.cache) == 0o755  # maybe shared with other programs: only its contents close
    assert mode(r.images / "rootfs") == 0o755  # behind a closed directory, as it was
