"""Isolation choice: annotation, invoked name, environment, config file, default; and every
config.json a real client sent parses and dispatches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bareboat.errors import UsageError
from bareboat.runtime.isolation import ANNOTATION, from_invoked_name, resolve

FIXTURES = Path("/work/shared/fixtures/oci-client-configs")


def fixture_configs() -> list[Path]:
    return sorted(FIXTURES.glob("config-*.json")) if FIXTURES.is_dir() else []


@pytest.mark.parametrize("path", fixture_configs(), ids=lambda p: p.name)
def test_client_configs_default_to_container(path: Path, tmp_path: Path) -> None:
    config = json.loads(path.read_text())
    env = {"BAREBOAT_RUNTIME_CONFIG": str(tmp_path / "none.json")}
    assert resolve(config, "/usr/bin/bareboat-runtime", env) == "container"
    config.setdefault("annotations", {})[ANNOTATION] = "process"
    assert resolve(config, "/usr/bin/bareboat-runtime", env) == "process"


def test_fixtures_present() -> None:
    if not fixture_configs():
        pytest.skip(f"no recorded client configs at {FIXTURES}")
    assert len(fixture_configs()) >= 4


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("bareboat-runtime", ""),
        ("/usr/local/bin/bareboat-runtime-vm", "microvm"),
        ("bareboat-runtime-microvm", "microvm"),
        ("bareboat-runtime-wasm", "wasm"),
        ("bareboat-runtime-process", "process"),
        ("bareboat-runtime-container", "container"),
        ("bareboat-runtime-zzz", ""),
        ("runc", ""),
    ],
)
def test_invoked_name(name: str, want: str) -> None:
    assert from_invoked_name(name) == want


def test_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "runtime.json"
    cfg.write_text(json.dumps({"isolation": "wasm"}))
    env = {"BAREBOAT_RUNTIME_CONFIG": str(cfg)}
    ann = {"annotations": {ANNOTATION: "process"}}
    assert resolve({}, "bareboat-runtime", env) == "wasm"
    env["BAREBOAT_RUNTIME_ISOLATION"] = "container"
    assert resolve({}, "bareboat-runtime", env) == "container"
    assert resolve({}, "bareboat-runtime-vm", env) == "microvm"
    assert resolve(ann, "bareboat-runtime-vm", env) == "process"


@pytest.mark.parametrize(
    ("config", "env"),
    [
        ({"annotations": {ANNOTATION: "kvm"}}, {}),
        ({"annotations": ["x"]}, {}),
        ({}, {"BAREBOAT_RUNTIME_ISOLATION": "vm"}),
    ],
)
def test_bad_values_are_usage_errors(
    config: dict[str, object], env: dict[str, str], tmp_path: Path
) -> None:
    env = {"BAREBOAT_RUNTIME_CONFIG": str(tmp_path / "none.json"), **env}
    with pytest.raises(UsageError):
        resolve(config, "bareboat-runtime", env)


def test_bad_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "runtime.json"
    cfg.write_text("{not json")
    with pytest.raises(UsageError, match="runtime config"):
        resolve({}, "bareboat-runtime", {"BAREBOAT_RUNTIME_CONFIG": str(cfg)})
