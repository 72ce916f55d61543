"""Pick the accelerator for microVMs: KVM only where it really runs guests at native speed.

A /dev/kvm that opens is not enough: on nested "PVM" hosts (these build machines) KVM emulates
ordinary guests at ~1M instructions/s, far slower than TCG. So `auto` boots a tiny guest under
KVM, a 64 KiB firmware image that counts down a register from `PROBE_LOOPS` and then writes to
the isa-debug-exit port, and keeps KVM only if QEMU exits within `PROBE_BUDGET_S`. Natively
the loop takes milliseconds; emulated it takes minutes.

The verdict is cached per host boot (keyed by /proc/sys/kernel/random/boot_id and the QEMU
binary's identity) under the state root, since neither KVM nor QEMU change under a running host
without one of those changing.

`BAREBOAT_ACCEL=kvm|tcg|auto` or an explicit argument overrides the probe.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bareboat.errors import BackendUnavailable, UsageError
from bareboat.fsutil import atomic_write, atomic_write_text
from bareboat.paths import Roots

from .qemu import QEMU_BINARY

ENV_ACCEL = "BAREBOAT_ACCEL"
KVM_DEVICE = Path("/dev/kvm")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

# 20 M iterations of `dec ecx; jnz` is ~10-20 ms on any native CPU and would take minutes at
# the ~1M instructions/s of an emulating KVM. The budget covers QEMU's own start (~0.1-0.3 s).
PROBE_LOOPS = 20_000_000
PROBE_BUDGET_S = 2.0
# isa-debug-exit turns `out 0xf4, al` into QEMU exiting with status (al << 1) | 1.
_DEBUG_EXIT_PORT = 0xF4
_PROBE_EXIT = (0x2A << 1) | 1

_KVM_GET_API_VERSION = 0xAE00
_KVM_API_VERSION = 12

Choice = Literal["kvm", "tcg"]


@dataclass(frozen=True)
class AccelChoice:
    accel: Choice
    reason: str
    cached: bool = False


def probe_firmware(loops: int = PROBE_LOOPS) -> bytes:
    """A 64 KiB real-mode firmware image: count `loops` down, exit QEMU via isa-debug-exit.

    QEMU maps a firmware image of this size below 1 MiB so that its last 16 bytes hold the
    reset vector (F000:FFF0), where the CPU starts.
    """
    if not 0 < loops < 1 << 32:
        raise UsageError(f"probe loop count {loops} is out of range")
    code = (
        b"\x66\xb9" + struct.pack("<I", loops)  # mov ecx, loops
        + b"\x66\x49"  # loop: dec ecx
        + b"\x75\xfc"  # jnz loop
        + b"\xb0\x2a"  # mov al, 0x2a
        + bytes([0xE6, _DEBUG_EXIT_PORT])  # out 0xf4, al  -> QEMU exits
        + b"\xf4"  # hlt (not reached)
        + b"\xeb\xfd"  # jmp hlt
    )  # fmt: skip
    image = bytearray(b"\xf4" * 0x10000)
    image[: len(code)] = code
    # Reset vector at offset 0xFFF0: jmp near to offset 0 of the segment.
    rel = (0 - (0xFFF0 + 3)) & 0xFFFF
    image[0xFFF0:0xFFF3] = b"\xe9" + struct.pack("<H", rel)
    return bytes(image)


def probe_argv(firmware: Path, accel: Choice = "kvm", *, qemu: str = QEMU_BINARY) -> list[str]:
    """QEMU's arguments for the probe guest: no devices but the exit port, no display."""
    return [
        qemu,
        "-M", "microvm,rtc=off,acpi=off,pit=off,pic=off,isa-serial=off",
        "-accel", accel,
        "-nodefaults", "-no-user-config", "-display", "none",
        "-m", "16",
        "-bios", str(firmware),
        "-device", f"isa-debug-exit,iobase={_DEBUG_EXIT_PORT:#x},iosize=1",
    ]  # fmt: skip


def kvm_usable() -> str | None:
    """None if /dev/kvm opens and speaks the KVM API; else why not."""
    import fcntl

    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{KVM_DEVICE} does not exist"
    except OSError as e:
        return f"{KVM_DEVICE} cannot be opened: {e.strerror}"
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
    except OSError as e:
        return f"{KVM_DEVICE} does not answer KVM_GET_API_VERSION: {e.strerror}"
    finally:
        os.close(fd)
    if version != _KVM_API_VERSION:
        return f"{KVM_DEVICE} speaks KVM API {version}, not {_KVM_API_VERSION}"
    return None


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    seconds: float
    detail: str


def run_probe(
    accel: Choice = "kvm",
    *,
    qemu: str = QEMU_BINARY,
    budget: float = PROBE_BUDGET_S,
    loops: int = PROBE_LOOPS,
) -> ProbeResult:
    """Boot the probe guest under `accel` and time it; ok when it finishes within `budget`."""
    with tempfile.TemporaryDirectory(prefix="bareboat-accel-") as tmp:
        fw = Path(tmp) / "probe.bin"
        atomic_write(fw, probe_firmware(loops))
        start = time.monotonic()
        try:
            proc = subprocess.run(
                probe_argv(fw, accel, qemu=qemu),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=budget,
                check=False,
            )
        except subprocess.TimeoutExpired:
            # subprocess.run kills and reaps QEMU before raising.
            return ProbeResult(False, budget, f"a tiny guest did not finish in {budget:g} s")
        except FileNotFoundError:
            return ProbeResult(False, 0.0, f"{qemu} not found")
        elapsed = time.monotonic() - start
    if proc.returncode != _PROBE_EXIT:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        why = err[-1] if err else f"exit status {proc.returncode}"
        return ProbeResult(False, elapsed, f"QEMU could not run a tiny guest: {why}")
    return ProbeResult(True, elapsed, f"a tiny guest ran natively ({elapsed * 1000:.0f} ms)")


def _cache_key(qemu: str) -> str | None:
    """Host boot + QEMU binary identity, or None when either cannot be read."""
    try:
        boot_id = BOOT_ID.read_text().strip()
        binary = shutil.which(qemu)
        if binary is None:
            return None
        st = Path(binary).stat()
    except OSError:
        return None
    return f"{boot_id}:{binary}:{st.st_size}:{st.st_mtime_ns}"


def _cache_file(roots: Roots) -> Path:
    return roots.state / "accel.json"


def _read_cache(roots: Roots, key: str) -> AccelChoice | None:
    try:
        data = json.loads(_cache_file(roots).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    accel, reason = data.get("accel"), data.get("reason")
    if accel not in ("kvm", "tcg") or not isinstance(reason, str):
        return None
    return AccelChoice(accel, reason, cached=True)


def choose_accel(
    roots: Roots,
    requested: str | None = None,
    *,
    qemu: str = QEMU_BINARY,
    use_cache: bool = True,
) -> AccelChoice:
    """The accelerator to use and why: argument, then $BAREBOAT_ACCEL, then the probe."""
    origin = "requested"
    if not requested:
        requested, origin = os.environ.get(ENV_ACCEL) or "auto", f"${ENV_ACCEL}"
    requested = requested.strip().lower()
    if requested not in ("kvm", "tcg", "auto"):
        raise UsageError(f"unknown accelerator {requested!r} (kvm, tcg or auto)")
    if requested == "kvm":
        # Forced KVM skips the speed probe (the user knows the host), not the device check:
        # a clear error now beats QEMU failing at every start.
        if (problem := kvm_usable()) is not None:
            raise BackendUnavailable(f"KVM was requested ({origin}) but {problem}")
        return AccelChoice("kvm", f"kvm {origin}")
    if requested == "tcg":
        return AccelChoice("tcg", f"tcg {origin}")

    problem = kvm_usable()
    if problem is not None:
        return AccelChoice("tcg", f"{problem}; using TCG (emulation)")
    key = _cache_key(qemu)
    if use_cache and key is not None and (hit := _read_cache(roots, key)) is not None:
        return hit
    result = run_probe("kvm", qemu=qemu)
    if result.ok:
        choice = AccelChoice("kvm", f"KVM: {result.detail}")
    else:
        choice = AccelChoice("tcg", f"KVM is unusable here ({result.detail}); using TCG")
    if key is not None:
        with contextlib.suppress(OSError):
            atomic_write_text(
                _cache_file(roots),
                json.dumps({"key": key, "accel": choice.accel, "reason": choice.reason}),
            )
    return choice
