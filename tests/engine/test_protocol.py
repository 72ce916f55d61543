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


@given(st.integers(0, 255), st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_decode_takes_any_frame_or_names_what_is_wrong(kind: int, payload: bytes) -> None:
    try:
        msg = P.decode(kind, payload)
    except ContainerError as err:
        assert str(err).startswith("control socket: ")
    else:
        assert kind in (P.STDIN, P.STDIN_EOF, P.RESIZE, P.SIGNAL, P.REQUEST)
        assert isinstance(msg, P.Message)


def test_decode_checks_every_field() -> None:
    assert P.decode(P.REQUEST, b'{"op": "kill"}') == P.Kill(9)
    assert P.decode(P.REQUEST, b'{"op": "attach", "stdin": true, "rows": 24, "cols": 80}') == (
        P.Attach(True, 24, 80)
    )
    assert P.decode(P.SIGNAL, b'{"signal": 64}') == P.Signal(64)
    assert P.decode(P.RESIZE, b'{"rows": 65535, "cols": 0}') == P.Resize(65535, 0)
    for kind, payload in [
        (P.SIGNAL, b'{"signal": 65}'),
        (P.SIGNAL, b'{"signal": 1.5}'),
        (P.REQUEST, b'{"op": "kill", "signal": false}'),
        (P.RESIZE, b'{"rows": 65536, "cols": 1}'),
        (P.REQUEST, b"[" * 50_000),
    ]:
        with pytest.raises(ContainerError):
            P.decode(kind, payload)
