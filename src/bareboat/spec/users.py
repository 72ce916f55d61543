"""Resolve `-u`/image `User` values against the image's own /etc/passwd and /etc/group.

The rules are runc's and docker's (`user.GetExecUser`):
- `USER[:GROUP]`, each part a name or a number; empty means root.
- A name must be in passwd; a number need not be (then gid 0 and home `/`).
- A GROUP name must be in group; a number need not be.
- Without an explicit GROUP, the groups that list the user's name become its additional
  gids; with one, there are none.
Both files are untrusted image content: read through `rootread` (inside the rootfs only,
regular files, bounded size) and parsed leniently, as libc does: bad lines are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bareboat.errors import ImageError, UsageError
from bareboat.spec.rootread import RootReadError, read_in_root

MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "unchanged" to setuid(2); never hand it out


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"
    name: str = ""  # the passwd name, where there is one


# Plain classes: a dataclass costs a fraction of a millisecond to create at import, and a
# NamedTuple imports typing; this module is on the path of every `run`.
class PasswdEntry:
    __slots__ = ("gid", "home", "name", "uid")

    def __init__(self, name: str, uid: int, gid: int, home: str) -> None:
        self.name, self.uid, self.gid, self.home = name, uid, gid, home


class GroupEntry:
    __slots__ = ("gid", "members", "name")

    def __init__(self, name: str, gid: int, members: tuple[str, ...]) -> None:
        self.name, self.gid, self.members = name, gid, members


def _number(text: str) -> int | None:
    if text.isascii() and text.isdigit():
        n = int(text)
        return n if n <= MAX_ID else None
    return None


def _records(text: str, min_fields: int) -> Iterator[list[str]]:
    """The fields of each line of a passwd or group file that is a record: named, with at
    least `min_fields` fields, and neither a comment nor an NIS `+`/`-` line."""
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= min_fields and fields[0] and not line.startswith(("#", "+", "-")):
            yield fields


def parse_passwd(text: str) -> list[PasswdEntry]:
    entries = []
    for fields in _records(text, 6):
        uid, gid = _number(fields[2]), _number(fields[3])
        if uid is None or gid is None:
            continue
        entries.append(PasswdEntry(fields[0], uid, gid, fields[5]))
    return entries


def parse_group(text: str) -> list[GroupEntry]:
    entries = []
    for fields in _records(text, 3):
        gid = _number(fields[2])
        if gid is None:
            continue
        members = tuple(m for m in (fields[3].split(",") if len(fields) > 3 else []) if m)
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


def _read(rootfs: Path, path: str) -> str:
    try:
        data = read_in_root(rootfs, path)
    except RootReadError as e:
        raise ImageError(f"cannot resolve the user: {e}") from None
    except OSError as e:
        raise ImageError(f"cannot read {path} in the image: {e.strerror}") from None
    # surrogateescape: names in odd encodings still compare equal to what the user typed.
    return "" if data is None else data.decode("utf-8", "surrogateescape")


def resolve_user_from(spec: str, passwd: list[PasswdEntry], group: list[GroupEntry]) -> User:
    """The pure part of `resolve_user`: resolve against already-parsed entries."""
    user_part, has_group, group_part = spec.partition(":")
    if has_group and not group_part:
        raise UsageError(f"invalid user {spec!r}: the group after ':' is empty")
    uid, gid, home, name = 0, 0, "/", ""
    if user_part:
        num = _number(user_part)
        if num is None:
            match = next((p for p in passwd if p.name == user_part), None)
        else:
            match = next((p for p in passwd if p.uid == num), None)
        if match is not None:
            uid, gid, home, name = match.uid, match.gid, match.home or "/", match.name
        elif num is not None:
            uid = num
        else:
            raise UsageError(f"unable to find user {user_part}: no matching entries in passwd file")
    else:
        root = next((p for p in passwd if p.uid == 0), None)
        if root is not None:
            gid, home, name = root.gid, root.home or "/", root.name
    if group_part:
        gnum = _number(group_part)
        if gnum is not None:
            return User(uid, gnum, (), home, name)
        grp = next((g for g in group if g.name == group_part), None)
        if grp is None:
            raise UsageError(
                f"unable to find group {group_part}: no matching entries in group file"
            )
        return User(uid, grp.gid, (), home, name)
    extra: list[int] = []
    if name:
        for g in group:
            if name in g.members and g.gid not in extra:
                extra.append(g.gid)
    return User(uid, gid, tuple(extra), home, name)


def resolve_user(rootfs: Path, spec: str) -> User:
    """Resolve `spec` ("", "uid", "uid:gid", "name", "name:group", ...) in the image at `rootfs`.

    Raises UsageError for an unknown user or group name, ImageError for an unreadable file.
    """
    if "\0" in spec or spec.count(":") > 1:
        raise UsageError(f"invalid user {spec!r}: expected USER[:GROUP]")
    passwd = parse_passwd(_read(rootfs, "/etc/passwd"))
    group = parse_group(_read(rootfs, "/etc/group"))
    return resolve_user_from(spec, passwd, group)
