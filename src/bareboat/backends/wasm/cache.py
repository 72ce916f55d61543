"""Compiled-module cache: compile a module once, start it from native code afterwards.

An entry is `Module.serialize()` output stored under `roots.wasm_cache`, named by a hash of
(module digest, wasmtime version, engine settings): a module compiled under other settings or
another wasmtime would not load, so it never shares a name. Entries are written atomically.

Loading uses `Module.deserialize_file`, which maps the file instead of copying it. wasmtime
checks the header (version, target, settings) but trusts the code inside, so each entry ends
with a CRC-32 trailer over the rest, checked before deserializing: a truncated, torn or
bit-rotted entry is discarded and rebuilt rather than executed. (A CRC, not a hash: it guards
against accidents, not an attacker, and isal's CRC-32 checks 850 KB in 0.05 ms where sha256
takes 1.1 ms here, most of a warm start.) The cache directory is as trusted as the
store itself (root-owned); modules from images never reach it except through the compiler.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from bareboat.errors import WasmError
from bareboat.fsutil import atomic_open

if TYPE_CHECKING:
    import wasmtime

_TRAILER_MAGIC = b"BBc1"
_TRAILER = 8  # magic + little-endian CRC-32 of everything before it


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


def _crc32(data: bytes | bytearray | memoryview) -> int:
    from isal import isal_zlib

    return int(isal_zlib.crc32(data)) & 0xFFFFFFFF


def wasmtime_version() -> str:
    global _version
    if _version is None:
        from importlib.metadata import version

        _version = version("wasmtime")
    return _version


# Entries whose checksum this process has checked, with the (dev, inode, mtime, size) seen.
_verified: dict[Path, tuple[int, int, int, int]] = {}


def _verify(path: Path) -> None:
    """Check the trailer, through a read-only map rather than a copy: the page cache then
    serves both this and wasmtime's own map of the file."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= _TRAILER:
            raise WasmError("cache entry truncated")
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as m:
            view = memoryview(m)
            try:
                crc = _crc32(view[:-_TRAILER]).to_bytes(4, "little")
                ok = view[-_TRAILER:] == _TRAILER_MAGIC + crc
            finally:
                view.release()
    if not ok:
        raise WasmError("cache entry checksum mismatch")


class ModuleCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._entries: dict[tuple[str, EngineSettings], Path] = {}

    def entry(self, digest: str, settings: EngineSettings) -> Path:
        path = self._entries.get((digest, settings))
        if path is None:
            key = f"{digest}\0{wasmtime_version()}\0{settings.key}".encode()
            path = self.root / f"{hashlib.sha256(key).hexdigest()}.cwasm"
            self._entries[(digest, settings)] = path
        return path

    def load(
        self, engine: wasmtime.Engine, source: Path, digest: str, settings: EngineSettings
    ) -> tuple[wasmtime.Module, CacheResult]:
        """The compiled module for `source` (whose content hashes to `digest`)."""
        import wasmtime

        path = self.entry(digest, settings)
        try:
            return self._deserialize(engine, path), CacheResult.HIT
        except FileNotFoundError:
            result = CacheResult.MISS
        except (WasmError, wasmtime.WasmtimeError, OSError):
            path.unlink(missing_ok=True)
            result = CacheResult.REBUILT
        try:
            module = wasmtime.Module(engine, source.read_bytes())
        except wasmtime.WasmtimeError as err:
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or ["invalid"]
            raise WasmError(f"cannot compile Wasm module {digest}: {lines[-1]}") from None
        data = module.serialize()
        with atomic_open(path) as f:
            f.write(data)
            f.write(_TRAILER_MAGIC + _crc32(data).to_bytes(4, "little"))
        st = os.stat(path)  # written by us just now: known good
        _verified[path] = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        return module, result

    @staticmethod
    def _deserialize(engine: wasmtime.Engine, path: Path) -> wasmtime.Module:
        import wasmtime

        # One check per file version per process (and its forks: a workload forked from the
        # monitor that just checked the entry does not check it again).
        st = os.stat(path)
        version = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if _verified.get(path) != version:
            _verify(path)
            _verified[path] = version
        # The trailer is ignored by wasmtime: it reads the ELF image it finds at the start.
        return wasmtime.Module.deserialize_file(engine, str(path))

    def clear(self) -> int:
        """Remove every entry; return how many there were."""
        n = 0
        for p in self.root.glob("*.cwasm"):
            p.unlink(missing_ok=True)
            n += 1
        return n
