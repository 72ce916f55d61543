"""Build the guest init/agent (guest/init/*.c) with musl-gcc, and the initramfs that holds it.

Both are cached under `<roots.guest>/init/<key>/`, where the key is the sha256 of the sources,
the compiler flags and the compiler's version: `init` (a static binary) and `initramfs.cpio`
(newc format: /init, /dev/console and the mount points init needs, nothing else). Results are
written to a temporary name and renamed into place, so a cache entry is whole or absent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bareboat.errors import BackendUnavailable, GuestError
from bareboat.fsutil import atomic_write
from bareboat.paths import Roots

from . import toolmemo

# guest/ lives at the top of the repository, beside src/.
INIT_SOURCES = Path(__file__).resolve().parents[4] / "guest" / "init"
CC = "musl-gcc"
CFLAGS = (
    "-static",
    "-Os",
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-ffunction-sections",
    "-fdata-sections",
    "-Wl,--gc-sections",
    "-s",
)
COMPILE_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class InitBuild:
    """The plan of one init build: plain data, tested without compiling."""

    key: str
    sources: tuple[Path, ...]
    argv: tuple[str, ...]  # the compiler command, without `-o OUT`


def source_files(directory: Path = INIT_SOURCES) -> tuple[Path, ...]:
    files = tuple(sorted([*directory.glob("*.c"), *directory.glob("*.h")]))
    if not any(f.suffix == ".c" for f in files):
        raise GuestError(f"no init sources in {directory}")
    return files


def compiler_version(cc: str = CC, *, memo_dir: Path | None = None) -> str:
    """The compiler's first line of `--version`. With `memo_dir`, remembered there while the
    compiler's file, the gcc musl-gcc calls and the package database stay the same."""
    path = shutil.which(cc)
    if path is None:
        raise BackendUnavailable(
            f"{cc} is missing: install Debian's musl-tools to build the guest init"
        )

    def ask() -> str:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        return out.stdout.splitlines()[0] if out.stdout else f"{cc} (unknown version)"

    if memo_dir is None:
        return ask()
    # musl-gcc runs $REALGCC or the target's gcc: that one's version is what it prints.
    real = os.environ.get("REALGCC") or "x86_64-linux-gnu-gcc"
    depends = [Path(path), toolmemo.DPKG_STATUS]
    if found := shutil.which(real):
        depends.append(Path(found))
    return toolmemo.remembered(memo_dir, f"compiler:{path}:{real}", depends, ask)


def plan_init(
    directory: Path = INIT_SOURCES, *, cc: str = CC, memo_dir: Path | None = None
) -> InitBuild:
    sources = source_files(directory)
    h = hashlib.sha256()
    h.update(compiler_version(cc, memo_dir=memo_dir).encode())
    h.update(b"\0".join(a.encode() for a in CFLAGS))
    for f in sources:
        h.update(f"\0{f.name}\0".encode())
        h.update(f.read_bytes())
    argv = (cc, *CFLAGS, *(str(f) for f in sources if f.suffix == ".c"))
    return InitBuild(key=h.hexdigest(), sources=sources, argv=argv)


def init_dir(roots: Roots) -> Path:
    return roots.guest / "init"


def build_init(roots: Roots, *, directory: Path = INIT_SOURCES) -> Path:
    """Compile the init (or find it cached) and return the binary's path."""
    plan = plan_init(directory, memo_dir=roots.guest)
    final = init_dir(roots) / plan.key / "init"
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".init.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        try:
            res = subprocess.run(
                [*plan.argv, "-o", tmp],
                capture_output=True,
                text=True,
                timeout=COMPILE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise GuestError(f"compiling the guest init took over {COMPILE_TIMEOUT_S:g}s") from None
        if res.returncode != 0:
            lines = res.stderr.strip().splitlines() or ["(no output)"]
            first = next((x for x in lines if " error: " in x), lines[0])
            raise GuestError(f"compiling the guest init failed: {first}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, final)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return final


# --- initramfs ----------------------------------------------------------------------------

S_IFDIR = 0o040000
S_IFREG = 0o100000
S_IFCHR = 0o020000


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def initramfs_entries(init: bytes) -> list[CpioEntry]:
    """What the initramfs holds: init, a console node (the kernel opens /dev/console for
    PID 1's stdio before devtmpfs is mounted) and the mount points."""
    dirs = ["dev", "proc", "sys", "run", "mnt", "tmp"]
    return [
        *(CpioEntry(d, S_IFDIR | 0o755) for d in dirs),
        CpioEntry("dev/console", S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("init", S_IFREG | 0o755, init),
    ]


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def cpio_newc(entries: list[CpioEntry]) -> bytes:
    """A newc ("070701") archive, the format the kernel unpacks into its rootfs."""
    out: list[bytes] = []
    ino = 1
    for e in [*entries, CpioEntry("TRAILER!!!", 0)]:
        name = e.name.encode() + b"\0"
        fields = [
            ino, e.mode, 0, 0, 1 if not e.mode & S_IFDIR else 2, 0, len(e.data),
            0, 0, e.rdev[0], e.rdev[1], len(name), 0,
        ]  # fmt: skip
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += [header, name, _pad4(len(header) + len(name)), e.data, _pad4(len(e.data))]
        ino += 1
    archive = b"".join(out)
    return archive + _pad4(len(archive))


def build_initramfs(roots: Roots, *, directory: Path = INIT_SOURCES) -> Path:
    """The initramfs (cpio) holding only our init, cached next to the init binary."""
    init = build_init(roots, directory=directory)
    path = init.parent / "initramfs.cpio"
    if not path.is_file():
        atomic_write(path, cpio_newc(initramfs_entries(init.read_bytes())))
    if path.stat().st_mode & 0o044 != 0o044:
        # Read by every VM's QEMU, each jailed as a uid of its own (the cache directory
        # keeps other users out).
        path.chmod(0o644)
    return path
