"""`process` isolation under the OCI contract: the workload runs chrooted into the bundle's
rootfs with a private mount namespace (so the spec's mounts die with it and never land in the
client's view of its overlay) and the network namespace the spec asks for (joined, or a new
one: a client's network hook must configure that, not the host's), but no other namespace,
no cgroups, no capability drop.

The contract, as runc keeps it:
- `create` forks the workload's process, which sets itself up and then blocks opening
  `exec.fifo` for writing; `create` writes the pid file, runs the createRuntime and prestart
  hooks and exits. The process is reparented to the client's subreaper (conmon, the shim),
  which waits on it: the pid in the pid file lives exactly as long as the workload and carries
  its exit status, because it *is* the workload after exec.
- `start` opens the fifo for reading (releasing the process into exec) and runs poststart hooks.
- `delete` kills what is left (with --force), runs poststop hooks and removes the state.
- `exec` enters the container's root through /proc/PID/root (which also sees its mounts).

The container's processes are the members of its own cgroup (`procgroup`), never those that
merely share something with the gate: before `start` the gate's root is the host's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from typing import Any

from bareboat.errors import BackendUnavailable, ContainerError
from bareboat.proc import parse_signal, wait_status_to_code
from bareboat.sandbox import procgroup
from bareboat.sandbox.status import Status

from . import lifecycle as lc
from .args import Invocation
from .records import Record, RuntimeRoot


def user_ids(process: dict[str, Any]) -> tuple[int, int, list[int]]:
    user = process.get("user") or {}
    return int(user.get("uid", 0)), int(user.get("gid", 0)), list(user.get("additionalGids") or [])


# --- create --------------------------------------------------------------------------------


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
    env = lc.process_env(process)
    try:
        os.execvpe(args[0], args, env)
    except FileNotFoundError:
        os.write(2, f"exec {args[0]}: no such file or directory\n".encode())
        os._exit(127)
    except OSError as e:
        os.write(2, f"exec {args[0]}: {e.strerror}\n".encode())
        os._exit(126)


def create(inv: Invocation, root: RuntimeRoot, bundle: str, config: dict[str, Any]) -> int:
    def body(sdir: str) -> int:
        process = lc.process_of(config)
        rootfs = lc.rootfs_of(bundle, config)
        cgroup = procgroup.create(inv.id)
        try:
            return _create(inv, root, bundle, config, process, rootfs, sdir, cgroup)
        except BaseException:
            if cgroup is not None:
                procgroup.remove(cgroup)  # the gate, if any, is dead and reaped by now
            raise

    return lc.create_in_state_dir(inv, root, body)


def _create(
    inv: Invocation,
    root: RuntimeRoot,
    bundle: str,
    config: dict[str, Any],
    process: dict[str, Any],
    rootfs: str,
    sdir: str,
    cgroup: str | None,
) -> int:
    from bareboat.sandbox.process import apply_mounts
    from bareboat.sandbox.supervisor import SupervisorPlan, fork_gate

    fifo = lc.make_gate(sdir)
    master, slave = lc.console_pair(inv, process)

    def setup() -> None:
        if slave is not None:
            # containerd's runc shim (docker's too) reads create's stdout to EOF when there
            # is a terminal: this gate must not hold it open, so its stdio is the pty now.
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
        lc.enter_network(config)
        apply_mounts(config, rootfs)

    def run() -> int:
        _enter(process, rootfs, slave)
        _exec(process)  # the gate becomes the workload
        return 126

    joined = []

    def move(pid: int) -> None:
        # The gate forks nothing before `start`, so it can be moved into its cgroup now,
        # while it sets itself up: a move took 5-30 ms here (median 13 ms), hidden behind
        # the gate's imports and mounts instead of added to them.
        joined.append(cgroup is not None and procgroup.move(cgroup, pid))

    plan = SupervisorPlan(
        setup, run, report_at_exec=True, what="the container's process",
        error_prefix="process isolation: cannot set up the container: ",
    )  # fmt: skip
    pid = fork_gate(plan, fifo, master, slave, after_fork=move)
    if cgroup is not None and not joined[0]:
        procgroup.remove(cgroup)  # the fallback of container_pids serves
        cgroup = None
    extra = {"cgroup": cgroup} if cgroup is not None else {}
    rec = Record(inv.id, "process", bundle)
    lc.finish_create(inv, root, rec, config, pid, master, extra=lambda: extra)
    return 0


# --- the other commands ----------------------------------------------------------------------


def command(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    return lc.dispatch(inv, root, rec, _COMMANDS, "process")


def _cgroup(st: dict[str, Any]) -> str | None:
    return procgroup.owned(st.get("cgroup"))


def container_pids(st: dict[str, Any]) -> list[int]:
    """The container's processes: its cgroup's members (the workload, its execs, whatever
    they started). Without a cgroup: the gate and, once it has chrooted, the processes whose
    root is its root, never one whose root is ours (before `start` the gate's root is the
    host's, which nearly every process on the host shares)."""
    cgroup = _cgroup(st)
    if cgroup is not None:
        return procgroup.members(cgroup)
    if not lc.alive(st):
        return []
    pid = int(st["pid"])
    try:
        ref = os.stat(f"/proc/{pid}/root")
        own = os.stat("/proc/self/root")
    except OSError:
        return [pid]
    if (ref.st_dev, ref.st_ino) == (own.st_dev, own.st_ino):
        return [pid]  # not chrooted yet: it alone is the container
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
    st = lc.read_state(root, rec.id)
    cgroup = _cgroup(st)
    if inv.has("--all") and cgroup is not None and procgroup.members(cgroup):
        # Also what outlived the workload of a stopped container, as runc's kill --all.
        procgroup.signal_all(cgroup, sig)
        return 0
    if not lc.alive(st):
        raise ContainerError(f"cannot kill container {rec.id}: container not running")
    targets = container_pids(st) if inv.has("--all") else [int(st["pid"])]
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return 0


def _delete(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    st = lc.deletable(inv, root, rec)
    cgroup = _cgroup(st)
    if cgroup is not None:
        # Everything of the container, also what a stopped workload left running.
        procgroup.signal_all(cgroup, signal.SIGKILL)
    elif lc.alive(st):
        for pid in container_pids(st):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    lc.wait_gone(st)
    if cgroup is not None:
        procgroup.remove(cgroup)
    lc.forget(root, rec, st)
    return 0


def _signal_all(inv: Invocation, root: RuntimeRoot, rec: Record, sig: int, flag: bool) -> int:
    st = lc.require(root, rec, Status.RUNNING, Status.PAUSED, action="pause or resume it")
    cgroup = _cgroup(st)
    # The freezer where there is one: no member can fork past it, and a process the
    # workload stopped itself stays stopped after resume.
    if cgroup is None or not procgroup.freeze(cgroup, flag):
        for pid in container_pids(st):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    lc.set_paused(root, rec.id, flag)
    return 0


def _pause(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    return _signal_all(inv, root, rec, signal.SIGSTOP, True)


def _resume(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    return _signal_all(inv, root, rec, signal.SIGCONT, False)


def print_pids(inv: Invocation, pids: list[int]) -> int:
    if inv.flag("--format") == "json":
        print(json.dumps(pids))
    else:
        print("PID")
        for pid in pids:
            print(pid)
    return 0


def _ps(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    return print_pids(inv, container_pids(lc.read_state(root, rec.id)))


def _update(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    raise BackendUnavailable("process isolation has no cgroups: nothing can be updated")


def _exec_cmd(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    st = lc.require(root, rec, Status.RUNNING, action="exec in it (it is not running)")
    process = lc.exec_process(inv)
    ctr_root = f"/proc/{int(st['pid'])}/root"
    master, slave = lc.console_pair(inv, process)
    cgroup = _cgroup(st)
    pid = os.fork()
    if pid == 0:
        try:
            if cgroup is not None:
                try:
                    procgroup.join(cgroup)  # so that kill --all and delete reach it
                except OSError as e:
                    os.write(2, f"exec: cannot join the container's cgroup: {e}\n".encode())
                    raise
            if master is not None:
                os.close(master)
            # The workload's network namespace (its own, when the client asked for one).
            lc.enter_network({"linux": {"namespaces": [
                {"type": "network", "path": f"/proc/{int(st['pid'])}/ns/net"}]}})  # fmt: skip
            _enter(process, ctr_root, slave)
            _exec(process)
        finally:
            os._exit(126)
    if slave is not None:
        os.close(slave)
    _tie_to_workload(int(st["pid"]), pid)
    lc.hand_console(inv, master)
    lc.write_pid_file(inv, pid)
    if inv.has("--detach"):
        return 0
    _, status = os.waitpid(pid, 0)
    return wait_status_to_code(status)


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
    "kill": _kill,
    "delete": _delete,
    "pause": _pause,
    "resume": _resume,
    "ps": _ps,
    "update": _update,
    "exec": _exec_cmd,
}
