"""The parts of the runc contract every isolation that bareboat runs itself shares.

Each such container has a *gate process*: the pid in `--pid-file`, a child of `create` that
the client's subreaper (conmon, the containerd shim) inherits and waits on. It sets up, then
blocks opening `exec.fifo` for writing; `start` opens the fifo for reading, which releases it,
and reads until the gate closes its end: `b"0"` means the workload started, anything else is
the error to report. The gate lives exactly as long as the workload and ends with its status
(for `process` isolation it *is* the workload after exec; for microvm and wasm it is a shim
that relays the workload's stdio and exit).

Under the runtime root, `bareboat/ID/` is the sandbox's directory (`bareboat.sandboxdir`):
`state.json` (the gate's pid and start time, creation time, annotations), `exec.fifo` while
created, and `paused` while paused. Its status is `bareboat.sandbox.status.Status`, worked out
from those files and reported in the OCI spec's words.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time

from bareboat.errors import BackendError, ContainerError, UsageError
from bareboat.proc import start_time
from bareboat.sandbox.status import Status, alive
from bareboat.sandboxdir import SandboxDir

from .records import Record, RuntimeRoot

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from bareboat.sandbox.supervisor import SupervisorPlan

    from .args import Invocation

OCI_VERSION = "1.0.2-dev"
HOOK_TIMEOUT = 30.0
START_TIMEOUT = 120.0  # a microVM under TCG on a loaded host may take this long to START


# --- config.json as plain data ---------------------------------------------------------------


def process_env(process: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in process.get("env") or [] if "=" in e)


def hooks_of(config: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    hooks = (config.get("hooks") or {}).get(kind) or []
    if not isinstance(hooks, list) or not all(isinstance(h, dict) and h.get("path") for h in hooks):
        raise UsageError(f"config.json: malformed {kind} hooks")
    return hooks


def load_config(rec: Record) -> dict[str, Any]:
    with open(os.path.join(rec.bundle, "config.json"), "rb") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def rootfs_of(bundle: str, config: dict[str, Any]) -> str:
    path = (config.get("root") or {}).get("path") or "rootfs"
    rootfs = os.path.join(bundle, path)
    if not os.path.isdir(rootfs):
        raise UsageError(f"rootfs {rootfs} is not a directory")
    return os.path.realpath(rootfs)


def exec_process(inv: Invocation) -> dict[str, Any]:
    """The process to exec: the --process file, or the flags form."""
    if inv.flag("--process"):
        with open(inv.flag("--process"), "rb") as f:
            process = json.load(f)
        if not isinstance(process, dict) or not process.get("args"):
            raise UsageError(f"{inv.flag('--process')}: not a process with args")
    else:
        if not inv.trailer:
            raise UsageError("exec: no command given")
        process = {
            "args": inv.trailer,
            "cwd": inv.flag("--cwd") or "/",
            "env": inv.multi.get("--env", []),
        }
        if inv.flag("--user"):
            uid, _, gid = inv.flag("--user").partition(":")
            process["user"] = {"uid": int(uid), "gid": int(gid or 0)}
        process["terminal"] = inv.has("--tty")
    if inv.has("--tty"):
        process["terminal"] = True
    return process


# --- state ---------------------------------------------------------------------------------


def state_dir(root: RuntimeRoot, cid: str) -> str:
    return root.state_dir(cid)


def read_state(root: RuntimeRoot, cid: str) -> dict[str, Any]:
    try:
        with open(root.sandbox(cid).state, "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def write_state(root: RuntimeRoot, cid: str, st: dict[str, Any]) -> None:
    from .records import write_atomic

    write_atomic(root.sandbox(cid).state, json.dumps(st))


def new_state(pid: int, config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "pid": pid,
        # a string, as earlier versions wrote it ("" for a process already gone)
        "start_time": str(start_time(pid) or ""),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "annotations": config.get("annotations") or {},
        **extra,
    }


def status_of(root: RuntimeRoot, rec: Record, st: dict[str, Any]) -> Status:
    if not st or not alive(st):
        return Status.EXITED
    sandbox = root.sandbox(rec.id)
    if os.path.exists(sandbox.fifo):
        return Status.CREATED
    if os.path.exists(sandbox.paused):
        return Status.PAUSED
    return Status.RUNNING


def state_of(root: RuntimeRoot, rec: Record) -> dict[str, Any]:
    st = read_state(root, rec.id)
    status = status_of(root, rec, st)
    return {
        "ociVersion": OCI_VERSION,
        "id": rec.id,
        "status": status.oci,
        "pid": int(st.get("pid") or 0) if status is not Status.EXITED else 0,
        "bundle": rec.bundle,
        "created": st.get("created", ""),
        "annotations": st.get("annotations") or {},
    }


def enter_network(config: dict[str, Any]) -> None:
    """In a gate or workload process: the network namespace config.json asks for
    (bareboat.sandbox.netns)."""
    from bareboat.sandbox.netns import enter_network as enter

    enter(config)


def require(root: RuntimeRoot, rec: Record, *wanted: Status, action: str) -> dict[str, Any]:
    """The container's state file, if its status is one of `wanted`; else a clear error."""
    st = read_state(root, rec.id)
    status = status_of(root, rec, st)
    if status not in wanted:
        raise ContainerError(f"container {rec.id} is {status.oci}: cannot {action}")
    return st


def deletable(inv: Invocation, root: RuntimeRoot, rec: Record) -> dict[str, Any]:
    """The state file of a container `delete` may remove: stopped or created, or any with
    --force (runc's rule)."""
    st = read_state(root, rec.id)
    status = status_of(root, rec, st)
    if status not in (Status.EXITED, Status.CREATED) and not inv.has("--force"):
        raise ContainerError(f"container {rec.id} is {status.oci}: stop it or use --force")
    return st


def set_paused(root: RuntimeRoot, cid: str, paused: bool) -> None:
    marker = root.sandbox(cid).paused
    if paused:
        open(marker, "w").close()
    elif os.path.exists(marker):
        os.unlink(marker)


# --- hooks, console, pid file ----------------------------------------------------------------


def run_hooks(kind: str, hooks: list[dict[str, Any]], state: dict[str, Any]) -> None:
    import subprocess

    payload = json.dumps({k: state[k] for k in ("ociVersion", "id", "status", "pid", "bundle")})
    for hook in hooks:
        args = hook.get("args") or [hook["path"]]
        env = process_env({"env": hook.get("env") or []})
        try:
            res = subprocess.run(
                args,
                executable=hook["path"],
                input=payload,
                capture_output=True,
                text=True,
                env=env,
                timeout=float(hook.get("timeout") or HOOK_TIMEOUT),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BackendError(f"{kind} hook {hook['path']} failed: {e}") from None
        if res.returncode != 0:
            detail = (res.stderr.strip().splitlines() or [""])[-1]
            raise BackendError(f"{kind} hook {hook['path']} exited with {res.returncode}: {detail}")


def created_hooks(root: RuntimeRoot, rec: Record, config: dict[str, Any]) -> None:
    """createRuntime then prestart, with the state of a created container (runc's order)."""
    state = {**state_of(root, rec), "status": Status.CREATED.oci}
    run_hooks("createRuntime", hooks_of(config, "createRuntime"), state)
    run_hooks("prestart", hooks_of(config, "prestart"), state)


def send_console(sock_path: str, master: int) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        socket.send_fds(s, [b"/dev/ptmx"], [master])


def console_pair(inv: Invocation, process: dict[str, Any]) -> tuple[int | None, int | None]:
    """A pty (master, slave) when the process wants a terminal, else (None, None)."""
    if not process.get("terminal"):
        return None, None
    if not inv.flag("--console-socket"):
        raise UsageError("process.terminal is set but no --console-socket was given")
    return os.openpty()


def write_pid_file(inv: Invocation, pid: int) -> None:
    if inv.flag("--pid-file"):
        from .records import write_atomic

        write_atomic(os.path.abspath(inv.flag("--pid-file")), str(pid))


# --- the start gate (bareboat.sandbox.supervisor) -------------------------------------------


def make_gate(sdir: str) -> str:
    from bareboat.sandbox.supervisor import make_fifo

    return make_fifo(SandboxDir(sdir).fifo)


def release(root: RuntimeRoot, rec: Record) -> None:
    """`start`: open the gate and wait for its report; then poststart hooks."""
    from bareboat.sandbox.supervisor import open_gate

    st = require(root, rec, Status.CREATED, action="start it (it is not created)")
    fifo = root.sandbox(rec.id).fifo
    open_gate(fifo, lambda: alive(st), f"container {rec.id}", START_TIMEOUT)
    run_hooks("poststart", hooks_of(load_config(rec), "poststart"), state_of(root, rec))


def forget(root: RuntimeRoot, rec: Record, st: dict[str, Any]) -> None:
    """The tail of `delete`: remove the state and record, then run poststop hooks."""
    import shutil

    try:
        config = load_config(rec)
    except (OSError, ValueError):
        config = {}  # the client may have removed the bundle already
    shutil.rmtree(state_dir(root, rec.id), ignore_errors=True)
    root.drop(rec.id)
    if st:
        state = {**state_of(root, rec), "status": Status.EXITED.oci, "pid": 0}
        try:
            run_hooks("poststop", hooks_of(config, "poststop"), state)
        except BackendError as e:  # runc warns and goes on: the container is gone already
            print(f"bareboat-runtime: warning: {e}", file=sys.stderr)


def print_state(root: RuntimeRoot, rec: Record) -> int:
    print(json.dumps(state_of(root, rec), indent=2))
    return 0


# --- the shape every gate-process isolation shares ---------------------------------------------


def create_in_state_dir(
    inv: Invocation,
    root: RuntimeRoot,
    body: Callable[[str], int],
    undo: Callable[[], None] | None = None,
) -> int:
    """Make the container's state dir and run `body(sdir)`; if it fails, `undo` (by
    default: remove the state dir) leaves nothing."""
    sdir = state_dir(root, inv.id)
    os.makedirs(sdir, mode=0o700)
    try:
        return body(sdir)
    except BaseException:
        if undo is not None:
            undo()
        else:
            import shutil

            shutil.rmtree(sdir, ignore_errors=True)
        raise


def process_of(config: dict[str, Any]) -> dict[str, Any]:
    process = config.get("process") or {}
    if not process.get("args"):
        raise UsageError("config.json: process.args is empty")
    return process


def hand_console(inv: Invocation, master: int | None) -> None:
    """The pty master goes to the client's --console-socket, and out of our hands."""
    if master is not None:
        send_console(inv.flag("--console-socket"), master)
        os.close(master)


def finish_create(
    inv: Invocation,
    root: RuntimeRoot,
    rec: Record,
    config: dict[str, Any],
    pid: int,
    master: int | None,
    extra: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """After the gate is forked and set up: console, state, createRuntime and prestart hooks,
    pid file (runc's order). On any failure the gate is killed and reaped."""
    try:
        hand_console(inv, master)
        write_state(root, rec.id, new_state(pid, config, **(extra() if extra else {})))
        created_hooks(root, rec, config)
        write_pid_file(inv, pid)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


def create_gate(
    inv: Invocation,
    root: RuntimeRoot,
    isolation: str,
    bundle: str,
    config: dict[str, Any],
    plan_for: Callable[[int | None], SupervisorPlan],
    *,
    after_fork: Callable[[int], None] | None = None,
    extra: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """The tail of every gate isolation's `create`: the fifo and the console, the gate
    (`plan_for(pty slave)`) forked and set up, then `finish_create`."""
    from bareboat.sandbox.supervisor import fork_gate

    fifo = make_gate(state_dir(root, inv.id))
    master, slave = console_pair(inv, config.get("process") or {})
    pid = fork_gate(plan_for(slave), fifo, master, slave, after_fork=after_fork)
    finish_create(inv, root, Record(inv.id, isolation, bundle), config, pid, master, extra=extra)
