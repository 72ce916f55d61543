"""`process` isolation under the OCI contract: the workload runs chrooted into the bundle's
rootfs with no namespaces but a private mount namespace (so the spec's mounts die with it and
never land in the client's view of its overlay), no cgroups, no capability drop.

The contract, as runc keeps it:
- `create` forks the workload's process, which sets itself up and then blocks opening
  `exec.fifo` for writing; `create` writes the pid file, runs the createRuntime and prestart
  hooks and exits. The process is reparented to the client's subreaper (conmon, the shim),
  which waits on it: the pid in the pid file lives exactly as long as the workload and carries
  its exit status, because it *is* the workload after exec.
- `start` opens the fifo for reading (releasing the process into exec) and runs poststart hooks.
- `delete` kills what is left (with --force), runs poststop hooks and removes the state.
- `exec` enters the container's root through /proc/PID/root (which also sees its mounts).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from typing import Any

from bareboat.errors import BackendError, BackendUnavailable, ContainerError, UsageError

from .args import Invocation
from .records import Record, RuntimeRoot

OCI_VERSION = "1.0.2-dev"
HOOK_TIMEOUT = 30.0


# --- plan: plain data from config.json -----------------------------------------------------


def parse_signal(text: str) -> int:
    if text.isdigit():
        return int(text)
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise UsageError(f"unknown signal {text!r}") from None


def process_env(process: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in process.get("env") or [] if "=" in e)


def user_ids(process: dict[str, Any]) -> tuple[int, int, list[int]]:
    user = process.get("user") or {}
    return int(user.get("uid", 0)), int(user.get("gid", 0)), list(user.get("additionalGids") or [])


def hooks_of(config: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    hooks = (config.get("hooks") or {}).get(kind) or []
    if not isinstance(hooks, list) or not all(isinstance(h, dict) and h.get("path") for h in hooks):
        raise UsageError(f"config.json: malformed {kind} hooks")
    return hooks


# --- state ---------------------------------------------------------------------------------


def _dir(root: RuntimeRoot, cid: str) -> str:
    return root.state_dir(cid)


def _read_state_file(root: RuntimeRoot, cid: str) -> dict[str, Any]:
    try:
        with open(os.path.join(_dir(root, cid), "state.json"), "rb") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def _proc_start(pid: int) -> str:
    """The process's start time (field 22 of /proc/PID/stat), to tell a reused pid apart;
    "" when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return ""
    fields = stat[stat.rindex(")") + 2 :].split()
    return "" if fields[0] in ("Z", "X") else fields[19]


def _alive(st: dict[str, Any]) -> bool:
    pid = int(st.get("pid") or 0)
    return pid > 0 and _proc_start(pid) == st.get("start_time")


def status_of(root: RuntimeRoot, rec: Record, st: dict[str, Any]) -> str:
    if not st:
        return "stopped"
    if not _alive(st):
        return "stopped"
    if os.path.exists(os.path.join(_dir(root, rec.id), "exec.fifo")):
        return "created"
    if os.path.exists(os.path.join(_dir(root, rec.id), "paused")):
        return "paused"
    return "running"


def state_of(root: RuntimeRoot, rec: Record) -> dict[str, Any]:
    st = _read_state_file(root, rec.id)
    status = status_of(root, rec, st)
    out: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "id": rec.id,
        "status": status,
        "pid": int(st.get("pid") or 0) if status != "stopped" else 0,
        "bundle": rec.bundle,
        "created": st.get("created", ""),
        "annotations": st.get("annotations") or {},
    }
    return out


def _config(rec: Record) -> dict[str, Any]:
    with open(os.path.join(rec.bundle, "config.json"), "rb") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


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


# --- create --------------------------------------------------------------------------------


def _send_console(sock_path: str, master: int) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock_path)
        socket.send_fds(s, [b"/dev/ptmx"], [master])


def _apply_mounts(config: dict[str, Any], rootfs: str) -> None:
    from pathlib import Path

    from bareboat.backends.base import (
        CLONE_NEWNS,
        MS_BIND,
        MS_PRIVATE,
        MS_RDONLY,
        MS_REC,
        mount,
        unshare,
    )
    from bareboat.backends.process.backend import MS_REMOUNT, plan_mounts

    unshare(CLONE_NEWNS)
    mount("none", Path("/"), "", MS_REC | MS_PRIVATE)
    root = Path(rootfs)
    for source, dest, fstype, flags, data in plan_mounts(config):
        target = root / dest.lstrip("/")
        if target.is_symlink():
            raise BackendError(f"mount destination {dest} is a symlink in the rootfs")
        if os.path.isdir(source) or fstype:
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        mount(source, target, fstype, flags & ~MS_RDONLY, data)
        if flags & MS_RDONLY:  # a bind only becomes read-only on a remount
            mount("none", target, "", MS_REMOUNT | MS_BIND | MS_RDONLY)


def _enter(process: dict[str, Any], rootfs: str, slave: int | None) -> None:
    """In the child: become the workload (stdio, session, root, cwd, ids), up to exec."""
    if slave is not None:
        os.setsid()
        import fcntl
        import termios

        for fd in (0, 1, 2):
            os.dup2(slave, fd)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if slave > 2:
            os.close(slave)
    else:
        os.setsid()
    os.chroot(rootfs)
    os.chdir(process.get("cwd") or "/")
    uid, gid, groups = user_ids(process)
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def _exec(process: dict[str, Any]) -> None:
    args = process.get("args") or []
    env = process_env(process)
    try:
        os.execvpe(args[0], args, env)
    except FileNotFoundError:
        os.write(2, f"exec {args[0]}: no such file or directory\n".encode())
        os._exit(127)
    except OSError as e:
        os.write(2, f"exec {args[0]}: {e.strerror}\n".encode())
        os._exit(126)


def _rootfs(bundle: str, config: dict[str, Any]) -> str:
    path = (config.get("root") or {}).get("path") or "rootfs"
    rootfs = os.path.join(bundle, path)
    if not os.path.isdir(rootfs):
        raise UsageError(f"rootfs {rootfs} is not a directory")
    return os.path.realpath(rootfs)


def create(inv: Invocation, root: RuntimeRoot, bundle: str, config: dict[str, Any]) -> int:
    if inv.command == "run":
        raise BackendUnavailable("`run` is not supported for process isolation: create + start")
    process = config.get("process") or {}
    if not process.get("args"):
        raise UsageError("config.json: process.args is empty")
    rootfs = _rootfs(bundle, config)
    sdir = _dir(root, inv.id)
    os.makedirs(sdir, mode=0o700)
    try:
        return _create(inv, root, bundle, config, process, rootfs, sdir)
    except BaseException:
        import shutil

        shutil.rmtree(sdir, ignore_errors=True)
        raise


def _create(
    inv: Invocation,
    root: RuntimeRoot,
    bundle: str,
    config: dict[str, Any],
    process: dict[str, Any],
    rootfs: str,
    sdir: str,
) -> int:
    fifo = os.path.join(sdir, "exec.fifo")
    os.mkfifo(fifo, 0o600)
    master = slave = None
    if process.get("terminal"):
        sock = inv.flag("--console-socket")
        if not sock:
            raise UsageError("process.terminal is set but no --console-socket was given")
        master, slave = os.openpty()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the workload-to-be
        try:
            os.close(ready_r)
            if master is not None:
                os.close(master)
            _apply_mounts(config, rootfs)
            os.write(ready_w, b"ok")
            os.close(ready_w)
            # Blocks until `start` opens the fifo for reading.
            fd = os.open(fifo, os.O_WRONLY | os.O_CLOEXEC)
            os.write(fd, b"0")
            os.close(fd)
            _enter(process, rootfs, slave)
            _exec(process)
        except BaseException as e:  # noqa: BLE001 - the child must never return into main
            with contextlib.suppress(OSError):
                os.write(ready_w, f"error: {e}".encode()[:4000])
            os._exit(1)
    os.close(ready_w)
    if slave is not None:
        os.close(slave)
    with os.fdopen(ready_r, "rb") as r:
        ready = r.read()
    if ready != b"ok":
        os.waitpid(pid, 0)
        msg = ready.decode(errors="replace").removeprefix("error: ") or "child died"
        raise BackendError(f"process isolation: cannot set up the container: {msg}")
    try:
        if master is not None:
            _send_console(inv.flag("--console-socket"), master)
            os.close(master)
        st = {
            "pid": pid,
            "start_time": _proc_start(pid),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "annotations": config.get("annotations") or {},
        }
        from pathlib import Path

        from bareboat.fsutil import atomic_write_text

        atomic_write_text(Path(sdir) / "state.json", json.dumps(st))
        rec = Record(inv.id, "process", bundle)
        state = {**state_of(root, rec), "status": "created"}
        run_hooks("createRuntime", hooks_of(config, "createRuntime"), state)
        run_hooks("prestart", hooks_of(config, "prestart"), state)
        if inv.flag("--pid-file"):
            atomic_write_text(Path(inv.flag("--pid-file")), str(pid))
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    return 0


# --- the other commands ----------------------------------------------------------------------


def command(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    handler = _COMMANDS.get(inv.command)
    if handler is None:
        raise BackendUnavailable(f"{inv.command} is not supported for process isolation")
    return handler(inv, root, rec)


def _state(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    print(json.dumps(state_of(root, rec), indent=2))
    return 0


def _start(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    st = _read_state_file(root, rec.id)
    status = status_of(root, rec, st)
    if status != "created":
        raise ContainerError(f"container {rec.id} is {status}, not created: cannot start it")
    fifo = os.path.join(_dir(root, rec.id), "exec.fifo")
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        # Opening released the writer blocked in its open(); wait for its byte, which says
        # it is past the fifo (closing before that would kill it with SIGPIPE).
        deadline = time.monotonic() + 10
        while True:
            try:
                if os.read(fd, 1):
                    break
            except BlockingIOError:
                pass
            if not _alive(st) or time.monotonic() > deadline:
                raise ContainerError(f"container {rec.id} died before it started")
            time.sleep(0.0005)
    finally:
        os.close(fd)
    os.unlink(fifo)
    run_hooks("poststart", hooks_of(_config(rec), "poststart"), state_of(root, rec))
    return 0


def container_pids(st: dict[str, Any]) -> list[int]:
    """Every process whose root is the container's (the workload and its execs)."""
    if not _alive(st):
        return []
    pid = int(st["pid"])
    try:
        ref = os.stat(f"/proc/{pid}/root")
    except OSError:
        return []
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                s = os.stat(f"/proc/{name}/root")
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == (ref.st_dev, ref.st_ino):
                pids.append(int(name))
    return sorted(pids)


def _kill(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    sig = parse_signal(inv.positionals[1] if len(inv.positionals) > 1 else "SIGTERM")
    st = _read_state_file(root, rec.id)
    if not _alive(st):
        raise ContainerError(f"container {rec.id} is not running")
    targets = container_pids(st) if inv.has("--all") else [int(st["pid"])]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return 0


def _delete(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    st = _read_state_file(root, rec.id)
    status = status_of(root, rec, st)
    if status not in ("stopped", "created") and not inv.has("--force"):
        raise ContainerError(f"container {rec.id} is {status}: stop it or use --force")
    if _alive(st):
        for pid in container_pids(st) or [int(st["pid"])]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(st) and time.monotonic() < deadline:
            time.sleep(0.005)
    try:
        config = _config(rec)
    except (OSError, ValueError):
        config = {}  # the client may have removed the bundle already
    import shutil

    shutil.rmtree(_dir(root, rec.id), ignore_errors=True)
    root.drop(rec.id)
    if st:
        state = {**state_of(root, rec), "status": "stopped", "pid": 0}
        try:
            run_hooks("poststop", hooks_of(config, "poststop"), state)
        except BackendError as e:  # runc warns and goes on: the container is gone already
            print(f"bareboat-runtime: warning: {e}", file=sys.stderr)
    return 0


def _signal_all(inv: Invocation, root: RuntimeRoot, rec: Record, sig: int, flag: bool) -> int:
    st = _read_state_file(root, rec.id)
    if status_of(root, rec, st) not in ("running", "paused"):
        raise ContainerError(f"container {rec.id} is not running")
    for pid in container_pids(st):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    marker = os.path.join(_dir(root, rec.id), "paused")
    if flag:
        open(marker, "w").close()
    elif os.path.exists(marker):
        os.unlink(marker)
    return 0


def _pause(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    return _signal_all(inv, root, rec, signal.SIGSTOP, True)


def _resume(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    return _signal_all(inv, root, rec, signal.SIGCONT, False)


def _ps(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    pids = container_pids(_read_state_file(root, rec.id))
    if inv.flag("--format") == "json":
        print(json.dumps(pids))
    else:
        print("PID")
        for pid in pids:
            print(pid)
    return 0


def _update(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    raise BackendUnavailable("process isolation has no cgroups: nothing can be updated")


def exec_process(inv: Invocation) -> dict[str, Any]:
    """The process to exec: the --process file, or the flags form."""
    if inv.flag("--process"):
        with open(inv.flag("--process"), "rb") as f:
            process = json.load(f)
        if not isinstance(process, dict) or not process.get("args"):
            raise UsageError(f"{inv.flag('--process')}: not a process with args")
        return process
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
    return process


def _exec_cmd(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    st = _read_state_file(root, rec.id)
    if status_of(root, rec, st) != "running":
        raise ContainerError(f"container {rec.id} is not running: cannot exec in it")
    process = exec_process(inv)
    if inv.has("--tty"):
        process["terminal"] = True
    ctr_root = f"/proc/{int(st['pid'])}/root"
    master = slave = None
    if process.get("terminal"):
        if not inv.flag("--console-socket"):
            raise UsageError("exec --tty needs --console-socket")
        master, slave = os.openpty()
    pid = os.fork()
    if pid == 0:
        try:
            if master is not None:
                os.close(master)
            _enter(process, ctr_root, slave)
            _exec(process)
        finally:
            os._exit(126)
    if slave is not None:
        os.close(slave)
    _tie_to_workload(int(st["pid"]), pid)
    if master is not None:
        _send_console(inv.flag("--console-socket"), master)
        os.close(master)
    if inv.flag("--pid-file"):
        from pathlib import Path

        from bareboat.fsutil import atomic_write_text

        atomic_write_text(Path(inv.flag("--pid-file")), str(pid))
    if inv.has("--detach"):
        return 0
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _tie_to_workload(main: int, child: int) -> None:
    """An exec'd process must die with the workload, as it would with a PID namespace whose
    init exits (podman refuses to clean up a container with live exec sessions). A small
    detached watcher waits on both pidfds and kills the exec'd process if the workload goes
    first."""
    import select

    main_fd = os.pidfd_open(main)
    child_fd = os.pidfd_open(child)
    watcher = os.fork()
    if watcher == 0:
        try:
            if os.fork() != 0:  # double fork: the watcher must not be our child
                os._exit(0)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)  # never hold the client's stdio pipes open
            keep = sorted({main_fd, child_fd})
            os.closerange(3, keep[0])
            os.closerange(keep[0] + 1, keep[1])
            os.closerange(keep[1] + 1, 65536)
            poller = select.poll()
            poller.register(main_fd, select.POLLIN)
            poller.register(child_fd, select.POLLIN)
            ready = {fd for fd, _ in poller.poll()}
            if main_fd in ready and child_fd not in ready:
                signal.pidfd_send_signal(child_fd, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(watcher, 0)
    os.close(main_fd)
    os.close(child_fd)


_COMMANDS = {
    "state": _state,
    "start": _start,
    "kill": _kill,
    "delete": _delete,
    "pause": _pause,
    "resume": _resume,
    "ps": _ps,
    "update": _update,
    "exec": _exec_cmd,
}
