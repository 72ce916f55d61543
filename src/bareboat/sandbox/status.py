"""One status for every sandbox, and the one place its transitions are written down.

The engine keeps it in a container's record; bareboat-runtime works it out from the
sandbox's files (`layout`) and reports it in the OCI runtime spec's words, where an ended
sandbox is "stopped" rather than docker's "exited".
"""

from __future__ import annotations

from enum import StrEnum  # not on the runtime's container path, which reads no status

from bareboat import proc

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any


class Status(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    EXITED = "exited"

    @property
    def oci(self) -> str:
        """The word of the OCI runtime spec's `state` for this status."""
        return "stopped" if self is Status.EXITED else self.value


# A created sandbox that fails to start goes straight to exited (docker does the same and
# keeps the 126/127 code on it). An exited one may start again, as docker allows; under the
# OCI contract it cannot (its gate is gone), which `TRANSITIONS` leaves to the front end.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.CREATED: frozenset({Status.RUNNING, Status.EXITED}),
    Status.RUNNING: frozenset({Status.PAUSED, Status.EXITED}),
    Status.PAUSED: frozenset({Status.RUNNING, Status.EXITED}),
    Status.EXITED: frozenset({Status.RUNNING}),
}


def check_transition(sandbox: str, current: Status, wanted: Status) -> None:
    from bareboat.errors import InvalidStateTransition

    if wanted not in TRANSITIONS[current]:
        raise InvalidStateTransition(sandbox, current.value, wanted.value)


# --- whether a sandbox's supervisor lives, from its state record (`state.json`) ---------------


def supervisor(st: dict[str, Any]) -> tuple[int | None, int | None]:
    """The state record's supervisor: its pid and start time (None, None when it has none)."""
    pid, start = int(st.get("pid") or 0), str(st.get("start_time") or "")
    return (pid, int(start)) if pid > 0 and start.isdigit() else (None, None)


def alive(st: dict[str, Any]) -> bool:
    return proc.alive(*supervisor(st))


def wait_gone(st: dict[str, Any], timeout: float = 10.0) -> bool:
    return proc.wait_exit(*supervisor(st), timeout)
