"""Which OCI runtime binary runs namespace containers: one choice for `bareboat run
--isolation container` and for bareboat-runtime's `container` isolation (which hands the
client's bundle to it). Plain os: bareboat-runtime's hot path uses it.

`BAREBOAT_OCI_RUNTIME` names it (a name looked up on PATH, or a path); else the first of the
caller's preferences that is installed.
"""

from __future__ import annotations

import os

ENV = "BAREBOAT_OCI_RUNTIME"
# podman and containerd may hand us a minimal PATH; runc and crun live in /usr/sbin or
# /usr/bin on Debian.
FALLBACK_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin")


def find(env: dict[str, str] | os._Environ[str], prefer: tuple[str, ...]) -> str:
    """The path of the OCI runtime to use. Never this program itself (bareboat-runtime may be
    installed under runc's name)."""
    wanted = env.get(ENV, "")
    names = [wanted] if wanted else list(prefer)
    dirs = [d for d in (env.get("PATH") or "").split(":") if d] + list(FALLBACK_DIRS)
    me = os.path.realpath("/proc/self/exe")
    for name in names:
        candidates = [name] if "/" in name else [os.path.join(d, name) for d in dirs]
        for path in candidates:
            usable = os.access(path, os.X_OK) and not os.path.isdir(path)
            if usable and os.path.realpath(path) != me:
                return path
    from bareboat.errors import BackendUnavailable  # only here: see runtime/args.py _usage

    raise BackendUnavailable(
        f"no OCI runtime found (tried {', '.join(names)}): install crun or runc, or set {ENV}"
    )
