"""Which isolation runs a container created through `bareboat-runtime`.

In order, the first that says something wins:
1. the bundle's `io.bareboat.isolation` annotation (per container: what a pod or `podman run
   --annotation` asks for);
2. the name the runtime was invoked as (`bareboat-runtime-vm` → microvm, `-wasm`, `-process`,
   `-container`), so that one symlink per RuntimeClass pins a level;
3. the environment variable BAREBOAT_RUNTIME_ISOLATION;
4. the runtime's config file (BAREBOAT_RUNTIME_CONFIG, default /etc/bareboat/runtime.json,
   a JSON object with an "isolation" key);
5. `container`.
"""

from __future__ import annotations

import os

from .jsonload import loads

TYPE_CHECKING = False  # typing costs ~3 ms of import on `create`; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any

ANNOTATION = "io.bareboat.isolation"
KNOWN = ("container", "microvm", "wasm", "process")
DEFAULT_CONFIG = "/etc/bareboat/runtime.json"

# Suffixes of the invoked name (after "bareboat-runtime-").
_NAME_SUFFIXES = {
    "vm": "microvm",
    "microvm": "microvm",
    "wasm": "wasm",
    "process": "process",
    "container": "container",
}


def check(value: str, source: str) -> str:
    if value not in KNOWN:
        from bareboat.errors import UsageError

        raise UsageError(
            f"{source}: unknown isolation {value!r} (expected one of {', '.join(KNOWN)})"
        )
    return value


def from_invoked_name(argv0: str) -> str:
    name = os.path.basename(argv0)
    prefix = "bareboat-runtime-"
    if name.startswith(prefix):
        return _NAME_SUFFIXES.get(name[len(prefix) :], "")
    return ""


def from_config_file(env: dict[str, str] | os._Environ[str]) -> str:
    path = env.get("BAREBOAT_RUNTIME_CONFIG") or DEFAULT_CONFIG
    try:
        with open(path, "rb") as f:
            data = loads(f.read())
    except FileNotFoundError:
        return ""
    except (OSError, ValueError) as e:
        from bareboat.errors import UsageError

        raise UsageError(f"cannot read runtime config {path}: {e}") from None
    value = data.get("isolation", "") if isinstance(data, dict) else ""
    return check(value, path) if value else ""


def resolve(config: dict[str, Any], argv0: str, env: dict[str, str] | os._Environ[str]) -> str:
    annotations = config.get("annotations") or {}
    if not isinstance(annotations, dict):
        from bareboat.errors import UsageError

        raise UsageError("config.json: annotations must be an object")
    value = annotations.get(ANNOTATION)
    if value:
        return check(str(value), f"annotation {ANNOTATION}")
    value = from_invoked_name(argv0)
    if value:
        return value
    value = env.get("BAREBOAT_RUNTIME_ISOLATION", "")
    if value:
        return check(value, "BAREBOAT_RUNTIME_ISOLATION")
    return from_config_file(env) or "container"
