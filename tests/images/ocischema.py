"""The OCI image-spec JSON schemas from Debian, as jsonschema validators.

The schema files carry draft-04 `id`s on nested objects, which move the base URI of their
relative `$ref`s to places no file is; so the refs are inlined from the files by name first.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path("/usr/share/gocode/src/github.com/opencontainers/image-spec/schema")


def _load(name: str) -> Any:
    return json.loads((SCHEMAS / name).read_text())


def _inline(node: Any, current: str) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target, _, pointer = node["$ref"].partition("#")
            target = target or current
            doc = _load(target)
            for part in filter(None, pointer.split("/")):
                doc = doc[part]
            return _inline(doc, target)
        return {k: _inline(v, current) for k, v in node.items() if k != "id"}
    if isinstance(node, list):
        return [_inline(v, current) for v in node]
    return node


@cache
def validator(name: str) -> jsonschema.Draft4Validator:
    """`name` is e.g. image-manifest-schema.json, image-index-schema.json."""
    return jsonschema.Draft4Validator(_inline(_load(name), name))


def validate(name: str, doc: Any) -> None:
    validator(name).validate(doc)


def available() -> bool:
    return (SCHEMAS / "image-manifest-schema.json").is_file()
