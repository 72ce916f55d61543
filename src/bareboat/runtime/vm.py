"""`microvm` isolation under the OCI contract: each container is a QEMU microVM running our
kernel and init, booted from the bundle's rootfs.

- `create` plans the VM (kernel, init, a read-only EROFS disk of the rootfs) and forks the
  *gate*: the pid in `--pid-file`, which the client's subreaper (conmon, the containerd shim)
  inherits. The gate launches QEMU (which dies with it: PR_SET_PDEATHSIG), waits for the
  agent's HELLO and tells `create`, which hands the pty to `--console-socket`, runs the
  createRuntime and prestart hooks, writes the pid file and exits. The VM is booted; the
  workload is not started.
- `start` opens the gate (lifecycle.release): the gate sends START and reports STARTED or the
  start's error. From then on the gate relays the workload's stdio (its own fds, or the pty
  slave) through the hub thread, forwards the signals it gets, and ends with the workload's
  exit status once the VM has powered off: it lives exactly as long as the workload.
- `kill` goes to the workload through the sandbox's control socket, the hub's (SIGKILL kills
  the gate, and with it QEMU), `exec` runs an agent session through the same socket (with
  `--detach`, a forked exec gate relays it and carries its status), `pause`/`resume` stop and
  continue the vCPUs over QMP, `delete --force` kills the gate and QEMU and removes every file.

The VM itself is `bareboat.sandbox.microvm`'s: this module keeps `create` and `exec` under
the OCI contract (flags, the console socket, the pid file, hooks); `kill`, `delete`, `pause`,
`resume`, `ps` and `update` are runtime/commands.py's, over the sandbox's operations, and
import nothing heavy (podman and the shim make them several times per container).

The rootfs is read at `create`: the guest writes to its own tmpfs layer, not back into the
client's rootfs (volumes, shared over 9p, are how files come back). A rootfs that is an
overlay of one image directory plus mount-point placeholders (what podman and containerd
make) reuses the image's cached disk; anything else gets a disk of its own in the
container's state directory.
"""

from __future__ import annotations

import contextlib
import os

from bareboat.sandbox import microvm
from bareboat.sandbox.status import Status

from . import lifecycle as lc
from .records import Record, RuntimeRoot

TYPE_CHECKING = False  # typing costs import time on every call; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any

    from bareboat.sandbox.supervisor import SupervisorPlan

    from .args import Invocation


def _files(root: RuntimeRoot, cid: str) -> microvm.VmFiles:
    return microvm.VmFiles(lc.state_dir(root, cid))


# --- create ------------------------------------------------------------------------------------


def create(inv: Invocation, root: RuntimeRoot, bundle: str, config: dict[str, Any]) -> int:
    sandbox: list[microvm.VmSandbox] = []

    def body(sdir: str) -> int:
        lc.process_of(config)
        vm = microvm.VmSandbox(inv.id, bundle, sdir, config, lc.rootfs_of(bundle, config))
        sandbox.append(vm)
        vm.plan()  # every check that can fail before a VM exists
        # The cgroups the gate joins (the cpu one first), for update and delete to find.
        cgroups = {"cgroups": vm.cgroups()}

        def record(pid: int) -> None:
            # Recorded at once: a `delete --force` after this `create` was killed mid-boot
            # finds the gate (and with it QEMU) to kill.
            lc.write_state(root, inv.id, lc.new_state(pid, config, **cgroups))

        def gate(slave: int | None) -> SupervisorPlan:
            return vm.supervisor(slave, os.getpid(), lambda: lc.enter_network(config))

        # On a failure the gate is killed, and QEMU with it; `undo` removes the cgroups after.
        lc.create_gate(inv, root, "microvm", bundle, config, gate, after_fork=record,
                       extra=lambda: cgroups)  # fmt: skip
        return 0

    def undo() -> None:  # the VM's cgroups and sockets live outside the state dir
        if sandbox:
            sandbox[0].drop_cgroups()
        microvm.remove_files(_files(root, inv.id))

    return lc.create_in_state_dir(inv, root, body, undo)


# --- exec --------------------------------------------------------------------------------------


def exec_in(inv: Invocation, root: RuntimeRoot, rec: Record) -> int:
    import sys

    lc.require(root, rec, Status.RUNNING, action="exec in it (it is not running)")
    process = lc.exec_process(inv)
    master, slave = lc.console_pair(inv, process)
    files = _files(root, rec.id)
    payload = microvm.exec_payload(process, slave)
    if not inv.has("--detach"):
        lc.hand_console(inv, master)
        fds = (slave, slave, slave) if slave is not None else (0, 1, 2)

        def show(message: str) -> None:
            print(f"bareboat-runtime: exec failed: {message}", file=sys.stderr, flush=True)

        return microvm.run_session(files, payload, fds, show)
    return _exec_detached(inv, files, payload, master, slave)


def _exec_detached(
    inv: Invocation, files: microvm.VmFiles, payload: bytes, master: int | None, slave: int | None
) -> int:
    """Fork an exec gate that relays the session and ends with its status; return once the
    session has started (or report why it did not)."""
    from bareboat.sandbox.supervisor import READY, await_ready, failure

    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            os.close(ready_r)
            if master is not None:
                os.close(master)
            if slave is not None:
                # The pty becomes this gate's controlling terminal: the client's resizes
                # arrive as SIGWINCH and go to the session as RESIZE.
                import fcntl
                import termios

                os.setsid()
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            errors: list[str] = []
            told: list[bool] = []

            def started() -> None:
                os.write(ready_w, READY)
                os.close(ready_w)
                told.append(True)

            fds = (slave, slave, slave) if slave is not None else (0, 1, 2)
            code = microvm.run_session(files, payload, fds, errors.append, started, tty=slave)
            if not told:  # the session never started: say why
                msg = "; ".join(errors) or f"exit status {code}"
                os.write(ready_w, failure(code, _exec_error(msg, code)))
        except BaseException as e:  # noqa: BLE001 - the child must never return into main
            with contextlib.suppress(OSError):
                os.write(ready_w, failure(125, f"exec failed: {e}"))
        finally:
            os._exit(code)
    os.close(ready_w)
    if slave is not None:
        os.close(slave)
    await_ready(pid, ready_r, master, "the exec gate")
    lc.hand_console(inv, master)
    lc.write_pid_file(inv, pid)
    return 0


def _exec_error(msg: str, code: int) -> str:
    if code == 127 and "no such file or directory" not in msg.lower():
        msg += ": no such file or directory"
    elif code == 126 and "permission denied" not in msg.lower():
        msg += ": permission denied"
    return f"exec failed: {msg}"
