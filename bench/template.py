"""MicroVM templates: cold boot vs clone start, clones per second, PSS per idle clone.

All in this process, through the library (the SDK fast path: no CLI start-up), on the busybox
test image as an EROFS disk, the project's kernel and init, TCG here:

- cold:  QEMU launch -> agent HELLO ("ready"), and -> `true` exited ("run"), a plain VM as the
         backend boots it (no template)
- clone: restore_clone (QEMU launch, load the 63 KB state, RAM mapped copy-on-write) -> HELLO,
         and -> `true` exited; cold and clone alternate per round so load falls on both alike
- clones per second: N clones that each run `true` and are torn down, with 1 and 2 workers
- PSS per idle clone: K clones each running `sleep` (an idle sandbox), summed PSS of their
         QEMU processes / K (psutil, from smaps_rollup), for K = 1, 5, 20

Goals (issue 5): clone <= 1/10 of cold; PSS <= 40 MiB per idle clone.
Run: `bareboat bench template [--runs N] [--out DIR]` or `python bench/template.py`.
Writes DIR/template.json and DIR/template.png (matplotlib Agg) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bareboat.backends.microvm import template as T  # noqa: E402
from bareboat.backends.microvm.agent import (  # noqa: E402
    AgentClient,
    ProcessSpec,
    SessionResult,
    Started,
    StartSpec,
)
from bareboat.paths import Roots  # noqa: E402

PATH = "PATH=/bin:/usr/bin"


def start_spec(args: list[str], hostname: str = "bench") -> StartSpec:
    return StartSpec(
        process=ProcessSpec(args=args, env=[PATH]),
        hostname=hostname,
        time_ns=time.time_ns(),
        entropy=os.urandom(64),
        lower="/dev/vda",
        lower_fstype="erofs",
    )


def setup(work: Path, tb_size: int | None = None) -> tuple[Roots, T.TemplateInputs]:
    from tests.support.imagebuild import Image, write_image

    from bareboat.backends.microvm.accel import choose_accel
    from bareboat.backends.microvm.initbuild import build_initramfs
    from bareboat.backends.microvm.kernel import resolve_kernel
    from bareboat.backends.microvm.qemu import host_tsc_khz

    roots = Roots(root=work / "root", state=work / "state", cache=work / "cache")
    kernel = resolve_kernel(Roots.from_env()).path
    initrd = build_initramfs(roots)
    write_image(work / "layout", Image())
    subprocess.run(
        ["umoci", "unpack", "--image", f"{work}/layout:latest", str(work / "bundle")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    erofs = work / "rootfs.erofs"
    subprocess.run(
        ["mkfs.erofs", "-Enoinline_data", str(erofs), str(work / "bundle" / "rootfs")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    inputs = T.TemplateInputs(
        image="bench",
        kernel=kernel,
        initrd=initrd,
        lower=erofs,
        accel=choose_accel(roots).accel,
        tsc_khz=host_tsc_khz(),
        tb_size_mib=tb_size,
    )
    return roots, inputs


@contextlib.contextmanager
def cold_vm(inputs: T.TemplateInputs) -> Iterator[tuple[Any, AgentClient]]:
    """A VM booted the way the backend boots one without a template."""
    from bareboat.backends.microvm.qemu import QemuProcess

    files = T.VmFiles(Path(tempfile.mkdtemp(prefix="bb-cold-")))
    cfg = dataclasses.replace(
        T.vm_config(inputs, ram=files.sockets / "unused", files=files, clone=False),
        ram_file=None,
        ram_shared=False,
    )
    try:
        with QemuProcess(cfg) as vm:
            agent = T._connect_agent(vm, files, 60.0)
            try:
                yield vm, agent
            finally:
                agent.close()
    finally:
        shutil.rmtree(files.sockets, ignore_errors=True)


def run_true(agent: AgentClient) -> SessionResult:
    agent.start(start_spec(["true"]))
    r = agent.wait(0, timeout=60)
    if r.exit.code != 0:
        raise RuntimeError(f"`true` exited {r.exit.code}: {r.stderr!r}")
    return r


def one_cold(inputs: T.TemplateInputs) -> tuple[float, float]:
    t0 = time.perf_counter()
    with cold_vm(inputs) as (_, agent):
        ready = time.perf_counter() - t0
        run_true(agent)
        done = time.perf_counter() - t0
    return ready, done


# Where a clone's `run true` goes, in order (restore_clone's timings, then the guest's own
# clock for START, then the host's): set-up before QEMU, QEMU's start to QMP, the state's
# QMP commands, HELLO's round trip (the guest resuming), START to the root assembled, to the
# workload's execve, then to its EXIT at the host, and QEMU's teardown.
PHASES = ("host", "qemu", "load", "hello", "root", "spawn", "exit", "teardown")


def one_clone(
    template: T.Template, inputs: T.TemplateInputs, phases: dict[str, list[float]] | None = None
) -> tuple[float, float]:
    t0 = time.perf_counter()
    with T.restore_clone(template, inputs) as clone:
        ready = time.perf_counter() - t0
        t1 = time.perf_counter()
        r = run_true(clone.agent)
        ran = time.perf_counter()
    done = time.perf_counter() - t0
    if phases is not None and r.boot is not None:
        got = {
            **clone.timings,
            "root": r.boot.root,
            "spawn": r.boot.spawn,
            "exit": max(0.0, ran - t1 - r.boot.root - r.boot.spawn),
            "teardown": t0 + done - ran,
        }
        for k in PHASES:
            phases.setdefault(k, []).append(got.get(k, 0.0))
    return ready, done


def stats(xs: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(xs) * 1000,
        "min_ms": min(xs) * 1000,
        "max_ms": max(xs) * 1000,
        "n": len(xs),
    }


def throughput(template: T.Template, inputs: T.TemplateInputs, n: int, workers: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: one_clone(template, inputs), range(n)))
    return n / (time.perf_counter() - t0)


def pss_per_idle_clone(template: T.Template, inputs: T.TemplateInputs, k: int) -> dict[str, float]:
    import psutil

    with contextlib.ExitStack() as stack:
        clones = []
        for i in range(k):
            c = stack.enter_context(T.restore_clone(template, inputs))
            c.agent.start(start_spec(["sleep", "600"], hostname=f"idle{i}"))
            clones.append(c)
        for c in clones:
            c.agent._take(Started, 0, 30)
        time.sleep(2.0)  # let the guests settle into idle
        pss = rss = 0
        for c in clones:
            assert c.vm.pid is not None
            info = psutil.Process(c.vm.pid).memory_full_info()
            pss += info.pss
            rss += info.rss
    return {"clones": k, "pss_mib": pss / k / 2**20, "rss_mib": rss / k / 2**20}


def end_to_end(work: Path, runs: int) -> dict[str, Any]:
    """`bareboat run --rm --isolation microvm IMAGE true`, --no-template vs a template, through
    the CLI (fresh interpreter, engine, monitor, overlay, teardown), alternating per round."""
    from bareboat.images.store import ImageStore

    roots = Roots(root=work / "e2e-root", state=work / "e2e-state", cache=Roots.from_env().cache)
    image = ImageStore(roots).load(work / "layout")[0].names[0]
    env = {**os.environ, "BAREBOAT_ROOT": str(roots.root), "BAREBOAT_STATE": str(roots.state)}

    def bb(*args: str) -> float:
        t0 = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-m", "bareboat.cli.main", *args],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if p.returncode != 0:
            raise RuntimeError(f"bareboat {' '.join(args)} failed: {p.stderr.strip()}")
        return time.perf_counter() - t0

    run = ("run", "--rm", "--isolation", "microvm")
    bb(*run, "--no-template", image, "true")  # unpack the image, build its EROFS disk
    bb("template", "create", image)
    cold, clone = [], []
    for _ in range(runs):
        cold.append(bb(*run, "--no-template", image, "true"))
        clone.append(bb(*run, image, "true"))
    out = {"cold": stats(cold), "clone": stats(clone)}
    return {**out, "ratio": out["clone"]["median_ms"] / out["cold"]["median_ms"]}


def measure(
    runs: int, sizes: list[int], n_throughput: int, tb_size: int | None = None, e2e: int = 0
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bb-bench-tpl-"))
    try:
        roots, inputs = setup(work, tb_size)
        t0 = time.perf_counter()
        template = T.create_template(roots, inputs)
        create_s = time.perf_counter() - t0
        one_cold(inputs)  # warm the page cache for both
        one_clone(template, inputs)
        cold_ready, cold_run, clone_ready, clone_run = [], [], [], []
        phases: dict[str, list[float]] = {}
        for _ in range(runs):
            r, d = one_cold(inputs)
            cold_ready.append(r)
            cold_run.append(d)
            r, d = one_clone(template, inputs, phases)
            clone_ready.append(r)
            clone_run.append(d)
        result: dict[str, Any] = {
            "qemu": T.qemu_version(),
            "accel": inputs.accel,
            "memory_mib": inputs.memory_mib,
            "tb_size_mib": inputs.tb_size_mib,
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "template": {
                "create_s": create_s,
                "state_bytes": template.manifest.state_size,
                "ram_file_bytes_allocated": os.stat(template.ram).st_blocks * 512,
            },
            "cold_ready": stats(cold_ready),
            "clone_ready": stats(clone_ready),
            "cold_run_true": stats(cold_run),
            "clone_run_true": stats(clone_run),
            "clone_phases_ms": {k: statistics.median(v) * 1000 for k, v in phases.items()},
        }
        result["ratio_ready"] = (
            result["clone_ready"]["median_ms"] / result["cold_ready"]["median_ms"]
        )
        result["ratio_run_true"] = (
            result["clone_run_true"]["median_ms"] / result["cold_run_true"]["median_ms"]
        )
        result["clones_per_s"] = {
            str(w): throughput(template, inputs, n_throughput, w) for w in (1, 2)
        }
        result["pss"] = [pss_per_idle_clone(template, inputs, k) for k in sizes]
        if e2e:
            result["cli_run_true"] = end_to_end(work, e2e)
        result["loadavg_end"] = os.getloadavg()
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def table(r: dict[str, Any]) -> str:
    lines = [
        f"{r['qemu']}, accel {r['accel']}, {r['memory_mib']} MiB guests, {r['cpus']} CPUs,"
        f" tb-size {r['tb_size_mib'] or 'default'}",
        f"template: created in {r['template']['create_s']:.2f} s, state "
        f"{r['template']['state_bytes'] / 1024:.0f} KiB, RAM file "
        f"{r['template']['ram_file_bytes_allocated'] / 2**20:.0f} MiB allocated",
        "",
        f"{'start':<22}{'median ms':>10}{'min':>8}{'max':>8}",
    ]
    for name in ("cold_ready", "clone_ready", "cold_run_true", "clone_run_true"):
        s = r[name]
        lines.append(f"{name:<22}{s['median_ms']:>10.1f}{s['min_ms']:>8.1f}{s['max_ms']:>8.1f}")
    lines += [
        f"clone/cold ready: {r['ratio_ready']:.3f}   run true: {r['ratio_run_true']:.3f}"
        "   (goal <= 0.1)",
        "clone run true, median ms per phase: "
        + ", ".join(f"{k} {v:.1f}" for k, v in r.get("clone_phases_ms", {}).items()),
        "clones/s (restore + run true + teardown): "
        + ", ".join(f"{w} worker(s) {v:.1f}" for w, v in r["clones_per_s"].items()),
        "",
        *(
            [
                "bareboat run --rm --isolation microvm IMAGE true (CLI, median ms): cold "
                f"{r['cli_run_true']['cold']['median_ms']:.0f}, template "
                f"{r['cli_run_true']['clone']['median_ms']:.0f}"
                f" ({r['cli_run_true']['ratio']:.2f}x)",
            ]
            if "cli_run_true" in r
            else []
        ),
        "",
        f"{'idle clones':<12}{'PSS MiB/clone':>14}{'RSS MiB/clone':>14}   (goal PSS <= 40)",
    ]
    for p in r["pss"]:
        lines.append(f"{p['clones']:<12}{p['pss_mib']:>14.1f}{p['rss_mib']:>14.1f}")
    return "\n".join(lines)


def plot(r: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, c, b) = plt.subplots(1, 3, figsize=(15, 4))
    names = ["cold_ready", "clone_ready", "cold_run_true", "clone_run_true"]
    a.bar(names, [r[n]["median_ms"] for n in names], color=["grey", "tab:blue"] * 2)
    a.set_ylabel("ms (median)")
    a.set_title("start: cold boot vs template clone")
    a.tick_params(axis="x", rotation=20)
    left = 0.0
    for name, ms in r.get("clone_phases_ms", {}).items():
        c.barh(["clone run true"], [ms], left=left, label=name)
        left += ms
    c.set_xlabel("ms (median per phase)")
    c.set_title("where a clone's run true goes")
    c.legend(fontsize="small", ncol=2)
    ks = [p["clones"] for p in r["pss"]]
    b.plot(ks, [p["pss_mib"] for p in r["pss"]], "o-", label="PSS / clone")
    b.plot(ks, [p["rss_mib"] for p in r["pss"]], "s--", label="RSS / clone")
    b.axhline(40, color="red", lw=0.8, label="goal 40 MiB")
    b.set_xlabel("idle clones")
    b.set_ylabel("MiB")
    b.set_title("memory per idle clone")
    b.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench template", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10, help="cold/clone pairs (default 10)")
    ap.add_argument("--clones", type=int, default=20, help="clones per throughput run")
    ap.add_argument("--e2e", type=int, default=5, help="CLI run pairs (default 5, 0: none)")
    ap.add_argument("--pss", default="1,5,20", help="idle clone counts (default 1,5,20)")
    ap.add_argument(
        "--tb-size", type=int, help="TCG translation cache MiB (default: QEMU's, as run uses)"
    )
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.pss.split(",") if x]
    r = measure(args.runs, sizes, args.clones, args.tb_size, args.e2e)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "template.json").write_text(json.dumps(r, indent=1))
    plot(r, out / "template.png")
    print(table(r))
    print(f"\nwrote {out / 'template.json'} and {out / 'template.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
