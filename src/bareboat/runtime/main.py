"""Entry point of `bareboat-runtime` (the OCI runtime CLI; see the runtime issue)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    print("bareboat-runtime: not implemented yet", file=sys.stderr)
    return 1
