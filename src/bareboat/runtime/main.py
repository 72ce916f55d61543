"""Entry point of `bareboat-runtime`, the runc-compatible OCI runtime CLI.

podman (conmon), containerd's runc shim and docker call this 3–5 times per container, so the
hot path imports only os, sys and bareboat's small modules (no json, re or enum: container
isolation's calls import nothing else); anything heavier is imported inside the branch that
needs it. Parse → dispatch on the container's isolation → act.
"""

from __future__ import annotations

import os
import sys

from . import args
from .records import Record, RuntimeRoot, check_id

# Typing names only for mypy: `typing` imports `re` and `collections.abc` (~10 ms here), and
# with postponed annotations nothing needs them at run time. mypy treats any TYPE_CHECKING
# name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


VERSION = "0.1.0"
SPEC_VERSION = "1.0.2-dev"

# Isolations bareboat runs itself under the OCI contract, each a module of this package with
# `create(inv, root, bundle, config)` and `exec_in(inv, root, rec)` (its other calls are
# runtime/commands.py's, over its sandbox's operations); `container` goes to runc.
OWN = {"process": "process", "microvm": "vm", "wasm": "wasm"}
SUPPORTED = ("container", *OWN)


# Set by the calls that leave all their work to a runc child and wait for it (container
# isolation's create, run and delete): they keep nothing open, so `entry` ends the process
# without the interpreter's finalization (3-4 ms here, on a call that is ~20 ms of Python),
# as the calls that exec runc do.
_left_to_runc = False


def entry() -> int:
    """The installed `bareboat-runtime` (and its per-isolation names): `main`, then out."""
    rc = main()
    if _left_to_runc:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except OSError:
            return rc  # the interpreter's own exit reports it, as it would have
        os._exit(rc)
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    argv0 = sys.argv[0] if sys.argv else "bareboat-runtime"
    tokens = list(sys.argv[1:] if argv is None else argv)
    log, log_format = "", "text"
    try:
        inv = args.parse(tokens)
        log, log_format = inv.globals.log, inv.globals.log_format
        return dispatch(inv, argv0)
    except Exception as e:
        message = _reported(e)
        if message is None:
            raise
        from .report import error

        error(message, log=log, log_format=log_format)
        return 1


def _reported(e: Exception) -> str | None:
    """The one line `main` reports for `e` (bareboat's errors and OSErrors), else None.
    bareboat.errors is loaded here and where an error is raised, not at start-up: the calls
    that hand a container over to runc never load it (runtime/args.py `_usage`)."""
    from bareboat.errors import BareboatError

    if isinstance(e, BareboatError):
        return str(e)
    if isinstance(e, OSError):
        return f"{e.strerror or e}: {e.filename or ''}".rstrip(": ")
    return None


def dispatch(inv: args.Invocation, argv0: str) -> int:
    g = inv.globals
    if g.version and not inv.command:
        print(f"bareboat-runtime version {VERSION}\nspec: {SPEC_VERSION}")
        return 0
    if g.help and not inv.command:
        print(
            "usage: bareboat-runtime [global flags] COMMAND [flags] [ID] ...\ncommands: "
            + " ".join(args.COMMANDS)
        )
        return 0
    root = RuntimeRoot.of(g.root)
    cmd = inv.command
    if cmd in ("create", "run"):
        return create(inv, root, argv0)
    if cmd == "list":
        from .listing import list_all

        return list_all(inv, root)
    if cmd == "features":
        from .features import features

        return features(inv, root)
    if cmd == "spec":
        return _delegate(inv, root)
    cid = check_id(inv.id)
    rec = root.load(cid)
    # No record: not ours (or already deleted); runc gives the answer runc would give.
    iso = rec.isolation if rec else "container"
    if iso == "container":
        if cmd == "delete":
            return delete_container(inv, root)
        return _delegate(inv, root)
    if iso in OWN:
        assert rec is not None
        from .commands import run

        # Only `exec` is the isolation's own; `state` and `start` need none of its imports.
        return run(inv, root, rec, _module(iso) if cmd == "exec" else None)
    from bareboat.errors import BackendUnavailable

    raise BackendUnavailable(f"container {cid}: isolation {iso} cannot be driven here")


def _module(isolation: str) -> Any:
    import importlib

    return importlib.import_module(f"{__package__}.{OWN[isolation]}")


def read_config(bundle: str) -> dict[str, Any]:
    from .jsonload import loads

    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            config = loads(f.read())
    except FileNotFoundError:
        from bareboat.errors import UsageError

        raise UsageError(f"no config.json in bundle {bundle}") from None
    except ValueError as e:
        from bareboat.errors import UsageError

        raise UsageError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(config, dict):
        from bareboat.errors import UsageError

        raise UsageError(f"{path}: not a JSON object")
    return config


def create(inv: args.Invocation, root: RuntimeRoot, argv0: str) -> int:
    cid = check_id(inv.id)
    bundle = os.path.abspath(inv.flag("--bundle") or ".")
    config = read_config(bundle)
    from . import isolation

    iso = isolation.resolve(config, argv0, os.environ)
    if iso not in SUPPORTED:
        from bareboat.errors import BackendUnavailable

        raise BackendUnavailable(
            f"isolation {iso} is not available under bareboat-runtime yet "
            f"(available: {', '.join(SUPPORTED)})"
        )
    root.claim(Record(cid, iso, bundle))
    try:
        if iso in OWN:
            rc = int(_module(iso).create(inv, root, bundle, config))
        else:
            rc = _create_container(inv, root)
    except BaseException:
        root.drop(cid)
        raise
    if rc == 0 and iso in OWN and inv.command == "run":
        from .foreground import run_created

        return run_created(inv, root, _module(iso))
    if rc != 0 or (inv.command == "run" and not inv.has("--detach") and not inv.has("--keep")):
        root.drop(cid)
    return rc


def _create_container(inv: args.Invocation, root: RuntimeRoot) -> int:
    from .delegate import find_runtime, runc_argv, spawn_runc

    global _left_to_runc
    argv = runc_argv(find_runtime(os.environ), inv, root)
    _left_to_runc = True
    return spawn_runc(argv, forward_signals=inv.command == "run")


def delete_container(inv: args.Invocation, root: RuntimeRoot) -> int:
    from .delegate import exec_runc, find_runtime, runc_argv, spawn_runc

    global _left_to_runc
    argv = runc_argv(find_runtime(os.environ), inv, root)
    if inv.has("--force"):
        # The record goes whatever runc answers (and a container without one is runc's
        # anyway): drop it first and hand the call over, as podman's every delete is.
        root.drop(inv.id)
        exec_runc(argv)
    _left_to_runc = True
    rc = spawn_runc(argv)
    if rc == 0:
        root.drop(inv.id)
    return rc


def _delegate(inv: args.Invocation, root: RuntimeRoot) -> int:
    from .delegate import exec_runc, find_runtime, runc_argv

    exec_runc(runc_argv(find_runtime(os.environ), inv, root))
    return 1  # not reached
