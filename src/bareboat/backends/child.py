"""What a backend shares whose workload is the monitor's own child process (`process` and
`wasm`): the wait status the monitor reaps is the workload's own, and a signal for the
workload goes to that pid. (A container's status is its OCI runtime's, and a VM's workload
lives in the guest: those backends answer both their own way.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bareboat.backends.base import signal_pid
from bareboat.proc import wait_status_to_code

if TYPE_CHECKING:
    from bareboat.backends.base import BackendContext


class ChildWorkload:
    def exit_code(self, ctx: BackendContext, status: int) -> int:
        return wait_status_to_code(status)

    def kill(self, ctx: BackendContext, pid: int | None, sig: int) -> None:
        signal_pid(pid, sig)
