"""The per-container records under the runtime root: round trip, ids, leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bareboat.errors import ContainerNotFound, UsageError
from bareboat.runtime.records import Record, RuntimeRoot, default_root


def test_round_trip_claim_drop(tmp_path: Path) -> None:
    root = RuntimeRoot.of(str(tmp_path / "r"))
    rec = Record("c1", "process", "/b/x")
    root.claim(rec)
    assert root.load("c1") == rec
    assert root.all() == [rec]
    with pytest.raises(UsageError, match="already exists"):
        root.claim(rec)
    root.drop("c1")
    root.drop("c1")
    assert root.load("c1") is None
    assert root.all() == []
    assert [p.name for p in (tmp_path / "r" / "bareboat").iterdir()] == []  # no temp files


@pytest.mark.parametrize("cid", ["", ".", "..", "a/b", "x\0y", "x" * 2000])
def test_bad_ids(tmp_path: Path, cid: str) -> None:
    with pytest.raises(UsageError):
        RuntimeRoot.of(str(tmp_path)).load(cid)


def test_newline_in_bundle_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        RuntimeRoot.of(str(tmp_path)).claim(Record("c", "container", "/a\nb"))


def test_malformed_record(tmp_path: Path) -> None:
    root = RuntimeRoot.of(str(tmp_path))
    (tmp_path / "bareboat").mkdir()
    (tmp_path / "bareboat" / "c.rec").write_text("just one line")
    with pytest.raises(ContainerNotFound):
        root.load("c")


def test_default_root() -> None:
    assert default_root({}) == "/run/bareboat/runtime"
    assert default_root({"BAREBOAT_STATE": "/s"}) == "/s/runtime"
    assert default_root({"BAREBOAT_STATE": "/s", "BAREBOAT_RUNTIME_ROOT": "/r"}) == "/r"
