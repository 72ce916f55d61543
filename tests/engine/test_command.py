from __future__ import annotations

import os
from pathlib import Path

import pytest

from bareboat.engine.command import check_command, resolve_in_root
from bareboat.errors import CommandNotExecutable, CommandNotFound


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
    assert resolve_in_root(root, "/bin/sh") == root / "bin/busybox"
    assert resolve_in_root(root, "/bin/abs") == root / "bin/busybox"
    check_command(root, ["sh"], ["PATH=/usr/bin:/bin"])


def test_symlinks_never_leave_the_root(root: Path) -> None:
    # /etc/passwd exists on the host, not in this root
    assert resolve_in_root(root, "/bin/escape") is None


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
