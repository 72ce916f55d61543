"""User resolution against an image's own /etc/passwd and /etc/group, read safely."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bareboat.errors import ImageError, UsageError
from bareboat.spec import rootread
from bareboat.spec.users import (
    MAX_ID,
    User,
    parse_group,
    parse_passwd,
    resolve_user,
    resolve_user_from,
)

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "# a comment line\n"
    "broken line without fields\n"
    "bad:x:notanumber:0::/:\n"
    "svc:x:200:300:svc::/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nstaff:x:50:app,svc\napp:x:1000:\nwheel:x:10:root,app\nweird:x:x:app\n"


def make_rootfs(root: Path, passwd: str | None = PASSWD, group: str | None = GROUP) -> Path:
    (root / "etc").mkdir(parents=True)
    if passwd is not None:
        (root / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (root / "etc" / "group").write_text(group)
    return root


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", User(0, 0, (10,), "/root", "root")),
        ("root", User(0, 0, (10,), "/root", "root")),
        ("0", User(0, 0, (10,), "/root", "root")),
        ("app", User(1000, 1000, (50, 10), "/home/app", "app")),
        ("1000", User(1000, 1000, (50, 10), "/home/app", "app")),
        ("app:staff", User(1000, 50, (), "/home/app", "app")),
        ("app:7", User(1000, 7, (), "/home/app", "app")),
        ("1000:1000", User(1000, 1000, (), "/home/app", "app")),
        ("4242", User(4242, 0, (), "/", "")),
        ("4242:4242", User(4242, 4242, (), "/", "")),
        ("4242:staff", User(4242, 50, (), "/", "")),
        ("svc", User(200, 300, (50,), "/", "svc")),  # empty home falls back to /
    ],
)
def test_resolve(rootfs: Path, spec: str, expected: User) -> None:
    assert resolve_user(rootfs, spec) == expected


def test_unknown_names(rootfs: Path) -> None:
    with pytest.raises(
        UsageError, match=r"^unable to find user ghost: no matching entries in passwd file$"
    ):
        resolve_user(rootfs, "ghost")
    with pytest.raises(UsageError, match=r"^unable to find group ghosts: no matching"):
        resolve_user(rootfs, "app:ghosts")
    with pytest.raises(UsageError):
        resolve_user(rootfs, "bad")  # its line is malformed, so it does not exist
    for bad in ["app:", "a:b:c", "app\0"]:
        with pytest.raises(UsageError):
            resolve_user(rootfs, bad)


def test_missing_files(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "r", passwd=None, group=None)
    assert resolve_user(root, "") == User(0, 0)
    assert resolve_user(root, "1000:1000") == User(1000, 1000)
    with pytest.raises(UsageError, match="unable to find user app"):
        resolve_user(root, "app")


@pytest.mark.parametrize("kind", ["absolute", "relative", "deep-relative"])
def test_hostile_symlink_is_not_followed_out(tmp_path: Path, kind: str) -> None:
    """/etc/passwd pointing outside the rootfs must not read the host's file."""
    outside = tmp_path / "outside-passwd"
    outside.write_text("evil:x:0:0:evil:/evil:/bin/sh\n")
    root = make_rootfs(tmp_path / "rootfs", passwd=None)
    link = {
        "absolute": str(outside),
        "relative": "../../outside-passwd",
        "deep-relative": "../" * 40 + str(outside).lstrip("/"),
    }[kind]
    os.symlink(link, root / "etc" / "passwd")
    assert (root / "etc" / "passwd").read_text().startswith("evil")  # the host would follow it
    with pytest.raises(UsageError, match="unable to find user evil"):
        resolve_user(root, "evil")


def test_hostile_symlinked_etc_directory(tmp_path: Path) -> None:
    outside = tmp_path / "hostetc"
    outside.mkdir()
    (outside / "passwd").write_text("evil:x:0:0:evil:/evil:/bin/sh\n")
    root = tmp_path / "rootfs"
    root.mkdir()
    os.symlink(str(outside), root / "etc")
    with pytest.raises(UsageError, match="unable to find user evil"):
        resolve_user(root, "evil")


def test_symlink_inside_rootfs_is_resolved_in_it(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "rootfs", passwd=None)
    (root / "lib").mkdir()
    (root / "lib" / "passwd").write_text("app:x:1000:1000::/srv:/bin/sh\n")
    os.symlink("/lib/passwd", root / "etc" / "passwd")  # absolute: means the rootfs's /lib
    assert resolve_user(root, "app").home == "/srv"


def test_symlink_loop(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "rootfs", passwd=None)
    os.symlink("passwd", root / "etc" / "passwd")
    assert resolve_user(root, "") == User(0, 0, (), "/", "")


def test_fifo_and_directory_and_huge_file_are_refused(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "fifo", passwd=None)
    os.mkfifo(root / "etc" / "passwd")
    with pytest.raises(ImageError, match="not a regular file"):
        resolve_user(root, "app")  # and it did not hang on the FIFO
    root = make_rootfs(tmp_path / "dir", passwd=None)
    (root / "etc" / "passwd").mkdir()
    with pytest.raises(ImageError, match="not a regular file"):
        resolve_user(root, "app")
    root = make_rootfs(tmp_path / "huge", passwd=None)
    with open(root / "etc" / "passwd", "wb") as f:
        f.truncate(rootread.MAX_SIZE + 1)
    with pytest.raises(ImageError, match="larger than"):
        resolve_user(root, "app")


def test_fallback_walk_refuses_symlinks(tmp_path: Path) -> None:
    """Where openat2 is missing, any symlink on the way is refused instead of followed."""
    root = make_rootfs(tmp_path / "rootfs")
    (root / "lib").mkdir()
    os.symlink("/etc", root / "lib" / "etc")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        f = rootread._open_nofollow(fd, "etc/passwd", os.O_RDONLY)
        os.close(f)
        for path in ["lib/etc/passwd", "../etc/passwd", "etc/../etc/passwd"]:
            with pytest.raises(OSError):
                rootread._open_nofollow(fd, path, os.O_RDONLY)
    finally:
        os.close(fd)


def test_openat2_is_used_here(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path / "rootfs")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        f = rootread._openat2(fd, "etc/../../../etc/passwd", os.O_RDONLY)
        assert os.read(f, 100).startswith(b"root:x:0:0")
        os.close(f)
    except OSError as e:
        pytest.skip(f"openat2 is not available here: {e}")
    finally:
        os.close(fd)


def test_parsers_are_lenient() -> None:
    assert [p.name for p in parse_passwd(PASSWD)] == ["root", "app", "svc", "nobody"]
    groups = parse_group(GROUP)
    assert [g.name for g in groups] == ["root", "staff", "app", "wheel"]
    assert groups[1].members == ("app", "svc")
    assert parse_passwd("x:x:99999999999:0::/:\n") == []  # out of uid_t range
    # NIS lines and nameless records are skipped in both files
    assert parse_passwd("+:x:0:0::/:\n-bad:x:0:0::/:\n:x:0:0::/:\n") == []
    assert parse_group("+:x:0:\n-bad:x:0:\n:x:0:\n") == []


@given(
    passwd=st.text(max_size=300),
    group=st.text(max_size=300),
    spec=st.sampled_from(["", "app", "0", "1000:50", "app:staff", "x:y", "4294967295"]),
)
def test_any_file_content_gives_a_user_or_a_usage_error(passwd: str, group: str, spec: str) -> None:
    """Hostile passwd/group contents never crash the resolver or yield an out-of-range id."""
    try:
        u = resolve_user_from(spec, parse_passwd(passwd), parse_group(group))
    except UsageError as e:
        assert "\n" not in str(e)
        return
    assert 0 <= u.uid <= MAX_ID and 0 <= u.gid <= MAX_ID
    assert all(0 <= g <= MAX_ID for g in u.additional_gids)
