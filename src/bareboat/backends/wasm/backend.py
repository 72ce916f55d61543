"""The `wasm` backend: the engine's backend protocol, one workload process per container.

The workload is a child process of the monitor that runs the module with the stdio fds the
monitor gives it (so `logs`, `-d`, `-t` work as for any process) and ends with the module's
exit code. A process, not a thread in the monitor, because that is what makes a Wasm workload
stoppable at any point: a module blocked in a host call never sees an epoch interrupt, but a
signal ends the process. The workload has SIGTERM/SIGINT at their default actions, so `stop`
gives 143 like an ordinary process that does not catch it.

By default `start` forks the monitor itself, which `create` left with wasmtime imported and
the module compiled: no new interpreter, no second `import wasmtime`. `BAREBOAT_WASM_SHIM=exec`
runs `python -m bareboat.backends.wasm PLAN CACHE` instead (a clean interpreter; ~100 ms more).

`create` does the checking: it reads the bundle's config.json into a `WasmPlan` (argv, env,
preopens from the rootfs and the volume mounts, limits from resources and annotations), finds
and hashes the module, compiles it into the cache, and writes the plan to the backend's state
dir. Errors there are `WasmError`s the user sees as one line; `start` only spawns.

What the engine passes through the spec's annotations (all optional):
  io.bareboat.wasm.module / .digest  the store blob and digest of a Wasm-layer image's module
                                     (see `module.engine_annotations`; only a content-
                                     addressed store blob matching the digest is accepted)
  io.bareboat.wasm.timeout           wall-clock limit in seconds (epoch interruption)
  io.bareboat.wasm.fuel              CPU budget in fuel units
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bareboat.backends.base import (
    BackendContext,
    Started,
    Stdio,
)
from bareboat.backends.child import ChildWorkload
from bareboat.errors import WasmError
from bareboat.paths import Roots

if TYPE_CHECKING:
    from bareboat.backends.base import Backend

from .cache import EngineSettings, ModuleCache
from .module import (
    ANN_DIGEST,
    ANN_MODULE,
    COMPAT_KEY,
    COMPAT_VALUES,
    ModuleRef,
    module_argv,
    module_from_blob,
    module_from_rootfs,
)
from .plan import INHERIT, Limits, Preopen, WasmPlan

ANN_TIMEOUT = "io.bareboat.wasm.timeout"
ANN_FUEL = "io.bareboat.wasm.fuel"
SHIM_ENV = "BAREBOAT_WASM_SHIM"  # "fork" (default) or "exec": how `start` makes the workload

# Kernel filesystems in the spec mean nothing to a Wasm module: WASI has no /proc or /dev.
_KERNEL_DIRS = ("/proc", "/sys", "/dev")
_ETC_FILES = frozenset({"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"})


def _limits(spec: dict[str, Any]) -> Limits:
    ann = spec.get("annotations", {})
    memory = spec.get("linux", {}).get("resources", {}).get("memory", {}).get("limit")
    try:
        timeout = float(ann[ANN_TIMEOUT]) if ANN_TIMEOUT in ann else None
        fuel = int(ann[ANN_FUEL]) if ANN_FUEL in ann else None
    except ValueError:
        raise WasmError(f"invalid {ANN_TIMEOUT} or {ANN_FUEL} annotation") from None
    if timeout is not None and not 0 < timeout < 1e9:
        raise WasmError(f"timeout must be positive, not {timeout:g}")
    if fuel is not None and fuel <= 0:
        raise WasmError(f"fuel budget must be positive, not {fuel}")
    if memory is not None and int(memory) < 65536:
        raise WasmError("--memory must be at least one Wasm page (64 KiB) for wasm isolation")
    return Limits(memory=int(memory) if memory is not None else None, timeout=timeout, fuel=fuel)


def spec_preopens(spec: dict[str, Any], rootfs: Path, scratch: Path) -> tuple[Preopen, ...]:
    """The image root read-only at /, then each volume; a tmpfs becomes a private empty dir."""
    out = [Preopen(str(rootfs), "/", readonly=True)]
    for i, m in enumerate(spec.get("mounts", [])):
        dest = str(m.get("destination", ""))
        if any(dest == k or dest.startswith(k + "/") for k in _KERNEL_DIRS):
            continue
        opts = m.get("options", [])
        readonly = "ro" in opts
        if m.get("type") == "bind" or "bind" in opts or "rbind" in opts:
            source = Path(str(m.get("source", "")))
            if dest in _ETC_FILES and source.is_file():
                continue  # the engine's per-container /etc files: nothing a module reads
            if not source.is_dir():
                raise WasmError(
                    f"volume source {source} is not a directory (WASI preopens only directories)"
                )
            out.append(Preopen(str(source.resolve()), dest, readonly))
        elif m.get("type") == "tmpfs":
            d = scratch / f"tmpfs{i}"
            d.mkdir(parents=True, exist_ok=True)
            out.append(Preopen(str(d), dest, readonly))
        else:
            raise WasmError(f"{m.get('type')} mounts are not supported with wasm isolation")
    return tuple(out)


def locate_module(spec: dict[str, Any], rootfs: Path) -> tuple[ModuleRef, bool]:
    """(module, from_layer): the Wasm layer the engine named, else the entrypoint file."""
    ann = spec.get("annotations", {})
    if ann.get(ANN_MODULE):
        digest = str(ann.get(ANN_DIGEST, ""))
        return module_from_blob(_store_blob(str(ann[ANN_MODULE]), digest), digest), True
    args = spec.get("process", {}).get("args", [])
    if not args:
        raise WasmError("no command given and the image has no entrypoint")
    if not str(args[0]).endswith(".wasm") and ann.get(COMPAT_KEY) not in COMPAT_VALUES:
        raise WasmError(f"{args[0]} is not a Wasm module (expected a *.wasm entrypoint)")
    return module_from_rootfs(rootfs, str(args[0])), False


def _store_blob(path: str, digest: str) -> Path:
    """The module blob the engine named, held to what a store blob looks like.

    Not taken on trust even so, as a second line of defence: it must be a content-addressed
    blob (`.../blobs/sha256/<hex of digest>`), and `module_from_blob` then checks its content
    against the digest.
    """
    p = Path(path)
    algo, _, hexdigest = digest.partition(":")
    if not (
        algo == "sha256"
        and len(hexdigest) == 64
        and p.is_absolute()
        and p.name == hexdigest
        and p.parent.name == "sha256"
        and p.parent.parent.name == "blobs"
    ):
        raise WasmError(f"the Wasm module {path!r} is not a blob of the image store")
    return p


def spec_plan(spec: dict[str, Any], rootfs: Path, scratch: Path) -> WasmPlan:
    """The bundle's config.json as a Wasm plan, with stdio inherited from the shim."""
    module, from_layer = locate_module(spec, rootfs)
    process = spec.get("process", {})
    env = []
    for entry in process.get("env", []):
        key, sep, value = str(entry).partition("=")
        if sep and key:
            env.append((key, value))
    return WasmPlan(
        module=str(module.path),
        digest=module.digest,
        args=module_argv(tuple(str(a) for a in process.get("args", [])), from_layer=from_layer),
        env=tuple(env),
        preopens=spec_preopens(spec, rootfs, scratch),
        stdin=INHERIT,
        stdout=INHERIT,
        stderr=INHERIT,
        limits=_limits(spec),
    )


def _max_fd() -> int:
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if 0 < soft < 1 << 20 else 1 << 16


def shim_argv(plan_path: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "bareboat.backends.wasm", str(plan_path), str(cache)]


class WasmBackend(ChildWorkload):
    name = "wasm"

    def __init__(self, roots: Roots | None = None) -> None:
        # The compiled-module cache is roots.wasm_cache, never from the spec: whoever picks
        # this directory picks native code to run.
        self.cache = (roots or Roots.from_env()).make_private().wasm_cache

    def _plan_path(self, ctx: BackendContext) -> Path:
        return ctx.state_dir / "wasm-plan.json"

    def create(self, ctx: BackendContext) -> None:
        from bareboat.fsutil import atomic_write

        plan = spec_plan(ctx.spec, ctx.rootfs, ctx.state_dir / "tmpfs")
        # Compile now (or find it cached) so a bad module fails `create` with a clear error.
        settings = EngineSettings(consume_fuel=plan.limits.fuel is not None)
        ModuleCache(self.cache).load(settings.engine(), Path(plan.module), plan.digest, settings)
        atomic_write(self._plan_path(ctx), plan.to_json())

    def start(self, ctx: BackendContext, stdio: Stdio) -> Started:
        if os.environ.get(SHIM_ENV, "fork") == "exec":
            pid = self._exec_shim(ctx, stdio)
        else:
            pid = self._fork(ctx, stdio)
        return Started(pid)

    def _exec_shim(self, ctx: BackendContext, stdio: Stdio) -> int:
        """A fresh interpreter runs the plan (pays Python start-up and `import wasmtime`)."""
        try:
            proc = subprocess.Popen(
                shim_argv(self._plan_path(ctx), self.cache),
                stdin=stdio.stdin,
                stdout=stdio.stdout,
                stderr=stdio.stderr,
                close_fds=True,
                start_new_session=stdio.tty,
            )
        except OSError as err:
            raise WasmError(f"cannot start the wasm shim: {err.strerror}") from None
        proc.returncode = 0  # the monitor reaps it
        return proc.pid

    def _fork(self, ctx: BackendContext, stdio: Stdio) -> int:
        """Fork the monitor, which `create` left with wasmtime loaded and the module compiled.

        Saves the ~100 ms a new interpreter and `import wasmtime` cost per container. Safe
        because the monitor is single-threaded (a fork copies only the calling thread, and
        wasmtime starts no threads of its own without parallel compilation). The child never
        returns into the monitor's code: it leaves by `os._exit`, whatever happens.
        """
        plan = WasmPlan.from_json(self._plan_path(ctx).read_bytes())
        cache = self.cache
        from .runner import run_plan
        from .shim import default_signals

        pid = os.fork()
        if pid:
            return pid
        code = 125
        try:
            default_signals()
            if stdio.tty:
                import fcntl
                import termios

                os.setsid()
                fcntl.ioctl(stdio.stdin, termios.TIOCSCTTY, 0)
            else:
                os.setpgid(0, 0)
            for target, fd in enumerate((stdio.stdin, stdio.stdout, stdio.stderr)):
                os.dup2(fd, target)
            os.closerange(3, _max_fd())
            code = run_plan(plan, ModuleCache(cache)).exit_code
        except BaseException as err:  # noqa: BLE001 - nothing may escape into the monitor's code
            with contextlib.suppress(OSError):
                os.write(2, f"bareboat: {err}\n".encode())
        finally:
            os._exit(code)

    def resize(self, ctx: BackendContext, rows: int, cols: int) -> None:
        """Nothing to do: WASI preview 1 has no terminal size."""

    def exec(self, ctx: BackendContext, process: dict[str, Any], *, detach: bool = False) -> int:
        raise WasmError("exec is not supported with wasm isolation (a module is one process)")

    def delete(self, ctx: BackendContext, *, force: bool = False) -> None:
        self._plan_path(ctx).unlink(missing_ok=True)
        shutil.rmtree(ctx.state_dir / "tmpfs", ignore_errors=True)


if TYPE_CHECKING:
    # mypy checks here that WasmBackend keeps to the engine's protocol.
    def _conforms(b: WasmBackend) -> Backend:
        return b
