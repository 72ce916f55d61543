"""`bareboat` commands: containers (run, create, start, ps, logs, exec, stop, kill, rm,
inspect, wait), with docker's conventions. Everything goes through the engine; heavy
modules are imported inside the handlers so that start-up stays cheap."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from .common import roots

TYPE_CHECKING = False  # typing costs import time on every `run`; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any

    from bareboat.control import ControlClient
    from bareboat.engine.engine import Engine
    from bareboat.spec.options import RunOptions


def register(sub: argparse._SubParsersAction[Any], only: str | None = None) -> None:
    """Add this group's commands, or only the command `only`, to the `bareboat` parser."""
    for name, add in _COMMANDS.items():
        if only is None or name == only:
            add(sub)


def _add_run(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("run", help="create and start a container")
    _run_flags(p)
    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    _image_and_command(p)
    p.set_defaults(func=cmd_run)


def _add_create(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("create", help="create a container without starting it")
    _run_flags(p)
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    _image_and_command(p)
    p.set_defaults(func=cmd_create)


def _add_start(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("start", help="start created or exited containers")
    p.add_argument("-a", "--attach", action="store_true", help="attach stdout/stderr")
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=cmd_start)


def _add_ps(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("ps", help="list containers")
    p.add_argument("-a", "--all", action="store_true", help="show exited ones too")
    p.add_argument("-q", "--quiet", action="store_true", help="ids only")
    p.add_argument("--no-trunc", action="store_true", help="full ids")
    p.set_defaults(func=cmd_ps)


def _add_logs(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("logs", help="show a container's output")
    p.add_argument("-f", "--follow", action="store_true", help="follow new output")
    p.add_argument("-t", "--timestamps", action="store_true", help="prefix timestamps")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(func=cmd_logs)


def _add_exec(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("exec", help="run a command in a running container")
    p.add_argument("-i", "--interactive", action="store_true")
    p.add_argument("-t", "--tty", action="store_true")
    p.add_argument("-d", "--detach", action="store_true")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")
    p.set_defaults(func=cmd_exec)


def _add_stop(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("stop", help="stop containers (stop signal, then SIGKILL)")
    p.add_argument("-t", "--time", type=float, default=10, help="seconds before SIGKILL")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=cmd_stop)


def _add_kill(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("kill", help="send a signal to containers")
    p.add_argument("-s", "--signal", default="SIGKILL")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=cmd_kill)


def _add_rm(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("rm", help="remove containers")
    p.add_argument("-f", "--force", action="store_true", help="kill running ones first")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=cmd_rm)


def _add_inspect(sub: argparse._SubParsersAction[Any]) -> None:
    # The images group may have registered `inspect` already (it is the images' fallback):
    # take the command over, so that containers are looked up first.
    p = sub.choices.get("inspect") or sub.add_parser(
        "inspect", help="show containers' (or images') records as JSON"
    )
    if not any(a.dest == "refs" for a in p._actions):
        p.add_argument("refs", nargs="+", metavar="CONTAINER|IMAGE")
    p.set_defaults(func=cmd_inspect)


def _add_wait(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("wait", help="wait for containers to exit; print their exit codes")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=cmd_wait)


_COMMANDS = {
    "run": _add_run,
    "create": _add_create,
    "start": _add_start,
    "ps": _add_ps,
    "logs": _add_logs,
    "exec": _add_exec,
    "stop": _add_stop,
    "kill": _add_kill,
    "rm": _add_rm,
    "inspect": _add_inspect,
    "wait": _add_wait,
}


def _run_flags(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a(
        "--isolation",
        default="auto",
        choices=["auto", "container", "process", "microvm", "wasm"],
        help="auto (default): wasm for Wasm images, else container",
    )
    a("--name")
    a("-e", "--env", action="append", default=[], help="K=V (or K: take it from here)")
    a("--env-file", action="append", default=[], help="file of K=V lines")
    a("-w", "--workdir")
    a("-u", "--user", help="uid[:gid] or name[:group]")
    a("-v", "--volume", action="append", default=[], help="SRC:DST[:ro]")
    a("--tmpfs", action="append", default=[], help="DST[:opts]")
    a("--read-only", action="store_true")
    a("-m", "--memory")
    a("--cpus")
    a("--pids-limit")
    a("--network", "--net", default="none")
    a("-p", "--publish", action="append", default=[])
    a("--hostname")
    a("--entrypoint")
    a("-l", "--label", action="append", default=[])
    a("--ulimit", action="append", default=[])
    a(
        "--log-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="max-size=SIZE (20m), max-file=N (5): the log rotates, at most their product",
    )
    a("--timeout", type=float, help="wasm: end the module after SECONDS (exit 124)")
    a("--fuel", type=int, help="wasm: CPU budget in wasmtime fuel units (exit 124 when spent)")
    a("--template", dest="template", action="store_const", const="create",
      help="microvm: start a clone of the image's template, made on first use")  # fmt: skip
    a("--no-template", dest="template", action="store_const", const="off",
      help="microvm: always boot cold, even when a template exists")  # fmt: skip
    a("-i", "--interactive", action="store_true")
    a("-t", "--tty", action="store_true")


def _image_and_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    # Everything after the image belongs to the command (`sh -c ...` keeps its -c).
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")


def _env_file(path: str) -> list[str]:
    from bareboat.errors import UsageError

    try:
        lines = open(path, encoding="utf-8").read().splitlines()  # noqa: SIM115
    except OSError as err:
        raise UsageError(f"cannot read env file {path}: {err.strerror}") from None
    return [ln for ln in (x.strip() for x in lines) if ln and not ln.startswith("#")]


def _wasm_limits(args: argparse.Namespace) -> dict[str, str]:
    """--timeout/--fuel as the annotations the wasm backend reads (bareboat.backends.wasm)."""
    from bareboat.errors import UsageError

    out = {}
    timeout, fuel = getattr(args, "timeout", None), getattr(args, "fuel", None)
    if timeout is not None:
        if not 0 < timeout < 1e9:
            raise UsageError(f"invalid --timeout {timeout:g}: must be a positive number of seconds")
        out["io.bareboat.wasm.timeout"] = f"{timeout:g}"
    if fuel is not None:
        if fuel <= 0:
            raise UsageError(f"invalid --fuel {fuel}: must be a positive integer")
        out["io.bareboat.wasm.fuel"] = str(fuel)
    return out


def options_from_args(args: argparse.Namespace) -> RunOptions:
    """The parsed flags as `RunOptions` (plain data, tested without running anything)."""
    import shlex

    from bareboat.spec import parse
    from bareboat.spec.options import Isolation, LogOptions, RunOptions

    env = [e for f in args.env_file for e in _env_file(f)] + list(args.env)
    env_values = tuple(v for v in (parse.parse_env(e) for e in env) if v is not None)
    labels = dict(parse.parse_label(x) for x in args.label)
    labels.update(_wasm_limits(args))
    if getattr(args, "template", None):  # read by the microvm backend (template.ANN_TEMPLATE)
        labels["io.bareboat.vm.template"] = args.template
    entrypoint = None
    if args.entrypoint is not None:
        entrypoint = tuple(shlex.split(args.entrypoint)) if args.entrypoint else ()
    return RunOptions(
        isolation=Isolation(args.isolation),
        entrypoint=entrypoint,
        command=tuple(args.command) if args.command else None,
        env=env_values,
        workdir=parse.parse_workdir(args.workdir) if args.workdir else None,
        user=args.user or None,
        hostname=args.hostname,
        read_only=args.read_only,
        mounts=tuple(
            [parse.parse_volume(v) for v in args.volume]
            + [parse.parse_tmpfs(t) for t in args.tmpfs]
        ),
        memory=parse.parse_memory(args.memory) if args.memory else None,
        cpus=parse.parse_cpus(args.cpus) if args.cpus else None,
        pids_limit=parse.parse_pids_limit(args.pids_limit) if args.pids_limit else None,
        network=parse.parse_network(args.network),
        publish=tuple(parse.parse_publish(x) for x in args.publish),
        tty=args.tty,
        interactive=args.interactive,
        labels=labels,
        rlimits=tuple(parse.parse_ulimit(x) for x in args.ulimit),
        name=args.name,
        log=LogOptions.parse(args.log_opt),
    )


def _engine(args: argparse.Namespace) -> Engine:
    from bareboat.engine.engine import Engine

    return Engine(roots(args))


# --- run / create / start -----------------------------------------------------------------


def cmd_create(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    rec = _engine(args).create(args.image, opts, auto_remove=args.rm)
    print(rec.id)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bareboat.errors import BareboatError

    opts = options_from_args(args)
    if opts.tty and not os.isatty(0):
        from bareboat.errors import UsageError

        raise UsageError("the input device is not a TTY (drop -t)")
    engine = _engine(args)
    rec = engine.create(args.image, opts, auto_remove=args.rm)
    if args.detach:
        try:
            engine.start(rec.id)
        except BaseException:
            if args.rm or not isinstance(sys.exc_info()[1], BareboatError):
                _cleanup(engine, rec.id)
            raise
        print(rec.id)
        return 0
    code = _run_attached(engine, rec.id, interactive=opts.interactive, tty=opts.tty)
    # Done: the monitor cleaned up before it sent the code. Skip the interpreter's teardown
    # (a few ms of freeing modules) on the hot path of every foreground run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _cleanup(engine: Engine, cid: str) -> None:
    from bareboat.errors import ContainerNotFound

    with suppress(ContainerNotFound):
        engine.remove(cid, force=True)


def _run_attached(engine: Engine, cid: str, *, interactive: bool, tty: bool) -> int:
    """Start the container with this process attached; its exit code."""
    from bareboat.errors import BareboatError
    from bareboat.proc import wait_exit

    try:
        engine.start(cid, wait_attach=True)
        # (not the record's: with wait_attach the workload, and so the record, waits for us)
        monitor = engine.monitor(cid)
        client = engine.attach(cid)
    except BareboatError:
        raise  # the monitor recorded (or for --rm removed) the container and cleaned up
    except BaseException:
        # Ctrl-C or a bug between create and attach: leave nothing half-made.
        _cleanup(engine, cid)
        raise
    try:
        return _attached(client, interactive=interactive, tty=tty)
    finally:
        client.close()
        # The monitor sends the code once it has cleaned up, then exits: with --rm nothing
        # of the container may be left when `run` returns, the monitor included.
        wait_exit(*monitor, 10)


def _attached(client: ControlClient, *, interactive: bool, tty: bool) -> int:
    import signal

    from bareboat.proc import FORWARDED_SIGNALS

    rows = cols = 0
    if tty:
        size = os.get_terminal_size(0)
        rows, cols = size.lines, size.columns
    client.attach(stdin=interactive, rows=rows, cols=cols)

    def forward(sig: int, _frame: object) -> None:
        client.forward_signal(sig)

    def winch(_sig: int, _frame: object) -> None:
        size = os.get_terminal_size(0)
        client.resize(size.lines, size.columns)

    old = {}
    for s in FORWARDED_SIGNALS:
        old[s] = signal.signal(s, forward)
    if tty:
        old[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, winch)
    try:
        with _raw_terminal(tty):
            return client.pump(stdin_fd=0 if interactive else None)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextmanager
def _raw_terminal(enabled: bool) -> Iterator[None]:
    if not enabled or not os.isatty(0):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(0)
    tty.setraw(0)
    try:
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)


def cmd_start(args: argparse.Namespace) -> int:
    engine = _engine(args)
    if args.attach or args.interactive:
        if len(args.containers) != 1:
            from bareboat.errors import UsageError

            raise UsageError("you cannot attach to more than one container")
        rec = engine.get(args.containers[0])
        return _run_attached(
            engine, rec.id, interactive=args.interactive, tty=rec.options.tty and os.isatty(0)
        )
    for ref in args.containers:
        engine.start(ref)
        print(ref)
    return 0


# --- the rest -------------------------------------------------------------------------------


def _ago(ts: float | None) -> str:
    import time

    if ts is None:
        return ""
    s = max(0, int(time.time() - ts))
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= n:
            k = s // n
            return f"{k} {unit}{'s' if k > 1 else ''} ago"
    return f"{s} seconds ago"


def cmd_ps(args: argparse.Namespace) -> int:
    import shlex

    recs = _engine(args).containers(all=args.all)
    if args.quiet:
        for r in recs:
            print(r.id if args.no_trunc else r.short_id)
        return 0
    rows = [("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "ISOLATION", "NAMES")]
    for r in recs:
        cmd = shlex.join([*(r.options.entrypoint or ()), *(r.options.command or ())])
        if r.state.value == "exited":
            status = f"Exited ({r.exit_code}) {_ago(r.finished)}"
        elif r.state.value == "running":
            status = f"Up since {_ago(r.started)}"
        else:
            status = r.state.value.capitalize()
        rows.append(
            (
                r.id if args.no_trunc else r.short_id,
                r.image,
                f'"{cmd[:20]}"',
                _ago(r.created),
                status,
                r.isolation.value,
                r.name,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    import datetime

    for ts, stream, data in _engine(args).logs(args.container, follow=args.follow):
        out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        if args.timestamps:
            stamp = datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()
            out.write(stamp.encode() + b" ")
        out.write(data)
        out.flush()
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from bareboat.errors import UsageError
    from bareboat.spec import parse

    if not args.command:
        raise UsageError("exec needs a command")
    env = tuple(v for v in (parse.parse_env(e) for e in args.env) if v is not None)
    if args.tty and not os.isatty(0):
        raise UsageError("the input device is not a TTY (drop -t)")
    return _engine(args).exec(
        args.container,
        list(args.command),
        env=env,
        workdir=args.workdir,
        user=args.user,
        tty=args.tty,
        detach=args.detach,
    )


def cmd_stop(args: argparse.Namespace) -> int:
    engine = _engine(args)
    for ref in args.containers:
        engine.stop(ref, args.time)
        print(ref)
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    from bareboat.proc import parse_signal

    engine = _engine(args)
    sig = parse_signal(args.signal)
    for ref in args.containers:
        engine.kill(ref, sig)
        print(ref)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    engine = _engine(args)
    code = 0
    for ref in args.containers:
        from bareboat.errors import BareboatError

        try:
            engine.remove(ref, force=args.force)
            print(ref)
        except BareboatError as err:
            print(f"bareboat: error: {err}", file=sys.stderr)
            code = err.exit_code
    return code


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from bareboat.errors import ContainerNotFound

    engine = _engine(args)
    out: list[Any] = []
    for ref in args.refs:
        try:
            rec = engine.get(ref)
        except ContainerNotFound:
            out.append(_inspect_image(args, ref))
            continue
        data = rec.to_json()
        paths = engine.paths(rec.id)
        data["paths"] = {
            "log": str(paths.log),
            "bundle": str(paths.bundle),
            "rootfs": str(paths.rootfs),
            "socket": str(paths.socket),
        }
        out.append(data)
    print(json.dumps(out, indent=2))
    return 0


def _inspect_image(args: argparse.Namespace, ref: str) -> Any:
    """Not a container: ask the image store (its engineer's inspect function)."""
    from bareboat.cli import images as image_cli
    from bareboat.errors import ContainerNotFound, ImageNotFound

    fn = getattr(image_cli, "inspect_image", None)
    if fn is None:
        raise ContainerNotFound(f"no such container: {ref}")
    try:
        return fn(roots(args), ref)
    except ImageNotFound:
        raise ContainerNotFound(f"no such container or image: {ref}") from None


def cmd_wait(args: argparse.Namespace) -> int:
    engine = _engine(args)
    code = 0
    for ref in args.containers:
        code = engine.wait(ref)
        print(code)
    return code if len(args.containers) == 1 else 0
