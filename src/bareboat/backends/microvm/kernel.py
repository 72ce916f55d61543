"""The guest kernel: find a user-supplied one, or build ours from Debian's linux-source.

Ours is `make tinyconfig` + the repo's `guest/kernel/fragment.config` + `make olddefconfig`,
then `make vmlinux` (no modules). Kconfig drops an option silently when something it depends
on is off (EROFS needs MISC_FILESYSTEMS; ACPI needs PCI on 6.1), so the resulting .config is
checked against the fragment before the long compile, and a dropped option is an error that
names it.

The result is cached as `<roots.guest>/kernel/<key>/vmlinux`, where the key is the sha256 of
the source package version and the fragment text: a new source or an edited fragment builds
again, nothing else does. A build runs in a temporary directory beside the cache entry and is
renamed into place only when complete, so an interrupted build leaves no entry that lies.

Plan, then execute: `plan_build` returns the steps as argument lists; `build_kernel` runs them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from bareboat.errors import BackendError, GuestError, KernelMissing, UsageError
from bareboat.fsutil import atomic_write_text
from bareboat.paths import Roots

from . import toolmemo

SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
# guest/ lives at the top of the repository, beside src/.
REPO_GUEST = Path(__file__).resolve().parents[4] / "guest"
FRAGMENT = REPO_GUEST / "kernel" / "fragment.config"
ENV_KERNEL = "BAREBOAT_KERNEL"
ENV_FRAGMENT = "BAREBOAT_KERNEL_FRAGMENT"

# `make vmlinux` of this config takes ~5 min on 2 cores here; a build still going after
# this long is stuck.
BUILD_TIMEOUT_S = 3 * 3600.0
STEP_TIMEOUT_S = 600.0
# Roughly how many " CC " lines the build prints (counted from a real build here); only
# used to draw a progress bar, so it need not be exact.
EXPECTED_OBJECTS = 1250


# --- the config fragment and the .config it must survive into -------------------------------


@dataclass(frozen=True)
class DroppedOption:
    name: str
    wanted: str  # "y", "n", "1", '"text"', ...
    got: str  # "n" when the option is absent or "is not set"


_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def parse_config(text: str) -> dict[str, str]:
    """Kconfig text as {option: value}; `# CONFIG_X is not set` reads as "n"."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _SET.match(line):
            out[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            out[m.group(1)] = "n"
    return out


def dropped_options(fragment: dict[str, str], config: dict[str, str]) -> list[DroppedOption]:
    """Every fragment option whose value did not survive into the final .config."""
    return [
        DroppedOption(name, want, config.get(name, "n"))
        for name, want in fragment.items()
        if config.get(name, "n") != want
    ]


def check_config(fragment_text: str, config_text: str) -> None:
    """Raise GuestError naming every fragment option `make olddefconfig` dropped or changed."""
    dropped = dropped_options(parse_config(fragment_text), parse_config(config_text))
    if dropped:
        names = ", ".join(f"{d.name}={d.wanted} (got {d.got})" for d in dropped)
        raise GuestError(
            f"kernel config dropped {len(dropped)} fragment option(s): {names}; "
            "enable what they depend on in the fragment"
        )


# --- the source and the cache key ---------------------------------------------------------


@dataclass(frozen=True)
class KernelSource:
    tarball: Path
    version: str  # the Debian package version, e.g. "6.1.192-2"


def find_source(tarball: Path = SOURCE_TARBALL, *, memo_dir: Path | None = None) -> KernelSource:
    """The installed kernel source tarball and its version; KernelMissing if there is none.
    With `memo_dir`, the version is remembered there while the package database and the
    tarball stay the same (toolmemo.py)."""
    if not tarball.is_file():
        raise KernelMissing(
            f"{tarball} not found: install the {SOURCE_PACKAGE} package, or pass --kernel"
        )
    if memo_dir is None:
        return KernelSource(tarball=tarball, version=_source_version(tarball))
    version = toolmemo.remembered(
        memo_dir,
        f"kernel-source:{tarball}",
        (toolmemo.DPKG_STATUS, tarball),
        lambda: _source_version(tarball),
    )
    return KernelSource(tarball=tarball, version=version)


def _source_version(tarball: Path) -> str:
    version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if out.returncode == 0:
            version = out.stdout.strip()
    if not version:
        # Not from a Debian package: the file's identity stands in for a version.
        st = tarball.stat()
        version = f"{tarball.name}:{st.st_size}:{st.st_mtime_ns}"
    return version


def fragment_path() -> Path:
    return Path(os.environ.get(ENV_FRAGMENT) or FRAGMENT)


def read_fragment(path: Path | None = None) -> str:
    path = path or fragment_path()
    try:
        return path.read_text()
    except OSError as e:
        raise KernelMissing(f"kernel config fragment {path} cannot be read: {e.strerror}") from None


def cache_key(source_version: str, fragment_text: str) -> str:
    h = hashlib.sha256()
    h.update(b"bareboat-kernel-v1\0")
    h.update(source_version.encode() + b"\0")
    h.update(fragment_text.encode())
    return h.hexdigest()[:32]


def kernel_dir(roots: Roots) -> Path:
    return roots.guest / "kernel"


# --- checking a vmlinux -------------------------------------------------------------------

_EM_X86_64 = 62
_PT_NOTE = 4
_XEN_ELFNOTE_PHYS32_ENTRY = 18  # the PVH entry point QEMU's direct boot looks for


def check_vmlinux(path: Path) -> None:
    """Raise KernelMissing unless `path` is an x86-64 ELF kernel with the PVH entry note.

    QEMU boots a `vmlinux` directly (PVH) only when it carries that note; a bzImage or an
    ELF kernel built without CONFIG_PVH would be booted another, slower way or not at all.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF":
                hint = " (a bzImage? PVH boot needs the uncompressed vmlinux)"
                raise KernelMissing(f"{path} is not an ELF kernel{hint}")
            if head[4] != 2 or head[5] != 1:
                raise KernelMissing(f"{path} is not a 64-bit little-endian ELF kernel")
            (machine,) = struct.unpack_from("<H", head, 18)
            if machine != _EM_X86_64:
                raise KernelMissing(f"{path} is not an x86-64 kernel (ELF machine {machine})")
            (phoff,) = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            if phentsize < 56 or phnum > 64:
                raise KernelMissing(f"{path} has a malformed ELF program header table")
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                p_type, _flags, p_offset = struct.unpack_from("<IIQ", table, i * phentsize)
                (p_filesz,) = struct.unpack_from("<Q", table, i * phentsize + 32)
                if p_type != _PT_NOTE or p_filesz > 1 << 20:
                    continue
                f.seek(p_offset)
                if _has_pvh_note(f.read(p_filesz)):
                    return
    except FileNotFoundError:
        raise KernelMissing(f"kernel {path} does not exist") from None
    except IsADirectoryError:
        raise KernelMissing(f"kernel {path} is a directory, not a vmlinux") from None
    except (OSError, struct.error) as e:
        raise KernelMissing(f"kernel {path} cannot be read: {e}") from None
    raise KernelMissing(f"{path} has no PVH entry note: build it with CONFIG_PVH=y")


def _has_pvh_note(notes: bytes) -> bool:
    off = 0
    while off + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, off)
        name = notes[off + 12 : off + 12 + namesz].rstrip(b"\0")
        if name == b"Xen" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
            return True
        off += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


# --- finding the kernel to boot -----------------------------------------------------------


@dataclass(frozen=True)
class KernelChoice:
    path: Path
    origin: str  # "--kernel", "$BAREBOAT_KERNEL", "config", "built"
    key: str | None = None  # the cache key, for a kernel we built


def built_kernel(roots: Roots) -> Path | None:
    """Our cached vmlinux for the current source and fragment, or None if not built."""
    key = cache_key(find_source(memo_dir=roots.guest).version, read_fragment())
    path = kernel_dir(roots) / key / "vmlinux"
    return path if path.is_file() else None


def resolve_kernel(
    roots: Roots, *, explicit: Path | None = None, configured: Path | None = None
) -> KernelChoice:
    """The kernel to boot: `--kernel`, then $BAREBOAT_KERNEL, then config, then ours.

    A user-supplied kernel is checked (exists, x86-64 ELF with the PVH note); a missing one
    of ours says how to build it.
    """
    for path, origin in (
        (explicit, "--kernel"),
        (Path(os.environ[ENV_KERNEL]) if os.environ.get(ENV_KERNEL) else None, f"${ENV_KERNEL}"),
        (configured, "config"),
    ):
        if path is not None:
            check_vmlinux(path)
            return KernelChoice(path=path.resolve(), origin=origin)
    source = find_source(memo_dir=roots.guest)
    key = cache_key(source.version, read_fragment())
    path = kernel_dir(roots) / key / "vmlinux"
    if not path.is_file():
        raise KernelMissing(
            "the guest kernel is not built: run `bareboat guest build` (or pass --kernel)"
        )
    return KernelChoice(path=path, origin="built", key=key)


# --- building ours ------------------------------------------------------------------------


class BuildProgress(Protocol):
    """What a build reports; the CLI draws it (a rich bar on a tty, plain lines otherwise)."""

    def step(self, text: str) -> None: ...

    def advance(self, done: int, total: int) -> None: ...


class PlainProgress:
    """Progress as plain lines on a stream; compile progress at most every 10 % of the way."""

    def __init__(self, write: Callable[[str], object] = print) -> None:
        self._write = write
        self._last = -1

    def step(self, text: str) -> None:
        self._write(f"bareboat: {text}")

    def advance(self, done: int, total: int) -> None:
        tenth = min(10, done * 10 // max(total, 1))
        if tenth > self._last:
            self._last = tenth
            self._write(f"bareboat: compiling kernel: {min(100, tenth * 10)}%")


class _NoProgress:
    def step(self, text: str) -> None:
        pass

    def advance(self, done: int, total: int) -> None:
        pass


@dataclass(frozen=True)
class Step:
    """One command of a build: what it shows, what it runs, where."""

    title: str
    argv: list[str]
    cwd: Path
    count_objects: bool = False


@dataclass(frozen=True)
class BuildPlan:
    source: KernelSource
    fragment: Path
    key: str
    work: Path  # temporary directory the build runs in
    src: Path  # the unpacked source tree
    out: Path  # the build's object directory (make O=)
    steps: list[Step]

    @property
    def vmlinux(self) -> Path:
        return self.out / "vmlinux"

    @property
    def config(self) -> Path:
        return self.out / ".config"


def plan_build(source: KernelSource, fragment: Path, key: str, work: Path, jobs: int) -> BuildPlan:
    """The commands that build a vmlinux in `work`; plain data, nothing runs."""
    src = work / "src"
    out = work / "out"
    make = ["make", "-C", str(src), f"O={out}", "ARCH=x86_64"]
    steps = [
        Step(
            "unpacking kernel source",
            ["tar", "-xf", str(source.tarball), "-C", str(src), "--strip-components=1"],
            work,
        ),
        Step("configuring kernel (tinyconfig)", [*make, "tinyconfig"], work),
        Step(
            "merging the config fragment",
            [
                str(src / "scripts/kconfig/merge_config.sh"),
                "-m",
                "-O",
                str(out),
                str(out / ".config"),
                str(fragment),
            ],
            src,
        ),
        Step("resolving kernel config (olddefconfig)", [*make, "olddefconfig"], work),
        Step("compiling kernel", [*make, f"-j{jobs}", "vmlinux"], work, count_objects=True),
    ]
    return BuildPlan(source, fragment, key, work, src, out, steps)


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """One kernel build per cache at a time; a second waits (then finds the result)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def build_kernel(
    roots: Roots,
    *,
    force: bool = False,
    progress: BuildProgress | None = None,
    jobs: int | None = None,
) -> Path:
    """Build (or find cached) our guest vmlinux and return its path."""
    progress = progress or _NoProgress()
    source = find_source()
    fragment = fragment_path()
    fragment_text = read_fragment(fragment)
    key = cache_key(source.version, fragment_text)
    base = kernel_dir(roots)
    final = base / key
    with _build_lock(base):
        if (final / "vmlinux").is_file() and not force:
            progress.step(f"guest kernel is up to date ({key})")
            return final / "vmlinux"
        # Holding the lock, no one else is building: anything temporary left here is the
        # remains of a killed build.
        for stale in base.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
        try:
            (work / "src").mkdir()
            (work / "out").mkdir()
            # Snapshot the fragment into the build: the key names exactly what was built.
            frag_copy = work / "fragment.config"
            frag_copy.write_text(fragment_text)
            plan = plan_build(source, frag_copy, key, work, jobs or os.cpu_count() or 1)
            _execute(plan, fragment_text, progress, log=work / "build.log")
            staged = work / "result"
            staged.mkdir()
            shutil.copy2(plan.vmlinux, staged / "vmlinux")
            shutil.copy2(plan.config, staged / "config")
            shutil.copy2(frag_copy, staged / "fragment.config")
            atomic_write_text(
                staged / "info.json",
                json.dumps(
                    {"key": key, "source_version": source.version, "built": time.time()},
                    indent=2,
                ),
            )
            os.chmod(staged / "info.json", 0o644)
            check_vmlinux(staged / "vmlinux")
            if final.exists():  # --force: replace the old entry as a whole
                old = base / f".build-old-{key}"
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(staged, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    progress.step(f"guest kernel built: {final / 'vmlinux'}")
    return final / "vmlinux"


def _execute(plan: BuildPlan, fragment_text: str, progress: BuildProgress, log: Path) -> None:
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    with open(log, "w+b") as logf:
        for step in plan.steps:
            progress.step(step.title)
            budget = deadline - time.monotonic() if step.count_objects else STEP_TIMEOUT_S
            _run_step(step, logf, progress, budget)
            if step.argv[-1] == "olddefconfig":
                check_config(fragment_text, plan.config.read_text())


def _run_step(step: Step, logf: IO[bytes], progress: BuildProgress, timeout: float) -> None:
    """Run one build command in its own process group; on any failure kill the whole group."""
    proc = subprocess.Popen(
        step.argv,
        cwd=step.cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, LC_ALL="C"),
        start_new_session=True,
    )
    # make can hang without printing a line, so the timeout is a watchdog, not a read check.
    expired = threading.Event()

    def kill_group() -> None:
        expired.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    watchdog = threading.Timer(timeout, kill_group)
    watchdog.daemon = True
    watchdog.start()
    done = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            logf.write(line)
            if step.count_objects and line.lstrip().startswith(b"CC "):
                done += 1
                progress.advance(done, max(EXPECTED_OBJECTS, done))
        rc = proc.wait()
    except BaseException:
        kill_group()
        proc.wait()
        raise
    finally:
        watchdog.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    if expired.is_set():
        raise GuestError(f"kernel build step '{step.title}' timed out after {timeout:.0f} s")
    if step.count_objects:
        progress.advance(done, done)
    if rc != 0:
        raise GuestError(f"kernel build step '{step.title}' failed (exit {rc}): {_log_tail(logf)}")


def _log_tail(logf: IO[bytes]) -> str:
    """The last error line of the build log (or its last line), for a one-line message."""
    logf.flush()
    logf.seek(0)
    lines = logf.read().decode(errors="replace").splitlines()
    errors = [ln.strip() for ln in lines if "error" in ln.lower()]
    return (errors or [ln.strip() for ln in lines if ln.strip()] or [""])[-1][:300]


# --- reporting ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelInfo:
    key: str | None
    source_version: str | None
    fragment: Path
    path: Path | None  # the built vmlinux, when there is one
    size: int | None
    problem: str | None  # why there is no key (no source, no fragment)


def kernel_info(roots: Roots) -> KernelInfo:
    frag = fragment_path()
    try:
        source = find_source()
        key = cache_key(source.version, read_fragment(frag))
    except (KernelMissing, UsageError, BackendError) as e:
        return KernelInfo(None, None, frag, None, None, str(e))
    path = kernel_dir(roots) / key / "vmlinux"
    size = path.stat().st_size if path.is_file() else None
    return KernelInfo(key, source.version, frag, path if size else None, size, None)
