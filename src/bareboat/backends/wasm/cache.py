"""Compiled-module cache: compile a module once, start it from native code afterwards.

An entry is `Module.serialize()` output stored under `roots.wasm_cache`, named by a hash of
(module digest, wasmtime version, engine settings): a module compiled under other settings or
another wasmtime would not load, so it never shares a name. Entries are written atomically.

Loading uses `Module.deserialize_file`, which maps the file instead of copying it. wasmtime
checks the header (version, target, settings) but trusts the code inside, so each entry ends
with a sha256 trailer over the rest, checked before deserializing: a truncated or bit-rotted
entry is discarded and rebuilt rather than executed. The cache directory is as trusted as the
store itself (root-owned); modules from images never reach it except through the compiler.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from bareboat.errors import WasmError
from bareboat.fsutil import atomic_open

if TYPE_CHECKING:
    import wasmtime

_TRAILER = 32  # sha256 digest appended to every entry


class CacheResult(StrEnum):
    HIT = "hit"
    MISS = "miss"
    REBUILT = "rebuilt"  # an entry existed but failed to load; it was replaced


@dataclass(frozen=True)
class EngineSettings:
    """The engine knobs that change generated code (and so the cache key)."""

    epoch_interruption: bool = True
    consume_fuel: bool = False

    @property
    def key(self) -> str:
        return f"epoch={int(self.epoch_interruption)},fuel={int(self.consume_fuel)}"

    def engine(self) -> wasmtime.Engine:
        import wasmtime

        config = wasmtime.Config()
        config.epoch_interruption = self.epoch_interruption
        config.consume_fuel = self.consume_fuel
        # One module at a time is compiled per run; threads would only fight the other work.
        config.parallel_compilation = False
        return wasmtime.Engine(config)


_version: str | None = None


def wasmtime_version() -> str:
    global _version
    if _version is None:
        from importlib.metadata import version

        _version = version("wasmtime")
    return _version


class ModuleCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def entry(self, digest: str, settings: EngineSettings) -> Path:
        key = f"{digest}\0{wasmtime_version()}\0{settings.key}".encode()
        return self.root / f"{hashlib.sha256(key).hexdigest()}.cwasm"

    def load(
        self, engine: wasmtime.Engine, source: Path, digest: str, settings: EngineSettings
    ) -> tuple[wasmtime.Module, CacheResult]:
        """The compiled module for `source` (whose content hashes to `digest`)."""
        import wasmtime

        path = self.entry(digest, settings)
        result = CacheResult.MISS
        if path.exists():
            try:
                return self._deserialize(engine, path), CacheResult.HIT
            except (WasmError, wasmtime.WasmtimeError, OSError):
                path.unlink(missing_ok=True)
                result = CacheResult.REBUILT
        try:
            module = wasmtime.Module(engine, source.read_bytes())
        except wasmtime.WasmtimeError as err:
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or ["invalid"]
            raise WasmError(f"cannot compile Wasm module {digest}: {lines[-1]}") from None
        data = bytes(module.serialize())
        with atomic_open(path) as f:
            f.write(data)
            f.write(hashlib.sha256(data).digest())
        return module, result

    @staticmethod
    def _deserialize(engine: wasmtime.Engine, path: Path) -> wasmtime.Module:
        import wasmtime

        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size <= _TRAILER:
                raise WasmError("cache entry truncated")
            h = hashlib.sha256()
            remaining = size - _TRAILER
            while remaining:
                chunk = f.read(min(remaining, 1 << 20))
                if not chunk:
                    raise WasmError("cache entry truncated")
                h.update(chunk)
                remaining -= len(chunk)
            if f.read() != h.digest():
                raise WasmError("cache entry checksum mismatch")
        # The trailer is ignored by wasmtime: it reads the ELF image it finds at the start.
        return wasmtime.Module.deserialize_file(engine, str(path))

    def clear(self) -> int:
        """Remove every entry; return how many there were."""
        n = 0
        for p in self.root.glob("*.cwasm"):
            p.unlink(missing_ok=True)
            n += 1
        return n
