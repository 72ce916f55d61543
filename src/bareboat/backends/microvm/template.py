"""MicroVM templates: boot once, save the VM at agent-ready, start clones from the snapshot.

A template is one directory `roots.templates/<key>/` with three files:

- `ram`: the guest RAM, a `memory-backend-file` the template VM ran in (`share=on`, so the
  pages land in the file);
- `state`: the device state QEMU's migration wrote (with `x-ignore-shared` the RAM itself is
  not in it: ~63 KB);
- `manifest.json`: format version, inputs, sizes and the state file's sha256.

The directory is built under a temporary name and renamed into place with the manifest already
inside it, so a template exists exactly when its manifest does; creation runs under a lock.

Before its snapshot the template's agent assembles the root every clone's START asks for
(PREPARE: the image disk read-only, an empty tmpfs as the writable layer, overlayfs over both,
proc, sys, dev, /dev/shm and /tmp inside) and reads the image's files into its page cache (up to
WARM_BYTES; it runs nothing of the image), so no clone spends its own time on either. That root is
the same for every clone and lives in guest RAM: what a clone writes into it lands in its own
copy-on-write pages, which no other clone sees. What makes one clone differ (its MOUNTs, FILEs,
a read-only root) is applied by its START, after the restore. One trace of the template is
left: the writable layer's directories carry the template's creation time until written.

A clone maps the same RAM file privately (`share=off`: copy on write, so clones of one
template share every page none of them wrote, and never write the file), starts QEMU with
`-incoming defer` and loads the state over QMP (QEMU 7.2 cannot set `x-ignore-shared` with
`-global` nor read a `file:` URI). The template's host stays connected to the agent through
the save, and a clone's host connects before the state loads, so the guest resumes blocked
in the agent's read of its channel, connected (no reconnect for virtio-serial to announce)
and the host's HELLO wakes it at once: HELLO's answer is also the sign that the clone runs (a
failed load ends QEMU, which closes the channel). Everything that makes a guest itself
(hostname, wall-clock time, RNG entropy, the workload) comes in START afterwards, so clones
share no identity. What clones *do* share: the guest kernel's memory layout (KASLR, stack
canaries set at boot) and every unwritten RAM page, a KSM-like side channel between clones
of one template.

The key covers every input that would change what was saved: image (and its filesystem),
kernel, init, kernel command line, vCPUs, memory, network mode, accelerator, QEMU version and
this format's version.
Any change gives a new key, so a stale template is never used, only left for `prune`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bareboat.closing import Closing
from bareboat.errors import BackendError, BareboatError, TemplateError, UsageError
from bareboat.fsutil import atomic_write_text, exclusive_lock
from bareboat.paths import Roots
from bareboat.privdir import private_dir
from bareboat.sandboxdir import AGENT_SOCKET, QMP_SOCKET, FileIn

from . import vmplan
from .vmplan import TemplateInputs as TemplateInputs  # where callers have always found it

if TYPE_CHECKING:
    from .agent import AgentClient
    from .qemu import QemuProcess, VMConfig

# 2: RAM file identity in the manifest (a jailed clone could write it); 3: the root is
# assembled and the agent channel connected in the snapshot
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
RAM = "ram"
STATE = "state"
LOCK_TIMEOUT_S = 120.0
MAX_STATE_BYTES = 64 << 20  # the device state is ~63 KB; anything near this is not ours
# How much of the image the template VM reads into its page cache before the snapshot (all of
# a busybox or alpine image): clones share those pages instead of each reading them through
# the emulated disk, which under TCG made a clone's first `true` ~10x slower than its second.
# Changing it changes what a template holds: bump FORMAT_VERSION.
WARM_BYTES = 16 << 20


def _file_identity(path: Path) -> str:
    """A cheap identity of a file's content: path, size, inode and mtime (no hashing of a
    20 MB kernel on every run); rebuilding the kernel or init changes it."""
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_ino}:{st.st_mtime_ns}"


@functools.cache
def qemu_version(qemu: str = "qemu-system-x86_64") -> str:
    try:
        out = subprocess.run(
            [qemu, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BackendError(f"cannot ask {qemu} for its version: {e}") from None
    return out.splitlines()[0].strip() if out else "unknown"


def qemu_identity(qemu: str = "qemu-system-x86_64") -> str:
    """The QEMU binary's identity (an upgrade replaces the file). Cheaper than asking it for
    its version, which would add a process start to every run that looks for a template."""
    path = shutil.which(qemu)
    if path is None:
        raise TemplateError(f"{qemu} not found")
    return _file_identity(Path(path))


def key_material(inputs: TemplateInputs, *, qemu: str | None = None) -> dict[str, Any]:
    """The plain data the key hashes (kept in the manifest, so `ls` can show it)."""
    try:
        kernel, initrd, lower = (
            _file_identity(p) for p in (inputs.kernel, inputs.initrd, inputs.lower)
        )
    except OSError as e:
        raise TemplateError(f"a template input is missing: {e}") from None
    return {
        "format": FORMAT_VERSION,
        "image": inputs.image,
        "kernel": kernel,
        "init": initrd,
        "lower": lower,
        "lower_fstype": inputs.lower_fstype,
        "vcpus": inputs.vcpus,
        "memory_mib": inputs.memory_mib,
        "network": inputs.network,
        "accel": inputs.accel,
        "cmdline": list(inputs.cmdline),
        "tb_size_mib": inputs.tb_size_mib,
        "tsc_khz": inputs.tsc_khz,
        "qemu": qemu if qemu is not None else qemu_identity(),
        "machine": _machine_version(),
    }


def _machine_version() -> int:
    from .qemu import MACHINE_VERSION

    return MACHINE_VERSION


def template_key(inputs: TemplateInputs, *, qemu: str | None = None) -> str:
    raw = json.dumps(key_material(inputs, qemu=qemu), sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()


ENV_TEMPLATE = "BAREBOAT_TEMPLATE"
ANN_TEMPLATE = "io.bareboat.vm.template"
MODES = ("auto", "create", "off")


def template_mode(annotation: object = None) -> str:
    """How a run uses templates: `auto` (a clone when a template exists, else cold), `create`
    (make the template on first use), `off` (always cold). The run's annotation (`--template`,
    `--no-template`) wins over $BAREBOAT_TEMPLATE, which wins over `auto`."""
    for value in (annotation, os.environ.get(ENV_TEMPLATE)):
        if value:
            mode = str(value).strip().lower()
            if mode not in MODES:
                raise UsageError(f"bad template mode {value!r} (auto, create or off)")
            return mode
    return "auto"


def templates_dir(roots: Roots) -> Path:
    return roots.templates


# --- the manifest and validation ------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    version: int
    key: str
    inputs: dict[str, Any]
    ram_size: int
    state_size: int
    state_sha256: str
    created: float
    create_s: float  # boot + save time
    # The RAM file as it was made: inode, change and modification times. QEMU 7.2 maps a file
    # copy-on-write only after opening it for writing, so every clone's (jailed) QEMU holds a
    # writable descriptor of it; one escaped guest could change what later clones start from.
    # Writing changes ctime, which no uid but root can set back: a changed file is refused.
    ram_identity: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise TypeError("not an object")
            if d.get("version") != FORMAT_VERSION:
                raise TemplateError(
                    f"template format version {d.get('version')!r}, this bareboat reads "
                    f"{FORMAT_VERSION}"
                )
            m = cls(
                version=int(d["version"]),
                key=str(d["key"]),
                inputs=dict(d["inputs"]),
                ram_size=int(d["ram_size"]),
                state_size=int(d["state_size"]),
                state_sha256=str(d["state_sha256"]),
                created=float(d["created"]),
                create_s=float(d["create_s"]),
                ram_identity=str(d.get("ram_identity", "")),
            )
        except TemplateError:
            raise
        except (ValueError, TypeError, KeyError) as e:
            raise TemplateError(f"template manifest is malformed: {e}") from None
        return m


@dataclass(frozen=True)
class Template:
    path: Path
    manifest: Manifest

    @property
    def key(self) -> str:
        return self.manifest.key

    ram = FileIn("path", RAM)
    state = FileIn("path", STATE)

    @property
    def memory_mib(self) -> int:
        return self.manifest.ram_size >> 20


def ram_identity(path: Path) -> str:
    st = path.stat()
    return f"{st.st_ino}:{st.st_ctime_ns}:{st.st_mtime_ns}:{st.st_size}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_template(path: Path) -> Template:
    """The template in `path`, validated; TemplateError says what is wrong with it.

    Checks the cheap things that catch a broken or foreign template: manifest version, the key
    matching the directory, the RAM file's size, the state file's size and checksum.
    """
    try:
        text = (path / MANIFEST).read_text()
    except FileNotFoundError:
        raise TemplateError(f"template {path.name[:12]} has no manifest") from None
    except OSError as e:
        raise TemplateError(f"template {path.name[:12]}: cannot read its manifest: {e}") from None
    m = Manifest.from_json(text)
    t = Template(path, m)
    short = path.name[:12]
    if m.key != path.name:
        raise TemplateError(f"template {short}: manifest is for another key")
    if m.ram_size != int(m.inputs.get("memory_mib", -1)) << 20:
        raise TemplateError(f"template {short}: RAM size does not match its memory size")
    try:
        ram_size = t.ram.stat().st_size
        state_size = t.state.stat().st_size
    except OSError as e:
        raise TemplateError(f"template {short} is incomplete: {e}") from None
    if ram_size != m.ram_size:
        raise TemplateError(
            f"template {short}: RAM file is {ram_size} bytes, manifest says {m.ram_size}"
        )
    if state_size != m.state_size or state_size > MAX_STATE_BYTES:
        raise TemplateError(
            f"template {short}: state file is {state_size} bytes, manifest says {m.state_size}"
        )
    if _sha256(t.state) != m.state_sha256:
        raise TemplateError(f"template {short}: state file checksum mismatch (corrupt)")
    if ram_identity(t.ram) != m.ram_identity:
        raise TemplateError(f"template {short}: its RAM file was changed after it was made")
    return t


def find_template(roots: Roots, inputs: TemplateInputs) -> Template | None:
    """The valid template for `inputs`; None when there is none; TemplateError when there
    is one but it is broken (the caller reports it and boots cold)."""
    inputs.validate()
    path = templates_dir(roots) / template_key(inputs)
    if not path.exists():
        return None
    return load_template(path)


@dataclass(frozen=True)
class Entry:
    """One directory under the templates root, for `ls` and `prune`."""

    key: str
    path: Path
    template: Template | None
    error: str = ""
    stale: str = ""  # why no run can use it any more (an input file changed or went away)


def stale_reason(manifest: Manifest) -> str:
    """Why a valid template can no longer match any run: an input file (kernel, init, image
    disk) was rebuilt or removed, or QEMU was upgraded. "" when it may still be used."""
    for name in ("kernel", "init", "lower"):
        ident = str(manifest.inputs.get(name, ""))
        path = ident.rsplit(":", 3)[0]
        try:
            if _file_identity(Path(path)) != ident:
                return f"its {name} changed"
        except OSError:
            return f"its {name} is gone"
    with contextlib.suppress(TemplateError, OSError):
        if manifest.inputs.get("qemu") != qemu_identity():
            return "QEMU changed"
    return ""


def list_templates(roots: Roots) -> list[Entry]:
    d = templates_dir(roots)
    out: list[Entry] = []
    if not d.is_dir():
        return out
    for p in sorted(d.iterdir()):
        if not p.is_dir():
            continue
        if p.name.startswith("."):
            out.append(Entry(p.name, p, None, "unfinished (a creation was interrupted)"))
            continue
        try:
            t = load_template(p)
            out.append(Entry(p.name, p, t, stale=stale_reason(t.manifest)))
        except TemplateError as e:
            out.append(Entry(p.name, p, None, str(e)))
    return out


def remove_template(roots: Roots, key: str) -> bool:
    """Remove one template (by key or unique key prefix). Running clones keep their mapping."""
    d = templates_dir(roots)
    if not key or "/" in key or key.startswith("."):
        raise UsageError(f"bad template key {key!r}")
    matches = [p for p in d.iterdir() if p.name.startswith(key)] if d.is_dir() else []
    if len(matches) > 1:
        raise UsageError(f"template key prefix {key!r} is ambiguous")
    if not matches:
        return False
    with _lock(d, matches[0].name):
        shutil.rmtree(matches[0], ignore_errors=True)
    return True


def prune_templates(roots: Roots, *, all: bool = False) -> list[str]:
    """Remove broken, stale and unfinished templates (every one with `all`); their names."""
    removed: list[str] = []
    for e in list_templates(roots):
        if all or e.template is None or e.stale:
            if e.key.startswith("."):
                # an unfinished directory of a creation still running holds its lock
                key = e.key.split("-")[1] if e.key.count("-") >= 2 else e.key
                try:
                    with _lock(templates_dir(roots), key, timeout=0.0):
                        shutil.rmtree(e.path, ignore_errors=True)
                except TemplateError:
                    continue
            else:
                shutil.rmtree(e.path, ignore_errors=True)
            removed.append(e.key)
    # The empty `.KEY.lock` files stay: unlinking a lock file another process has open would
    # let a third lock a new inode beside it.
    return removed


def _lock(
    directory: Path, key: str, *, timeout: float = LOCK_TIMEOUT_S
) -> contextlib.AbstractContextManager[None]:
    return exclusive_lock(
        directory / f".{key}.lock",
        timeout=timeout,
        mode=0o600,
        on_timeout=lambda: TemplateError(
            f"template {key[:12]} is being created by another process"
        ),
    )


# --- the VM command lines (plain data) ----------------------------------------------------------


@dataclass(frozen=True)
class VmFiles:
    """Host-side paths of one template or clone VM; none of them is in the migrated state."""

    sockets: Path
    console_log: Path | None = None  # default: beside the sockets
    qemu_log: Path | None = None  # QEMU's stdout/stderr (default: an anonymous temp file)
    vmm_record: Path | None = None  # where the jail notes what QEMU holds (QemuProcess)

    qmp = FileIn("sockets", QMP_SOCKET)
    agent = FileIn("sockets", AGENT_SOCKET)

    @property
    def console(self) -> Path:
        return self.console_log or self.sockets / "console.log"


def vm_config(inputs: TemplateInputs, *, ram: Path, files: VmFiles, clone: bool) -> VMConfig:
    """The QEMU config of the template VM (`clone=False`) or of a clone: the machine a cold
    boot of the same inputs has (vmplan.machine), its RAM in the template's file.

    Both have the same devices in the same order (the migrated state names devices by their
    place); they differ in the RAM mapping (`share=on` writes the template's pages into the
    file, `share=off` maps it copy-on-write) and `-incoming defer` for a clone.
    """
    return dataclasses.replace(
        vmplan.machine(inputs, files), ram_file=ram, ram_shared=not clone, incoming=clone
    )


def _socket_dir(prefix: str) -> Path:
    # unix socket paths must fit 108 bytes; the roots may be deep (tests), /tmp is not
    return Path(tempfile.mkdtemp(prefix=prefix))


def _wait_migration(vm: QemuProcess, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        info = vm.command("query-migrate") or {}
        status = info.get("status", "none")
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise TemplateError(f"{what} failed: {info.get('error-desc', status)}")
        if vm.returncode is not None:
            raise TemplateError(f"{what} failed: QEMU exited with {vm.returncode}")
        if time.monotonic() > deadline:
            raise TemplateError(f"{what} did not finish in {timeout:g}s")
        time.sleep(0.002)


def _dial(path: Path) -> socket.socket:
    """A connection to a server-side agent port: QemuProcess made its listening socket before
    QEMU started, so this connects at once (QEMU accepts it from its main loop)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(str(path))
    except OSError as e:
        s.close()
        raise TemplateError(f"cannot connect to the clone's agent port: {e}") from None
    return s


def _connect_agent(vm: QemuProcess, files: VmFiles, timeout: float) -> AgentClient:
    from .agent import AgentClient

    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(files.agent))
            break
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            if vm.returncode is not None:
                raise TemplateError(
                    f"QEMU exited with {vm.returncode}: {vm.stderr_tail()}"
                ) from None
            if time.monotonic() > deadline:
                raise TemplateError("the agent socket did not open") from None
            time.sleep(0.002)
    client = AgentClient(s)
    try:
        client.wait_hello(max(0.1, deadline - time.monotonic()))
    except BaseException:
        client.close()
        raise
    return client


# --- create -----------------------------------------------------------------------------------


def create_template(
    roots: Roots, inputs: TemplateInputs, *, boot_timeout: float = 60.0, replace: bool = False
) -> Template:
    """Boot the template VM, wait for the agent at READY, save it; returns the template.

    An existing valid template is returned as is (unless `replace`); a broken one is replaced.
    """
    from .qemu import QemuProcess

    inputs.validate()
    key = template_key(inputs)
    root = templates_dir(roots)
    final = root / key
    with _lock(root, key):
        if final.exists() and not replace:
            with contextlib.suppress(TemplateError):
                return load_template(final)
        t0 = time.monotonic()
        work = root / f".tmp-{key}-{secrets.token_hex(4)}"
        # private: the RAM file holds the guest's memory
        work.mkdir(parents=True, mode=0o700)
        files = VmFiles(_socket_dir("bb-tpl-"))
        state_fd = -1
        try:
            ram = work / RAM
            state = work / STATE
            # Made here, so that a jailed QEMU finds a file its uid owns (it cannot create one).
            os.close(os.open(ram, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            state_fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            cfg = vm_config(inputs, ram=ram, files=files, clone=False)
            with QemuProcess(cfg) as vm, _connect_agent(vm, files, boot_timeout) as client:
                why = client.prepare(
                    vmplan.LOWER_DEVICE, inputs.lower_fstype, warm=WARM_BYTES, timeout=120.0
                )
                if why:
                    raise TemplateError(f"the template VM could not assemble its root: {why}")
                # Round trip once more so the agent is idle in its READY read of the channel;
                # the host stays connected through the save (see the module's docstring).
                client.ping(timeout=boot_timeout)
                vm.command(
                    "migrate-set-capabilities",
                    capabilities=[{"capability": "x-ignore-shared", "state": True}],
                )
                # The state goes to a descriptor handed over QMP: a jailed QEMU can neither
                # open the path nor run a program (`exec:`) to write it.
                vm.send_fd("tplstate", state_fd)
                vm.command("migrate", uri="fd:tplstate")
                _wait_migration(vm, 60.0, "saving the template")
            os.close(state_fd)
            state_fd = -1
            # Clones of every uid map the file, so it is readable and writable by all: only
            # root can reach it (the store is 0700); a clone's jail binds just this file.
            os.chown(ram, 0, 0)
            os.chmod(ram, 0o666)
            os.chmod(state, 0o600)
            # QEMU wrote both through the page cache; the manifest must not outlive them in a
            # host crash (the RAM file has no checksum: it is too big to hash per run)
            for path in (ram, state):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            ram_size = ram.stat().st_size
            if ram_size != inputs.memory_mib << 20:
                raise TemplateError(
                    f"template RAM file is {ram_size} bytes, not {inputs.memory_mib} MiB"
                )
            manifest = Manifest(
                version=FORMAT_VERSION,
                key=key,
                inputs=key_material(inputs),
                ram_size=ram_size,
                state_size=state.stat().st_size,
                state_sha256=_sha256(state),
                created=time.time(),
                create_s=round(time.monotonic() - t0, 3),
                ram_identity=ram_identity(ram),
            )
            atomic_write_text(work / MANIFEST, manifest.to_json())
            if final.exists():
                shutil.rmtree(final)
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            if state_fd >= 0:
                os.close(state_fd)
            shutil.rmtree(files.sockets, ignore_errors=True)
    return load_template(final)


# --- clones -------------------------------------------------------------------------------------


@dataclass
class Clone(Closing):
    """A VM restored from a template, its agent connected and at READY (send START next).

    A context manager: leaving it ends QEMU, closes the agent and removes the clone's
    sockets directory (the console log with it, unless `keep_console` names a place).
    """

    vm: QemuProcess
    agent: AgentClient
    files: VmFiles
    restore_s: float
    owns_sockets: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    def close(self) -> None:
        try:
            self.agent.close()
        finally:
            try:
                # SIGKILL, not QMP `quit`: a clone has nothing to flush. Its RAM is a private
                # mapping, its only disk the read-only image, and it has no writable disk and
                # no host share (a VM with either is never a clone: vmplan.template_inputs).
                self.vm.kill()
                self.vm.wait(5.0)
                self.vm.shutdown(quit_timeout=1.0, term_timeout=1.0)
            finally:
                if self.owns_sockets:
                    shutil.rmtree(self.files.sockets, ignore_errors=True)


def launch_clone(
    template: Template,
    inputs: TemplateInputs,
    files: VmFiles,
    *,
    cpu_limit: tuple[int | None, int | None] = (None, None),
    timings: dict[str, float] | None = None,
) -> tuple[QemuProcess, socket.socket]:
    """Start QEMU on the template's RAM and state: QEMU running and loading the state, and
    the host's end of the agent channel, connected before the guest resumes (ask HELLO on it:
    the answer says the clone runs). On failure QEMU is stopped and TemplateError raised:
    boot cold. `timings` gets the seconds QEMU took to start ("qemu": to its QMP greeting)
    and to take the state's commands ("load").
    """
    from .qemu import QemuProcess

    t0 = time.monotonic()
    if template.memory_mib != inputs.memory_mib:
        raise TemplateError("template memory size does not match the clone's")
    if ram_identity(template.ram) != template.manifest.ram_identity:
        raise TemplateError(f"template {template.key[:12]}: its RAM file was changed")
    # The state is read from a descriptor QEMU inherits (`fd:N`), not a path or a program.
    try:
        state_fd = os.open(template.state, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise TemplateError(f"template {template.key[:12]}: {e}") from None
    vm = QemuProcess(
        vm_config(inputs, ram=template.ram, files=files, clone=True),
        stderr=files.qemu_log,
        pass_fds=(state_fd,),
        cpu_limit=cpu_limit,
        jail_record=files.vmm_record,
    )
    sock: socket.socket | None = None
    try:
        vm.launch()
        t1 = time.monotonic()
        # Connected before the state loads, so the restored port finds its host as the
        # template's had it (see the module's docstring).
        sock = _dial(files.agent)
        vm.command(
            "migrate-set-capabilities",
            capabilities=[{"capability": "x-ignore-shared", "state": True}],
        )
        # QEMU 7.2 starts the vCPUs once the state is in (no -S) and exits if it cannot load
        # it, so no status polling: the agent's HELLO, or the channel's end, tells which.
        vm.command("migrate-incoming", uri=f"fd:{state_fd}")
        if timings is not None:
            timings.update(qemu=t1 - t0, load=time.monotonic() - t1)
        return vm, sock
    except BaseException as e:
        if sock is not None:
            sock.close()
        vm.shutdown(quit_timeout=0.5, term_timeout=1.0)
        if isinstance(e, TemplateError) or not isinstance(e, BareboatError):
            raise
        raise TemplateError(f"restoring template {template.key[:12]} failed: {e}") from None
    finally:
        os.close(state_fd)


def restore_clone(
    template: Template,
    inputs: TemplateInputs,
    *,
    sockets: Path | None = None,
    timeout: float = 30.0,
) -> Clone:
    """Start a clone of `template` and connect to its agent; nothing is left on failure.

    `inputs` must be the template's inputs (the clone's devices must match); the caller found
    the template by them. A failed restore raises TemplateError: boot cold instead.
    This is the in-process fast path for programs that start many sandboxes.
    """
    from .agent import AgentClient

    t0 = time.monotonic()
    owns = sockets is None
    files = VmFiles(sockets if sockets is not None else _socket_dir("bb-clone-"))
    private_dir(files.sockets)
    timings: dict[str, float] = {}
    try:
        vm, sock = launch_clone(template, inputs, files, timings=timings)
    except BaseException:
        if owns:
            shutil.rmtree(files.sockets, ignore_errors=True)
        raise
    t_loaded = time.monotonic()
    agent = AgentClient(sock)
    try:
        agent.wait_hello(max(0.1, t0 + timeout - time.monotonic()))
    except BaseException as e:
        agent.close()
        # a channel that closed is QEMU ending (a state it could not load): say why
        detail = f"{e}: {vm.stderr_tail()}" if vm.wait(0.5) is not None else str(e)
        vm.shutdown(quit_timeout=0.5, term_timeout=1.0)
        if owns:
            shutil.rmtree(files.sockets, ignore_errors=True)
        if isinstance(e, TemplateError) or not isinstance(e, BareboatError):
            raise
        raise TemplateError(f"the clone did not resume: {detail}") from None
    now = time.monotonic()
    return Clone(
        vm,
        agent,
        files,
        restore_s=now - t0,
        owns_sockets=owns,
        timings={"host": t_loaded - t0 - sum(timings.values()), **timings, "hello": now - t_loaded},
    )
