from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bareboat.engine import protocol as P
from bareboat.errors import ContainerError

frames = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=300)), max_size=8)


@given(frames, st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_frames_survive_any_split(items: list[tuple[int, bytes]], cuts: list[int]) -> None:
    data = b"".join(P.frame(k, p) for k, p in items)
    reader, got, i, j = P.FrameReader(), [], 0, 0
    while i < len(data):
        n = cuts[j % len(cuts)]
        got += reader.feed(data[i : i + n])
        i, j = i + n, j + 1
    assert got == items


def test_an_oversized_frame_is_refused() -> None:
    with pytest.raises(ContainerError, match="too large"):
        P.FrameReader().feed(P.HEADER.pack(P.STDIN, P.MAX_FRAME + 1))
