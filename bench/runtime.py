"""`podman run --rm IMAGE true` through bareboat-runtime against through plain runc.

In one run, alternating, N reps each (medians reported):

- runc:                 podman `--runtime` = runc
- bareboat container:   podman `--runtime` = bareboat-runtime, container isolation (delegates
                        to the same runc)
- bareboat process:     the same with `--annotation io.bareboat.isolation=process`
- bareboat microvm:     `--annotation io.bareboat.isolation=microvm` and templates off: a QEMU
                        microVM booted cold per run (under TCG on hosts without usable KVM)
- bareboat microvm, template: the same with `--annotation io.bareboat.vm.template=create`: the VM
                        is a clone of a template made on first use (kept in bareboat's store)
- bareboat wasm:        `--annotation io.bareboat.isolation=wasm`, an image whose entrypoint is
                        a Wasm module that returns at once (the `true` of Wasm)

podman's storage, run root, tmp dir and containers.conf are in a temp dir; cgroupfs, file
events, `--network none`; the image is the busybox test image pulled from an OCI layout.
Also measured: the runtime's own start-up (`state` of a missing container: parse, look up,
hand over to runc) against runc's, and the import time of `bareboat.runtime.main`.

Run: `bareboat bench runtime [--runs N] [--out DIR]` or `python bench/runtime.py`.
Writes DIR/runtime.json and DIR/runtime.png (matplotlib Agg) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RUNTIME = Path(sys.executable).parent / "bareboat-runtime"
RUNC = shutil.which("runc") or "/usr/sbin/runc"


def wrapper(base: Path, name: str, body: str) -> str:
    path = base / "bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def timed(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, env=env, timeout=120, check=False)
    dt = time.perf_counter() - t
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[-6:])} failed: {res.stderr.decode()[-300:]}")
    return dt


def startup(argv: list[str], runs: int) -> float:
    """Median seconds of a call that is expected to fail fast (state of a missing id)."""
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, capture_output=True, timeout=30, check=False)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def import_ms() -> float:
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import bareboat.runtime.main"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for line in res.stderr.splitlines():
        if line.rstrip().endswith("| bareboat.runtime.main"):
            return int(line.split("|")[1]) / 1000
    return float("nan")


def wasm_true_image() -> object:
    """An image whose entrypoint is a Wasm module with an empty `_start`."""
    import wasmtime
    from tests.support.imagebuild import Entry, Image

    module = wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "_start")))')
    layer = [
        Entry("app", "dir", mode=0o755),
        Entry("app/true.wasm", data=bytes(module), mode=0o755),
    ]
    return Image(layers=[layer], entrypoint=["/app/true.wasm"], cmd=None)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args(argv)
    if not shutil.which("podman") or os.geteuid() != 0:
        print("bench runtime needs podman and root", file=sys.stderr)
        return 1
    from tests.support.imagebuild import write_image

    # podman names an image pulled from oci:PATH after PATH, where a component may not end in
    # "_" or hold "___", as mkdtemp's random names may (a run failed so): hex digits only.
    base = Path(tempfile.gettempdir()) / f"bench-runtime-{secrets.token_hex(6)}"
    base.mkdir(mode=0o700)
    try:
        return _run(base, args.runs, Path(args.out), write_image)
    finally:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for line in reversed(mounts):
            target = line.split()[1]
            if target.startswith(f"{base}/"):
                subprocess.run(["umount", "-l", target], check=False, timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def _run(base: Path, runs: int, out: Path, write_image: object) -> int:
    layout = base / "layout"
    write_image(layout)  # type: ignore[operator]
    write_image(layout, wasm_true_image(), "wasm")  # type: ignore[operator]
    conf = base / "containers.conf"
    conf.write_text(
        '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
        '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
    )
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    rtroot = base / "rtroot"
    runtimes = {
        "runc": wrapper(base, "runc", f'exec {RUNC} --root {rtroot}/runc "$@"'),
        "bareboat": wrapper(
            base, "bareboat-runtime", f'BAREBOAT_RUNTIME_ROOT={rtroot}/bb exec {RUNTIME} "$@"'
        ),
    }

    def podman(runtime: str, *a: str) -> list[str]:
        return [
            "podman", "--root", str(base / "storage"), "--runroot", str(base / "runroot"),
            "--tmpdir", str(base / "tmp"), "--cgroup-manager", "cgroupfs",
            "--events-backend", "file", "--runtime", runtimes[runtime], *a,
        ]  # fmt: skip

    def pull(tag: str) -> str:
        res = subprocess.run(
            podman("runc", "pull", f"oci:{layout}:{tag}"),
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(f"podman pull {tag} failed: {res.stderr.strip()[-500:]}")
        return res.stdout.strip().splitlines()[-1]

    image = pull("latest")
    wasm_image = pull("wasm")
    run = ["run", "--rm", "--network", "none"]

    def iso(name: str) -> list[str]:
        return ["--annotation", f"io.bareboat.isolation={name}"]

    cases = {
        "podman + runc": podman("runc", *run, image, "true"),
        "podman + bareboat-runtime (container)": podman("bareboat", *run, image, "true"),
        "podman + bareboat-runtime (process)": podman("bareboat", *run, *iso("process"), image,
                                                      "true"),
        "podman + bareboat-runtime (microvm)": podman(
            "bareboat", *run, *iso("microvm"), "--annotation", "io.bareboat.vm.template=off",
            image, "true"),
        "podman + bareboat-runtime (microvm, template)": podman(
            "bareboat", *run, *iso("microvm"), "--annotation", "io.bareboat.vm.template=create",
            image, "true"),
        "podman + bareboat-runtime (wasm)": podman("bareboat", *run, *iso("wasm"), wasm_image),
    }  # fmt: skip
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for argv in cases.values():  # warm-up: page cache, podman's first-run set-up
        timed(argv, env)
    for _ in range(runs):
        for name, argv in cases.items():
            samples[name].append(timed(argv, env))
    med = {k: statistics.median(v) for k, v in samples.items()}
    ref = med["podman + runc"]
    start = {
        "bareboat-runtime state (missing id)": startup(
            [str(RUNTIME), "--root", str(rtroot / "x"), "state", "nope"], runs * 3
        ),
        "runc state (missing id)": startup(
            [RUNC, "--root", str(rtroot / "x"), "state", "nope"], runs * 3
        ),
        "python -c pass": startup([sys.executable, "-c", "pass"], runs * 3),
    }
    start_ref = start["runc state (missing id)"]
    result = {
        "runs": runs,
        "median_s": med,
        "ratio_to_runc": {k: v / ref for k, v in med.items()},
        "samples_s": samples,
        "startup_median_s": start,
        "startup_ratio_to_runc_state": {k: v / start_ref for k, v in start.items()},
        "loadavg": os.getloadavg(),
        "import_ms_bareboat_runtime_main": import_ms(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "runtime.json").write_text(json.dumps(result, indent=2))
    print(f"{'case':<44}{'median ms':>10}{'× runc':>9}")
    for k, v in med.items():
        print(f"{k:<44}{v * 1000:>10.1f}{v / ref:>9.2f}")
    for k, v in start.items():
        print(f"{k:<44}{v * 1000:>10.1f}{v / start_ref:>9.2f}  (× runc state)")
    print(f"load average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'import bareboat.runtime.main':<44}{result['import_ms_bareboat_runtime_main']:>10.1f}")
    _plot(samples, out / "runtime.png")
    return 0


def _plot(samples: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    names = list(samples)
    ax.boxplot([[s * 1000 for s in samples[n]] for n in names], orientation="horizontal")
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set_xscale("log")  # a microVM under TCG is an order of magnitude above the rest
    ax.set_xlabel("podman run --rm IMAGE true (ms, log scale)")
    ax.set_title("bareboat-runtime under podman against runc")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
