"""framing.split, which the agent, hub control and monitor control protocols share."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from bareboat.framing import split

HEADER = struct.Struct(">BI")


def _check(fields: tuple[Any, ...]) -> tuple[int, int]:
    kind, length = fields
    if length > 8:
        raise ValueError(f"frame of {length} bytes")
    return kind, length


def test_whole_frames_come_off_and_a_partial_one_waits() -> None:
    data = HEADER.pack(1, 3) + b"abc" + HEADER.pack(2, 0) + HEADER.pack(3, 2) + b"x"
    buf = bytearray()
    got = []
    for i in range(len(data)):  # byte by byte: every cut of every header and payload
        buf += data[i : i + 1]
        got += split(buf, HEADER, _check)
    assert got == [(1, b"abc"), (2, b"")]
    assert buf == HEADER.pack(3, 2) + b"x"
    buf += b"y"
    assert split(buf, HEADER, _check) == [(3, b"xy")] and buf == b""


def test_a_header_is_checked_before_its_payload_is_waited_for() -> None:
    buf = bytearray(HEADER.pack(1, 1 << 30))
    with pytest.raises(ValueError, match="1073741824 bytes"):
        split(buf, HEADER, _check)
