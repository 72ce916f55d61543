"""Every `run` option of the README × every isolation × both front ends, as planned data.

Nothing is booted, started or mounted by this file; each front end's plan is what its own code
makes of the bundle it wrote or was handed:

- **bareboat** (CLI and SDK, through `Engine`): `Engine.create` writes the bundle as it does for
  that isolation (the Wasm hooks, the spec builder, the host check; one fixed container id, so
  that two bundles differ only by their options). `container` hands that bundle to crun/runc as
  it is; `process` reads it as `ProcessView` says; `wasm` through `spec_plan`, as the wasm
  backend's `create` does; `microvm` through `MicrovmBackend.read` and `vmplan`, its VM plan
  checked against tests/microvm/test_vmplan.py's row of the same flags.
- **bareboat-runtime under podman**: real podman creates a container of the same option given as
  podman flags, with a recorder as its OCI runtime. At `create` the recorder holds the bundle,
  podman's rootfs mounted and its network namespace up, while the test plans it as
  bareboat-runtime's isolations do (runtime/process.py's reading, `sandbox.wasm.compile_plan`,
  `sandbox.microvm.VmSandbox` and `vmplan`, the container cgroup's CPU limit), then fails the
  create.

Each row states, per isolation, everything its option changes against no option at all, or the
one error that refuses it where that isolation cannot honour it. Under podman, what the option
changes must equal what it changes under bareboat, key by key, but for the differences each
row names with their reason (podman's own defaults, podman's networking). A cell whose right
answer the code does not give yet names the bug (`Row.bugs`): it is reported as an expected
failure, and fails once the bug is fixed, so that the note goes.

The image is for planning only: a Wasm "compat" image (`module.wasm.image/variant=compat`)
whose `/bin/sh` and `/bin/echo` are WASI modules, so that one image, one command and one set of
flags serve all four isolations.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bareboat.backends.base import MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC
from bareboat.backends.wasm.plan import Preopen
from bareboat.errors import BareboatError
from bareboat.paths import Roots
from bareboat.spec.options import Isolation, PortMapping, RunOptions
from bareboat.spec.parse import parse_tmpfs, parse_volume
from tests.microvm.test_vmplan import CASES as VM_CASES
from tests.support.imagebuild import GROUP, PASSWD, Entry, Image, write_image
from tests.support.vmplanning import Planned, changes, plan_vm

CID = "0123456789abcdef" * 4  # the engine's container id, for every bundle made here
ISOLATIONS = (Isolation.CONTAINER, Isolation.PROCESS, Isolation.WASM, Isolation.MICROVM)
COMPAT = ("module.wasm.image/variant", "compat")
GONE = "(not there)"  # the value of a key the option removed
SAME = "(unchanged)"  # in a row's podman differences: podman's plan leaves this key as it was


# --- plans as comparable data ----------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """The option refused: at `create` (the engine's `Engine.create`), when the isolation reads
    the bundle (`plan`: the backend's create, bareboat-runtime's create), or by podman itself
    (`podman`), with this one line."""

    stage: str
    message: str


@dataclass(frozen=True)
class ProcessView:
    """What `process` isolation reads of config.json: backends/process under bareboat and
    runtime/process.py under bareboat-runtime. Nothing else reaches the workload: no cgroup
    limit, no hostname (no UTS namespace) and, under bareboat, no network namespace."""

    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    terminal: bool
    readonly_root: bool  # the root remounted read-only
    mounts: tuple[tuple[str, str, str, int, str], ...]  # plan_mounts: what is mounted where


def process_view(config: dict[str, Any]) -> ProcessView:
    from bareboat.backends.process.backend import plan_mounts
    from bareboat.runtime.lifecycle import process_env
    from bareboat.runtime.process import user_ids

    process = config["process"]
    uid, gid, groups = user_ids(process)
    readonly = bool((config.get("root") or {}).get("readonly"))
    return ProcessView(
        args=tuple(process["args"]),
        env=tuple(f"{k}={v}" for k, v in process_env(process).items()),
        cwd=process.get("cwd") or "/",
        uid=uid,
        gid=gid,
        groups=tuple(groups),
        terminal=bool(process.get("terminal")),
        readonly_root=readonly,
        mounts=tuple(plan_mounts(config)),
    )


def vm_view(p: Planned, **more: Any) -> dict[str, Any]:
    return {"qemu": p.config, "start": p.start, "vmm_cpu_limit": p.vmm_cpu_limit, **more}


# List fields that are sets of things with a name: compared element by element, by that name.
_KEYED: dict[str, Callable[[Any], str]] = {
    "env": lambda e: e.partition("=")[0] if isinstance(e, str) else e[0],
    "mounts": lambda m: (
        m["destination"] if isinstance(m, dict) else m[1] if isinstance(m, tuple) else m.target
    ),
    "shares": lambda s: s.tag,
    "files": lambda f: f.path,
    "preopens": lambda p: p.guest,
}
# Dataclass fields that hold more fields rather than one value.
_NESTED = frozenset({"qemu", "start", "process", "limits"})


def flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dicts and dataclasses as one level of dotted keys; env, mounts, shares, files and
    preopens keyed by name (`process.env[FOO]`, `mounts[/data]`), so that an option's change
    reads as the few keys it touches, whatever the order or what podman adds."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items: Any = ((f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj))
    else:
        items = obj.items()
    out: dict[str, Any] = {}
    for name, value in items:
        path = f"{prefix}.{name}" if prefix else str(name)
        if name in _KEYED and isinstance(value, list | tuple):
            for item in value:
                key = _KEYED[name](item)
                if name == "env":  # the key is in the name
                    item = item.partition("=")[2] if isinstance(item, str) else item[1]
                out[f"{path}[{key}]"] = item
        elif isinstance(value, dict) or name in _NESTED:
            out.update(flat(value, path))
        else:
            out[path] = value
    return out


# A tmpfs's scratch directory for a module is numbered by its place among the bundle's mounts.
_SCRATCH_INDEX = re.compile(r"<scratch>/tmpfs\d+")


def named(value: Any, names: tuple[tuple[str, str], ...]) -> Any:
    """`value` with each host path or id of `names` replaced by its name, all the way down."""
    if isinstance(value, str):
        for old, new in names:
            value = value.replace(old, new)
        return _SCRATCH_INDEX.sub("<scratch>/tmpfs<n>", value)
    if isinstance(value, bytes):
        return named(value.decode(), names).encode()
    if isinstance(value, Path):
        return Path(named(str(value), names))
    if isinstance(value, list | tuple):
        return type(value)(named(v, names) for v in value)
    if isinstance(value, dict):
        return {k: named(v, names) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kw = {f.name: named(getattr(value, f.name), names) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **kw)
    return value


def names_of(paths: list[tuple[Path, str]], cid: str) -> tuple[tuple[str, str], ...]:
    """What `named` replaces: the host paths (longest first), then the container's id and the
    hostname made of it."""
    ordered = sorted(((str(p), n) for p, n in paths), key=lambda x: -len(x[0]))
    return (*ordered, (cid, "<id>"), (cid[:12], "<id12>"))


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """The keys whose values differ, with the new value (GONE where the key went)."""
    keys = sorted(set(before) | set(after))
    return {k: after.get(k, GONE) for k in keys if before.get(k, GONE) != after.get(k, GONE)}


@dataclass(frozen=True)
class Plans:
    """One bundle and what an isolation made of it, flattened, host paths and ids named."""

    bundle: dict[str, Any]  # config.json and, under bareboat, its /etc files (etc.<name>)
    plan: dict[str, Any]  # the isolation's own reading (the bundle itself for container)
    vm: Planned | None = None  # microvm: the plan as made, for test_vmplan's rows


# --- the image and the files the options name ---------------------------------------------------


def write_matrix_image(layout: Path) -> None:
    """The planning image (see the docstring) as an OCI layout, tagged `latest`."""
    import wasmtime

    wat = '(module (memory (export "memory") 1) (func (export "_start")))'
    module = bytes(wasmtime.wat2wasm(wat))
    entries = [
        Entry("etc", "dir", mode=0o755),
        Entry("etc/passwd", "file", PASSWD.encode()),
        Entry("etc/group", "file", GROUP.encode()),
        Entry("home", "dir", mode=0o755),
        Entry("home/app", "dir", mode=0o755, uid=1000, gid=1000),
        Entry("bin", "dir", mode=0o755),
        Entry("bin/sh", "file", module, mode=0o755),
        Entry("bin/echo", "file", module, mode=0o755),
        Entry("srv", "dir", mode=0o755),  # podman's -w wants the directory there
        Entry("tmp", "dir", mode=0o1777),
    ]
    image = Image(layers=[entries], cmd=["/bin/sh", "-c", "true"], env=["PATH=/bin"],
                  labels=dict([COMPAT]))  # fmt: skip
    write_image(layout, image)


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory of this module's own: the image's layout, the files `-v` shares (`dir`,
    `app.conf`), and bareboat's roots and cache (also bareboat-runtime's, through the env)."""
    if os.geteuid() != 0:
        pytest.skip("the image store keeps the image's owners only as root here")
    base = tmp_path_factory.mktemp("matrix")
    write_matrix_image(base / "layout")
    (base / "files" / "dir").mkdir(parents=True)
    (base / "files" / "app.conf").write_text("x=1\n")
    with pytest.MonkeyPatch.context() as mp:
        for var, name in (("BAREBOAT_ROOT", "root"), ("BAREBOAT_STATE", "state"),
                          ("BAREBOAT_CACHE", "cache")):  # fmt: skip
            mp.setenv(var, str(base / name))
        mp.delenv("BAREBOAT_TEMPLATE", raising=False)
        yield base


# --- bareboat: the engine's bundle and each isolation's reading of it ---------------------------


class EngineFrontEnd:
    """`Engine.create` of the matrix image with a fixed id, then each isolation's plan."""

    def __init__(self, base: Path) -> None:
        from bareboat.images.store import ImageStore

        self.roots = Roots(root=base / "root", state=base / "state", cache=base / "cache")
        self.files = base / "files"
        [image] = ImageStore(self.roots).load(base / "layout")
        self.ref = image.names[0]
        self._baselines: dict[Isolation, Plans | Refused] = {}

    def baseline(self, isolation: Isolation) -> Plans:
        if isolation not in self._baselines:
            self._baselines[isolation] = self.plans(isolation, RunOptions())
        base = self._baselines[isolation]
        assert isinstance(base, Plans), base
        return base

    def plans(self, isolation: Isolation, options: RunOptions) -> Plans | Refused:
        from bareboat.engine import engine as engine_module

        engine = engine_module.Engine(self.roots)
        options = dataclasses.replace(options, isolation=isolation)
        names = names_of([(self.files, "<files>")], CID)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(engine_module, "new_id", lambda: CID)
            try:
                engine.create(self.ref, options, auto_remove=True)
            except BareboatError as e:
                return Refused("create", named(str(e), names))
        p = engine.paths(CID)
        try:
            ctx = engine.context(CID)
            etc = {f.name: f.read_text() for f in sorted((p.bundle / "etc").iterdir())}
            tree = Path((p.record / "lower").read_text())  # what the monitor mounts at rootfs
            paths = [(ctx.state_dir / "tmpfs", "<scratch>"), (p.bundle, "<bundle>"),
                     (tree, "<rootfs>"), (self.files, "<files>")]  # fmt: skip
            vm = None
            try:
                if isolation is Isolation.CONTAINER:
                    plan: Any = ctx.spec  # crun/runc get it as it is
                elif isolation is Isolation.PROCESS:
                    plan = process_view(ctx.spec)
                elif isolation is Isolation.WASM:
                    from bareboat.backends.wasm.backend import spec_plan

                    plan = spec_plan(ctx.spec, tree, ctx.state_dir / "tmpfs")
                else:
                    from bareboat.backends.microvm.backend import MicrovmBackend

                    vm = plan_vm(MicrovmBackend(self.roots), ctx)
                    plan = vm_view(vm)
                    paths += [(vm.vmdir.path, "<vm>"), (vm.vmdir.sockets, "<vm-sockets>")]
            except BareboatError as e:
                return Refused("plan", named(str(e), names_of(paths, CID)))
            names = names_of(paths, CID)
            bundle = named(flat({**ctx.spec, "etc": etc}), names)
            return Plans(bundle, named(flat(plan), names), vm)
        finally:
            shutil.rmtree(p.record, ignore_errors=True)
            shutil.rmtree(p.run, ignore_errors=True)


@pytest.fixture(scope="module")
def bareboat(matrix: Path) -> EngineFrontEnd:
    return EngineFrontEnd(matrix)


# --- bareboat-runtime under podman: podman's bundle, planned while the recorder holds it ---------

RECORDER_NAME = "matrix-recorder"
RECORDER = """#!/bin/sh
# The option matrix's OCI runtime: at `create`, hand the bundle's path to the test and hold it
# (rootfs mounted, network namespace up) until the test has planned it, then fail the create,
# so that nothing starts. Every other command succeeds doing nothing (podman's cleanup).
held=@HELD@
prev=""
bundle=""
for arg; do
    if [ "$prev" = "--bundle" ] || [ "$prev" = "-b" ]; then bundle=$arg; fi
    prev=$arg
done
case " $* " in
*" create "*) ;;
*) exit 0 ;;
esac
id=$arg
echo "$bundle" > "$held/$id.tmp" && mv "$held/$id.tmp" "$held/$id.bundle"
i=0
while [ ! -e "$held/$id.planned" ] && [ $i -lt 1200 ]; do
    sleep 0.05
    i=$((i + 1))
done
echo "planned by the option matrix, not created" >&2
exit 1
"""
HOLD_TIMEOUT = 60.0  # seconds; the recorder gives up after as long


class PodmanFrontEnd:
    """podman with the recorder as its runtime: one `create` and one `init` per row, whose
    bundle is planned as bareboat-runtime's isolations plan it while the recorder holds it."""

    def __init__(self, pm: Any, matrix: Path) -> None:
        self.pm = pm
        self.files = matrix / "files"
        self.base = pm.base / "matrix"
        self.held = self.base / "held"
        self.held.mkdir(parents=True)
        script = self.base / RECORDER_NAME
        script.write_text(RECORDER.replace("@HELD@", str(self.held)))
        script.chmod(0o755)
        pm.wrappers[RECORDER_NAME] = str(script)
        self._plans: dict[tuple[str, ...], dict[Isolation, Plans | Refused] | Refused] = {}

    def plans(self, pod: Pod) -> dict[Isolation, Plans | Refused] | Refused:
        """Per isolation, what bareboat-runtime plans of podman's bundle for `pod`."""
        net = () if "--network" in pod.flags else ("--network", "none")
        flags = tuple(f.replace("@files", str(self.files)) for f in pod.flags)
        args = ("--annotation", "=".join(COMPAT), *net, *flags, self.pm.image, *pod.command)
        if args not in self._plans:
            self._plans[args] = self._create(args)
        return self._plans[args]

    def _create(self, args: tuple[str, ...]) -> dict[Isolation, Plans | Refused] | Refused:
        res = self.pm("create", *args, runtime=RECORDER_NAME, check=False)
        if res.returncode != 0:
            return Refused("podman", res.stderr.strip().splitlines()[-1])
        cid = res.stdout.strip().splitlines()[-1]
        init = subprocess.Popen(
            self.pm.argv("init", cid, runtime=RECORDER_NAME), env=self.pm.env, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            bundle = self._held_bundle(cid, init)
            if bundle is None:  # podman refused before it called the runtime
                _, err = init.communicate(timeout=HOLD_TIMEOUT)
                return Refused("podman", err.strip().splitlines()[-1])
            plans = self._plan(cid, bundle)
        finally:
            (self.held / f"{cid}.planned").touch()
        _, err = init.communicate(timeout=HOLD_TIMEOUT)
        assert init.returncode != 0 and "planned by the option matrix" in err, err
        return plans

    def _held_bundle(self, cid: str, init: subprocess.Popen[str]) -> Path | None:
        """The bundle the recorder holds; None if podman ended without calling it."""
        path = self.held / f"{cid}.bundle"
        deadline = time.monotonic() + HOLD_TIMEOUT
        while not path.exists():
            if init.poll() is not None:
                return None
            if time.monotonic() > deadline:
                raise AssertionError("podman never called the runtime's create")
            time.sleep(0.02)
        return Path(path.read_text().strip())

    def _plan(self, cid: str, bundle: Path) -> dict[Isolation, Plans | Refused]:
        from bareboat.backends.microvm import hostcgroup
        from bareboat.runtime.lifecycle import rootfs_of
        from bareboat.sandbox.microvm import VmFiles, VmSandbox
        from bareboat.sandbox.wasm import compile_plan

        config = json.loads((bundle / "config.json").read_text())
        rootfs = Path(rootfs_of(str(bundle), config))
        scratch = self.base / "scratch"
        sandbox_dir = str(self.base / "sandbox")
        vmfiles = VmFiles(sandbox_dir)
        userdata = self.pm.base / "runroot" / "overlay-containers" / cid / "userdata"
        paths = [(bundle, "<bundle>"), (rootfs, "<rootfs>"), (userdata, "<userdata>"),
                 (scratch, "<scratch>"), (self.files, "<files>"), (Path(vmfiles.path), "<vm>"),
                 (Path(vmfiles.sockets), "<vm-sockets>")]  # fmt: skip
        for ns in config["linux"]["namespaces"]:
            if ns.get("path"):
                paths.append((Path(ns["path"]), f"<{ns['type']}-ns>"))
        names = names_of(paths, cid)
        out: dict[Isolation, Plans | Refused] = {}
        for isolation in ISOLATIONS:
            vm = None
            try:
                if isolation is Isolation.CONTAINER:
                    plan: Any = config  # runc gets it as it is
                elif isolation is Isolation.PROCESS:
                    plan = process_view(config)
                elif isolation is Isolation.WASM:
                    plan, _ = compile_plan(config, str(rootfs), str(scratch))
                else:
                    sandbox = VmSandbox(cid, str(bundle), sandbox_dir, config, str(rootfs))
                    vm = plan_vm(sandbox.backend, sandbox.ctx)
                    # The gate applies the CPU limit to the container's cgroup, QEMU's parent
                    # (sandbox/microvm.VmSandbox's gate setup), not to the VMM's own.
                    cpu = hostcgroup.cpu_limits(config["linux"].get("resources"))
                    plan = vm_view(vm, container_cpu_limit=(cpu.quota, cpu.period))
            except BareboatError as e:
                out[isolation] = Refused("plan", named(str(e), names))
                continue
            out[isolation] = Plans(named(flat(config), names), named(flat(plan), names), vm)
        return out


@pytest.fixture(scope="module")
def podman(matrix: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodmanFrontEnd]:
    from tests.runtime.clients import podman as start_podman

    with start_podman(tmp_path_factory.mktemp("podman"), matrix / "layout") as pm:
        yield PodmanFrontEnd(pm, matrix)


# --- the table ----------------------------------------------------------------------------------

Changes = Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]]
HOST = socket.gethostname()  # what a container with the host's network is called
BIND = MS_BIND | MS_REC
HOSTS_WEB = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tweb\n"
PORTS = (PortMapping(8080, 80), PortMapping(5353, 53, "udp", "0.0.0.0"))
SLIRP_RESOLV = {"etc.resolv.conf": "nameserver 10.0.2.3\n"}
NO_SOCKETS = Refused(
    "create", "port publishing (-p) is not supported with wasm isolation (no sockets)"
)


@dataclass(frozen=True)
class Pod:
    """An option as podman flags (before the image) and command (after it): `--network none`
    unless the flags name a network. `differs` says, per isolation, where what it changes in
    bareboat-runtime's plan differs from what the same option changes in bareboat's: the key
    and podman's value (SAME: podman's plan does not change the key), all of podman's change
    where bareboat refuses the option, or podman's refusal; `why` says why."""

    flags: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    differs: Mapping[Isolation, Mapping[str, Any] | Refused] = field(default_factory=dict)
    why: str = ""
    network: bool = False  # needs podman's default network, which may not work on a host


@dataclass(frozen=True)
class Row:
    """One option and what it changes, per isolation, against a container of no option."""

    flags: str  # the `run` flags, as the README writes them
    options: Callable[[Path], dict[str, Any]]  # RunOptions fields, given the files' directory
    bundle: Changes  # in bareboat's bundle: config.json, and the /etc files (`etc.<name>`)
    process: Changes | Refused  # in ProcessView
    wasm: Changes | Refused  # in WasmPlan
    container: Refused | None = None  # None: the bundle is crun's/runc's plan
    microvm: Refused | None = None  # None: as test_vmplan's row of these flags says
    podman: Pod | None = None
    # Cells ("bareboat/process", "podman/process", ...) whose expectation is right and the
    # code wrong, with what is wrong.
    bugs: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.flags

    def cell(self, isolation: Isolation) -> Changes | Refused | None:
        return {
            Isolation.CONTAINER: self.container,
            Isolation.PROCESS: self.process,
            Isolation.WASM: self.wasm,
            Isolation.MICROVM: self.microvm,
        }[isolation]


def _bind(source: str, dest: str, *options: str) -> dict[str, Any]:
    return {"destination": dest, "type": "bind", "source": source, "options": list(options)}


def _tmpfs(dest: str, *options: str) -> dict[str, Any]:
    return {"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": list(options)}


def _vm_tmpfs(dest: str, options: str) -> Any:
    from bareboat.backends.microvm.agent import Mount

    return Mount(dest, "tmpfs", "tmpfs", options, readonly="ro" in options.split(","))


def _no_user_network(value: str) -> tuple[Refused, Refused]:
    """bareboat's refusal of `--network value` for container and process."""
    return tuple(  # type: ignore[return-value]
        Refused("create", f"--network {value} is not possible with --isolation {iso} "
                          "(user-mode networking is for microvm; use none or host)")
        for iso in ("container", "process")
    )  # fmt: skip


def _host_network(base: Mapping[str, Any]) -> dict[str, Any]:
    """A bundle with the host's network: the host's name and /etc files, and no network, UTS or
    sysctl of its own."""
    resolv = Path("/etc/resolv.conf").read_text()
    out = {
        "annotations.io.bareboat.network": "host",
        "etc.hostname": f"{HOST}\n",
        "etc.hosts": Path("/etc/hosts").read_text(),
        "hostname": GONE,
        "linux.namespaces": [{"type": t} for t in ("pid", "ipc", "mount", "cgroup")],
        "linux.sysctl.net.ipv4.ip_unprivileged_port_start": GONE,
        "linux.sysctl.net.ipv4.ping_group_range": GONE,
        "process.env[HOSTNAME]": os.uname().nodename,
    }
    if base["etc.resolv.conf"] != resolv:  # `none` drops the host's loopback resolvers
        out["etc.resolv.conf"] = resolv
    return out


# podman's additions for a network of its own (bridge) or the host's: its resolv.conf
PODMAN_RESOLV = {"mounts[/etc/resolv.conf]": _bind("<userdata>/resolv.conf", "/etc/resolv.conf",
                                                   "bind", "rprivate")}  # fmt: skip
PODMAN_RESOLV_PROCESS = {
    "mounts[/etc/resolv.conf]": ("<userdata>/resolv.conf", "/etc/resolv.conf", "", BIND, "")
}
PODMAN_NETNS = {"linux.namespaces": [
    {"type": "pid"}, {"type": "network", "path": "<network-ns>"}, {"type": "ipc"},
    {"type": "uts"}, {"type": "mount"},
]}  # fmt: skip
USER_NET_WHY = (
    "the container's network is podman's (its bridge): bareboat-runtime's VM uses it from the "
    "container's namespace and forwards the ports its guest listens on there (README, OCI "
    "runtime), where bareboat's VM has slirp in a namespace of its own; bareboat refuses "
    "--network user for container and process"
)
ROWS = [
    Row("-e FOO=bar", lambda f: {"env": ("FOO=bar",)},
        {"process.env[FOO]": "bar"}, {"env[FOO]": "bar"}, {"env[FOO]": "bar"},
        podman=Pod(("-e", "FOO=bar"))),
    # A module has no working directory (WASI preview 1)
    Row("-w /srv", lambda f: {"workdir": "/srv"},
        {"process.cwd": "/srv"}, {"cwd": "/srv"}, {},
        podman=Pod(("-w", "/srv"))),
    # A module runs as no user: only HOME follows
    Row("-u app", lambda f: {"user": "app"},
        {"process.env[HOME]": "/home/app", "process.user.uid": 1000, "process.user.gid": 1000,
         "process.user.additionalGids": [50]},
        {"env[HOME]": "/home/app", "uid": 1000, "gid": 1000, "groups": (50,)},
        {"env[HOME]": "/home/app"},
        podman=Pod(("-u", "app"), differs={
            Isolation.CONTAINER: {"process.user.additionalGids": [1000, 50]},
            Isolation.PROCESS: {"groups": (1000, 50)},
            Isolation.MICROVM: {"start.process.groups": [1000, 50]},
        }, why="podman lists the user's primary group among the additional ones too")),
    Row("-u 4242:4343", lambda f: {"user": "4242:4343"},
        {"process.env[HOME]": "/", "process.user.uid": 4242, "process.user.gid": 4343},
        {"env[HOME]": "/", "uid": 4242, "gid": 4343}, {"env[HOME]": "/"},
        podman=Pod(("-u", "4242:4343"), differs={
            Isolation.CONTAINER: {"process.env[HOME]": GONE,
                                  "process.user.additionalGids": [4343]},
            Isolation.PROCESS: {"env[HOME]": GONE, "groups": (4343,)},
            Isolation.WASM: {"env[HOME]": GONE},
            Isolation.MICROVM: {"start.process.env[HOME]": GONE, "start.process.groups": [4343]},
        }, why="podman leaves HOME unset for a user its image does not name (bareboat, as "
               "docker, says /), and lists the primary group among the additional ones")),
    Row("-v DIR:/data", lambda f: {"mounts": (parse_volume(f"{f}/dir:/data"),)},
        {"mounts[/data]": _bind("<files>/dir", "/data", "rbind", "rprivate", "rw")},
        {"mounts[/data]": ("<files>/dir", "/data", "", BIND, "")},
        {"preopens[/data]": Preopen("<files>/dir", "/data", readonly=False)},
        podman=Pod(("-v", "@files/dir:/data"), differs={
            Isolation.CONTAINER: {"mounts[/data]": _bind("<files>/dir", "/data", "rw",
                                                         "rprivate", "rbind")},
        }, why="podman orders a bind's options its own way (runc reads them as a set)")),
    Row("-v FILE:/etc/app.conf:ro",
        lambda f: {"mounts": (parse_volume(f"{f}/app.conf:/etc/app.conf:ro"),)},
        {"mounts[/etc/app.conf]": _bind("<files>/app.conf", "/etc/app.conf",
                                        "rbind", "rprivate", "ro")},
        {"mounts[/etc/app.conf]": ("<files>/app.conf", "/etc/app.conf", "", BIND | MS_RDONLY,
                                   "")},
        Refused("plan", "volume source <files>/app.conf is not a directory "
                        "(WASI preopens only directories)"),
        podman=Pod(("-v", "@files/app.conf:/etc/app.conf:ro"), differs={
            Isolation.CONTAINER: {"mounts[/etc/app.conf]": _bind(
                "<files>/app.conf", "/etc/app.conf", "ro", "rprivate", "rbind")},
            Isolation.WASM: Refused("plan", "wasm isolation: volume source <files>/app.conf is "
                                            "not a directory (WASI preopens only directories)"),
        }, why="podman orders a bind's options its own way; bareboat-runtime names the "
               "isolation in its refusal")),
    Row("--tmpfs /scratch:size=1m,mode=1777",
        lambda f: {"mounts": (parse_tmpfs("/scratch:size=1m,mode=1777"),)},
        {"mounts[/scratch]": _tmpfs("/scratch", "nosuid", "nodev", "noexec", "size=1m",
                                    "mode=1777")},
        {"mounts[/scratch]": ("tmpfs", "/scratch", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                              "size=1m,mode=1777")},
        {"preopens[/scratch]": Preopen("<scratch>/tmpfs<n>", "/scratch", readonly=False)},
        podman=Pod(("--tmpfs", "/scratch:size=1m,mode=1777"), differs={
            Isolation.CONTAINER: {"mounts[/scratch]": _tmpfs(
                "/scratch", "size=1m", "mode=1777", "rw", "rprivate", "nosuid", "nodev",
                "tmpcopyup")},
            Isolation.PROCESS: {"mounts[/scratch]": (
                "tmpfs", "/scratch", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=1777")},
            Isolation.MICROVM: {"start.mounts[/scratch]": _vm_tmpfs(
                "/scratch", "size=1m,mode=1777,rw,nosuid,nodev")},
        }, why="podman's --tmpfs is rw,nosuid,nodev and tmpcopyup, without docker's noexec; "
               "a VM drops tmpcopyup where the image has nothing to copy")),
    Row("--tmpfs /ro:ro,exec", lambda f: {"mounts": (parse_tmpfs("/ro:ro,exec"),)},
        {"mounts[/ro]": _tmpfs("/ro", "nosuid", "nodev", "exec", "ro")},
        {"mounts[/ro]": ("tmpfs", "/ro", "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "")},
        {"preopens[/ro]": Preopen("<scratch>/tmpfs<n>", "/ro", readonly=True)},
        podman=Pod(("--tmpfs", "/ro:ro,exec"), differs={
            Isolation.CONTAINER: {"mounts[/ro]": _tmpfs(
                "/ro", "ro", "exec", "rprivate", "nosuid", "nodev", "tmpcopyup")},
            Isolation.MICROVM: {"start.mounts[/ro]": _vm_tmpfs("/ro", "ro,exec,nosuid,nodev")},
        }, why="podman's --tmpfs options, in podman's order, and tmpcopyup")),
    # A module's root is read-only whatever the flag says.
    Row("--read-only", lambda f: {"read_only": True},
        {"root.readonly": True}, {"readonly_root": True}, {},
        podman=Pod(("--read-only",), differs={
            Isolation.CONTAINER: {
                **{f"mounts[{d}]": _tmpfs(d, "rw", "rprivate", "nosuid", "nodev", "tmpcopyup")
                   for d in ("/run", "/tmp", "/var/tmp")},
                **{f"mounts[/etc/{n}]": _bind(f"<userdata>/{n}", f"/etc/{n}", "bind", "rprivate",
                                              "ro", "nosuid", "noexec", "nodev")
                   for n in ("hostname", "hosts")},
                "mounts[/run/.containerenv]": GONE},
            Isolation.PROCESS: {
                **{f"mounts[{d}]": ("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, "")
                   for d in ("/run", "/tmp", "/var/tmp")},
                **{f"mounts[/etc/{n}]": (f"<userdata>/{n}", f"/etc/{n}", "",
                                         BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "")
                   for n in ("hostname", "hosts")},
                "mounts[/run/.containerenv]": GONE},
            Isolation.WASM: {f"preopens[{d}]": Preopen("<scratch>/tmpfs<n>", d, readonly=False)
                             for d in ("/run", "/tmp", "/var/tmp")},
            Isolation.MICROVM: {f"start.mounts[{d}]": _vm_tmpfs(d, "rw,nosuid,nodev")
                                for d in ("/run", "/tmp", "/var/tmp")},
        }, why="podman --read-only mounts a tmpfs on /run, /tmp and /var/tmp (its "
               "--read-only-tmpfs) and binds its /etc files read-only")),
    # Process isolation has no cgroups: --memory, --cpus and --pids-limit reach no limit.
    Row("--memory 100m", lambda f: {"memory": 100 << 20},
        {"linux.resources.memory.limit": 100 << 20, "linux.resources.memory.swap": 100 << 20},
        {}, {"limits.memory": 100 << 20},
        podman=Pod(("--memory", "100m"), differs={
            Isolation.CONTAINER: {"linux.resources.memory.swap": 200 << 20},
        }, why="podman lets a container swap as much again (its --memory-swap default), "
               "bareboat not at all")),
    Row("--memory 10m", lambda f: {"memory": 10 << 20},
        {"linux.resources.memory.limit": 10 << 20, "linux.resources.memory.swap": 10 << 20},
        {}, {"limits.memory": 10 << 20},
        podman=Pod(("--memory", "10m"), differs={
            Isolation.CONTAINER: {"linux.resources.memory.swap": 20 << 20},
        }, why="podman's --memory-swap default, as above")),
    Row("--cpus 0.5", lambda f: {"cpus": 0.5},
        {"linux.resources.cpu.quota": 50_000, "linux.resources.cpu.period": 100_000}, {}, {},
        podman=Pod(("--cpus", "0.5"), differs={
            Isolation.MICROVM: {"vmm_cpu_limit": SAME, "container_cpu_limit": (50_000, 100_000)},
        }, why="bareboat-runtime puts the quota on the container's cgroup, QEMU's parent")),
    Row("--cpus 1.5", lambda f: {"cpus": 1.5},
        {"linux.resources.cpu.quota": 150_000, "linux.resources.cpu.period": 100_000}, {}, {},
        podman=Pod(("--cpus", "1.5"), differs={
            Isolation.MICROVM: {"vmm_cpu_limit": SAME,
                                "container_cpu_limit": (150_000, 100_000)},
        }, why="bareboat-runtime puts the quota on the container's cgroup, QEMU's parent")),
    Row("--pids-limit 100", lambda f: {"pids_limit": 100},
        {"linux.resources.pids.limit": 100}, {}, {},
        podman=Pod(("--pids-limit", "100"))),
    Row("--network host", lambda f: {"network": "host"},
        _host_network, {"env[HOSTNAME]": os.uname().nodename},
        {"env[HOSTNAME]": os.uname().nodename},
        microvm=Refused("plan", "--network host is not possible with --isolation microvm "
                                "(use none or user)"),
        podman=Pod(("--network", "host"), differs={
            Isolation.CONTAINER: {
                "annotations.io.bareboat.network": SAME, "hostname": HOST,
                "linux.namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
                "linux.sysctl.net.ipv4.ip_unprivileged_port_start": SAME,
                "linux.sysctl.net.ipv4.ping_group_range": SAME, **PODMAN_RESOLV},
            Isolation.PROCESS: PODMAN_RESOLV_PROCESS,
            Isolation.MICROVM: {"start.hostname": HOST,
                                "start.process.env[HOSTNAME]": os.uname().nodename},
        }, why="podman keeps a UTS namespace named as the host and binds its own resolv.conf; "
               "under bareboat-runtime a VM with the host's network gets no NIC (README), "
               "where bareboat refuses the host's network for a VM")),
    # A module has no sockets: the network changes nothing of it.
    Row("--network user", lambda f: {"network": "user"},
        {"annotations.io.bareboat.network": "user", **SLIRP_RESOLV},
        _no_user_network("user")[1], {}, container=_no_user_network("user")[0],
        podman=Pod(("--network", "bridge"), network=True, differs={
            Isolation.CONTAINER: PODMAN_NETNS | PODMAN_RESOLV,
            Isolation.PROCESS: PODMAN_RESOLV_PROCESS,
            Isolation.MICROVM: {"qemu.own_netns": SAME, "start.watch_ports": True},
        }, why=USER_NET_WHY)),
    Row("--network user,host-loopback", lambda f: {"network": "user,host-loopback"},
        {"annotations.io.bareboat.network": "user,host-loopback", **SLIRP_RESOLV},
        _no_user_network("user,host-loopback")[1], {},
        container=_no_user_network("user,host-loopback")[0],
        podman=Pod(("--annotation", '"io.bareboat.network=user,host-loopback"'), differs={
            Isolation.CONTAINER: {"annotations.io.bareboat.network": "user,host-loopback"},
            Isolation.PROCESS: {},
        }, why="the operator's annotation (quoted: podman splits values at commas) reaches "
               "bareboat-runtime as a --label reaches bareboat, and a VM gets QEMU's own slirp "
               "as under bareboat; container and process keep the client's namespace")),
    Row("--network user -p 8080:80 -p 0.0.0.0:5353:53/udp",
        lambda f: {"network": "user", "publish": PORTS},
        {"annotations.io.bareboat.network": "user", **SLIRP_RESOLV,
         "annotations.io.bareboat.publish": "127.0.0.1:8080:80/tcp,0.0.0.0:5353:53/udp"},
        _no_user_network("user")[1], NO_SOCKETS, container=_no_user_network("user")[0],
        podman=Pod(("--network", "bridge", "-p", "8080:80", "-p", "0.0.0.0:5353:53/udp"),
                   network=True, differs={
            Isolation.CONTAINER: PODMAN_NETNS | PODMAN_RESOLV,
            Isolation.PROCESS: PODMAN_RESOLV_PROCESS,
            Isolation.WASM: {},
            Isolation.MICROVM: {"qemu.own_netns": SAME, "qemu.port_forwards": SAME,
                                "start.watch_ports": True},
        }, why="podman publishes through its own network, to the container's address, where "
               "the VM forwards the ports its guest listens on (README): no -p reaches "
               "config.json. " + USER_NET_WHY)),
    # Container and process isolation take -p without a word and publish nothing.
    Row("-p 8080:80", lambda f: {"publish": (PortMapping(8080, 80),)},
        {"annotations.io.bareboat.publish": "127.0.0.1:8080:80/tcp"}, {}, NO_SOCKETS,
        microvm=Refused("plan", "publishing ports (-p) needs --network user"),
        podman=Pod(("--network", "none", "-p", "8080:80"), differs={
            Isolation.CONTAINER: {"annotations.io.bareboat.publish": SAME},
            Isolation.WASM: {},
            Isolation.MICROVM: {},
        }, why="podman drops -p with --network none (with a warning): bareboat-runtime never "
               "sees it")),
    Row("--hostname web", lambda f: {"hostname": "web"},
        {"hostname": "web", "process.env[HOSTNAME]": "web", "etc.hostname": "web\n",
         "etc.hosts": HOSTS_WEB},
        {"env[HOSTNAME]": "web"}, {"env[HOSTNAME]": "web"},
        podman=Pod(("--hostname", "web"))),
    Row("--entrypoint /bin/echo", lambda f: {"entrypoint": ("/bin/echo",)},
        {"process.args": ["/bin/echo"]}, {"args": ("/bin/echo",)},
        {"args": ("/bin/echo",), "module": "<rootfs>/bin/echo"},
        podman=Pod(("--entrypoint", "/bin/echo"))),
    Row("--entrypoint /bin/echo hi", lambda f: {"entrypoint": ("/bin/echo",), "command": ("hi",)},
        {"process.args": ["/bin/echo", "hi"]}, {"args": ("/bin/echo", "hi")},
        {"args": ("/bin/echo", "hi"), "module": "<rootfs>/bin/echo"},
        podman=Pod(("--entrypoint", "/bin/echo"), ("hi",))),
    # stdin is the front end's to hold, never the bundle's
    Row("-i", lambda f: {"interactive": True}, {}, {}, {}, podman=Pod(("-i",))),
    Row("-t", lambda f: {"tty": True},
        {"process.terminal": True, "process.env[TERM]": "xterm"},
        {"terminal": True, "env[TERM]": "xterm"}, {"env[TERM]": "xterm"},
        podman=Pod(("-t",), differs={
            Isolation.CONTAINER: {"process.env[TERM]": SAME},
            Isolation.PROCESS: {"env[TERM]": SAME},
            Isolation.WASM: {"env[TERM]": SAME},
            Isolation.MICROVM: {"start.process.env[TERM]": SAME},
        }, why="podman sets TERM=xterm with or without -t")),
    # not a `run` flag of its own: the operator's label for a VM's persistent writable layer
    Row("--label io.bareboat.vm.disk=64m", lambda f: {"labels": {"io.bareboat.vm.disk": "64m"}},
        {"annotations.io.bareboat.vm.disk": "64m"}, {}, {},
        podman=Pod(("--annotation", "io.bareboat.vm.disk=64m"))),
]  # fmt: skip


# --- the tests ----------------------------------------------------------------------------------

VM_ROWS = {c.flags: c for c in VM_CASES}


def resolve(changes: Changes, base: Mapping[str, Any]) -> Mapping[str, Any]:
    return changes(base) if callable(changes) else changes


def check(got: Any, want: Any, bug: str | None) -> None:
    """`got == want`, or, in a cell with a known bug, an expected failure until it is fixed."""
    if bug is None:
        assert got == want
    elif got == want:
        pytest.fail(f"fixed, so the row's bug note must go: {bug}")
    else:
        pytest.xfail(bug)


def _skip_unless_host_fits(row: Row, isolation: Isolation) -> None:
    big = isolation is Isolation.MICROVM and row.flags == "--cpus 1.5"
    if big and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("a 2-vCPU VM needs 2 CPUs here")


@pytest.mark.parametrize("isolation", ISOLATIONS, ids=str)
@pytest.mark.parametrize("row", ROWS, ids=str)
def test_bareboat_plans_each_option(
    bareboat: EngineFrontEnd, matrix: Path, row: Row, isolation: Isolation
) -> None:
    _skip_unless_host_fits(row, isolation)
    files = matrix / "files"
    got = bareboat.plans(isolation, RunOptions(**row.options(files)))
    want = row.cell(isolation)
    if isinstance(want, Refused):
        assert got == want
        return
    assert isinstance(got, Plans), got
    base = bareboat.baseline(isolation)
    assert diff(base.bundle, got.bundle) == resolve(row.bundle, base.bundle)
    if isolation is Isolation.MICROVM:
        # The VM plan: as test_vmplan's row of the same options says, from the engine's bundle.
        case = VM_ROWS[row.flags]
        assert row.options(files) == case.options(files)
        assert got.vm is not None and base.vm is not None
        assert changes(base.vm.config, got.vm.config) == case.config(base.vm, files)
        assert changes(base.vm.start, got.vm.start) == case.start(base.vm, files)
        assert got.vm.vmm_cpu_limit == case.cpu_limit
    elif want is not None:  # a container's plan is its bundle
        bug = row.bugs.get(f"bareboat/{isolation}")
        check(diff(base.plan, got.plan), resolve(want, base.plan), bug)


def compared(changes: Mapping[str, Any]) -> dict[str, Any]:
    """What of a plan's change the two front ends must agree on: everything but each one's own
    small files (/etc/hosts names podman's container, START copies what each bundle binds), the
    capabilities (podman drops a non-root user's effective and permitted sets, which execve
    empties for such a user anyway) and podman's own annotations."""
    own = ("start.files[", "process.capabilities.", "etc.")
    return {
        k: v
        for k, v in changes.items()
        if not k.startswith(own)
        and (not k.startswith("annotations.") or k.startswith("annotations.io.bareboat."))
    }


def podman_expected(
    bareboat: Plans | Refused, base: Plans, differs: Mapping[str, Any] | Refused | None
) -> dict[str, Any] | Refused:
    """What bareboat-runtime's plan of podman's bundle should change: bareboat's change with
    the row's podman differences applied."""
    if isinstance(differs, Refused):
        return differs
    if isinstance(bareboat, Refused):
        return bareboat if differs is None else dict(differs)
    want = compared(diff(base.plan, bareboat.plan))
    for key, value in (differs or {}).items():
        if value == SAME:
            assert key in want, f"{key}: bareboat does not change it either"
            del want[key]
        else:
            assert want.get(key) != value, f"{key}: not a difference"
            want[key] = value
    return want


@pytest.mark.parametrize("isolation", ISOLATIONS, ids=str)
@pytest.mark.parametrize("row", [r for r in ROWS if r.podman], ids=str)
def test_podman_plans_each_option_as_bareboat_does(
    podman: PodmanFrontEnd, bareboat: EngineFrontEnd, matrix: Path, row: Row,
    isolation: Isolation,
) -> None:  # fmt: skip
    _skip_unless_host_fits(row, isolation)
    assert row.podman is not None
    assert row.podman.why or not row.podman.differs, "a difference says why"
    base = podman.plans(Pod())
    assert not isinstance(base, Refused), base
    plans = podman.plans(row.podman)
    if isinstance(plans, Refused) and row.podman.network and plans.stage == "podman":
        pytest.skip(f"podman's default network does not work here: {plans.message}")
    got: Any = plans if isinstance(plans, Refused) else plans[isolation]
    if isinstance(got, Plans):
        pod_base = base[isolation]
        assert isinstance(pod_base, Plans), pod_base
        got = compared(diff(pod_base.plan, got.plan))
    theirs = bareboat.plans(isolation, RunOptions(**row.options(matrix / "files")))
    want = podman_expected(theirs, bareboat.baseline(isolation), row.podman.differs.get(isolation))
    check(got, want, row.bugs.get(f"podman/{isolation}"))


def test_every_run_option_of_the_readme_has_a_row() -> None:
    """The README's `run` usage line against the table: a new flag needs its row, and every
    row of test_vmplan its row here (the microVM column is those rows)."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    usage = readme[readme.index("`bareboat run [") : readme.index("IMAGE [CMD...]`")]
    flags = set(re.findall(r"\[(-{1,2}[a-z-]+)", usage))
    not_options = {"--isolation", "-d", "--rm", "--name", "--log-opt"}
    covered = {w for r in ROWS for w in r.flags.split() if w.startswith("-")}
    assert flags - not_options - covered == set()
    vm_rows = {r.flags for r in ROWS if r.microvm is None}
    assert vm_rows == set(VM_ROWS)
    assert all(r.podman is not None for r in ROWS)
