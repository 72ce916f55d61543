#!/usr/bin/env python3
"""Measure how fast the guest kernel boots to /init under QEMU microvm (host-side timing).

    .venv/bin/python guest/kernel/boot-time.py [--runs 7] [--kernel PATH] [--accel tcg]

Boots the kernel `bareboat guest build` made (or --kernel) with a tiny initramfs whose /init
is a static C program (musl-gcc) that prints a marker and powers off, and reports medians of:
QEMU exec → QMP ready, → the marker on the console (kernel + init start), → QEMU exit; and
the kernel's own "Run /init" timestamp from a run with printk times on.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bareboat.backends.microvm import kernel
from bareboat.backends.microvm.qemu import QemuProcess, VMConfig, host_tsc_khz
from bareboat.paths import Roots

INIT_C = r"""
#include <sys/reboot.h>
#include <unistd.h>
int main(void) { write(1, "BOOT-OK\n", 8); reboot(RB_POWER_OFF); return 0; }
"""


def make_initramfs(tmp: Path) -> Path:
    tree = tmp / "tree"
    (tree / "dev").mkdir(parents=True)
    (tmp / "init.c").write_text(INIT_C)
    subprocess.run(
        ["musl-gcc", "-static", "-Os", "-s", "-o", str(tree / "init"), str(tmp / "init.c")],
        check=True,
        timeout=60,
    )
    out = tmp / "initramfs.cpio"
    with open(out, "wb") as f:
        subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            input=b"init\ndev\n",
            stdout=f,
            cwd=tree,
            check=True,
            timeout=60,
        )
    return out


def boot(cfg: VMConfig) -> tuple[float, float, float]:
    assert cfg.console_log is not None
    cfg.console_log.unlink(missing_ok=True)
    t0 = time.monotonic()
    with QemuProcess(cfg) as vm:
        t_qmp = time.monotonic() - t0
        t_init = None
        while vm.returncode is None:
            if t_init is None and b"BOOT-OK" in cfg.console_log.read_bytes():
                t_init = time.monotonic() - t0
            time.sleep(0.001)
        t_exit = time.monotonic() - t0
    return t_qmp, t_init if t_init is not None else t_exit, t_exit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--kernel", type=Path)
    ap.add_argument("--accel", choices=["tcg", "kvm"], default="tcg")
    args = ap.parse_args()
    if not shutil.which("musl-gcc"):
        sys.exit("musl-gcc is needed (musl-tools)")
    vmlinux = kernel.resolve_kernel(Roots.from_env(), explicit=args.kernel).path
    with tempfile.TemporaryDirectory(prefix="bb-boot-") as t:
        tmp = Path(t)
        initrd = make_initramfs(tmp)

        def cfg(**kw: object) -> VMConfig:
            return VMConfig(
                kernel=vmlinux,
                initrd=initrd,
                qmp_socket=tmp / "qmp.sock",
                console_log=tmp / "console.log",
                accel=args.accel,
                tsc_khz=host_tsc_khz(),
                **kw,  # type: ignore[arg-type]
            )

        boot(cfg())  # warm the page cache
        runs = [boot(cfg()) for _ in range(args.runs)]
        loud = cfg(quiet=False, cmdline=("printk.time=1",))
        boot(loud)
        assert loud.console_log is not None
        m = re.search(r"\[\s*([0-9.]+)\] Run /init", loud.console_log.read_text())
    print(f"kernel: {vmlinux} ({vmlinux.stat().st_size / 1e6:.1f} MB), accel {args.accel}")
    for i, name in enumerate(("QEMU exec -> QMP ready", "QEMU exec -> init output", "QEMU exit")):
        vals = [r[i] for r in runs]
        print(f"{name:26s} median {statistics.median(vals) * 1000:6.0f} ms  "
              f"min {min(vals) * 1000:6.0f}  max {max(vals) * 1000:6.0f}")  # fmt: skip
    if m:
        print(f"kernel clock at 'Run /init': {float(m.group(1)) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
