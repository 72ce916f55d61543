"""Layer unpack alone: bareboat's `unpack_rootfs` against GNU tar and `umoci raw unpack`.

Two generated one-layer images, written as OCI layouts in gzip and zstd: `small` (10,000
files of 0.1-8 KB in 100 directories, what a distro layer looks like) and `big` (one 100 MiB
file). Contents are slices of the host's shared libraries, so they compress as real binaries
do. For each of N runs, alternating: bareboat (in this process, imports paid once), GNU tar
(`tar -x[z|--zstd]f`, the no-safety floor) and, for gzip, umoci (this umoci reads no zstd).

Reported: medians in seconds and the ratio bareboat / peer.

Run: `python bench/layers.py [--runs N] [--out DIR]`.
Writes DIR/layers.json and DIR/layers.png (matplotlib Agg, when installed) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.support.imagebuild import Entry, Image, write_image  # noqa: E402

from bareboat.images.layers import unpack_rootfs  # noqa: E402


def corpus(size: int) -> bytes:
    out = bytearray()
    for p in sorted(Path("/usr/lib/x86_64-linux-gnu").glob("*.so*")):
        if p.is_file() and not p.is_symlink():
            out += p.read_bytes()
        if len(out) >= size:
            break
    return bytes(out[:size]) or random.randbytes(size)


def images(work: Path) -> dict[str, Path]:
    data = corpus(100 << 20)
    rng = random.Random(1)
    small = []
    for i in range(10_000):
        n = rng.randint(100, 8000)
        o = rng.randint(0, len(data) - n)
        small.append(Entry(f"usr/share/d{i // 100}/f{i}", "file", data[o : o + n]))
    big = [Entry("opt/big.bin", "file", data)]
    out = {}
    for name, entries in (("small", small), ("big", big)):
        for comp in ("gzip", "zstd"):
            layout = work / f"{name}-{comp}"
            write_image(layout, Image(layers=[entries], compression=comp))
            out[f"{name}-{comp}"] = layout
    return out


def layer_of(layout: Path) -> tuple[Path, str]:
    index = json.loads((layout / "index.json").read_text())
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    layer = manifest["layers"][0]
    return blobs / layer["digest"][7:], layer["mediaType"]


def timed(fn: Callable[[Path], Any], dest: Path) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    t = time.perf_counter()
    fn(dest)
    elapsed = time.perf_counter() - t
    shutil.rmtree(dest, ignore_errors=True)
    return elapsed


def run(runs: int, out: Path) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-layers-") as tmp:
        work = Path(tmp)
        dest = work / "out"
        for key, layout in images(work).items():
            blob, media_type = layer_of(layout)
            comp_flag = ["-xzf"] if key.endswith("gzip") else ["--zstd", "-xf"]

            def ours(d: Path, blob: Path = blob, media_type: str = media_type) -> None:
                unpack_rootfs(d, [(blob, media_type)])

            def gnutar(d: Path, blob: Path = blob, flag: list[str] = comp_flag) -> None:
                d.mkdir()
                subprocess.run(["tar", *flag, str(blob), "-C", str(d)], check=True, timeout=600)

            def umoci(d: Path, layout: Path = layout) -> None:
                cmd = ["umoci", "raw", "unpack", "--image", f"{layout}:latest", str(d)]
                subprocess.run(cmd, check=True, capture_output=True, timeout=600)

            tools: dict[str, Callable[[Path], Any]] = {"bareboat": ours, "tar": gnutar}
            if key.endswith("gzip") and shutil.which("umoci"):
                tools["umoci"] = umoci
            samples: dict[str, list[float]] = {t: [] for t in tools}
            for _ in range(runs):
                for tool, fn in tools.items():
                    samples[tool].append(timed(fn, dest))
            results[key] = {t: statistics.median(s) for t, s in samples.items()}
            line = "  ".join(f"{t} {v:.3f}s" for t, v in results[key].items())
            print(f"{key:11} {line}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "layers.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "layers.png")
    return results


def plot(results: dict[str, dict[str, float]], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    tools = ["bareboat", "tar", "umoci"]
    keys = list(results)
    width = 0.25
    for i, tool in enumerate(tools):
        xs = [k + i * width for k in range(len(keys)) if tool in results[keys[k]]]
        ys = [results[k][tool] for k in keys if tool in results[k]]
        ax.bar(xs, ys, width, label=tool)
    ax.set_xticks([k + width for k in range(len(keys))], keys)
    ax.set_ylabel("seconds (median)")
    ax.set_title("Layer unpack")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/layers.py", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="samples per tool (default 5)")
    parser.add_argument("--out", default="bench/results", help="where layers.json/.png go")
    args = parser.parse_args(argv)
    run(args.runs, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
