"""`json.loads` without importing `json`, for bareboat-runtime's `create`.

`import json` compiles its regular expressions and so imports `re`, `enum`, `functools` and
`collections`: 19 ms of CPU here on a busy machine, against 22 ms for all of `python -c pass`,
on a call podman and containerd make for every container when all `create` needs from
config.json is its annotations. The parsing itself is done by the C scanner `json` uses,
with `json.loads`'s defaults; anything this module does not handle the way `json.loads` would
(another encoding, a BOM, any error) goes to `json.loads` itself, so the result and every
error message are exactly `json`'s.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class _Defaults:
    """The context the scanner reads its options from: `json.JSONDecoder()`'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {
        "-Infinity": float("-inf"),
        "Infinity": float("inf"),
        "NaN": float("nan"),
    }.__getitem__


_scan: Callable[[str, int], tuple[Any, int]] | None
try:
    from _json import make_scanner
except ImportError:  # not CPython: json's own decoder then
    _scan = None
else:
    # The context is read for its attributes only, as json.JSONDecoder is.
    _scan = make_scanner(_Defaults)  # type: ignore[arg-type]
_WHITESPACE = " \t\n\r"  # JSON's, as json.decoder.WHITESPACE


def loads(data: bytes) -> Any:
    """`json.loads(data)` for the bytes of a JSON file."""
    # json.detect_encoding says UTF-8 (no BOM, no NUL in the first two bytes): decode the same
    # way json does; anything else is json's to decode.
    if _scan is not None and len(data) >= 2 and data[0] not in (0, 0xEF, 0xFE, 0xFF) and data[1]:
        try:
            text = data.decode("utf-8", "surrogatepass")
            start = len(text) - len(text.lstrip(_WHITESPACE))
            value, end = _scan(text, start)
            if not text[end:].strip(_WHITESPACE):
                return value
        except Exception:  # noqa: BLE001 - json.loads below raises json's own error for it
            pass
    import json

    return json.loads(data)
