"""Find a container's command inside its rootfs before starting it.

Docker answers 127 for a command that does not exist and 126 for one that cannot be executed.
OCI runtimes report both as a generic failure mixed into the workload's stderr, so the engine
looks first: `$PATH` lookup and symlinks are resolved inside the rootfs, never on the host.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from bareboat.errors import CommandNotExecutable, CommandNotFound

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def resolve_in_root(root: Path, path: str, *, limit: int = 40) -> Path | None:
    """`path` (absolute, in the container) as a host path under `root`, following symlinks
    as the container would see them; None if it does not exist."""
    parts = list(PurePosixPath(path).parts[1:])
    current = PurePosixPath("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        host = root / str(candidate).lstrip("/")
        try:
            st = os.lstat(host)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > limit:
                return None
            target = PurePosixPath(os.readlink(host))
            parts = list(target.parts[1:] if target.is_absolute() else target.parts) + parts
            if target.is_absolute():
                current = PurePosixPath("/")
            continue
        current = candidate
    return root / str(current).lstrip("/")


def check_command(root: Path, args: list[str], env: list[str], cwd: str = "/") -> None:
    """Raise CommandNotFound (127) or CommandNotExecutable (126) as docker would."""
    if not args:
        raise CommandNotFound("no command specified: the image has none and none was given")
    cmd = args[0]
    if "/" in cmd:
        found = resolve_in_root(root, cmd if cmd.startswith("/") else f"{cwd}/{cmd}")
        if found is None:
            raise CommandNotFound(f"{cmd}: no such file or directory in the image")
    else:
        path = next((e[5:] for e in env if e.startswith("PATH=")), DEFAULT_PATH)
        found = None
        for d in path.split(":"):
            if not d.startswith("/"):
                continue
            hit = resolve_in_root(root, f"{d}/{cmd}")
            if hit is not None and hit.is_file():
                found = hit
                break
        if found is None:
            raise CommandNotFound(f"{cmd}: executable file not found in $PATH")
    st = os.stat(found)
    if stat.S_ISDIR(st.st_mode):
        raise CommandNotExecutable(f"{cmd}: is a directory")
    if not st.st_mode & 0o111:
        raise CommandNotExecutable(f"{cmd}: permission denied")
