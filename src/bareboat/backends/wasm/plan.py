"""The plain data one Wasm run needs, built from an image and the user's options.

Plan, then execute: `build_plan` turns the image config, the located module and `RunOptions`
into a `WasmPlan` (argv, env, preopens, stdio, limits) that tests can check without running
anything; `runner.Execution` is the one place that hands a plan to wasmtime. A plan travels
as JSON to the per-container shim process (`python -m bareboat.backends.wasm`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bareboat.errors import WasmError

from .module import module_argv

if TYPE_CHECKING:
    # Types only: the shim process imports this module on every container start.
    from bareboat.images.model import ImageConfig
    from bareboat.spec.options import RunOptions

    from .module import ModuleRef

# A stdio target: a host path, "inherit" (this process's own fd 0/1/2), or None (stdin reads
# EOF, output is discarded).
INHERIT = "inherit"
StdioTarget = str | None


@dataclass(frozen=True)
class Preopen:
    """A host directory the module may reach, at `guest` (WASI preopen). Nothing else is."""

    host: str
    guest: str
    readonly: bool = True


@dataclass(frozen=True)
class Limits:
    memory: int | None = None  # bytes of linear memory (all memories of the store together)
    timeout: float | None = None  # seconds of wall-clock time, via epoch interruption
    fuel: int | None = None  # CPU budget in wasmtime fuel units (≈ one per Wasm instruction)


@dataclass(frozen=True)
class WasmPlan:
    module: str  # host path of the module bytes
    digest: str  # sha256 of those bytes: the cache key
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    # Order matters to a module that does not look its preopens up by name: the image root
    # (if any) is fd 3, then the volumes in the order given.
    preopens: tuple[Preopen, ...] = ()
    stdin: StdioTarget = None
    stdout: StdioTarget = None
    stderr: StdioTarget = None
    limits: Limits = field(default_factory=Limits)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> WasmPlan:
        try:
            raw: dict[str, Any] = json.loads(data)
            return cls(
                module=str(raw["module"]),
                digest=str(raw["digest"]),
                args=tuple(str(a) for a in raw["args"]),
                env=tuple((str(k), str(v)) for k, v in raw["env"]),
                preopens=tuple(Preopen(**p) for p in raw["preopens"]),
                stdin=raw["stdin"],
                stdout=raw["stdout"],
                stderr=raw["stderr"],
                limits=Limits(**raw["limits"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise WasmError(f"malformed Wasm plan: {err}") from None


def merge_env(image_env: tuple[str, ...], extra: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Image env, then the user's `-e K=V` over it (by key); entries without `=` are dropped."""
    merged: dict[str, str] = {}
    for entry in (*image_env, *extra):
        key, sep, value = entry.partition("=")
        if sep and key:
            merged[key] = value
    return tuple(merged.items())


def process_argv(config: ImageConfig, options: RunOptions) -> tuple[str, ...]:
    """Docker's rule: --entrypoint replaces the image's (and drops its cmd), args replace cmd."""
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    if options.entrypoint is not None:
        entrypoint, cmd = options.entrypoint, ()
    else:
        entrypoint, cmd = config.entrypoint, config.cmd
    if options.command is not None:
        cmd = options.command
    return (*entrypoint, *cmd)


def volume_preopens(options: RunOptions) -> tuple[Preopen, ...]:
    out = []
    for m in options.mounts:
        if m.kind != "bind":
            raise WasmError(
                f"{m.kind} mounts are not supported with wasm isolation ({m.destination})"
            )
        host = Path(m.source)
        if not host.is_dir():
            # WASI preopens are directories; a file or missing source cannot be offered.
            raise WasmError(f"volume source {m.source} is not a directory")
        if not m.destination.startswith("/"):
            raise WasmError(f"volume destination {m.destination!r} must be absolute")
        out.append(Preopen(host=str(host.resolve()), guest=m.destination, readonly=m.readonly))
    return tuple(out)


def build_plan(
    config: ImageConfig,
    options: RunOptions,
    module: ModuleRef,
    *,
    rootfs: Path | None,
    from_layer: bool,
    stdin: StdioTarget = None,
    stdout: StdioTarget = None,
    stderr: StdioTarget = None,
    timeout: float | None = None,
    fuel: int | None = None,
) -> WasmPlan:
    """Everything the run needs, checked; nothing is executed here."""
    if options.publish:
        raise WasmError("port publishing is not supported with wasm isolation (no sockets)")
    if timeout is not None and timeout <= 0:
        raise WasmError(f"timeout must be positive, not {timeout}")
    if fuel is not None and fuel <= 0:
        raise WasmError(f"fuel budget must be positive, not {fuel}")
    if options.memory is not None and options.memory < 65536:
        raise WasmError("--memory must be at least one Wasm page (64 KiB)")
    argv = module_argv(process_argv(config, options), from_layer=from_layer)
    preopens: tuple[Preopen, ...] = ()
    if rootfs is not None:
        preopens = (Preopen(host=str(rootfs), guest="/", readonly=True),)
    return WasmPlan(
        module=str(module.path),
        digest=module.digest,
        args=argv,
        env=merge_env(config.env, options.env),
        preopens=preopens + volume_preopens(options),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        limits=Limits(memory=options.memory, timeout=timeout, fuel=fuel),
    )
