"""The demo behind ./scripts/demo.

Builds a small image from busybox-static (no internet needed), pushes it to a real
`docker-registry` started on 127.0.0.1, pulls it with `bareboat pull`, shows it, and runs the same
image as a plain process, a namespace container and a microVM; then podman runs it in a microVM
through `bareboat-runtime`. The stores live in a temporary directory unless BAREBOAT_ROOT is set,
so the demo leaves the machine as it found it.
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
RUNTIME = str(REPO / ".venv" / "bin" / "bareboat-runtime")
PODMAN_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
"""

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


def podman_step(work: Path, ref: str) -> None:
    """podman with storage, run root and config of its own, running the image in a microVM
    through bareboat-runtime (a wrapper pins the runtime's state root: podman does not pass
    our environment to a runtime)."""
    import shutil

    if not shutil.which("podman"):
        print("\n(podman is not installed: skipping the bareboat-runtime run)")
        return
    (work / "containers.conf").write_text(PODMAN_CONF)
    wrapper = work / "bin" / "bareboat-runtime"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nBAREBOAT_RUNTIME_ROOT={work}/rtroot exec {RUNTIME} "$@"\n')
    wrapper.chmod(0o755)
    env = {**os.environ, "CONTAINERS_CONF": str(work / "containers.conf")}
    base = ["podman", "--root", str(work / "podman"), "--runroot", str(work / "podman-run"),
            "--tmpdir", str(work / "podman-tmp"), "--cgroup-manager", "cgroupfs",
            "--events-backend", "file"]  # fmt: skip
    run = ["run", "--rm", "--network", "none", "--tls-verify=false", "--annotation",
           "io.bareboat.isolation=microvm", ref, "podman, in a microVM"]  # fmt: skip
    print(f"\n$ podman --runtime bareboat-runtime {shlex.join(run)}", flush=True)
    try:
        subprocess.run([*base, "--runtime", str(wrapper), *run], env=env, check=True)
    finally:
        for cleanup in (["rm", "--all", "--force"], ["rmi", "--all", "--force"]):
            subprocess.run([*base, *cleanup], env=env, capture_output=True, check=False)
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for line in reversed(mounts):
            target = line.split()[1]
            if target.startswith(f"{work}/"):
                subprocess.run(["umount", "-l", target], check=False)


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
                podman_step(work, ref)
            else:
                print("\n(the guest kernel/init are not built: skipping the microVM run)")
            step("info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
