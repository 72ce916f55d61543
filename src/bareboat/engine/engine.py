"""`Engine`: the only way front ends touch containers."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from bareboat.backends.base import BackendContext
from bareboat.errors import (
    BackendUnavailable,
    BareboatError,
    ContainerError,
    ContainerNotFound,
    ControlError,
    NameInUse,
    UsageError,
)
from bareboat.images.model import Image
from bareboat.paths import Roots
from bareboat.proc import alive, parse_signal, wait_exit
from bareboat.sandbox.status import Status
from bareboat.spec.options import Isolation, RunOptions

from .leftovers import end_rooted_in
from .names import ID_RE, check_name, new_id, random_name
from .overlay import Overlay, unmount_tree
from .state import Record, RecordStore

TYPE_CHECKING = False  # typing costs import time on every `run`; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any, Protocol

    from bareboat.backends.base import Backend
    from bareboat.control import ControlClient

    class ImageSource(Protocol):
        """What the engine needs from the image store."""

        def ensure(self, ref: str) -> Image: ...

        def rootfs(self, image: Image) -> Path: ...


MONITOR = "the container's monitor"  # who answers on a container's control socket


class ContainerPaths:
    """Every path of one container, derived from the roots.

    A plain class, not a dataclass: creating one costs 1-2 ms at import here, on the
    path of every `run`."""

    __slots__ = ("record", "run")

    def __init__(self, record: Path, run: Path) -> None:
        self.record = record  # roots.containers/<id>: record, writable layer, log (survive reboots)
        self.run = run  # roots.run/<id>: bundle, rootfs mount, socket, runtime state

    @property
    def upper(self) -> Path:
        return self.record / "upper"

    @property
    def work(self) -> Path:
        return self.record / "work"

    @property
    def log(self) -> Path:
        return self.record / "log.jsonl"

    @property
    def bundle(self) -> Path:
        return self.run / "bundle"

    @property
    def rootfs(self) -> Path:
        return self.bundle / "rootfs"

    @property
    def socket(self) -> Path:
        return self.run / "ctl.sock"

    @property
    def monitor_pid(self) -> Path:
        return self.run / "monitor.pid"

    @property
    def monitor_log(self) -> Path:
        return self.run / "monitor.log"

    @property
    def backend_state(self) -> Path:
        return self.run / "oci"


def default_images(roots: Roots) -> ImageSource:
    """The store, through the lookup that finds a named image without its decoders."""
    from bareboat.images.lookup import Images

    images: ImageSource = Images(roots)
    return images


def backend_for(isolation: Isolation, roots: Roots) -> Backend:
    """The one place that knows every backend (each imported only when used)."""
    if isolation is Isolation.CONTAINER:
        from bareboat.backends.container import ContainerBackend

        return ContainerBackend()
    if isolation is Isolation.PROCESS:
        from bareboat.backends.process import ProcessBackend

        return ProcessBackend()
    try:
        if isolation is Isolation.MICROVM:
            from bareboat.backends.microvm.backend import MicrovmBackend

            # its `start` may still return a bare pid, which the monitor accepts too
            vm: Backend = MicrovmBackend(roots)  # type: ignore[assignment]
            return vm
        if isolation is Isolation.WASM:
            from bareboat.backends.wasm import WasmBackend

            wasm: Backend = WasmBackend(roots)
            return wasm
    except ImportError as err:
        raise BackendUnavailable(f"isolation {isolation.value} is not available: {err}") from None
    raise BackendUnavailable(f"isolation {isolation.value} is not available in this build")


class Engine:
    def __init__(self, roots: Roots, *, images: ImageSource | None = None) -> None:
        self.roots = roots.make_private()
        self._images = images
        self.records = RecordStore(roots.containers)

    @property
    def images(self) -> ImageSource:
        if self._images is None:
            self._images = default_images(self.roots)
        return self._images

    # --- paths and helpers -------------------------------------------------------------
    def paths(self, cid: str) -> ContainerPaths:
        return ContainerPaths(self.roots.containers / cid, self.roots.run / cid)

    def backend(self, isolation: Isolation) -> Backend:
        return backend_for(isolation, self.roots)

    def context(self, cid: str) -> BackendContext:
        p = self.paths(cid)
        try:
            spec = json.loads((p.bundle / "config.json").read_text())
        except FileNotFoundError:
            spec = {}
        return BackendContext(
            id=cid, bundle=p.bundle, state_dir=p.backend_state, spec=spec, control=p.socket
        )

    def overlay(self, cid: str, *, volatile: bool = False) -> Overlay:
        p = self.paths(cid)
        lower = Path((p.record / "lower").read_text())
        return Overlay(lower=lower, upper=p.upper, work=p.work, target=p.rootfs, volatile=volatile)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.roots.containers.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.roots.containers / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- lookup ------------------------------------------------------------------------
    def resolve(self, ref: str) -> str:
        """A full id from an id, a unique id prefix or a name."""
        # A full id is looked up alone: `run` resolves its own id several times, and listing
        # every container for it cost each `run` a look at every record on the host.
        if ID_RE.match(ref) and (self.records.dir(ref) / RecordStore.FILE).is_file():
            return ref
        ids = self.records.ids()
        for cid in ids:
            with contextlib.suppress(ContainerError, ValueError, KeyError):
                if self.records.load(cid).name == ref:
                    return cid
        hits = [cid for cid in ids if cid.startswith(ref)] if len(ref) >= 3 else []
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise UsageError(f"{ref!r} matches more than one container; give more of the id")
        raise ContainerNotFound(f"no such container: {ref}")

    def get(self, ref: str) -> Record:
        """The record, made true if its monitor died without writing the end: what the monitor
        left running is ended first (see `_end_orphan`)."""
        cid = self.resolve(ref)
        rec = self.records.load(cid)
        if rec.state in (Status.RUNNING, Status.PAUSED) and not alive(
            rec.monitor_pid, rec.monitor_start
        ):
            rec = self._end_orphan(cid)
        return rec

    def _end_orphan(self, cid: str) -> Record:
        """A container whose monitor died (kill -9, OOM) has no one to end its workload,
        unmount its root or record its end: the first engine call that sees it does all three,
        so that `ps` says exited only of a container of which nothing runs any more."""
        with self._container_lock(cid):
            # Re-read under the lock: the monitor may have written the end itself, or another
            # caller already ended what it left.
            rec = self.records.load(cid)
            if rec.state not in (Status.RUNNING, Status.PAUSED) or alive(
                rec.monitor_pid, rec.monitor_start
            ):
                return rec
            self._end_leftovers(rec)
            rec.move_to(Status.EXITED)
            rec.exit_code, rec.finished, rec.pid, rec.pid_start = 255, time.time(), None, None
            rec.error = "the container's monitor died; bareboat ended what it had left running"
            self.records.save(rec)
            return rec

    def _end_leftovers(self, rec: Record) -> None:
        """End whatever of the container runs without its monitor, and unmount its root."""
        p = self.paths(rec.id)
        with contextlib.suppress(BareboatError, OSError):
            # the backend's own way: the runtime's container (cgroup, PID namespace), the VM
            self.backend(rec.isolation).delete(self.context(rec.id), force=True)
        # the monitor's child (the runtime, a Wasm runner), if that process still runs
        if rec.pid is not None and alive(rec.pid, rec.pid_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, signal.SIGKILL)
        # processes chrooted (process) or pivoted (container) into the container's root mount
        end_rooted_in(p.rootfs)
        unmount_tree(p.rootfs)
        shutil.rmtree(p.work, ignore_errors=True)

    @contextlib.contextmanager
    def _container_lock(self, cid: str) -> Iterator[None]:
        fd = os.open(self.paths(cid).record, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def containers(self, *, all: bool = False) -> list[Record]:
        out = []
        for cid in self.records.ids():
            with contextlib.suppress(ContainerError):
                rec = self.get(cid)
                if all or rec.state in (Status.RUNNING, Status.PAUSED):
                    out.append(rec)
        return sorted(out, key=lambda r: r.created, reverse=True)

    # --- lifecycle ---------------------------------------------------------------------
    def create(self, image_ref: str, options: RunOptions, *, auto_remove: bool = False) -> Record:
        from bareboat.spec.builder import build_spec, write_bundle

        if options.isolation is not Isolation.AUTO:
            self.backend(options.isolation)  # fail early for an isolation we cannot run
        image = self.images.ensure(image_ref)
        if options.isolation is Isolation.AUTO:
            from bareboat.backends.wasm.hooks import auto_isolation

            options = auto_isolation(image, options)
            self.backend(options.isolation)
        lower = None
        if options.isolation is Isolation.WASM:  # a Wasm-layer image has no rootfs to unpack
            from bareboat.backends.wasm.hooks import prepare

            empty = self.roots.images / "empty-rootfs"
            options, lower = prepare(image, options, images=self.images, empty_root=empty)
        lower = lower or self.images.rootfs(image)
        for m in options.mounts:  # docker creates a missing `-v` source as a directory
            if m.kind == "bind" and not os.path.lexists(m.source):
                Path(m.source).mkdir(parents=True, exist_ok=True)
        cid = new_id()
        p = self.paths(cid)
        try:
            spec = build_spec(
                image.config,
                options,
                rootfs=lower,
                container_id=cid,
                root_path=str(p.rootfs),
                etc_dir=p.bundle / "etc",
            )
            _check_runnable(options.isolation, spec)
            with self._lock():
                name = check_name(options.name) if options.name else self._free_name()
                if options.name and self._name_taken(name):
                    raise NameInUse(f"the name {name!r} is in use by another container")
                p.record.mkdir(mode=0o700)
                (p.record / "lower").write_text(str(lower))
                p.run.mkdir(mode=0o700)
                p.bundle.mkdir()
                # A --rm container's bundle is not worth an fsync: see RecordStore.save
                write_bundle(p.bundle, spec, etc_dir=p.bundle / "etc", durable=not auto_remove)
                rec = Record(
                    id=cid,
                    name=name,
                    image=image_ref,
                    image_id=image.id,
                    isolation=options.isolation,
                    options=options,
                    auto_remove=auto_remove,
                    stop_signal=image.config.stop_signal,
                )
                self.records.save(rec)
        except BaseException:
            shutil.rmtree(p.record, ignore_errors=True)
            shutil.rmtree(p.run, ignore_errors=True)
            raise
        return rec

    def _name_taken(self, name: str) -> bool:
        for cid in self.records.ids():
            with contextlib.suppress(ContainerError, ValueError, KeyError):
                if self.records.load(cid).name == name:
                    return True
        return False

    def _free_name(self) -> str:
        for _ in range(20):
            name = random_name()
            if not self._name_taken(name):
                return name
        return f"{random_name()}_{new_id()[:6]}"

    def start(self, ref: str, *, wait_attach: bool = False) -> Record:
        """Start the container's monitor. With `wait_attach`, the workload starts only once
        a client attached (so a foreground run sees all of its output)."""
        from .monitor import spawn

        rec = self.get(ref)
        if rec.state not in (Status.CREATED, Status.EXITED):
            raise ContainerError(f"container {rec.short_id} is already {rec.state.value}")
        p = self.paths(rec.id)
        p.bundle.mkdir(parents=True, exist_ok=True)
        spawn(self, rec.id, wait_attach=wait_attach)
        return self.records.load(rec.id) if p.record.exists() else rec

    def monitor(self, ref: str) -> tuple[int | None, int | None]:
        """The pid and start time of the container's monitor, from the file it writes
        first thing (the record learns them only once the workload runs)."""
        return _pid_file(self.paths(self.resolve(ref)).monitor_pid)

    def attach(self, ref: str) -> ControlClient:
        """A client of the container's control socket, served by its monitor."""
        from bareboat.control import ControlClient

        rec = self.get(ref)
        return ControlClient(self.paths(rec.id).socket, peer=MONITOR)

    def kill(self, ref: str, sig: int = signal.SIGKILL) -> None:
        rec = self.get(ref)
        if rec.state not in (Status.RUNNING, Status.PAUSED):
            raise ContainerError(f"container {rec.short_id} is not running")
        self.backend(rec.isolation).kill(self.context(rec.id), rec.pid, sig)

    def wait(self, ref: str, timeout: float | None = None) -> int:
        """Block until the container exits; its exit code (also for --rm containers, whose
        record is gone by then: the monitor tells every connected client the code)."""
        rec = self.get(ref)
        cid = rec.id
        if rec.state in (Status.RUNNING, Status.PAUSED) and alive(
            rec.monitor_pid, rec.monitor_start
        ):
            from bareboat.control import ControlClient

            try:
                client = ControlClient(self.paths(cid).socket, peer=MONITOR)
            except ControlError:
                client = None  # the monitor is just ending: fall through to the record
            if client is not None:
                try:
                    code = client.wait(timeout)
                except (OSError, BareboatError):
                    code = -1  # the monitor went away: its record (if any) has the end
                finally:
                    client.close()
                if code is None:
                    raise ContainerError(f"container {rec.short_id} is still running")
                # The monitor sends the code once it has cleaned up, then exits: wait for
                # that too, so that nothing of the container is left when we return.
                wait_exit(rec.monitor_pid, rec.monitor_start, 10)
                if code >= 0:
                    return code
        if not self.paths(cid).record.exists():
            return rec.exit_code or 0
        rec = self.get(cid)
        return rec.exit_code if rec.exit_code is not None else 0

    def stop(self, ref: str, timeout: float = 10) -> Record:
        """The image's stop signal (or SIGTERM), then SIGKILL after `timeout` seconds."""
        rec = self.get(ref)
        if rec.state not in (Status.RUNNING, Status.PAUSED):
            return rec
        sig = _stop_signal(rec)
        backend = self.backend(rec.isolation)
        ctx = self.context(rec.id)
        backend.kill(ctx, rec.pid, sig)
        try:
            self.wait(rec.id, timeout)
        except ContainerError:
            backend.kill(ctx, rec.pid, signal.SIGKILL)
            self.wait(rec.id, 10)
        return self.get(rec.id) if self.paths(rec.id).record.exists() else rec

    def remove(self, ref: str, *, force: bool = False) -> None:
        """Remove a container; with `force`, kill it first. Always leaves nothing behind."""
        rec = self.get(ref)
        if rec.state in (Status.RUNNING, Status.PAUSED) and not force:
            raise ContainerError(
                f"container {rec.short_id} is {rec.state.value}: stop it or use -f"
            )
        p = self.paths(rec.id)
        if alive(rec.monitor_pid, rec.monitor_start):
            with contextlib.suppress(BareboatError, OSError):
                self.backend(rec.isolation).kill(self.context(rec.id), rec.pid, signal.SIGKILL)
                self.wait(rec.id, 10)
        # a monitor still there (hung, or interrupted before the workload started) goes too
        for pid, start in ((rec.monitor_pid, rec.monitor_start), _pid_file(p.monitor_pid)):
            if pid is not None and alive(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_exit(pid, start, 5)
        self._end_leftovers(rec)
        shutil.rmtree(p.run, ignore_errors=True)
        shutil.rmtree(p.record, ignore_errors=True)

    # --- exec and logs -----------------------------------------------------------------
    def exec(
        self,
        ref: str,
        args: list[str],
        *,
        env: tuple[str, ...] = (),
        workdir: str | None = None,
        user: str | None = None,
        tty: bool = False,
        detach: bool = False,
    ) -> int:
        from bareboat.spec.builder import exec_process
        from bareboat.spec.users import resolve_user

        rec = self.get(ref)
        if rec.state is not Status.RUNNING:
            raise ContainerError(f"container {rec.short_id} is not running")
        if not args:
            raise UsageError("exec needs a command")
        ctx = self.context(rec.id)
        process = exec_process(
            ctx.spec["process"],
            args,
            env=env,
            workdir=workdir,
            user=resolve_user(ctx.rootfs, user) if user else None,
            tty=tty,
        )
        return self.backend(rec.isolation).exec(ctx, process, detach=detach)

    def logs(self, ref: str, *, follow: bool = False) -> Iterator[tuple[float, str, bytes]]:
        """(timestamp, "stdout"|"stderr", data) as the monitor logged them, oldest first,
        across the log's rotated files; with `follow`, until the container exits."""
        from .logfile import read_log

        rec = self.get(ref)
        paths = self.paths(rec.id)

        def finished() -> bool:
            if not paths.record.exists():
                return True
            try:
                return self.get(rec.id).state is Status.EXITED
            except ContainerNotFound:
                return True

        yield from read_log(paths.log, until=finished if follow else None)


def _check_runnable(isolation: Isolation, spec: dict[str, Any]) -> None:
    """Refuse at create, before anything is made, a container its backend would refuse at
    start: a VM larger than this host (more vCPUs than CPUs, more RAM) or that a guest cannot
    honour."""
    if isolation is Isolation.MICROVM:
        from bareboat.backends.microvm import vmspec

        vmspec.check_host(vmspec.parse_config(spec), vmspec.HostSize.current())


def _stop_signal(rec: Record) -> int:
    """The image's StopSignal; SIGTERM, with a warning, where it names no signal (the image's
    config is its author's data, and docker too falls back rather than fail the stop)."""
    if not rec.stop_signal:
        return signal.SIGTERM
    try:
        sig = parse_signal(rec.stop_signal)
    except UsageError:
        sig = 0
    if 1 <= sig <= signal.SIGRTMAX:
        return sig
    import logging

    logging.getLogger("bareboat").warning(
        "bareboat: warning: the image's StopSignal %r is not a signal; "
        "stopping container %s with SIGTERM",
        rec.stop_signal[:64],
        rec.short_id,
    )
    return signal.SIGTERM


def _pid_file(path: Path) -> tuple[int | None, int | None]:
    try:
        pid, start = path.read_text().split()
        return int(pid), int(start)
    except (FileNotFoundError, ValueError):
        return None, None
