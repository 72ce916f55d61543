"""The `container` backend: crun or runc runs the bundle in the foreground of the monitor.

`<runtime> run` (not create + start) keeps one runtime process per container: it forwards
signals, proxies the pty for `-t`, destroys the cgroup on exit and exits with the workload's
code, so the monitor only has to wait for its child. `kill`, `exec` and `delete` go through
the runtime's own commands, which work from any process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import termios
import time

from bareboat.backends.base import BackendContext, Started, Stdio, terminal_size
from bareboat.errors import BackendError
from bareboat.proc import wait_status_to_code

from .runtime import OciRuntime, select_runtime

TYPE_CHECKING = False  # typing costs import time on every `run`; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any

TIMEOUT = 30.0


class ContainerBackend:
    name = "container"

    def __init__(self, runtime: OciRuntime | None = None) -> None:
        self._chosen = runtime

    def runtime_for(self, ctx: BackendContext) -> OciRuntime:
        """The runtime this container was created with (kept in its state dir), so that a
        later `kill` or `rm` from a process with another BAREBOAT_OCI_RUNTIME still works."""
        saved = ctx.state_dir / "runtime.json"
        try:
            data = json.loads(saved.read_text())
            return OciRuntime(data["path"], data["kind"], bool(data["hide_cgroup2"]))
        except (FileNotFoundError, ValueError, KeyError):
            return self._chosen or select_runtime()

    def _run(
        self, rt: OciRuntime, argv: list[str], *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        try:
            res = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                preexec_fn=rt.preexec,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise BackendError(f"{argv[0]} {argv[3]} timed out") from None
        if check and res.returncode != 0:
            msg = (res.stderr.strip().splitlines() or ["no message"])[-1]
            raise BackendError(f"{rt.kind} {argv[3]} failed: {msg}")
        return res

    def create(self, ctx: BackendContext) -> None:
        rt = self._chosen or select_runtime()
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        info = {"path": rt.path, "kind": rt.kind, "hide_cgroup2": rt.hide_cgroup2}
        (ctx.state_dir / "runtime.json").write_text(json.dumps(info))

    def start(self, ctx: BackendContext, stdio: Stdio) -> Started:
        rt = self.runtime_for(ctx)
        if stdio.tty and rt.console_socket_in_foreground:
            return self._start_with_console_socket(ctx, stdio, rt)

        def child() -> None:
            rt.preexec()
            if stdio.tty:
                # Make the pty our controlling terminal so that resizes reach the runtime
                # as SIGWINCH, which it passes on to the container's console.
                os.setsid()
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        proc = subprocess.Popen(
            rt.run(ctx.state_dir, ctx.bundle, ctx.id),
            stdin=stdio.stdin,
            stdout=stdio.stdout,
            stderr=stdio.stderr,
            preexec_fn=child,
            close_fds=True,
        )
        # The monitor reaps the pid itself (waitpid on SIGCHLD); Popen must not.
        proc.returncode = 0
        return Started(proc.pid)

    def _start_with_console_socket(
        self, ctx: BackendContext, stdio: Stdio, rt: OciRuntime
    ) -> Started:
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        _size_console(ctx, stdio.stdin)
        # Deep roots overflow sun_path: both ends use /proc/self/fd/<dirfd>/console.sock,
        # with the directory fd passed to the runtime under the same number.
        dirfd = os.open(ctx.state_dir, os.O_PATH | os.O_DIRECTORY)
        short = f"/proc/self/fd/{dirfd}/console.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                (ctx.state_dir / "console.sock").unlink()
            listener.bind(short)
            listener.listen(1)
            proc = subprocess.Popen(
                rt.run(ctx.state_dir, ctx.bundle, ctx.id, short),
                stdin=stdio.stdin,
                stdout=stdio.stdout,
                stderr=stdio.stderr,
                preexec_fn=rt.preexec,
                pass_fds=(dirfd,),
            )
            proc.returncode = 0
            master = _receive_console(listener, proc.pid)
            return Started(proc.pid, console=master)
        finally:
            listener.close()
            os.close(dirfd)
            (ctx.state_dir / "console.sock").unlink(missing_ok=True)

    def exit_code(self, ctx: BackendContext, status: int) -> int:
        return wait_status_to_code(status)

    def kill(self, ctx: BackendContext, pid: int | None, sig: int) -> None:
        # Between the monitor starting `<runtime> run` and the runtime creating the container,
        # the runtime does not know the id yet. Catchable signals then go to the runtime
        # process, which passes them on; SIGKILL waits for the container to exist, since
        # killing the runtime mid-create would strand its cgroups.
        rt = self.runtime_for(ctx)
        deadline = time.monotonic() + 5
        while True:
            res = self._run(rt, rt.kill(ctx.state_dir, ctx.id, sig), check=False)
            if res.returncode == 0 or pid is None or not _exists(pid):
                return
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                return
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.02)

    def resize(self, ctx: BackendContext, rows: int, cols: int) -> None:
        """Nothing to do: the runtime gets SIGWINCH from the pty the monitor resized."""

    def exec(self, ctx: BackendContext, process: dict[str, Any], *, detach: bool = False) -> int:
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        pfile = ctx.state_dir / f"exec-{os.getpid()}.json"
        pfile.write_text(json.dumps(process))
        try:
            rt = self.runtime_for(ctx)
            argv = rt.exec(
                ctx.state_dir, ctx.id, pfile, tty=bool(process.get("terminal")), detach=detach
            )
            proc = subprocess.Popen(argv, preexec_fn=rt.preexec)
            return proc.wait()
        finally:
            pfile.unlink(missing_ok=True)

    def delete(self, ctx: BackendContext, *, force: bool = False) -> None:
        rt = self.runtime_for(ctx)
        self._run(rt, rt.kill(ctx.state_dir, ctx.id, 9), check=False)
        self._run(rt, rt.delete(ctx.state_dir, ctx.id), check=False)


def _size_console(ctx: BackendContext, slave: int) -> None:
    """The runtime's pty gets our terminal's size before the workload runs: in a foreground
    `run`, crun execs the workload as soon as it has sent the master, so sizing it after we
    received it would race with a workload that asks at once (`stty size`)."""
    from bareboat.fsutil import atomic_write

    rows, cols = terminal_size(slave)
    path = ctx.bundle / "config.json"
    config = json.loads(path.read_bytes())
    config["process"]["consoleSize"] = {"height": rows, "width": cols}
    atomic_write(path, json.dumps(config).encode(), durable=False)


def _receive_console(listener: socket.socket, pid: int) -> int | None:
    """The pty master the runtime sends (SCM_RIGHTS); None if it failed before sending."""
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([listener.fileno(), pidfd], [], [], TIMEOUT)
        if listener.fileno() not in ready:
            return None  # the runtime exited (its error is on the workload's stderr)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        return fds[0] if fds else None
    finally:
        os.close(pidfd)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
