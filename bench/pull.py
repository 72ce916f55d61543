"""Pull + unpack: bareboat against `skopeo copy` + `umoci unpack`, from one local registry.

Two images are generated and pushed to a real `docker-registry` on 127.0.0.1: a small one
(busybox + ~4 MB of random files, ~5 MB) and a big one (busybox + ~100 MB of random files,
gzip). For each of N runs and each image, in the same run and alternating:

- bareboat: a fresh store; `ImageStore.pull(unpack=True)` (layers unpacked while they
  download, as `ensure` does for `run`) then `ImageStore.rootfs`, in a new process
  (start-up and imports included, as a user pays them)
- peers:    `skopeo copy docker://... oci:DIR:x` then `umoci unpack --image DIR:x BUNDLE`

Reported: medians, and the ratio bareboat / (skopeo + umoci). Goal: <= 0.8.

Run: `bareboat bench pull [--runs N] [--big-mb MB] [--out DIR]` or `python bench/pull.py`.
Writes DIR/pull.json and DIR/pull.png (matplotlib Agg) and prints a table.
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PULL = """
import sys
from pathlib import Path
from bareboat.images.store import ImageStore
from bareboat.paths import Roots
root = Path(sys.argv[2])
store = ImageStore(Roots(root / "root", root / "state", root / "cache"))
store.rootfs(store.pull(sys.argv[1], progress=False, unpack=True))
"""


def random_entries(total_mb: float, file_mb: int = 4) -> list[object]:
    from tests.support.imagebuild import Entry

    entries: list[object] = [Entry("data", "dir", mode=0o755)]
    left = int(total_mb * 1024 * 1024)
    i = 0
    while left > 0:
        n = min(left, file_mb * 1024 * 1024)
        entries.append(Entry(f"data/blob{i:03d}", data=os.urandom(n)))
        left -= n
        i += 1
    return entries


def build_images(layout: Path, big_mb: float) -> dict[str, float]:
    from tests.support.imagebuild import Image, Layout, busybox_entries

    lay = Layout(layout)
    sizes = {"small": 4.0, "big": big_mb}
    for tag, mb in sizes.items():
        image = Image(layers=[busybox_entries(), random_entries(mb)])  # type: ignore[list-item]
        lay.tag(lay.add_image(image), tag)
    return sizes


def timed(cmd: Sequence[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0


def run_bareboat(ref: str, work: Path) -> float:
    try:
        return timed([sys.executable, "-c", PULL, ref, str(work)])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_peers(ref: str, work: Path) -> float:
    work.mkdir(parents=True)
    try:
        copy = timed(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                f"docker://{ref}",
                f"oci:{work / 'oci'}:x",
            ]
        )
        unpack = timed(["umoci", "unpack", "--image", f"{work / 'oci'}:x", str(work / "bundle")])
        return copy + unpack
    finally:
        shutil.rmtree(work, ignore_errors=True)


def chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [results[n]["bareboat"] for n in names], 0.4, label="bareboat")
    ax.bar([x + 0.2 for x in xs], [results[n]["peers"] for n in names], 0.4, label="skopeo + umoci")
    ax.set_xticks(list(xs), [f"{n}\n{results[n]['mb']:.0f} MB" for n in names])
    ax.set_ylabel("median seconds (pull + unpack)")
    ax.set_title("Pull + unpack from a local registry")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench pull", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--big-mb", type=float, default=100.0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    from tests.support.registry import Registry

    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp_s:
        tmp = Path(tmp_s)
        print(f"building images (busybox + 4 MB, busybox + {args.big_mb:.0f} MB)...", flush=True)
        tags = build_images(tmp / "layout", args.big_mb)
        results: dict[str, dict[str, Any]] = {}
        with Registry(tmp / "registry") as reg:
            for tag in tags:
                reg.push(tmp / "layout", tag, f"bench/img:{tag}")
            for tag in tags:
                ref = reg.ref(f"bench/img:{tag}")
                ours, peers = [], []
                for i in range(args.runs):
                    ours.append(run_bareboat(ref, tmp / f"ours-{i}"))
                    peers.append(run_peers(ref, tmp / f"peers-{i}"))
                results[tag] = {
                    "bareboat": statistics.median(ours),
                    "peers": statistics.median(peers),
                    "ratio": statistics.median(ours) / statistics.median(peers),
                    "bareboat_runs": ours,
                    "peers_runs": peers,
                    "mb": tags[tag] + 1.0,  # + busybox
                }
    header = f"{'image':<8}{'bareboat s':>12}{'skopeo+umoci s':>16}{'ratio':>8}"
    print(f"\n{header}   (median of {args.runs})")
    for tag, r in results.items():
        print(f"{tag:<8}{r['bareboat']:>12.3f}{r['peers']:>16.3f}{r['ratio']:>8.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"runs": args.runs, "results": results}
    (args.out / "pull.json").write_text(json.dumps(doc, indent=2))
    chart(results, args.out / "pull.png")
    print(f"wrote {args.out / 'pull.json'} and {args.out / 'pull.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
