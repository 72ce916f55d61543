"""Host tool versions, remembered while the files they come from stay the same.

The guest kernel's and init's cache keys hold the version of a host tool (the kernel source
package's, the compiler's). Asking the tool (`dpkg-query`, `musl-gcc --version`) is a fork and
exec per VM start, ~35 ms of every cold `run` here; the answer changes only when the tool's
files change. So it is kept in a small file in the cache, next to what it keys, together with
the identity (device, inode, size, modification time) of the files the answer depends on, and
asked again when any of them changed. Only root writes the cache directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from bareboat.fsutil import atomic_write

MEMO_FILE = "tool-versions.json"
# apt and dpkg rewrite this on every package change: an upgrade of the tool's package (or of
# what it calls, e.g. the gcc behind musl-gcc) changes it.
DPKG_STATUS = Path("/var/lib/dpkg/status")


def identity(paths: Sequence[Path]) -> list[list[object]]:
    """What must stay the same for a remembered answer to hold (a missing file counts too)."""
    out: list[list[object]] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append([str(p), None])
            continue
        out.append([str(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns])
    return out


def remembered(
    memo_dir: Path, name: str, depends_on: Sequence[Path], ask: Callable[[], str]
) -> str:
    """`ask()`'s answer, from `memo_dir`'s memo while `depends_on` keep their identity."""
    memo = memo_dir / MEMO_FILE
    ident = identity(depends_on)
    try:
        entries = json.loads(memo.read_bytes())
        if not isinstance(entries, dict):
            entries = {}
    except (OSError, ValueError):
        entries = {}
    entry = entries.get(name)
    if isinstance(entry, dict) and entry.get("identity") == ident:
        answer = entry.get("answer")
        if isinstance(answer, str) and answer:
            return answer
    answer = ask()
    if answer:
        entries[name] = {"identity": ident, "answer": answer}
        try:
            memo_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(memo, json.dumps(entries, sort_keys=True).encode(), durable=False)
        except OSError:
            pass  # a cache: the next start asks again
    return answer
