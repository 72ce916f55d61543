"""`container` isolation: the real runc (or crun) does the work with the client's own bundle,
pid file, console socket, stdio and inherited fds.

Plan: `runc_argv` turns an invocation into runc's argv (our globals with `--root` moved to
`<root>/runc`, then the command's tokens unchanged). Execute: `exec_runc` replaces this process
when nothing is left to do afterwards (the client then talks to runc directly: exit code,
stdio, signals), `spawn_runc` waits when a record must follow the result.

`BAREBOAT_OCI_RUNTIME` names the runtime, as for `bareboat run` (ociruntime.py; default
runc: Debian's crun 1.8.1 refuses this host's hybrid cgroup layout unless cgroup2 is hidden,
which bareboat's container backend does for its own `run`, and runc 1.1.5 works as is).
"""

from __future__ import annotations

import os

# Typing names only for mypy: `typing` imports `re` and `collections.abc` (~10 ms here), and
# with postponed annotations nothing needs them at run time. mypy treats any TYPE_CHECKING
# name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import NoReturn

    from .args import Invocation
    from .records import RuntimeRoot


def find_runtime(env: Mapping[str, str]) -> str:
    from bareboat import ociruntime

    return ociruntime.find(dict(env), prefer=("runc",))


def runc_argv(runtime: str, inv: Invocation, root: RuntimeRoot) -> list[str]:
    g = [a for a in inv.globals.passthrough if not a.startswith("--root=")]
    return [runtime, f"--root={root.runc}", *g, inv.command, *inv.tokens]


def exec_runc(argv: list[str]) -> NoReturn:
    os.execv(argv[0], argv)


def spawn_runc(argv: list[str], *, forward_signals: bool = False) -> int:
    """Run runc as a child with our stdio and inherited fds; return its exit code."""
    from bareboat.proc import FORWARDED_SIGNALS, pass_signals_on, wait_child

    if not forward_signals:
        return wait_child(os.posix_spawn(argv[0], argv, os.environ))
    # Only here: `signal` imports `enum` (and it functools and collections), which create and
    # delete, and the calls that exec runc, never need.
    import signal

    # A foreground `run` passes a resize on too: runc proxies the console itself. The signals
    # are held from before runc starts until they are passed on, so one sent once the
    # container runs reaches it instead of ending this process (runc starts with none held).
    forward = (*FORWARDED_SIGNALS, signal.SIGWINCH)
    signal.pthread_sigmask(signal.SIG_BLOCK, forward)
    try:
        pid = os.posix_spawn(argv[0], argv, os.environ, setsigmask=())
        pass_signals_on(pid, forward)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, forward)
    return wait_child(pid)
