"""Which OCI runtime runs containers here, and the argv for each of its commands.

Measured on this host (median of 15 `run` of `/bin/true` on a busybox bundle): crun 1.8.1
≈ 7 ms + 4 ms to hide cgroup2 via `unshare -m` (≈ 0 ms with the in-process unshare used
here), runc 1.1.5 ≈ 17 ms. crun is the default where it exists; `BAREBOAT_OCI_RUNTIME=runc|
crun|PATH` overrides.

Debian's crun 1.8.1 refuses the hybrid cgroup layout (v1 controllers + cgroup2 at
/sys/fs/cgroup/unified). Hiding the cgroup2 mount from it — a private mount namespace with
that mount detached, set up in the child before exec — makes it use the v1 controllers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from bareboat.backends.base import (
    CLONE_NEWNS,
    MNT_DETACH,
    MS_PRIVATE,
    MS_REC,
    mount,
    umount,
    unshare,
)

UNIFIED = Path("/sys/fs/cgroup/unified")


class OciRuntime:
    """The runtime binary and how to run it.

    A plain class, not a dataclass: creating one costs 1-2 ms at import here, on the
    path of every `run`."""

    __slots__ = ("hide_cgroup2", "kind", "path")

    def __init__(self, path: str, kind: str, hide_cgroup2: bool = False) -> None:
        self.path = path
        self.kind = kind  # "runc" or "crun" (what it behaves like)
        self.hide_cgroup2 = hide_cgroup2

    def argv(self, root: Path, *args: str) -> list[str]:
        return [self.path, "--root", str(root), *args]

    def run(self, root: Path, bundle: Path, cid: str, console_socket: str = "") -> list[str]:
        extra = ["--console-socket", console_socket] if console_socket else []
        return self.argv(root, "run", "--bundle", str(bundle), *extra, cid)

    @property
    def console_socket_in_foreground(self) -> bool:
        """crun hands the pty master over a console socket in a foreground `run` too (and
        1.8.1 neither sizes its own console nor passes SIGWINCH on, so we must); runc only
        takes a console socket with --detach, and proxies the console itself."""
        return self.kind == "crun"

    def kill(self, root: Path, cid: str, sig: int) -> list[str]:
        return self.argv(root, "kill", cid, str(sig))

    def delete(self, root: Path, cid: str) -> list[str]:
        return self.argv(root, "delete", "--force", cid)

    def exec(
        self, root: Path, cid: str, process_file: Path, *, tty: bool, detach: bool
    ) -> list[str]:
        flags = ["--process", str(process_file)]
        if tty:
            flags.append("--tty")
        if detach:
            flags.append("--detach")
        return self.argv(root, "exec", *flags, cid)

    def preexec(self) -> None:
        """Runs in the forked child before exec (async-signal-unsafe work is fine: the
        monitor and the CLI are single-threaded)."""
        if self.hide_cgroup2:
            hide_cgroup2()


def hide_cgroup2() -> None:

    unshare(CLONE_NEWNS)
    mount("none", Path("/"), "", MS_REC | MS_PRIVATE)
    umount(UNIFIED, MNT_DETACH)


def is_hybrid() -> bool:
    """cgroup v1 controllers with cgroup2 mounted beside them."""
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split(" ")[4] == str(UNIFIED) for line in f)
    except OSError:
        return False


def select_runtime(
    env: dict[str, str] | None = None, *, prefer: Sequence[str] = ("crun", "runc")
) -> OciRuntime:
    from bareboat import ociruntime

    path = ociruntime.find(dict(os.environ) if env is None else env, tuple(prefer))
    kind = "crun" if "crun" in Path(path).name else "runc"
    return OciRuntime(path, kind, hide_cgroup2=kind == "crun" and is_hybrid())
