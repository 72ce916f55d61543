from __future__ import annotations

import os
from pathlib import Path

import pytest

from bareboat.errors import CommandNotExecutable, CommandNotFound
from bareboat.spec.command import check_command


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/busybox").write_text("#!")
    (tmp_path / "bin/busybox").chmod(0o755)
    os.symlink("busybox", tmp_path / "bin/sh")
    os.symlink("/bin/busybox", tmp_path / "bin/abs")
    os.symlink("../../../../../../etc/passwd", tmp_path / "bin/escape")
    (tmp_path / "data").write_text("x")
    return tmp_path


def test_path_lookup_follows_symlinks_inside_the_root(root: Path) -> None:
    check_command(root, ["sh"], ["PATH=/usr/bin:/bin"])  # bin/sh -> busybox
    check_command(root, ["/bin/abs"], [])  # an absolute link: inside the root


def test_symlinks_never_leave_the_root(root: Path) -> None:
    # /etc/passwd exists on the host, not in this root
    with pytest.raises(CommandNotFound, match="no such file or directory"):
        check_command(root, ["/bin/escape"], [])
    (root / "usr").mkdir()
    os.symlink("/etc", root / "usr/bin")  # a PATH entry leading to the host's /etc
    with pytest.raises(CommandNotFound):
        check_command(root, ["passwd"], ["PATH=/usr/bin"])


def test_not_found_is_127(root: Path) -> None:
    with pytest.raises(CommandNotFound) as e:
        check_command(root, ["nosuch"], ["PATH=/bin"])
    assert e.value.exit_code == 127
    with pytest.raises(CommandNotFound):
        check_command(root, ["/bin/nosuch"], [])


def test_not_executable_is_126(root: Path) -> None:
    with pytest.raises(CommandNotExecutable) as e:
        check_command(root, ["/data"], [])
    assert e.value.exit_code == 126
    with pytest.raises(CommandNotExecutable):
        check_command(root, ["/bin"], [])
