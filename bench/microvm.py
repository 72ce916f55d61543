"""microVM start-up: `bareboat run --rm --isolation microvm IMAGE true` against raw QEMU.

Measured in one run, interleaved per round so background load falls on every case alike:

- e2e:    `bareboat run --rm --isolation microvm IMAGE true` as a subprocess (CLI, engine,
          monitor, overlay, EROFS lookup, QEMU, agent, poweroff, cleanup)
- backend: the microvm backend driven in this process (create → start → EXIT → QEMU gone →
          delete), with its phases timed
- raw:    QEMU with the same kernel, the same machine flags and devices, booting a trivial
          initramfs whose /init is busybox running `poweroff -f`: the floor for this kernel
- e2e unconfined: e2e with BAREBOAT_VMM_JAIL=off (QEMU as root, no namespaces, no seccomp):
          what the jail (jail.py) costs a cold start
- clone confined / unconfined: a template's clone restored in this process up to its agent's
          HELLO (template.restore_clone), jailed and not: what the jail costs a warm start

Phases (backend runs): VMM start (QEMU launch → QMP up), kernel → init (QMP up → init's start,
placed on the host clock from the agent's own "ready N us after init start" console line),
init → exec (init start → STARTED of the workload), exit (STARTED → QEMU exited). Plus the
PSS of an idle VM (a guest running `sleep`), from /proc/PID/smaps_rollup via psutil.

Goals: e2e <= 1.10 x raw; the jail at most +5 % of e2e and +5 ms on a clone.
Run `bareboat bench microvm [--runs N] [--out DIR]` or
`python bench/microvm.py`. Writes DIR/microvm.json and DIR/microvm.png and prints a table.
Needs a built guest kernel (`bareboat guest build`, or $BAREBOAT_KERNEL).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BUSYBOX = Path("/bin/busybox")


def trivial_initramfs(path: Path) -> Path:
    """An initramfs of busybox + /init that powers off at once."""
    from bareboat.backends.microvm.initbuild import S_IFDIR, S_IFREG, CpioEntry, cpio_newc

    entries = [
        CpioEntry("bin", S_IFDIR | 0o755),
        CpioEntry("dev", S_IFDIR | 0o755),
        CpioEntry("bin/busybox", S_IFREG | 0o755, BUSYBOX.read_bytes()),
        CpioEntry("init", S_IFREG | 0o755, b"#!/bin/busybox sh\n/bin/busybox poweroff -f\n"),
    ]
    path.write_bytes(cpio_newc(entries))
    return path


def busybox_tree(dest: Path) -> Path:
    from tests.support.imagebuild import busybox_entries, tar_layer

    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(tar_layer(busybox_entries()))) as tar:
        tar.extractall(dest, numeric_owner=True, filter="fully_trusted")
    return dest


class Setup:
    def __init__(self, work: Path) -> None:
        from tests.support.imagebuild import write_image

        from bareboat.paths import Roots

        self.work = work
        self.roots = Roots(work / "root", work / "state", Roots.from_env().cache)
        self.env = {
            **os.environ,
            "BAREBOAT_ROOT": str(self.roots.root),
            "BAREBOAT_STATE": str(self.roots.state),
            "BAREBOAT_CACHE": str(self.roots.cache),
        }
        layout = work / "layout"
        write_image(layout)
        script = Path(sys.executable).parent / "bareboat"
        self.cli = [str(script)] if script.exists() else [sys.executable, "-m", "bareboat.cli.main"]
        subprocess.run([*self.cli, "load", "-i", str(layout)], env=self.env, check=True,
                       capture_output=True, timeout=120)  # fmt: skip
        self.image = "localhost/layout:latest"
        self.tree = busybox_tree(work / "tree")
        self.trivial = trivial_initramfs(work / "trivial.cpio")

    # --- cases ---------------------------------------------------------------------------
    def e2e(self, *, jail: bool = True) -> float:
        argv = [*self.cli, "run", "--rm", "--isolation", "microvm", self.image, "true"]
        env = self.env if jail else {**self.env, "BAREBOAT_VMM_JAIL": "off"}
        t = time.perf_counter()
        subprocess.run(argv, env=env, check=True, timeout=120)
        return time.perf_counter() - t

    def template(self) -> tuple[Any, Any]:
        """The template of a plain VM of the bench image (made once), and its inputs."""
        from bareboat.backends.microvm import backend as mb
        from bareboat.backends.microvm import template as T
        from bareboat.backends.microvm import vmplan
        from bareboat.paths import Roots

        b = mb.MicrovmBackend(self.roots)
        ctx = self._ctx("tpl" + "0" * 61, ("true",))
        inputs = vmplan.template_inputs(b.plan(ctx))
        assert inputs is not None
        # Kept apart from the store the cold cases use, which must find no template.
        elsewhere = Roots(self.work / "tpl-root", self.work / "tpl-state", self.roots.cache)
        return T.create_template(elsewhere, inputs), inputs

    def clone(self, template: Any, inputs: Any, *, jail: bool) -> float:
        """Seconds from launch to the clone's agent HELLO, jailed or not."""
        from bareboat.backends.microvm import jail as vmjail
        from bareboat.backends.microvm import template as T

        os.environ[vmjail.ENV_JAIL] = "on" if jail else "off"
        try:
            t = time.perf_counter()
            clone = T.restore_clone(template, inputs)
            took = time.perf_counter() - t
            assert (clone.vm.uid is not None) == jail
            clone.close()
        finally:
            del os.environ[vmjail.ENV_JAIL]
        return took

    def _ctx(self, cid: str, args: tuple[str, ...]) -> Any:
        from bareboat.backends.base import BackendContext
        from bareboat.images.model import ImageConfig
        from bareboat.spec.builder import build_spec
        from bareboat.spec.options import Isolation, RunOptions

        opts = RunOptions(isolation=Isolation.MICROVM, command=args)
        spec = build_spec(ImageConfig(env=("PATH=/bin",)), opts, rootfs=self.tree,
                          container_id=cid)  # fmt: skip
        bundle = self.roots.run / cid / "bundle"
        bundle.mkdir(parents=True, exist_ok=True)
        if not (bundle / "rootfs").exists():
            (bundle / "rootfs").symlink_to(self.tree)
        (self.roots.containers / cid).mkdir(parents=True, exist_ok=True)
        return BackendContext(cid, bundle, self.roots.run / cid / "oci", spec)

    def backend(self, n: int) -> dict[str, float]:
        """One run through the backend with its phases on the host clock."""
        from bareboat.backends.base import Stdio
        from bareboat.backends.microvm import backend as mb
        from bareboat.backends.microvm import qemu

        b = mb.MicrovmBackend(self.roots)
        ctx = self._ctx(f"bench{n:04d}" + "0" * 56, ("true",))
        marks: dict[str, float] = {}
        real_launch = qemu.QemuProcess.launch
        real_boot = b._boot
        real_started = b._await_started

        def launch(vm: Any) -> None:
            marks["launch"] = time.perf_counter()
            real_launch(vm)
            marks["qmp"] = time.perf_counter()

        def boot(vm: Any, d: Any) -> Any:
            out = real_boot(vm, d)
            marks["hello"] = time.perf_counter()
            return out

        def started(*a: Any) -> Any:
            out = real_started(*a)
            marks["started"] = time.perf_counter()
            return out

        qemu.QemuProcess.launch = launch  # type: ignore[method-assign]
        b._boot = boot  # type: ignore[method-assign]
        b._await_started = started  # type: ignore[method-assign]
        null = os.open(os.devnull, os.O_RDWR)
        r, w = os.pipe()
        try:
            t0 = time.perf_counter()
            b.create(ctx)
            w2 = os.dup(w)
            pid = b.start(ctx, Stdio(null, w, w2))
            os.close(w)
            os.close(w2)
            while os.read(r, 65536):
                pass
            _, status = os.waitpid(pid, 0)
            marks["exited"] = time.perf_counter()
            code = b.exit_code(ctx, status)
            console = b.vmdir(ctx).console.read_text(errors="replace")
            b.delete(ctx, force=True)
            t1 = time.perf_counter()
        finally:
            qemu.QemuProcess.launch = real_launch  # type: ignore[method-assign]
            os.close(null)
            os.close(r)
        assert code == 0, code
        m = re.search(r"agent ready (\d+) us after init start", console)
        init_at = marks["hello"] - (int(m.group(1)) / 1e6 if m else 0.0)
        return {
            "total": t1 - t0,
            "prepare": marks["launch"] - t0,
            "vmm_start": marks["qmp"] - marks["launch"],
            "kernel_to_init": init_at - marks["qmp"],
            "init_to_exec": marks["started"] - init_at,
            "exit": marks["exited"] - marks["started"],
            "teardown": t1 - marks["exited"],
        }

    def raw(self) -> float:
        """Plain QEMU, same kernel and flags as the backend's VMs, trivial init."""
        from bareboat.backends.microvm import backend as mb
        from bareboat.backends.microvm import qemu

        b = mb.MicrovmBackend(self.roots)
        ctx = self._ctx("raw" + "0" * 61, ("true",))
        plan = b.plan(ctx)
        d = b.vmdir(ctx)
        d.sockets.mkdir(parents=True, exist_ok=True)
        d.path.mkdir(parents=True, exist_ok=True)
        cfg = b.vm_config(ctx, plan)
        from dataclasses import replace

        argv = qemu.build_argv(replace(cfg, initrd=self.trivial))
        t = time.perf_counter()
        subprocess.run(argv, check=True, timeout=120, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t

    def idle_pss(self) -> dict[str, float]:
        """PSS and RSS (MiB) of QEMU with a guest idling in `sleep`."""
        import psutil

        from bareboat.backends.base import Stdio
        from bareboat.backends.microvm import backend as mb

        b = mb.MicrovmBackend(self.roots)
        ctx = self._ctx("idle" + "0" * 60, ("sleep", "60"))
        null = os.open(os.devnull, os.O_RDWR)
        try:
            b.create(ctx)
            pid = b.start(ctx, Stdio(null, os.dup(null), os.dup(null)))
            time.sleep(2.0)
            info = psutil.Process(pid).memory_full_info()
            b.kill(ctx, pid, 9)
            os.waitpid(pid, 0)
            b.delete(ctx, force=True)
        finally:
            os.close(null)
        return {"pss_mib": info.pss / 2**20, "rss_mib": info.rss / 2**20,
                "guest_ram_mib": b.plan(ctx).spec.memory / 2**20}  # fmt: skip


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bb-bench-vm-") as tmp:
        s = Setup(Path(tmp))
        s.e2e()  # warm-up: builds the EROFS image, probes the accelerator, compiles init
        s.raw()
        template, inputs = s.template()
        s.clone(template, inputs, jail=True)
        e2e: list[float] = []
        e2e_free: list[float] = []
        raw: list[float] = []
        clones: list[float] = []
        clones_free: list[float] = []
        phases: list[dict[str, float]] = []
        for i in range(args.runs):
            raw.append(s.raw())
            e2e.append(s.e2e())
            e2e_free.append(s.e2e(jail=False))
            phases.append(s.backend(i))
            for _ in range(3):  # clones are quick and noisy: more of them
                clones.append(s.clone(template, inputs, jail=True))
                clones_free.append(s.clone(template, inputs, jail=False))
            print(f"round {i + 1}/{args.runs}: raw {raw[-1]:.3f}s  e2e {e2e[-1]:.3f}s  "
                  f"unconfined {e2e_free[-1]:.3f}s  backend {phases[-1]['total']:.3f}s  "
                  f"clone {clones[-1] * 1000:.1f} / {clones_free[-1] * 1000:.1f} ms",
                  file=sys.stderr)  # fmt: skip
        mem = s.idle_pss()
    keys = ["prepare", "vmm_start", "kernel_to_init", "init_to_exec", "exit", "teardown"]
    result = {
        "runs": args.runs,
        "raw_s": med(raw),
        "e2e_s": med(e2e),
        "backend_s": med([p["total"] for p in phases]),
        "overhead_e2e": med(e2e) / med(raw),
        "e2e_unconfined_s": med(e2e_free),
        "jail_e2e_ratio": med(e2e) / med(e2e_free),
        "clone_confined_ms": med(clones) * 1000,
        "clone_unconfined_ms": med(clones_free) * 1000,
        "jail_clone_ms": (med(clones) - med(clones_free)) * 1000,
        "overhead_backend": med([p["total"] for p in phases]) / med(raw),
        "phases_s": {k: med([p[k] for p in phases]) for k in keys},
        "idle": mem,
        "samples": {
            "raw": raw,
            "e2e": e2e,
            "e2e_unconfined": e2e_free,
            "backend": phases,
            "clone": clones,
            "clone_unconfined": clones_free,
        },
    }
    (out / "microvm.json").write_text(json.dumps(result, indent=2))
    print(f"{'case':<28}{'median s':>10}")
    for name, value in (("raw QEMU (poweroff init)", result["raw_s"]),
                        ("backend in-process", result["backend_s"]),
                        ("bareboat run --rm (e2e)", result["e2e_s"]),
                        ("e2e, QEMU unconfined", result["e2e_unconfined_s"]),
                        ("clone to HELLO, confined", med(clones)),
                        ("clone to HELLO, unconfined", med(clones_free))):  # fmt: skip
        print(f"{name:<28}{value:>10.3f}")
    print(f"jail: e2e {result['jail_e2e_ratio']:.3f}x unconfined (goal <= 1.05x), clone "
          f"{result['jail_clone_ms']:+.1f} ms (goal <= +5 ms)")  # fmt: skip
    print(f"overhead e2e/raw: {result['overhead_e2e']:.2f}x  backend/raw: "
          f"{result['overhead_backend']:.2f}x  (goal <= 1.10x)")  # fmt: skip
    print("phases (backend, median s): " + ", ".join(
        f"{k} {v:.3f}" for k, v in result["phases_s"].items()))  # fmt: skip
    print(f"idle VM: PSS {mem['pss_mib']:.1f} MiB, RSS {mem['rss_mib']:.1f} MiB "
          f"(guest RAM {mem['guest_ram_mib']:.0f} MiB)")  # fmt: skip
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14, 4))
        a1.bar(["raw", "backend", "e2e", "e2e\nunconfined"],
               [result["raw_s"], result["backend_s"], result["e2e_s"],
                result["e2e_unconfined_s"]])  # fmt: skip
        a1.set_ylabel("seconds (median)")
        a1.set_title("run --rm IMAGE true")
        bottom = 0.0
        for k in keys:
            v = result["phases_s"][k]
            a2.bar(["backend"], [v], bottom=bottom, label=k)
            bottom += v
        a2.legend(fontsize=8)
        a2.set_title("phases")
        a3.bar(["confined", "unconfined"],
               [result["clone_confined_ms"], result["clone_unconfined_ms"]])  # fmt: skip
        a3.set_ylabel("ms (median)")
        a3.set_title("template clone to agent HELLO")
        fig.tight_layout()
        fig.savefig(out / "microvm.png", dpi=100)
    except ImportError:
        print("matplotlib missing: no figure", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
