"""The compiled-module cache: miss, hit, corrupt entry rebuilt, settings in the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bareboat.backends.wasm.cache import CacheResult, EngineSettings, ModuleCache
from bareboat.paths import Roots

from . import wat
from .conftest import Runner


def test_miss_then_hit(run_wasm: Runner, roots: Roots) -> None:
    module = wat.hello()
    assert run_wasm(module).outcome.cache == CacheResult.MISS
    entries = list(roots.wasm_cache.glob("*.cwasm"))
    assert len(entries) == 1
    r = run_wasm(module)
    assert (r.outcome.cache, r.code) == (CacheResult.HIT, 0)
    assert r.stdout.startswith("hello\n")
    assert not list(roots.wasm_cache.glob(".*.tmp"))  # atomic writes leave nothing behind


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_corrupt_entry_is_discarded_and_rebuilt(
    run_wasm: Runner, roots: Roots, damage: str
) -> None:
    module = wat.hello()
    run_wasm(module)
    (entry,) = roots.wasm_cache.glob("*.cwasm")
    data = bytearray(entry.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF  # inside the code: wasmtime's own header check passes
    elif damage == "truncate":
        del data[len(data) // 2 :]
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"not a compiled module" * 100)
    entry.write_bytes(bytes(data))
    r = run_wasm(module)
    assert (r.outcome.cache, r.code) == (CacheResult.REBUILT, 0)
    assert r.stdout.startswith("hello\n")
    assert run_wasm(module).outcome.cache == CacheResult.HIT


def test_key_depends_on_digest_and_settings(tmp_path: Path) -> None:
    cache = ModuleCache(tmp_path)
    plain, fuel = EngineSettings(), EngineSettings(consume_fuel=True)
    assert cache.entry("sha256:aa", plain) != cache.entry("sha256:bb", plain)
    assert cache.entry("sha256:aa", plain) != cache.entry("sha256:aa", fuel)
    assert cache.entry("sha256:aa", plain) == ModuleCache(tmp_path).entry("sha256:aa", plain)


def test_fuel_and_plain_runs_use_separate_entries(run_wasm: Runner, roots: Roots) -> None:
    from bareboat.backends.wasm.plan import Limits

    module = wat.hello()
    run_wasm(module)
    r = run_wasm(module, limits=Limits(fuel=10_000_000))
    assert r.outcome.cache == CacheResult.MISS and r.code == 0
    assert len(list(roots.wasm_cache.glob("*.cwasm"))) == 2


def test_clear(run_wasm: Runner, roots: Roots) -> None:
    run_wasm(wat.hello())
    assert ModuleCache(roots.wasm_cache).clear() == 1
    assert run_wasm(wat.hello()).outcome.cache == CacheResult.MISS
