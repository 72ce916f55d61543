"""Guest kernel boot: our kernel against Debian's cloud kernel, same QEMU, same flags, trivial init.

Both kernels boot the same QEMU command line (`qemu.build_argv`: the microvm machine, the
accelerator the backend picks, the kernel command line the backend passes, the devices and
RAM of a plain VM: a read-only virtio-blk disk, a virtio-serial port, virtio-rng, 256 MiB)
with an initramfs whose /init is a static C program (musl-gcc) that writes a marker and
powers off. Interleaved per round, N rounds; medians of:

- wall: QEMU exec -> QEMU exit (the guest powered off)
- cpu:  user + system CPU time QEMU used (os.wait4's rusage): what a boot costs the host
- init: QEMU exec -> the marker on the console (kernel boot + init start)

Debian's kernel is the `linux-image-*-cloud-amd64` package `linux-image-cloud-amd64` depends
on, fetched with `apt-get download` and unpacked with `dpkg-deb -x` into the cache
($BAREBOAT_CACHE/bench/debian-kernel/, never /boot); without apt or a mirror it is skipped with
the reason. It ships a bzImage; QEMU boots an ELF `vmlinux` with the PVH note directly (what
ours is) but a bzImage through microvm's firmware (qboot) and the kernel's own decompressor,
so the bench takes the ELF out of the bzImage's payload and boots that: the same boot path as
ours. If that fails, it boots the bzImage and the table says so. Debian's kernel has the
virtio-mmio transport as a module, which the trivial init does not load: it boots without
probing the VM's devices (ours probes them all), which the table says too.

Then one boot of each with `initcall_debug printk.time=1`, whose /init copies the kernel log
to the console before it powers off, ranks the slowest initcalls and reports the kernel's
clock at "Run /init". The log is read out at the end and not printed during the boot: under
TCG every character to the emulated UART is slow, and would be counted in the initcalls.

Goal (issue 18): ours <= 0.25 x Debian's, boot to poweroff.
Run `bareboat bench kernel [--runs N] [--kernel VMLINUX] [--out DIR]` or
`python bench/kernel.py`. Writes DIR/kernel.json and DIR/kernel.png and prints a table.
Needs a built guest kernel (`bareboat guest build`, or --kernel / $BAREBOAT_KERNEL), musl-gcc.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import json
import lzma
import math
import os
import re
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bareboat.backends.microvm import qemu  # noqa: E402
from bareboat.paths import Roots  # noqa: E402

MARKER = b"BOOT-OK"
# With DUMP_LOG, /init first copies the kernel's log buffer to the console: the boot itself
# then runs quiet, so printing to the emulated UART does not inflate what it measures.
INIT_C = r"""
#include <sys/klog.h>
#include <sys/reboot.h>
#include <unistd.h>
static char buf[1 << 20];
int main(void) {
#ifdef DUMP_LOG
    int n = klogctl(3, buf, sizeof buf);
    if (n > 0) write(1, buf, n);
#endif
    write(1, "BOOT-OK\n", 8);
    reboot(RB_POWER_OFF);
    return 0;
}
"""
META_PACKAGE = "linux-image-cloud-amd64"
BOOT_TIMEOUT_S = 120.0
# Logged, not printed: the init-log initramfs reads the log buffer out at the end.
LOUD = ("initcall_debug", "printk.time=1")


def trivial_initramfs(tmp: Path, *, dump_log: bool = False) -> Path:
    """/init: a static musl program that writes MARKER to the console and powers off."""
    from bareboat.backends.microvm.initbuild import S_IFDIR, S_IFREG, CpioEntry, cpio_newc

    name = "init-log" if dump_log else "init"
    (tmp / "init.c").write_text(INIT_C)
    cc = ["musl-gcc", "-static", "-Os", "-s", *(["-DDUMP_LOG"] if dump_log else [])]
    subprocess.run([*cc, "-o", str(tmp / name), str(tmp / "init.c")], check=True, timeout=120)
    entries = [
        CpioEntry("dev", S_IFDIR | 0o755),
        CpioEntry("init", S_IFREG | 0o755, (tmp / name).read_bytes()),
    ]
    out = tmp / f"{name}.cpio"
    out.write_bytes(cpio_newc(entries))
    return out


# --- Debian's cloud kernel ------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    package: str
    bzimage: Path
    vmlinux: Path | None  # the ELF from the bzImage's payload, when it has the PVH note
    how: str  # how it boots, for the table


def debian_package() -> str:
    """The versioned image package the cloud meta-package depends on."""
    out = subprocess.run(["apt-cache", "depends", META_PACKAGE], capture_output=True,
                         text=True, timeout=60, check=True).stdout  # fmt: skip
    m = re.search(r"Depends: (linux-image-[0-9][^\s]*-cloud-amd64)\b", out)
    if not m:
        raise RuntimeError(f"apt-cache names no image package for {META_PACKAGE}")
    return m.group(1)


def fetch_debian(cache: Path) -> Peer:
    """The Debian cloud kernel, downloaded and unpacked into `cache` once."""
    package = debian_package()
    where = cache / package
    if not (where / "boot").is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache) as t:
            subprocess.run(["apt-get", "download", package], cwd=t, check=True,
                           capture_output=True, timeout=600)  # fmt: skip
            (deb,) = Path(t).glob("*.deb")
            subprocess.run(["dpkg-deb", "-x", str(deb), f"{t}/root"], check=True, timeout=600)
            os.mkdir(f"{t}/keep")  # /boot only: the modules (~100 MB) are not needed
            os.rename(f"{t}/root/boot", f"{t}/keep/boot")
            os.rename(f"{t}/keep", where)
    (bzimage,) = (where / "boot").glob("vmlinuz-*")
    vmlinux = where / "vmlinux"
    if not vmlinux.is_file():
        with contextlib.suppress(
            ValueError, OSError, lzma.LZMAError, EOFError, subprocess.SubprocessError
        ):
            data = bzimage_payload(bzimage.read_bytes())
            vmlinux.with_suffix(".tmp").write_bytes(data)
            os.rename(vmlinux.with_suffix(".tmp"), vmlinux)
    from bareboat.backends.microvm.kernel import check_vmlinux
    from bareboat.errors import KernelMissing

    # Debian builds virtio-mmio as a module, which a trivial init never loads: that kernel
    # probes none of the VM's virtio devices, where ours probes them all.
    note = ""
    with contextlib.suppress(OSError, ValueError):
        (config,) = (where / "boot").glob("config-*")
        if "CONFIG_VIRTIO_MMIO=m" in config.read_text().splitlines():
            note = "; virtio-mmio is a module: its devices go unprobed"
    try:
        check_vmlinux(vmlinux)
    except KernelMissing as e:
        return Peer(package, bzimage, None, f"bzImage via qboot + decompressor ({e}){note}")
    return Peer(package, bzimage, vmlinux, f"ELF from the bzImage payload, PVH like ours{note}")


def bzimage_payload(image: bytes) -> bytes:
    """The kernel ELF compressed inside a bzImage (boot protocol >= 2.08)."""
    if image[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", image, 0x206)[0] < 0x208:
        raise ValueError("not a bzImage with boot protocol 2.08+")
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    blob = image[start : start + length]
    if blob.startswith(b"\x1f\x8b"):
        return _gunzip(blob)
    if blob.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(blob)
    if blob.startswith(b"\x28\xb5\x2f\xfd"):
        import zstandard

        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(blob))
    if blob.startswith(b"BZh"):
        return bz2.BZ2Decompressor().decompress(blob)
    if blob.startswith(b"\x5d\x00"):
        return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(blob)
    if blob.startswith(b"\x02\x21\x4c\x18"):
        # LZ4's legacy frame (Debian's choice): no stdlib decoder, Debian's lz4 tool has one.
        # The kernel's build appends the unpacked size, which the tool would read as a block.
        return subprocess.run(["lz4", "-dc"], input=blob[:-4], capture_output=True,
                              check=True, timeout=120).stdout  # fmt: skip
    raise ValueError(f"unknown payload compression {blob[:6].hex()}")


def _gunzip(blob: bytes) -> bytes:
    import zlib

    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob)


# --- one boot -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    wall: float  # QEMU exec -> exit, s
    cpu: float  # QEMU's user + system time, s
    init: float  # QEMU exec -> MARKER on the console, s (nan if it never came)
    console: bytes


@contextlib.contextmanager
def _listening(path: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(str(path))
        s.listen(1)
        yield s
    finally:
        s.close()
        path.unlink(missing_ok=True)


def boot(cfg: qemu.VMConfig, argv_for: Callable[..., list[str]] = qemu.build_argv) -> Sample:
    """Boot `cfg` once the way the backend launches QEMU (QMP, serial ports and the console
    are inherited descriptors), without the jail; time it from exec to exit."""
    r, w = os.pipe()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, r)
        stack.callback(ours.close)
        ports = [stack.enter_context(_listening(p.socket)) for p in cfg.serial_ports]
        fds = qemu.LaunchFds(theirs.fileno(), tuple(p.fileno() for p in ports), w)
        argv = argv_for(cfg, fds=fds)
        err = stack.enter_context(tempfile.TemporaryFile())
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                pass_fds=(w, theirs.fileno(), *fds.serial))  # fmt: skip
        os.close(w)
        theirs.close()
        for p in ports:
            p.close()
        console = bytearray()
        t_init = float("nan")
        deadline = t0 + BOOT_TIMEOUT_S
        while True:
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                proc.kill()
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            console += chunk
            if math.isnan(t_init) and MARKER in console:
                t_init = time.perf_counter() - t0
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or MARKER not in console:
            err.seek(0)
            tail = err.read()[-400:]
            raise RuntimeError(f"boot of {cfg.kernel} failed (exit {proc.returncode}): "
                               f"{tail!r} console {bytes(console[-400:])!r}")  # fmt: skip
    return Sample(wall, usage.ru_utime + usage.ru_stime, t_init, bytes(console))


# --- initcall_debug -------------------------------------------------------------------------

_INITCALL = re.compile(r"initcall ([A-Za-z0-9_.]+)\S* returned -?\d+ after (\d+) usecs")
_RUN_INIT = re.compile(r"\[\s*([0-9.]+)\] Run /init")


def symbols(vmlinux: Path) -> dict[str, str]:
    """A resolver table for initcall addresses, from the kernel's ELF symbols (`nm`): a
    kernel without KALLSYMS (ours) logs its initcalls as bare addresses."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["nm", str(vmlinux)], capture_output=True, text=True,
                             timeout=60, check=True).stdout  # fmt: skip
        return {
            f"0x{int(p[0], 16):x}": p[2]
            for line in out.splitlines()
            if len(p := line.split()) == 3 and p[1] in "tT"
        }
    return {}


def rank_initcalls(console: str, names: dict[str, str], top: int = 10) -> dict[str, Any]:
    """The slowest initcalls of a boot with initcall_debug, their sum, and the kernel's clock
    at "Run /init"."""
    calls = [(m.group(1), int(m.group(2))) for m in _INITCALL.finditer(console)]
    calls.sort(key=lambda c: -c[1])
    m = _RUN_INIT.search(console)
    return {
        "top": [{"initcall": names.get(n, n), "ms": us / 1000} for n, us in calls[:top]],
        "count": len(calls),
        "total_ms": sum(us for _, us in calls) / 1000,
        "run_init_ms": float(m.group(1)) * 1000 if m else None,
    }


# --- the run --------------------------------------------------------------------------------


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--kernel", type=Path, default=None, help="our vmlinux (default: built)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    if not shutil.which("musl-gcc"):
        print("musl-gcc is needed (musl-tools)", file=sys.stderr)
        return 1
    from bareboat.backends.microvm.accel import choose_accel
    from bareboat.backends.microvm.kernel import resolve_kernel
    from bareboat.backends.microvm.vmspec import DEFAULT_MEMORY

    roots = Roots.from_env()
    ours = resolve_kernel(roots, explicit=args.kernel).path
    skipped = None
    peer = None
    try:
        peer = fetch_debian(roots.cache / "bench" / "debian-kernel")
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
        skipped = f"Debian's cloud kernel is unavailable: {e}"
        print(skipped, file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = [os.getloadavg()[0]]
    accel = choose_accel(roots).accel
    with tempfile.TemporaryDirectory(prefix="bb-bench-kernel-") as t:
        tmp = Path(t)
        disk = tmp / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(1 << 20)
        cfg = qemu.VMConfig(
            kernel=ours,
            qmp_socket=tmp / "qmp.sock",
            initrd=trivial_initramfs(tmp),
            memory_mib=DEFAULT_MEMORY >> 20,
            accel=accel,
            tsc_khz=qemu.host_tsc_khz(),
            disks=(qemu.Disk(disk, readonly=True, serial="bench"),),
            serial_ports=(qemu.SerialPort("bench", tmp / "port.sock"),),
        )
        cases = {"ours": cfg}
        if peer is not None:
            cases["debian"] = replace(cfg, kernel=peer.vmlinux or peer.bzimage)
        for c in cases.values():
            boot(c)  # warm the page cache
        samples: dict[str, list[Sample]] = {name: [] for name in cases}
        for i in range(args.runs):
            for name, c in cases.items():
                samples[name].append(boot(c))
            print(f"round {i + 1}/{args.runs}: " + "  ".join(
                f"{n} {s[-1].wall:.3f}s wall {s[-1].cpu:.3f}s cpu" for n, s in samples.items()),
                file=sys.stderr)  # fmt: skip
        load.append(os.getloadavg()[0])
        logged = trivial_initramfs(tmp, dump_log=True)
        initcalls = {
            name: rank_initcalls(
                boot(replace(c, initrd=logged, cmdline=LOUD)).console.decode(errors="replace"),
                symbols(c.kernel),
            )
            for name, c in cases.items()
        }
        cmdline = qemu.kernel_cmdline(cfg)
        machine = qemu.build_argv(cfg)[2]
    result: dict[str, Any] = {
        "runs": args.runs,
        "accel": accel,
        "loadavg_1m": load,
        "cmdline": cmdline,
        "machine": machine,
        "kernels": {"ours": {"path": str(ours), "how": "ELF vmlinux, PVH"}},
        "skipped": skipped,
        "median": {
            name: {
                "wall_s": med([s.wall for s in ss]),
                "cpu_s": med([s.cpu for s in ss]),
                "init_s": med([s.init for s in ss]),
            }
            for name, ss in samples.items()
        },
        "initcalls": initcalls,
        "samples": {
            name: [{"wall": s.wall, "cpu": s.cpu, "init": s.init} for s in ss]
            for name, ss in samples.items()
        },
    }
    if peer is not None:
        result["kernels"]["debian"] = {"package": peer.package, "how": peer.how,
                                       "path": str(peer.vmlinux or peer.bzimage)}  # fmt: skip
        m = result["median"]
        result["ratio_wall"] = m["ours"]["wall_s"] / m["debian"]["wall_s"]
        result["ratio_cpu"] = m["ours"]["cpu_s"] / m["debian"]["cpu_s"]
    (out / "kernel.json").write_text(json.dumps(result, indent=2))
    print_table(result)
    plot(result, out / "kernel.png")
    return 0


def print_table(r: dict[str, Any]) -> None:
    print(f"accel {r['accel']}, load {r['loadavg_1m'][0]:.2f} -> {r['loadavg_1m'][1]:.2f}, "
          f"{r['machine']}, cmdline: {r['cmdline']}")  # fmt: skip
    for name, k in r["kernels"].items():
        print(f"  {name}: {k.get('package', '')} {k['path']} ({k['how']})")
    print(f"{'kernel':<10}{'wall s':>10}{'cpu s':>10}{'init s':>10}")
    for name, m in r["median"].items():
        print(f"{name:<10}{m['wall_s']:>10.3f}{m['cpu_s']:>10.3f}{m['init_s']:>10.3f}")
    if "ratio_wall" in r:
        print(f"ours/debian: wall {r['ratio_wall']:.2f}x  cpu {r['ratio_cpu']:.2f}x  "
              "(goal <= 0.25x)")  # fmt: skip
    else:
        print(f"no ratio: {r['skipped']}")
    for name, ic in r["initcalls"].items():
        run_init = ic["run_init_ms"]
        at = f"{run_init:.0f} ms" if run_init is not None else "?"
        print(f"{name}: {ic['count']} initcalls, {ic['total_ms']:.0f} ms; Run /init at {at} "
              "(kernel clock, initcall_debug boot); slowest:")  # fmt: skip
        for c in ic["top"]:
            print(f"  {c['ms']:8.1f} ms  {c['initcall']}")


def plot(r: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no figure", file=sys.stderr)
        return
    names = list(r["median"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    x = range(len(names))
    a1.bar([i - 0.2 for i in x], [r["median"][n]["wall_s"] for n in names], 0.4, label="wall")
    a1.bar([i + 0.2 for i in x], [r["median"][n]["cpu_s"] for n in names], 0.4, label="QEMU CPU")
    a1.set_xticks(list(x), names)
    a1.set_ylabel("seconds (median)")
    a1.set_title("boot to poweroff, trivial init")
    a1.legend()
    top = r["initcalls"]["ours"]["top"][::-1]
    a2.barh([c["initcall"] for c in top], [c["ms"] for c in top])
    a2.set_xlabel("ms (initcall_debug)")
    a2.set_title("our kernel: slowest initcalls")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
