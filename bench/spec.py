"""The spec builder's share of `bareboat run`: import cost and build+write time.

Measured, each N times:
- import: a fresh `python -c "import bareboat.spec.builder, bareboat.spec.parse"` against
  one importing only the stdlib modules every bareboat CLI imports anyway (dataclasses,
  enum, pathlib, re, typing): the difference is what the builder adds to start-up
- build:  `build_spec` (user resolved from a busybox rootfs's /etc/passwd) + `write_bundle`
  with the /etc files, in this process
- peer:   `runc spec` in a fresh directory (writes runc's default config.json; a process
  start-up, so a floor for anything that shells out to make a spec)

Run: `python bench/spec.py [--runs N] [--dir DIR]`. Prints medians and minimums in ms.
Bundles are written with fsync (bareboat.fsutil): on a disk that is most of `build`; on a
tmpfs (/run on most hosts, where bundles live) it is not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# Bytecode as a user's install has it: some shells here set PYTHONDONTWRITEBYTECODE, which
# makes every start compile every module again.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _timed(argv: list[str], cwd: Path | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, cwd=cwd, timeout=60, capture_output=True, env=ENV)
    return (time.perf_counter() - t) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--dir", type=Path, default=None, help="where bundles go (default: /tmp)")
    args = ap.parse_args(argv)

    from tests.support.imagebuild import GROUP, PASSWD

    from bareboat.images.model import ImageConfig
    from bareboat.spec.builder import build_spec, write_bundle
    from bareboat.spec.options import RunOptions

    py = sys.executable
    _timed([py, "-c", "import bareboat.spec.builder, bareboat.spec.parse"])  # writes the .pyc
    bare = [_timed([py, "-c", "pass"]) for _ in range(args.runs)]
    STDLIB = "import dataclasses, enum, pathlib, re, typing"  # what any bareboat CLI pays
    std = [_timed([py, "-c", STDLIB]) for _ in range(args.runs)]
    imp = [
        _timed([py, "-c", "import bareboat.spec.builder, bareboat.spec.parse"])
        for _ in range(args.runs)
    ]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        (root / "rootfs" / "etc").mkdir(parents=True)
        (root / "rootfs" / "etc" / "passwd").write_text(PASSWD)
        (root / "rootfs" / "etc" / "group").write_text(GROUP)
        config = ImageConfig(cmd=("/bin/sh",), env=("PATH=/bin",))
        options = RunOptions(command=("true",), user="app", memory=64 << 20, cpus=1.0)
        build = []
        for i in range(args.runs):
            bundle = root / f"b{i}"
            t = time.perf_counter()
            spec = build_spec(
                config,
                options,
                rootfs=root / "rootfs",
                container_id=f"{i:012d}",
                etc_dir=bundle / "etc",
            )
            write_bundle(bundle, spec, etc_dir=bundle / "etc")
            build.append((time.perf_counter() - t) * 1000)
        peer = []
        for i in range(args.runs):
            d = root / f"r{i}"
            d.mkdir()
            peer.append(_timed(["runc", "spec"], cwd=d))

    # Medians, and minimums: on a shared, loaded machine the minimum is the cost itself.
    med = statistics.median
    rows = [
        ("python -c pass", bare, None),
        ("+ dataclasses, pathlib...", std, bare),
        ("+ import spec builder", imp, std),
        ("build_spec + write_bundle", build, None),
        ("runc spec (peer)", peer, None),
    ]
    print(f"{'':28}{'median':>9}{'min':>9}  (ms)")
    for label, xs, base in rows:
        m, lo = med(xs), min(xs)
        if base is not None:
            m, lo = m - med(base), lo - min(base)
        print(f"{label:28}{m:9.2f}{lo:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
