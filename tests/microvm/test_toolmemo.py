"""Host tool versions remembered in the cache while the files they come from stay the same."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bareboat.backends.microvm import initbuild, toolmemo


def test_asked_once_while_the_files_stay_the_same(tmp_path: Path) -> None:
    tool = tmp_path / "tool"
    tool.write_text("v1")
    asked: list[str] = []

    def ask() -> str:
        asked.append(tool.read_text())
        return tool.read_text()

    memo = tmp_path / "memo"
    assert toolmemo.remembered(memo, "t", [tool], ask) == "v1"
    assert toolmemo.remembered(memo, "t", [tool], ask) == "v1"
    assert asked == ["v1"]
    tool.write_text("v2-longer")  # an upgrade: the file's size and time change
    assert toolmemo.remembered(memo, "t", [tool], ask) == "v2-longer"
    assert len(asked) == 2
    # Other names are kept apart.
    assert toolmemo.remembered(memo, "u", [tool], lambda: "other") == "other"
    assert toolmemo.remembered(memo, "t", [tool], ask) == "v2-longer"
    assert len(asked) == 2


def test_a_file_that_appears_or_goes_asks_again(tmp_path: Path) -> None:
    gone = tmp_path / "gcc"
    answers = iter(["first", "second", "third"])
    memo = tmp_path / "memo"
    assert toolmemo.remembered(memo, "t", [gone], lambda: next(answers)) == "first"
    gone.write_text("x")
    assert toolmemo.remembered(memo, "t", [gone], lambda: next(answers)) == "second"
    gone.unlink()
    assert toolmemo.remembered(memo, "t", [gone], lambda: next(answers)) == "third"


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b'{"t": {"identity": 1}}'])
def test_a_damaged_memo_is_asked_past(tmp_path: Path, content: bytes) -> None:
    (tmp_path / toolmemo.MEMO_FILE).write_bytes(content)
    assert toolmemo.remembered(tmp_path, "t", [], lambda: "fresh") == "fresh"
    assert toolmemo.remembered(tmp_path, "t", [], lambda: "not asked") == "fresh"


def test_an_unwritable_memo_still_answers(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert toolmemo.remembered(blocker / "memo", "t", [], lambda: "v") == "v"


@pytest.mark.skipif(shutil.which("musl-gcc") is None, reason="musl-gcc (musl-tools) is missing")
def test_the_init_key_is_the_same_remembered_or_asked(tmp_path: Path) -> None:
    asked = initbuild.plan_init().key
    assert initbuild.plan_init(memo_dir=tmp_path).key == asked
    assert (tmp_path / toolmemo.MEMO_FILE).is_file()
    assert initbuild.plan_init(memo_dir=tmp_path).key == asked


def test_the_memo_keeps_identity_of_each_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    st = os.stat(f)
    assert toolmemo.identity([f, tmp_path / "missing"]) == [
        [str(f), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns],
        [str(tmp_path / "missing"), None],
    ]
