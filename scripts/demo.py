"""The demo behind ./scripts/demo.

Builds a small image from busybox-static (no internet needed), pushes it to a real
`docker-registry` started on 127.0.0.1, pulls it with `bareboat pull`, shows it, and runs the same
image as a plain process, a namespace container and a microVM. The store lives in a temporary
root unless BAREBOAT_ROOT is set, so the demo leaves the machine as it found it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.imagebuild import Entry, Image, busybox_entries, write_image  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

BAREBOAT = str(REPO / ".venv" / "bin" / "bareboat")

HELLO = """#!/bin/sh
echo "hello from $(hostname): $(uname -sr), uid=$(id -u), pid=$$, cwd=$(pwd)"
echo "args: $*"
"""


def demo_image() -> Image:
    app = [
        Entry("app", "dir", mode=0o755),
        Entry("app/hello.sh", "file", HELLO.encode(), mode=0o755),
    ]
    return Image(
        layers=[busybox_entries(), app],
        entrypoint=["/app/hello.sh"],
        cmd=["world"],
        workdir="/app",
        labels={"org.opencontainers.image.title": "bareboat demo"},
    )


def step(*args: str, check: bool = True) -> int:
    print(f"\n$ bareboat {shlex.join(args)}", flush=True)
    return subprocess.run([BAREBOAT, *args], check=check).returncode


def microvm_ready() -> bool:
    out = subprocess.run([BAREBOAT, "guest", "info"], capture_output=True, text=True)
    return out.returncode == 0 and "built: False" not in out.stdout


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bareboat-demo-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("BAREBOAT_ROOT", str(work / "root"))
        os.environ.setdefault("BAREBOAT_STATE", str(work / "state"))
        layout = work / "layout"
        write_image(layout, demo_image(), tag="1.0")
        print(f"built the demo image as an OCI layout in {layout}")
        with Registry(work / "registry") as registry:
            registry.push(layout, "1.0", "demo/hello:1.0")
            ref = registry.ref("demo/hello:1.0")
            print(f"serving it from a local registry as {ref}")
            step("pull", ref)
            step("images")
            step("run", "--rm", "--isolation", "process", ref, "as a process")
            step("run", "--rm", "--isolation", "container", ref, "in a container")
            if microvm_ready():
                step("run", "--rm", "--isolation", "microvm", ref, "in a microVM")
            else:
                print("\n(the guest kernel/init are not built: skipping the microVM run)")
            step("info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
