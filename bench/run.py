"""Start-to-exit of one container: bareboat against podman and the bare OCI runtime.

In one run, alternating, N reps each (medians reported):

- bareboat: `bareboat run --rm --isolation container IMAGE true` in a new process (start-up,
  imports, monitor, overlay mount, runtime and cleanup included), with crun (default) and
  with runc; and `--isolation process` as the floor of the engine's own cost
- podman:   `podman run --rm --network none IMAGE true`, its storage, runroot and state in
  temp dirs, `--cgroup-manager cgroupfs`, runc (Debian's crun 1.8.1 refuses this host's
  hybrid cgroups under podman), the image pulled from the same OCI layout
- bare:     `runc run` / `crun run` on a bundle of the same image (an overlay over the same
  rootfs), no engine at all

Also measured: CLI start-up (`bareboat --version`) against `python -c pass`, and the imports
of a real `bareboat run --isolation container IMAGE true`, its CLI's and its monitor's
(`python -X importtime`).

Run: `bareboat bench run [--runs N] [--out DIR]` or `python bench/run.py`.
Writes DIR/run.json and DIR/run.png (matplotlib Agg) and prints a table. Goal: ≤ 0.8×
podman.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BAREBOAT = [sys.executable, "-m", "bareboat.cli.main"]


def timed(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    t = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, env=env, cwd=cwd, timeout=120)
    dt = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{argv[:6]}... failed ({res.returncode}): {res.stderr.decode()[-300:]}")
    return dt


def _top_level_us(lines: Sequence[str]) -> int:
    """Microseconds of the top-level imports in `-X importtime` lines (cumulative column)."""
    total = 0
    for line in lines:
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
            total += int(parts[1])
    return total


def import_cost(env: dict[str, str], run_dir: Path, ref: str) -> float:
    """Seconds of imports (module bodies, from -X importtime) of a real `bareboat run
    --isolation container IMAGE true`: the CLI's and its monitor's (forked, no new Python,
    but what it imports after the fork is still paid before the workload runs; it writes
    them to its log once it has one). Run without --rm so that the monitor's log is kept,
    read, and the container removed after."""
    name = "bench-import-cost"
    res = subprocess.run(
        [*BAREBOAT, "run", "--name", name, "--isolation", "container", ref, "true"],
        capture_output=True, text=True, timeout=120,
        env=dict(env, PYTHONPROFILEIMPORTTIME="1", BAREBOAT_OCI_RUNTIME="crun"),
    )  # fmt: skip
    lines = res.stderr.splitlines()
    try:
        if res.returncode != 0:
            raise RuntimeError(f"run for the import cost failed: {res.stderr[-300:]}")
        for log in run_dir.glob("*/monitor.log"):
            lines += log.read_text(errors="replace").splitlines()
    finally:
        subprocess.run([*BAREBOAT, "rm", "-f", name], capture_output=True, env=env, timeout=60)
    return _top_level_us(lines) / 1e6


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench run")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)

    from tests.support.imagebuild import write_image

    from bareboat.engine.overlay import Overlay
    from bareboat.images.store import ImageStore
    from bareboat.paths import Roots
    from bareboat.spec.builder import build_spec, write_bundle
    from bareboat.spec.options import RunOptions

    tmp = Path(tempfile.mkdtemp(prefix="bb-bench-run-"))
    overlay: Overlay | None = None
    try:
        layout = tmp / "layout"
        write_image(layout)
        roots = Roots(tmp / "root", tmp / "state", tmp / "cache")
        env = dict(os.environ, BAREBOAT_ROOT=str(roots.root), BAREBOAT_STATE=str(roots.state))
        # As installed (pip compiles the package): the warm-up run leaves bytecode behind.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        store = ImageStore(roots)
        image = store.load(layout)[0]
        ref = image.names[0]
        lower = store.rootfs(image)

        # the bare runtimes' bundle: the same rootfs under an overlay of its own
        bundle = tmp / "bundle"
        overlay = Overlay(lower, tmp / "upper", tmp / "work", bundle / "rootfs")
        overlay.mount()
        spec = build_spec(
            image.config,
            RunOptions(command=("true",)),
            rootfs=lower,
            container_id="bench",
            root_path=str(bundle / "rootfs"),
        )
        write_bundle(bundle, spec)

        pm = [
            "podman", "--root", str(tmp / "pm-root"), "--runroot", str(tmp / "pm-run"),
            "--storage-driver", "overlay", "--cgroup-manager", "cgroupfs",
            "--events-backend", "file", "--runtime", "runc",
        ]  # fmt: skip
        pm_env = dict(os.environ, CONTAINERS_CONF=str(tmp / "containers.conf"))
        (tmp / "containers.conf").write_text('[engine]\nevents_logger = "file"\n')
        have_podman = shutil.which("podman") is not None
        if have_podman:
            subprocess.run([*pm, "pull", f"oci:{layout}:latest"], check=True, capture_output=True,
                           env=pm_env, timeout=300)  # fmt: skip
        pm_image = f"localhost{layout}:latest"

        counter = iter(range(10**9))

        def bare(rt: str) -> Callable[[], float]:
            from bareboat.backends.container.runtime import select_runtime

            runtime = select_runtime({"BAREBOAT_OCI_RUNTIME": rt})

            def run() -> float:
                cid = f"bench{next(counter)}"
                t = time.perf_counter()
                res = subprocess.run(
                    runtime.run(tmp / f"{rt}-state", bundle, cid),
                    capture_output=True,
                    preexec_fn=runtime.preexec,
                    timeout=60,
                )
                dt = time.perf_counter() - t
                if res.returncode:
                    raise RuntimeError(res.stderr.decode()[-300:])
                return dt

            return run

        cases: dict[str, Callable[[], float]] = {
            "bareboat (crun)": lambda: timed(
                [*BAREBOAT, "run", "--rm", "--isolation", "container", ref, "true"],
                dict(env, BAREBOAT_OCI_RUNTIME="crun"),
            ),
            "bareboat (runc)": lambda: timed(
                [*BAREBOAT, "run", "--rm", "--isolation", "container", ref, "true"],
                dict(env, BAREBOAT_OCI_RUNTIME="runc"),
            ),
            "bareboat process": lambda: timed(
                [*BAREBOAT, "run", "--rm", "--isolation", "process", ref, "true"], env
            ),
            "crun run (bare)": bare("crun"),
            "runc run (bare)": bare("runc"),
            "bareboat --version": lambda: timed([*BAREBOAT, "--version"], env),
            "python -c pass": lambda: timed([sys.executable, "-c", "pass"]),
        }
        if have_podman:
            cases["podman run --rm (runc)"] = lambda: timed(
                [*pm, "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
                 "--ulimit", "nproc=1024:1024", pm_image, "true"],
                pm_env,
            )  # fmt: skip
        for fn in cases.values():  # warm caches (pyc, page cache, rootfs) once
            fn()
        samples: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.runs):
            for name, fn in cases.items():
                samples[name].append(fn())
        load = os.getloadavg()[0]  # the machine is shared: say how busy it was
        medians = {k: statistics.median(v) for k, v in samples.items()}
        podman = medians.get("podman run --rm (runc)")
        imports = statistics.median(import_cost(env, roots.run, ref) for _ in range(5))
    finally:
        if overlay is not None:
            overlay.unmount()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{'case':<26} {'median ms':>10} {'vs podman':>10}")
    for name, med in medians.items():
        ratio = f"{med / podman:.2f}x" if podman else "-"
        print(f"{name:<26} {med * 1000:>10.1f} {ratio:>10}")
    print(f"imports of `bareboat run` (python -X importtime, median of 5): {imports * 1000:.1f} ms")
    print(f"load average (1 min) at the end: {load:.2f} on {os.cpu_count()} CPUs")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "runs": args.runs,
        "median_s": medians,
        "samples_s": samples,
        "ratio_vs_podman": {k: v / podman for k, v in medians.items()} if podman else None,
        "run_imports_s": imports,
        "loadavg_1min": load,
    }
    (out / "run.json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(medians)
    ax.barh(names, [medians[n] * 1000 for n in names], color="#4878a8")
    ax.set_xlabel(f"median wall time, ms ({args.runs} runs)")
    ax.set_title("run --rm IMAGE true")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "run.png", dpi=120)
    print(f"wrote {out / 'run.json'} and {out / 'run.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
