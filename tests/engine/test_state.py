from __future__ import annotations

from pathlib import Path

import pytest

from bareboat.engine.names import check_name, new_id, random_name
from bareboat.engine.state import Record, RecordStore
from bareboat.errors import InvalidStateTransition, UsageError
from bareboat.sandbox.status import TRANSITIONS, Status
from bareboat.spec.options import Isolation, Mount, PortMapping, Rlimit, RunOptions


def record(**kw: object) -> Record:
    opts = RunOptions(
        command=("sh", "-c", "x"),
        env=("A=1",),
        mounts=(Mount("/data", source="/tmp", readonly=True),),
        publish=(PortMapping(8080, 80),),
        rlimits=(Rlimit("RLIMIT_NOFILE", 10, 20),),
        labels={"a": "b"},
    )
    return Record(
        id=new_id(),
        name="x",
        image="busybox",
        image_id="sha256:1",
        isolation=Isolation.CONTAINER,
        options=opts,
        **kw,  # type: ignore[arg-type]
    )


def test_lifecycle_transitions_written_once() -> None:
    rec = record()
    rec.move_to(Status.RUNNING)
    rec.move_to(Status.PAUSED)
    rec.move_to(Status.RUNNING)
    rec.move_to(Status.EXITED)
    assert Status.CREATED not in TRANSITIONS[Status.EXITED]


def test_wrong_transition_names_both_states() -> None:
    rec = record()
    with pytest.raises(InvalidStateTransition, match="is created; cannot move it to paused"):
        rec.move_to(Status.PAUSED)


def test_record_round_trips(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    rec = record()
    store.save(rec)
    assert store.load(rec.id) == rec
    assert store.ids() == [rec.id]
    # atomic: no temporary files left beside the record
    assert sorted(p.name for p in (tmp_path / rec.id).iterdir()) == ["record.json"]


def test_names_and_ids() -> None:
    assert len(new_id()) == 64
    assert "_" in random_name()
    with pytest.raises(UsageError):
        check_name("-bad name")
