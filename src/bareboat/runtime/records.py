"""What bareboat-runtime remembers per container under its `--root`.

Layout under the root (`--root`, else BAREBOAT_RUNTIME_ROOT, else $BAREBOAT_STATE/runtime,
i.e. /run/bareboat/runtime):
  runc/            the delegated runc's own `--root` (container isolation)
  bareboat/ID.json {"id", "isolation", "bundle"}: written before the container exists, so
                   every later call dispatches to the same isolation, removed by `delete`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bareboat.errors import ContainerNotFound, UsageError

DEFAULT_STATE = "/run/bareboat"


def default_root(env: Mapping[str, str]) -> str:
    """podman passes no `--root` to a runtime it does not know by name, so the default must be
    steerable: BAREBOAT_RUNTIME_ROOT, else `runtime/` under bareboat's state root."""
    return env.get("BAREBOAT_RUNTIME_ROOT") or os.path.join(
        env.get("BAREBOAT_STATE") or DEFAULT_STATE, "runtime"
    )


def check_id(cid: str) -> str:
    # The id becomes a file name: no separators, no dot names, a sane length.
    if not cid or len(cid) > 1024 or "/" in cid or cid in (".", "..") or "\0" in cid:
        raise UsageError(f"invalid container id {cid!r}")
    return cid


@dataclass(frozen=True)
class Record:
    id: str
    isolation: str
    bundle: str


@dataclass(frozen=True)
class RuntimeRoot:
    path: Path

    @classmethod
    def of(cls, root: str, env: Mapping[str, str] | None = None) -> RuntimeRoot:
        return cls(Path(root or default_root(os.environ if env is None else env)))

    @property
    def runc(self) -> Path:
        return self.path / "runc"

    @property
    def records(self) -> Path:
        return self.path / "bareboat"

    def state_dir(self, cid: str) -> Path:
        """Per-container working directory of the isolations bareboat runs itself."""
        return self.path / "bareboat" / check_id(cid)

    def record_path(self, cid: str) -> Path:
        return self.records / f"{check_id(cid)}.json"

    def load(self, cid: str) -> Record | None:
        try:
            with open(self.record_path(cid), "rb") as f:
                data = json.load(f)
            return Record(str(data["id"]), str(data["isolation"]), str(data["bundle"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ContainerNotFound(f"container {cid}: unreadable record: {e}") from None

    def save(self, rec: Record) -> None:
        self.records.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.record_path(rec.id)
        data = {"id": rec.id, "isolation": rec.isolation, "bundle": rec.bundle}
        from bareboat.fsutil import atomic_write_text  # tempfile is not cheap to import

        atomic_write_text(path, json.dumps(data))

    def claim(self, rec: Record) -> None:
        """Save a new record; an id already in use is an error (as in runc)."""
        if os.path.exists(self.record_path(rec.id)):
            raise UsageError(f"container with id {rec.id} already exists")
        self.save(rec)

    def drop(self, cid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.record_path(cid))

    def all(self) -> list[Record]:
        try:
            names = sorted(os.listdir(self.records))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if name.endswith(".json"):
                rec = self.load(name[:-5])
                if rec is not None:
                    out.append(rec)
        return out
