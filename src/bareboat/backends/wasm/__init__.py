"""The wasm backend: WASI preview 1 modules from OCI images, run by wasmtime.

`import wasmtime` happens only where a module is compiled or run, never at import of this
package (the CLI imports backends on its hot path). `WasmBackend` is loaded on first use so
that the shim process (`python -m bareboat.backends.wasm`), which imports this package first,
pays only for what running a plan needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import WasmBackend

__all__ = ["WasmBackend"]


def __getattr__(name: str) -> Any:
    if name == "WasmBackend":
        from .backend import WasmBackend

        return WasmBackend
    raise AttributeError(name)
