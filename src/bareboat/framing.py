"""Length-prefixed frames on a byte stream, as bareboat's two socket protocols send them:
the guest agent's (backends/microvm/agent.py) and a sandbox's control socket (control.py,
served by the engine's monitor or a VM's hub).

Each protocol has a header of its own and checks it its own way; `split` is what they share:
taking whole frames off the front of what a peer sent, with each header checked as soon as
it is in, before anything waits for its payload (a peer's length is held to the bound for
its type before that many bytes are buffered).

bareboat-runtime's `pause` and `resume` load this (through control.py): it imports nothing.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs import time on the runtime's calls; mypy sees it true
if TYPE_CHECKING:
    import struct
    from collections.abc import Callable
    from typing import Any, TypeVar

    Head = TypeVar("Head")


def split(
    buf: bytearray,
    header: struct.Struct,
    check: Callable[[tuple[Any, ...]], tuple[Head, int]],
) -> list[tuple[Head, bytes]]:
    """Take every whole frame off the front of `buf`, as (head, payload); a partial frame
    stays for the next call. `check` gets the fields of each header and returns what the
    caller keeps of them and the payload's length, or raises the protocol's error."""
    frames: list[tuple[Head, bytes]] = []
    while len(buf) >= header.size:
        head, length = check(header.unpack_from(buf))
        end = header.size + length
        if len(buf) < end:
            break
        frames.append((head, bytes(buf[header.size : end])))
        del buf[:end]
    return frames
