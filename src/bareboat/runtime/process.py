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

import os
import signal
from typing import Any

from bareboat.proc import wait_status_to_code
from bareboat.sandbox import procgroup
from bareboat.sandbox.status import Status

from . import lifecycle as lc
from .args import Invocation
from .records import Record, RuntimeRoot

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from bareboat.sandbox.supervisor import SupervisorPlan


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
        cgroup = [procgroup.create(inv.id)]

        def move(pid: int) -> None:
            # The gate forks nothing before `start`, so it can be moved into its cgroup now,
            # while it sets itself up: a move took 5-30 ms here (median 13 ms), hidden behind
            # the gate's imports and mounts instead of added to them.
            if cgroup[0] is not None and not procgroup.move(cgroup[0], pid):
                procgroup.remove(cgroup[0])  # the fallback of sandbox.process.pids serves
                cgroup[0] = None

        try:
            lc.create_gate(
                inv, root, "process", bundle, config,
                lambda slave: _gate(config, process, rootfs, slave), after_fork=move,
                extra=lambda: {"cgroup": cgroup[0]} if cgroup[0] is not None else {},
            )  # fmt: skip
        except BaseException:
            if cgroup[0] is not None:
                procgroup.remove(cgroup[0])  # the gate, if any, is dead and reaped by now
            raise
        return 0

    return lc.create_in_state_dir(inv, root, body)


def _gate(
    config: dict[str, Any], process: dict[str, Any], rootfs: str, slave: int | None
) -> SupervisorPlan:
    """The gate sets up the mounts and network, then becomes the workload at `start`."""
    from bareboat.sandbox.process import apply_mounts
    from bareboat.sandbox.supervisor import SupervisorPlan

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

    return SupervisorPlan(
        setup, run, report_at_exec=True, what="the container's process",
        error_prefix="process isolation: cannot set up the container: ",
    )  # fmt: skip


# --- exec --------------------------------------------------------------------------------------


def exec_in(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    st = lc.require(root, rec, Status.RUNNING, action="exec in it (it is not running)")
    process = lc.exec_process(inv)
    ctr_root = f"/proc/{int(st['pid'])}/root"
    master, slave = lc.console_pair(inv, process)
    cgroup = procgroup.owned(st.get("cgroup"))
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
