"""Compare two directory trees the way an image oracle needs: paths, types, modes, owners,
symlink targets, device numbers, file contents and hard-link groups.

    snap = snapshot(Path("rootfs"))        # {"bin/sh": Node(...), ...}
    assert_same_tree(ours, theirs)          # AssertionError listing every difference

Nothing is ever followed: symlinks are compared as links. Times are left out unless asked
(tools disagree about directory mtimes, which change as entries are made inside).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, fields
from pathlib import Path

_KINDS = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int  # permission bits incl. setuid/setgid/sticky
    uid: int
    gid: int
    size: int = 0  # regular files only
    sha256: str = ""  # regular files only
    target: str = ""  # symlinks only
    rdev: tuple[int, int] = (0, 0)  # devices only
    links: tuple[str, ...] = ()  # regular files: every path sharing this inode, sorted
    xattrs: tuple[tuple[str, bytes], ...] = ()  # sorted (name, value) pairs
    mtime: int = 0  # seconds; compared only with times=True


def snapshot(root: Path, *, include_root: bool = False) -> dict[str, Node]:
    """Every entry under `root` by its relative path ("." is the root itself)."""
    raw: dict[str, tuple[os.stat_result, str, str]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            digest, target = "", ""
            if stat.S_ISREG(st.st_mode):
                digest = _sha256(full)
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(full)
            raw[rel] = (st, digest, target)
    if include_root:
        raw["."] = (os.lstat(root), "", "")
    nodes = {}
    for rel, (st, digest, target) in raw.items():
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "unknown")
        is_dev = kind in ("char", "block")
        links = tuple(sorted(inodes[(st.st_dev, st.st_ino)])) if kind == "file" else ()
        nodes[rel] = Node(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if kind == "file" else 0,
            sha256=digest,
            target=target,
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if is_dev else (0, 0),
            links=links if len(links) > 1 else (),
            xattrs=_xattrs(root / rel if rel != "." else root),
            mtime=int(st.st_mtime),
        )
    return nodes


def _xattrs(path: Path) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def diff_trees(a: Path, b: Path, *, times: bool = False, include_root: bool = False) -> list[str]:
    """One line per difference between the trees at `a` and `b`; empty when they match."""
    sa = snapshot(a, include_root=include_root)
    sb = snapshot(b, include_root=include_root)
    out = [f"only in {a}: {p}" for p in sorted(sa.keys() - sb.keys())]
    out += [f"only in {b}: {p}" for p in sorted(sb.keys() - sa.keys())]
    for path in sorted(sa.keys() & sb.keys()):
        na, nb = sa[path], sb[path]
        for f in fields(Node):
            if f.name == "mtime" and not times:
                continue
            va, vb = getattr(na, f.name), getattr(nb, f.name)
            if va != vb:
                out.append(f"{path}: {f.name} {va!r} != {vb!r}")
    return out


def assert_same_tree(a: Path, b: Path, *, times: bool = False, include_root: bool = False) -> None:
    diffs = diff_trees(a, b, times=times, include_root=include_root)
    assert not diffs, "trees differ:\n" + "\n".join(diffs[:50])
