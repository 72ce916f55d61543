"""Wasm tests keep even the cache root to themselves: compiled modules are written there."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bareboat.backends.wasm.cache import ModuleCache
from bareboat.backends.wasm.module import ModuleRef, module_from_blob
from bareboat.backends.wasm.plan import Limits, Preopen, WasmPlan
from bareboat.backends.wasm.runner import Outcome, run_plan
from bareboat.paths import Roots


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Roots]:
    r = Roots(root=tmp_path / "root", state=tmp_path / "state", cache=tmp_path / "cache")
    monkeypatch.setenv("BAREBOAT_ROOT", str(r.root))
    monkeypatch.setenv("BAREBOAT_STATE", str(r.state))
    monkeypatch.setenv("BAREBOAT_CACHE", str(r.cache))
    yield r


@dataclass
class Result:
    outcome: Outcome
    stdout: str
    stderr: str

    @property
    def code(self) -> int:
        return self.outcome.exit_code


@dataclass
class Runner:
    """Runs module bytes through the real runner with files for stdio."""

    tmp: Path
    cache: ModuleCache
    n: int = 0

    def module(self, wasm: bytes) -> ModuleRef:
        self.n += 1
        path = self.tmp / f"m{self.n}.wasm"
        path.write_bytes(wasm)
        return module_from_blob(path)

    def __call__(
        self,
        wasm: bytes,
        *args: str,
        env: tuple[tuple[str, str], ...] = (),
        preopens: tuple[Preopen, ...] = (),
        limits: Limits | None = None,
    ) -> Result:
        ref = self.module(wasm)
        out, err = self.tmp / f"out{self.n}", self.tmp / f"err{self.n}"
        plan = WasmPlan(
            module=str(ref.path),
            digest=ref.digest,
            args=("m.wasm", *args),
            env=env,
            preopens=preopens,
            stdout=str(out),
            stderr=str(err),
            limits=limits or Limits(),
        )
        outcome = run_plan(plan, self.cache)
        return Result(outcome, out.read_text(), err.read_text())


@pytest.fixture
def run_wasm(tmp_path: Path, roots: Roots) -> Runner:
    return Runner(tmp_path, ModuleCache(roots.wasm_cache))
