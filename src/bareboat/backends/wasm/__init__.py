"""The wasm backend: WASI preview 1 modules from OCI images, run by wasmtime.

`import wasmtime` happens only where a module is compiled or run, never at import of this
package (the CLI imports backends on its hot path).
"""

from .backend import WasmBackend

__all__ = ["WasmBackend"]
