"""The OCI runtime-spec JSON schema (Debian's copy) as a jsonschema validator: the oracle."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

SCHEMA_DIR = Path("/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema")


@functools.cache
def config_validator() -> Any:
    return validator_for("config-schema.json")


@functools.cache
def validator_for(name: str) -> Any:
    """A Draft 4 validator for one runtime-spec schema file (config-schema.json,
    state-schema.json) whose `$ref`s resolve to the local files."""
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    if not (SCHEMA_DIR / name).exists():
        pytest.skip(f"the OCI runtime-spec schemas are not installed in {SCHEMA_DIR}")
    # The files have no ids and refer to each other by bare file name ("defs.json#/..."),
    # so register each under its file name; relative refs then resolve against the root's.
    registry: Registry[Any] = Registry()
    for f in SCHEMA_DIR.glob("*.json"):
        registry = registry.with_resource(
            f.name, Resource.from_contents(json.loads(f.read_text()), default_specification=DRAFT4)
        )
    schema = json.loads((SCHEMA_DIR / name).read_text())
    return jsonschema.Draft4Validator(schema, registry=registry)


def validate_config(config: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError (with every error listed) if `config` is invalid."""
    import jsonschema

    errors = sorted(config_validator().iter_errors(config), key=lambda e: list(e.path))
    if errors:
        lines = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
        raise jsonschema.ValidationError("\n".join(lines))
