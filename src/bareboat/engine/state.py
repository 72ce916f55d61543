"""Container records, with their status (`bareboat.sandbox.status`), and atomic persistence.

A record is the engine's whole knowledge of one container. It is plain data, written as JSON
under `roots.containers/<id>/record.json` with `fsutil.atomic_write`, so a crash leaves the old
record or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from bareboat.errors import ContainerError
from bareboat.fsutil import atomic_write, atomic_write_text
from bareboat.sandbox.status import Status, check_transition
from bareboat.spec.options import Isolation, LogOptions, Mount, PortMapping, Rlimit, RunOptions

TYPE_CHECKING = False  # typing costs import time on every `run`; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any


@dataclass
class Record:
    id: str
    name: str
    image: str  # the reference the user gave
    image_id: str
    isolation: Isolation
    options: RunOptions
    state: Status = Status.CREATED
    exit_code: int | None = None
    error: str = ""  # why it ended, when bareboat (not the workload) ended it
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    pid: int | None = None  # the workload (or its runtime / VMM) as the monitor sees it
    pid_start: int | None = None  # its /proc/PID/stat starttime: guards against pid reuse
    monitor_pid: int | None = None
    monitor_start: int | None = None  # /proc/PID/stat starttime: guards against pid reuse
    auto_remove: bool = False
    stop_signal: str = ""

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def move_to(self, wanted: Status) -> None:
        check_transition(self.short_id, self.state, wanted)
        self.state = wanted

    # --- JSON -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["isolation"] = self.isolation.value
        data["state"] = self.state.value
        data["options"] = options_to_json(self.options)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        data = dict(data)
        data["isolation"] = Isolation(data["isolation"])
        data["state"] = Status(data["state"])
        data["options"] = options_from_json(data["options"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def options_to_json(options: RunOptions) -> dict[str, Any]:
    data = dataclasses.asdict(options)
    data["isolation"] = options.isolation.value
    return data


def options_from_json(data: dict[str, Any]) -> RunOptions:
    d = dict(data)
    d["isolation"] = Isolation(d["isolation"])
    for key in ("entrypoint", "command"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    d["env"] = tuple(d.get("env", ()))
    d["mounts"] = tuple(
        Mount(**{**m, "options": tuple(m.get("options", ()))}) for m in d.get("mounts", ())
    )
    d["publish"] = tuple(PortMapping(**p) for p in d.get("publish", ()))
    d["rlimits"] = tuple(Rlimit(**r) for r in d.get("rlimits", ()))
    d["log"] = LogOptions(**d["log"]) if d.get("log") else LogOptions()
    names = {f.name for f in dataclasses.fields(RunOptions)}
    return RunOptions(**{k: v for k, v in d.items() if k in names})


class RecordStore:
    """Records on disk, one directory per container under `base`."""

    FILE = "record.json"

    def __init__(self, base: Path) -> None:
        self.base = base

    def dir(self, cid: str) -> Path:
        return self.base / cid

    def save(self, record: Record) -> None:
        path = self.dir(record.id) / self.FILE
        data = json.dumps(record.to_json(), indent=1)
        if record.auto_remove:
            # Replaced atomically but not fsynced: a --rm container's record is gone at its
            # end anyway, and after a crash a torn one is read as missing (ids() skips it).
            write_replace(path, data.encode())
        else:
            atomic_write_text(path, data)

    def load(self, cid: str) -> Record:
        try:
            raw = (self.dir(cid) / self.FILE).read_text()
        except FileNotFoundError:
            raise ContainerError(f"container {cid[:12]} has no record") from None
        try:
            return Record.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError):
            raise ContainerError(f"container {cid[:12]} has a damaged record") from None

    def ids(self) -> list[str]:
        try:
            entries = os.listdir(self.base)
        except FileNotFoundError:
            return []
        return sorted(e for e in entries if (self.base / e / self.FILE).is_file())


def write_replace(path: Path, data: bytes) -> None:
    """Write beside `path` and rename over it: atomic for readers, not durable."""
    atomic_write(path, data, durable=False)
