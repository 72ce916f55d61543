"""What a sandbox offers bareboat-runtime under the OCI contract, the same for every isolation
bareboat runs itself: each of `process`, `wasm` and `microvm` in this package implements it as
module functions (`operations` picks one), and bareboat-runtime's `kill`, `delete`, `pause`,
`resume`, `ps` and `update` are written once over it.

Each function gets the sandbox's directory (`bareboat.sandboxdir`) and its state record
(`state.json`: the gate's pid and start time, and what the isolation added at create).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Protocol

    from .status import Status

    class Operations(Protocol):
        def pids(self, sandbox: str, st: dict[str, Any]) -> list[int]:
            """The sandbox's host processes."""

        def kill(
            self, sandbox: str, st: dict[str, Any], status: Status, sig: int, everything: bool
        ) -> bool:
            """Send `sig` to the workload (`everything`: to every process of the sandbox);
            False when there is nothing to signal: the sandbox does not run."""

        def set_paused(self, sandbox: str, st: dict[str, Any], paused: bool) -> None:
            """Freeze or thaw the whole sandbox."""

        def destroy(self, sandbox: str, st: dict[str, Any]) -> None:
            """End every process of the sandbox and remove what it holds on the host outside
            its directory (cgroups, a VM's sockets and VMM lease); the front end removes the
            directory and its record after."""

        def update(self, sandbox: str, st: dict[str, Any], resources: dict[str, Any],
                   booted: dict[str, Any], name: str) -> None:  # fmt: skip
            """Apply OCI `resources` to the running sandbox (`booted`: the bundle's own)."""


MODULES = {"process": "process", "wasm": "wasm", "microvm": "microvm"}


def operations(isolation: str) -> Operations:
    """The sandbox module of `isolation`, imported on first use."""
    import importlib

    module: ModuleType = importlib.import_module(f"{__package__}.{MODULES[isolation]}")
    return module


if TYPE_CHECKING:  # mypy checks here that each isolation keeps to the protocol
    from . import microvm, process, wasm

    _checked: tuple[Operations, ...] = (process, wasm, microvm)
