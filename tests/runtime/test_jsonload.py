"""bareboat.runtime.jsonload is json.loads: the same value for every document, the same error
(type and message) for every non-document, and no `json` or `re` imported on the way."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bareboat.runtime.jsonload import loads

FIXTURES = Path("/work/shared/fixtures/oci-client-configs")

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


def outcome(fn: Any, data: bytes) -> tuple[str, str]:
    """What `fn(data)` gives, comparable across both: its value's canonical text (NaN equal to
    NaN) or its exception's type and message."""
    try:
        value = fn(data)
    except Exception as e:  # noqa: BLE001 - the exception is what is compared
        return type(e).__name__, str(e)
    return "value", repr(canonical(value))


def canonical(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return [(k, canonical(v)) for k, v in value.items()]
    return (type(value).__name__, value)


@settings(max_examples=300, deadline=None)
@given(values, st.sampled_from(["", " ", "\n\t ", "\r\n"]), st.booleans(), st.booleans())
def test_documents_decode_as_json_does(value: Any, space: str, ascii: bool, indent: bool) -> None:
    text = space + json.dumps(value, ensure_ascii=ascii, indent=2 if indent else None) + space
    data = text.encode("utf-8", "surrogatepass")
    assert outcome(loads, data) == outcome(json.loads, data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_any_bytes_give_json_s_value_or_error(data: bytes) -> None:
    assert outcome(loads, data) == outcome(json.loads, data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b" ",
        b"{",
        b'{"a": 1} x',
        b'{"a": 1}{}',
        b"\xef\xbb\xbf{}",  # a UTF-8 BOM: json decodes it as utf-8-sig
        '{"a": "\u00e9"}'.encode("utf-16"),
        '{"a": 1}'.encode("utf-32-le"),
        b'{"a": "\xff"}',
        b'{"a": "\x01"}',  # a control character in a string: json is strict
        b"[NaN, Infinity, -Infinity]",
        b'{"a": 1, "a": 2}',
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the recursion limit
        b"12",
        b'"\\ud800"',
    ],
)
def test_edge_cases_match_json(data: bytes) -> None:
    assert outcome(loads, data) == outcome(json.loads, data)


@pytest.mark.parametrize(
    "path", sorted(FIXTURES.glob("config-*.json")) if FIXTURES.is_dir() else [], ids=str
)
def test_client_configs(path: Path) -> None:
    data = path.read_bytes()
    assert loads(data) == json.loads(data)


def test_imports_neither_json_nor_re() -> None:
    code = (
        "import sys; from bareboat.runtime.jsonload import loads; "
        "assert loads(b'{\"a\": [1, 2.5, null]}') == {'a': [1, 2.5, None]}; "
        "print(' '.join(m for m in ('json', 're', 'enum') if m in sys.modules))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert res.stdout.split() == []
