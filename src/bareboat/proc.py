"""Processes as bareboat sees them: one named for good by its pid and kernel start time (a
reused pid has a later one), its exit status, the signals passed on to a workload. Plain
`os` at import (`signal` where a signal is named or handled): bareboat-runtime's calls use it
on their hot path, the engine for its monitors."""

from __future__ import annotations

import os

# The numbers from `_signal`, the C module under `signal` that the interpreter loads at
# start-up: `signal` builds enums of them, importing enum, functools and collections, which
# bareboat-runtime's `create` and `delete` (they wait on runc) need no more than these.
# (`_signal` has no type stubs; mypy reads the same names from `signal`.)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from signal import SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2
else:
    from _signal import SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2

# What a terminal or a supervisor sends a foreground run, a gate or a monitor, which pass
# them on to the workload instead of dying of them.
FORWARDED_SIGNALS: tuple[int, ...] = (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2)


def parse_signal(text: str) -> int:
    """A signal as users and clients name it: `9`, `KILL`, `sigterm`, `SIGUSR1`."""
    import signal

    name = text.strip().upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        from bareboat.errors import UsageError

        raise UsageError(f"unknown signal {text!r}") from None


def wait_status_to_code(status: int) -> int:
    """Shell convention: exit code, or 128+N for a process killed by signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def pass_signals_on(pid: int, signals: tuple[int, ...]) -> None:
    """From now on, `signals` sent to this process go to `pid` instead (a foreground run:
    the client signals us, the workload must get it)."""

    def pass_on(sig: int, _frame: object) -> None:
        try:  # noqa: SIM105 - contextlib is not imported on the runtime's hot path
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    if signals:
        import signal

        for sig in signals:
            signal.signal(sig, pass_on)


def wait_child(pid: int, *, forward: tuple[int, ...] = ()) -> int:
    """Wait for our child `pid` and return its exit code (shell convention), passing the
    signals in `forward` on to it meanwhile (see pass_signals_on). 1 if it is not ours to
    wait for."""
    pass_signals_on(pid, forward)
    try:
        _, status = os.waitpid(pid, 0)  # retried after each handler (PEP 475)
    except ChildProcessError:
        return 1
    return wait_status_to_code(status)


def start_time(pid: int) -> int | None:
    """The kernel's start time of `pid` (clock ticks since boot), None if it is gone or has
    finished (a zombie, or one being reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def alive(pid: int | None, start: int | None) -> bool:
    return pid is not None and start is not None and start_time(pid) == start


def wait_exit(pid: int | None, start: int | None, timeout: float) -> bool:
    """Until that process has exited (True), or `timeout` seconds passed (False). A pidfd,
    so the wait ends the moment it exits; works for a process that is not our child."""
    import select

    if not alive(pid, start):
        return True
    assert pid is not None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return True  # gone already
    try:
        if alive(pid, start):  # still that process after the open: the pidfd names it
            ready, _, _ = select.select([fd], [], [], timeout)
            return bool(ready)
        return True
    finally:
        os.close(fd)


def signal_each(pids: list[int], sig: int) -> None:
    """Send `sig` to each of `pids`; one gone already is fine."""
    for pid in pids:
        try:  # noqa: SIM105 - contextlib costs import time here
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
