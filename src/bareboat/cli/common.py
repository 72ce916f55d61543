"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
from pathlib import Path

from bareboat.paths import Roots


def roots(args: argparse.Namespace) -> Roots:
    """The roots for this invocation: --root/--state flags, then the environment; made (or
    tightened to) 0700 before any command looks inside."""
    root = getattr(args, "root", None)
    state = getattr(args, "state", None)
    r = Roots.from_env(root=Path(root) if root else None, state=Path(state) if state else None)
    return r.make_private()
