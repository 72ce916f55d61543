"""Wasm start-up and throughput: cold (compile) vs warm (cached) vs raw wasmtime.

For one small WASI module (hello: args + env to stdout) and one larger generated module
(many functions, so compilation is visible), measured in one run, in this process:

- cold:     bareboat's runner with an empty cache (hash, compile, serialize, write, run)
- warm:     bareboat's runner with the entry cached (hash, checksum, deserialize_file, run)
- raw:      the plain wasmtime Python API, compiling: Engine, Module(bytes), Linker, Store,
            WasiConfig, instantiate, _start
- raw-pre:  the plain API from an already compiled artifact (Module.deserialize_file),
            the floor any cached start from disk can reach
- raw-inst: the plain API with the module compiled once in this process and its engine
            reused: instantiate + run only (what a long-lived embedder pays per call)

and tasks per second: warm runs back to back in this process; forked workloads (fork, run,
reap: what the backend's default `start` does in a container's monitor); and the exec shim
(`python -m bareboat.backends.wasm`, a fresh interpreter per task) sequentially and with one
worker per core; and `bareboat run --rm --isolation wasm` end to end (CLI, engine, monitor,
overlay, cleanup). Goal: warm <= 1.2x raw.

Run: `bareboat bench wasm [--runs N] [--out DIR]` or `python bench/wasm.py`.
Writes DIR/wasm.json and DIR/wasm.png (matplotlib Agg) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HELLO_WAT = r"""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $asg (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "hello from wasm\n")
  (func (export "_start")
    (drop (call $asg (i32.const 100) (i32.const 104)))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def big_wat(functions: int = 3000) -> str:
    """A module with many small functions called from _start: compile time grows with it."""
    funcs = []
    calls = []
    for i in range(functions):
        funcs.append(
            f"(func $f{i} (param $x i32) (result i32)"
            f" (i32.add (i32.mul (local.get $x) (i32.const {i + 3}))"
            f" (i32.xor (local.get $x) (i32.const {i * 7 + 1}))))"
        )
        calls.append(f"(local.set $a (call $f{i} (local.get $a)))")
    return f"""
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  {" ".join(funcs)}
  (func (export "_start") (local $a i32)
    {" ".join(calls)}
    (call $exit (i32.and (local.get $a) (i32.const 0))))
)"""


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def interleaved(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, dict[str, float]]:
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t)
    return {name: stats(s) for name, s in samples.items()}


def stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_ms": statistics.median(s) * 1e3,
        "p90_ms": s[int(0.9 * (len(s) - 1))] * 1e3,
        "min_ms": s[0] * 1e3,
        "n": len(s),
    }


def bench_module(name: str, wasm: bytes, work: Path, runs: int) -> dict[str, Any]:
    import wasmtime

    from bareboat.backends.wasm.cache import EngineSettings, ModuleCache
    from bareboat.backends.wasm.module import module_from_blob
    from bareboat.backends.wasm.plan import WasmPlan
    from bareboat.backends.wasm.runner import Execution

    path = work / f"{name}.wasm"
    path.write_bytes(wasm)
    ref = module_from_blob(path)
    cache = ModuleCache(work / f"cache-{name}")
    devnull = os.devnull
    plan = WasmPlan(
        module=str(path), digest=ref.digest, args=(name,), stdout=devnull, stderr=devnull
    )

    def cold() -> None:
        cache.clear()
        assert Execution(plan, cache).run().exit_code == 0

    def warm() -> None:
        assert Execution(plan, cache).run().exit_code == 0

    def raw_run(make_module: Callable[[wasmtime.Engine], wasmtime.Module]) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        engine = wasmtime.Engine(config)
        module = make_module(engine)
        store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.argv = [name]
        wasi.stdout_file = devnull
        wasi.stderr_file = devnull  # the same stdio set-up as bareboat's plan
        store.set_wasi(wasi)
        store.set_epoch_deadline(1)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        start = linker.instantiate(store, module).exports(store)["_start"]
        try:
            start(store)  # type: ignore[operator]
        except wasmtime.ExitTrap as e:
            assert e.code == 0

    # raw-inst: the module compiled once in this process and reused with its engine; each run
    # is Store + WASI + Linker + instantiate + _start only (no per-run engine, no file at all).
    config = wasmtime.Config()
    config.epoch_interruption = True
    shared = wasmtime.Engine(config)
    compiled = wasmtime.Module(shared, wasm)

    def raw_inst() -> None:
        store = wasmtime.Store(shared)
        wasi = wasmtime.WasiConfig()
        wasi.argv = [name]
        wasi.stdout_file = devnull
        wasi.stderr_file = devnull
        store.set_wasi(wasi)
        store.set_epoch_deadline(1)
        linker = wasmtime.Linker(shared)
        linker.define_wasi()
        start = linker.instantiate(store, compiled).exports(store)["_start"]
        try:
            start(store)  # type: ignore[operator]
        except wasmtime.ExitTrap as e:
            assert e.code == 0

    cold()  # first-touch effects (page cache, lazy init) out of the way
    entry = cache.entry(ref.digest, EngineSettings())
    # Interleaved, one sample of each mode per round, so that load from elsewhere on the
    # machine falls on every mode alike.
    results = interleaved(
        {
            "cold": cold,
            "raw": lambda: raw_run(lambda e: wasmtime.Module(e, wasm)),
        },
        max(3, runs // 4),
    )
    warm()
    results |= interleaved(
        {
            "warm": warm,
            "raw-pre": lambda: raw_run(lambda e: wasmtime.Module.deserialize_file(e, str(entry))),
            "raw-inst": raw_inst,
        },
        runs,
    )
    results = {m: results[m] for m in ("cold", "warm", "raw", "raw-pre", "raw-inst")}
    return {
        "module_bytes": len(wasm),
        "compiled_bytes": entry.stat().st_size,
        "modes": results,
        "warm_over_raw": results["warm"]["median_ms"] / results["raw"]["median_ms"],
        "warm_over_raw_pre": results["warm"]["median_ms"] / results["raw-pre"]["median_ms"],
        "warm_over_raw_inst": results["warm"]["median_ms"] / results["raw-inst"]["median_ms"],
        "plan": plan,
        "cache": cache,
    }


def throughput(hello: dict[str, Any], work: Path, seconds: float) -> dict[str, float]:
    from bareboat.backends.wasm.runner import Execution

    plan, cache = hello["plan"], hello["cache"]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        Execution(plan, cache).run()
        n += 1
    in_process = n / (time.perf_counter() - t0)

    def forked() -> None:
        # What the backend's default `start` does in the monitor: fork, run, exit; then reap.
        pid = os.fork()
        if pid == 0:
            code = 125
            try:
                code = Execution(plan, cache).run().exit_code
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0

    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        forked()
        n += 1
    fork_seq = n / (time.perf_counter() - t0)

    plan_path = work / "plan.json"
    plan_path.write_bytes(plan.to_json())
    argv = [sys.executable, "-m", "bareboat.backends.wasm", str(plan_path), str(cache.root)]

    def shim() -> None:
        subprocess.run(argv, check=True, timeout=60, stdout=subprocess.DEVNULL)

    shim()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        shim()
        n += 1
    shim_seq = n / (time.perf_counter() - t0)
    shim_start_ms = 1e3 / shim_seq

    workers = os.cpu_count() or 1
    total = max(4, int(shim_seq * seconds * workers))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda _: shim(), range(total)))
    shim_par = total / (time.perf_counter() - t0)
    return {
        "in_process_per_s": in_process,
        "fork_sequential_per_s": fork_seq,
        "shim_sequential_per_s": shim_seq,
        "shim_parallel_per_s": shim_par,
        "shim_workers": workers,
        "shim_start_ms": shim_start_ms,
    }


def end_to_end(wasm: bytes, work: Path, runs: int) -> dict[str, Any]:
    """`bareboat run --rm --isolation wasm IMAGE` as a user runs it (a new CLI process, the
    engine, the monitor, the overlay mount, the workload, cleanup), for both ways the backend
    starts the workload. Needs root (overlay mounts); skipped otherwise."""
    if os.geteuid() != 0:
        return {"skipped": "needs root (the engine mounts an overlay)"}
    from tests.support.imagebuild import Entry, Image, write_image

    from bareboat.images.store import ImageStore
    from bareboat.paths import Roots

    roots = Roots(work / "e2e-root", work / "e2e-state", work / "e2e-cache")
    layout = work / "layout"
    image = Image(
        layers=[[Entry("app", "dir", mode=0o755), Entry("app/hello.wasm", "file", wasm)]],
        entrypoint=["/app/hello.wasm"],
        cmd=None,
        labels={"module.wasm.image/variant": "compat"},
    )
    write_image(layout, image)
    ref = ImageStore(roots).load(layout)[0].names[0]
    out: dict[str, Any] = {}
    argv = [sys.executable, "-m", "bareboat.cli.main", "run", "--rm", "--isolation", "wasm", ref]
    for mode in ("fork", "exec"):
        env = dict(
            os.environ,
            BAREBOAT_ROOT=str(roots.root),
            BAREBOAT_STATE=str(roots.state),
            BAREBOAT_CACHE=str(roots.cache),
            BAREBOAT_WASM_SHIM=mode,
        )

        def once(env: dict[str, str] = env) -> None:
            r = subprocess.run(argv, env=env, capture_output=True, timeout=60)
            assert r.returncode == 0 and r.stdout == b"hello from wasm\n", r

        once()
        out[mode] = stats(timed(once, runs))
    return out


def table(results: dict[str, Any]) -> str:
    lines = [
        f"wasmtime {results['wasmtime']}",
        f"{'module':<8}{'mode':<10}{'median ms':>11}{'p90 ms':>10}{'min ms':>10}",
    ]
    for name, r in results["modules"].items():
        for mode, s in r["modes"].items():
            lines.append(
                f"{name:<8}{mode:<10}{s['median_ms']:>11.3f}{s['p90_ms']:>10.3f}{s['min_ms']:>10.3f}"
            )
        lines.append(
            f"{name:<8}module {r['module_bytes']} B, compiled {r['compiled_bytes']} B; "
            f"warm/raw {r['warm_over_raw']:.2f}x, warm/raw-pre {r['warm_over_raw_pre']:.2f}x, "
            f"warm/raw-inst {r['warm_over_raw_inst']:.2f}x"
        )
    t = results["throughput"]
    lines.append(
        f"tasks/s: in-process warm {t['in_process_per_s']:.0f}, "
        f"forked workload {t['fork_sequential_per_s']:.0f}, "
        f"shim sequential {t['shim_sequential_per_s']:.1f} "
        f"({t['shim_start_ms']:.0f} ms each), "
        f"shim x{t['shim_workers']} parallel {t['shim_parallel_per_s']:.1f}"
    )
    for mode, st in results["end_to_end"].items():
        if isinstance(st, dict):
            lines.append(
                f"bareboat run --rm --isolation wasm ({mode} workload): median "
                f"{st['median_ms']:.0f} ms, min {st['min_ms']:.0f} ms"
            )
        else:
            lines.append(f"end to end: {st}")
    return "\n".join(lines)


def plot(results: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    modes = ["cold", "warm", "raw", "raw-pre", "raw-inst"]
    names = list(results["modules"])
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [results["modules"][name]["modes"][m]["median_ms"] for m in modes]
        xs = [j + i * width for j in range(len(modes))]
        ax1.bar(xs, vals, width, label=name)
    ax1.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(modes))], modes)
    ax1.set_yscale("log")
    ax1.set_ylabel("median start+run (ms, log)")
    ax1.set_title("Wasm start: bareboat cold/warm vs raw wasmtime")
    ax1.legend()
    t = results["throughput"]
    labels = ["in-process", "fork", "exec shim", f"exec shim x{t['shim_workers']}"]
    vals = [
        t["in_process_per_s"],
        t["fork_sequential_per_s"],
        t["shim_sequential_per_s"],
        t["shim_parallel_per_s"],
    ]
    ax2.bar(labels, vals, color="tab:green")
    ax2.axhline(330, color="gray", linestyle="--", label="runwasi 330/s (published)")
    ax2.set_yscale("log")
    ax2.set_ylabel("Wasm tasks per second (log)")
    ax2.set_title("Throughput (hello module)")
    ax2.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


def run(runs: int, out: Path, seconds: float) -> dict[str, Any]:
    import wasmtime

    from bareboat.backends.wasm.cache import wasmtime_version

    with tempfile.TemporaryDirectory(prefix="bareboat-bench-wasm-") as tmp:
        work = Path(tmp)
        modules = {
            "hello": bench_module("hello", wasmtime.wat2wasm(HELLO_WAT), work, runs),
            "big": bench_module("big", wasmtime.wat2wasm(big_wat()), work, runs),
        }
        tput = throughput(modules["hello"], work, seconds)
        e2e = end_to_end(wasmtime.wat2wasm(HELLO_WAT), work, max(5, runs // 4))
    for m in modules.values():
        m.pop("plan")
        m.pop("cache")
    results = {
        "wasmtime": wasmtime_version(),
        "modules": modules,
        "throughput": tput,
        "end_to_end": e2e,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "wasm.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "wasm.png")
    print(table(results))
    print(f"wrote {out / 'wasm.json'} and {out / 'wasm.png'}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/wasm.py", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    run(args.runs, Path(args.out), args.seconds)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=40, help="samples per mode (default 40)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput mode")
    parser.add_argument("--out", default="bench/results", help="where wasm.json/.png go")


if __name__ == "__main__":
    sys.exit(main())
