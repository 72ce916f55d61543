"""Byte sizes as people write them (`20m`, `1.5GiB`, `4096`) and as messages show them."""

from __future__ import annotations

import re

from bareboat.errors import UsageError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?$", re.IGNORECASE)


def parse_size(value: str, *, what: str) -> int:
    """`512m`, `1g`, `1.5GiB`, `100000` to bytes (binary units, as docker's). `what` names
    the setting in the error."""
    m = _SIZE_RE.match(value.strip())
    if not m:
        raise UsageError(
            f"invalid {what} {value!r}: expected a number of bytes with an optional unit "
            "k, m, g, t or p"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def show_size(n: int) -> str:
    """`1.5 GiB`, `20.0 MiB`, `512 B`: for messages, in the units the settings take."""
    if n < 1024:
        return f"{n} B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
    raise AssertionError
