"""The runc command line, parsed into plain data.

Hand-rolled instead of argparse: the grammar is a small table, clients put flags before and
after the container id, and this module is on the hot path of every call podman or
containerd makes (argparse alone costs several ms of import and set-up per call).

Global flags come before the command; a command's flags may come before or after its
positional arguments, except for `exec` and `run`-style trailers where everything after the
first positional argument past the id is the command to run (runc behaves the same way).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from bareboat.errors import UsageError


def _usage(message: str) -> UsageError:
    # bareboat.errors (some 35 classes to build, ~1 ms here) only for a command line that is
    # wrong: the calls that hand a container over to runc never load it.
    from bareboat.errors import UsageError

    return UsageError(message)


# Global flags: name -> takes a value.
GLOBAL_FLAGS: dict[str, bool] = {
    "--root": True,
    "--log": True,
    "--log-format": True,
    "--criu": True,
    "--rootless": True,
    "--debug": False,
    "--systemd-cgroup": False,
    "--version": False,
    "-v": False,
    "--help": False,
    "-h": False,
}

# Per-command flags: canonical long name -> (aliases, takes a value, may repeat).
_F = tuple[tuple[str, ...], bool, bool]

_CREATE: dict[str, _F] = {
    "--bundle": (("-b",), True, False),
    "--pid-file": ((), True, False),
    "--console-socket": ((), True, False),
    "--no-pivot": ((), False, False),
    "--no-new-keyring": ((), False, False),
    "--preserve-fds": ((), True, False),
}

COMMANDS: dict[str, dict[str, _F]] = {
    "create": _CREATE,
    "run": {
        **_CREATE,
        "--detach": (("-d",), False, False),
        "--keep": ((), False, False),
        "--no-subreaper": ((), False, False),
    },
    "start": {},
    "state": {},
    "kill": {"--all": (("-a",), False, False)},
    "delete": {"--force": (("-f",), False, False)},
    "exec": {
        "--process": (("-p",), True, False),
        "--detach": (("-d",), False, False),
        "--pid-file": ((), True, False),
        "--tty": (("-t",), False, False),
        "--console-socket": ((), True, False),
        "--cwd": ((), True, False),
        "--env": (("-e",), True, True),
        "--user": (("-u",), True, False),
        "--additional-gids": (("-g",), True, True),
        "--cap": (("-c",), True, True),
        "--no-new-privs": ((), False, False),
        "--apparmor": ((), True, False),
        "--process-label": ((), True, False),
        "--preserve-fds": ((), True, False),
        "--ignore-paused": ((), False, False),
        "--cgroup": ((), True, True),
    },
    "pause": {},
    "resume": {},
    "ps": {"--format": (("-f",), True, False)},
    "update": {
        "--resources": (("-r",), True, False),
        **{
            f"--{name}": ((), True, False)
            for name in (
                "blkio-weight",
                "cpu-period",
                "cpu-quota",
                "cpu-share",
                "cpu-rt-period",
                "cpu-rt-runtime",
                "cpuset-cpus",
                "cpuset-mems",
                "kernel-memory",
                "kernel-memory-tcp",
                "memory",
                "memory-reservation",
                "memory-swap",
                "pids-limit",
                "l3-cache-schema",
                "mem-bw-schema",
            )
        },
    },
    "list": {"--format": (("-f",), True, False), "--quiet": (("-q",), False, False)},
    "features": {},
    "spec": {"--bundle": (("-b",), True, False), "--rootless": ((), False, False)},
}

# How many positionals each command takes: (required, also optional, rest is a trailer).
POSITIONALS: dict[str, tuple[int, int, bool]] = {
    "create": (1, 0, False),
    "run": (1, 0, False),
    "start": (1, 0, False),
    "state": (1, 0, False),
    "kill": (1, 1, False),
    "delete": (1, 0, False),
    "exec": (1, 0, True),
    "pause": (1, 0, False),
    "resume": (1, 0, False),
    "ps": (1, 0, True),
    "update": (1, 0, False),
    "list": (0, 0, False),
    "features": (0, 0, False),
    "spec": (0, 0, False),
}


# Plain classes rather than dataclasses: `dataclasses` pulls in `inspect` (~7 ms of import),
# which this module, started 3-5 times per container, cannot afford.
class Globals:
    def __init__(self) -> None:
        self.root = ""
        self.log = ""
        self.log_format = "text"
        self.debug = False
        self.systemd_cgroup = False
        self.version = False
        self.help = False
        # The global flags as given (normalised to --x=y), to pass on to runc.
        self.passthrough: list[str] = []


class Invocation:
    def __init__(self, globals: Globals) -> None:
        self.globals = globals
        self.command = ""
        # Canonical long flag -> value ("" for switches); repeated flags also in `multi`.
        self.flags: dict[str, str] = {}
        self.multi: dict[str, list[str]] = {}
        self.positionals: list[str] = []
        self.trailer: list[str] = []
        # The command's own tokens as given, for handing on to runc unchanged.
        self.tokens: list[str] = []

    @property
    def id(self) -> str:
        return self.positionals[0] if self.positionals else ""

    def flag(self, name: str) -> str:
        return self.flags.get(name, "")

    def has(self, name: str) -> bool:
        return name in self.flags


def _split(token: str) -> tuple[str, str | None]:
    if token.startswith("--") and "=" in token:
        name, value = token.split("=", 1)
        return name, value
    return token, None


def _parse_globals(argv: list[str], g: Globals) -> int:
    i = 0
    while i < len(argv):
        name, value = _split(argv[i])
        if not name.startswith("-"):
            break
        # urfave/cli accepts single-dash long names too (`-root`); normalise them.
        if name.startswith("-") and not name.startswith("--") and len(name) > 2:
            name = "-" + name
        if name not in GLOBAL_FLAGS:
            raise _usage(f"unknown global flag {name}")
        if GLOBAL_FLAGS[name]:
            if value is None:
                if i + 1 >= len(argv):
                    raise _usage(f"flag {name} needs a value")
                i += 1
                value = argv[i]
            _set_global(g, name, value)
            g.passthrough.append(f"{name}={value}")
        else:
            _set_global(g, name, value if value is not None else "true")
            g.passthrough.append(name)
        i += 1
    return i


def _set_global(g: Globals, name: str, value: str) -> None:
    on = value.lower() not in ("false", "0")
    if name == "--root":
        g.root = value
    elif name == "--log":
        g.log = value
    elif name == "--log-format":
        if value not in ("json", "text"):
            raise _usage(f"--log-format must be json or text, not {value!r}")
        g.log_format = value
    elif name == "--debug":
        g.debug = on
    elif name == "--systemd-cgroup":
        g.systemd_cgroup = on
    elif name in ("--version", "-v"):
        g.version = on
    elif name in ("--help", "-h"):
        g.help = on


def parse(argv: list[str]) -> Invocation:
    """Parse a runc-style command line (without the program name)."""
    g = Globals()
    i = _parse_globals(argv, g)
    inv = Invocation(globals=g)
    if i >= len(argv):
        if g.version or g.help:
            return inv
        raise _usage("no command given")
    inv.command = argv[i]
    if inv.command not in COMMANDS:
        raise _usage(f"unknown command {inv.command!r}")
    inv.tokens = argv[i + 1 :]
    _parse_command(inv, inv.tokens)
    required, optional, trailer = POSITIONALS[inv.command]
    if len(inv.positionals) < required:
        what = "container id" if required == 1 else "argument"
        raise _usage(f"{inv.command}: missing {what}")
    if len(inv.positionals) > required + optional and not trailer:
        raise _usage(f"{inv.command}: unexpected argument {inv.positionals[-1]!r}")
    return inv


def _lookup(table: dict[str, _F], name: str) -> tuple[str, _F] | None:
    if name in table:
        return name, table[name]
    if name.startswith("-") and not name.startswith("--") and len(name) > 2:
        long = "-" + name
        if long in table:
            return long, table[long]
    for long, spec in table.items():
        if name in spec[0]:
            return long, spec
    return None


def _parse_command(inv: Invocation, tokens: list[str]) -> None:
    table = COMMANDS[inv.command]
    required, optional, trailer = POSITIONALS[inv.command]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if trailer and len(inv.positionals) >= required + optional:
            inv.trailer = tokens[i:]
            return
        if tok == "--":
            rest = tokens[i + 1 :]
            need = max(0, required + optional - len(inv.positionals))
            inv.positionals.extend(rest[:need])
            inv.trailer = rest[need:]
            if inv.trailer and not trailer:
                raise _usage(f"{inv.command}: unexpected argument {inv.trailer[0]!r}")
            return
        if tok.startswith("-") and tok != "-":
            name, value = _split(tok)
            found = _lookup(table, name)
            if found is None:
                raise _usage(f"{inv.command}: unknown flag {name}")
            long, (_aliases, takes_value, repeats) = found
            if takes_value:
                if value is None:
                    if i + 1 >= len(tokens):
                        raise _usage(f"{inv.command}: flag {name} needs a value")
                    i += 1
                    value = tokens[i]
            else:
                value = "" if value is None or value.lower() not in ("false", "0") else None
                if value is None:
                    i += 1
                    continue
            if repeats:
                inv.multi.setdefault(long, []).append(value)
            inv.flags[long] = value
        else:
            inv.positionals.append(tok)
        i += 1
