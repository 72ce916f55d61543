"""Find a container's command inside its rootfs before it starts, as runc and crun do at
`create`: docker answers 127 for a command that does not exist and 126 for one that cannot be
executed, and podman and the containerd shim read those from the runtime's words. OCI runtimes
report both as a generic failure mixed into the workload's stderr, so bareboat looks first.

The kernel resolves every candidate inside the rootfs (`openat2(RESOLVE_IN_ROOT)`, see
rootread.py): symlinks and `..` in an image can never lead to a host file. One check serves
the engine's monitor and bareboat-runtime's microvm `create`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bareboat.errors import CommandNotExecutable, CommandNotFound
from bareboat.spec.defaults import DEFAULT_PATH
from bareboat.spec.rootread import open_in_root


def _mode(rootfs: Path, path: str) -> int | None:
    """The mode of `path` inside `rootfs` (links followed inside it), None if missing."""
    try:
        fd = open_in_root(rootfs, path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.fstat(fd).st_mode
    finally:
        os.close(fd)


def check_command(rootfs: Path, args: list[str], env: list[str], cwd: str = "/") -> None:
    """Raise CommandNotFound (127) or CommandNotExecutable (126) as runc and docker would; the
    messages carry the words clients look for ("no such file or directory", "permission
    denied")."""
    if not args:
        raise CommandNotFound("no command specified: the image has none and none was given")
    cmd = str(args[0])
    if "/" in cmd:
        candidates = [cmd if cmd.startswith("/") else f"{cwd or '/'}/{cmd}"]
    else:
        path = next((e[5:] for e in env if e.startswith("PATH=")), DEFAULT_PATH)
        candidates = [f"{d}/{cmd}" for d in path.split(":") if d.startswith("/")]
    denied = ""
    for candidate in candidates:
        mode = _mode(rootfs, candidate)
        if mode is None:
            continue
        if stat.S_ISREG(mode) and mode & 0o111:
            return
        denied = "is a directory" if stat.S_ISDIR(mode) else "not executable"
        if "/" in cmd:
            break
    if denied:
        raise CommandNotExecutable(f"exec {cmd}: {denied}: permission denied")
    if "/" in cmd:
        raise CommandNotFound(f"exec {cmd}: no such file or directory")
    raise CommandNotFound(f"executable file `{cmd}` not found in $PATH: no such file or directory")
