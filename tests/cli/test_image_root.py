"""An image's symlinks are its own data: whatever bareboat writes or mounts in a container's
root stays in that root, for every isolation.

The hostile image has `/etc` as an absolute symlink to a host directory (made by the test)
and `/data` as a relative symlink that climbs out towards another; the container gets its
/etc files and a volume at `/data/sub`. Afterwards the host is checked, not the messages:
both host directories as they were, no mount under them, nothing of the container left."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bareboat.paths import Roots
from tests.cli.conftest import Run, leftovers
from tests.support.imagebuild import Entry, Image, busybox_entries, write_image


@dataclass
class Hostile:
    ref: str
    host_etc: Path  # where the image's /etc points
    host_dir: Path  # where its /data climbs to
    volume: Path  # mounted at /data/sub

    def untouched(self) -> None:
        assert sorted(p.name for p in self.host_etc.iterdir()) == ["keep"]
        assert (self.host_etc / "keep").read_text() == "host\n"
        assert list(self.host_dir.iterdir()) == []
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        assert [p for p in points if p.startswith((str(self.host_etc), str(self.host_dir)))] == []


def hostile_entries(host_etc: Path, host_dir: Path, base: list[Entry]) -> list[Entry]:
    entries = [e for e in base if e.path != "etc" and not e.path.startswith("etc/")]
    # The symlinks' targets exist inside the image too (crun refuses a dangling /etc; the
    # runtime tests and tests/images/test_openat2.py have dangling ones): resolved in the
    # root they are these directories, resolved on the host they are the host's.
    have = {e.path for e in entries}
    inside = [
        Entry(str(d).lstrip("/"), "dir", mode=0o755)
        for target in (host_etc, host_dir)
        for d in (*reversed(target.parents[:-1]), target)
        if str(d).lstrip("/") not in have
    ]
    return [
        *entries,
        *{e.path: e for e in inside}.values(),
        Entry("etc", "symlink", target=str(host_etc)),
        Entry("data", "symlink", target="../" * 30 + str(host_dir).lstrip("/")),
    ]


def make_hostile(roots: Roots, tmp_path: Path, image: Image) -> Hostile:
    from bareboat.images.store import ImageStore

    host_etc, host_dir, volume = tmp_path / "host-etc", tmp_path / "host-dir", tmp_path / "vol"
    for d in (host_etc, host_dir, volume):
        d.mkdir()
    (host_etc / "keep").write_text("host\n")
    (volume / "v").write_text("volume\n")
    image.layers = [hostile_entries(host_etc, host_dir, list(image.layers[0]))]  # type: ignore[arg-type]
    write_image(tmp_path / "layout", image, tag="hostile")
    ref = ImageStore(roots).load(tmp_path / "layout")[0].names[0]
    return Hostile(ref, host_etc, host_dir, volume)


@pytest.fixture
def hostile(roots: Roots, bb: Run, tmp_path: Path) -> Iterator[Hostile]:
    h = make_hostile(roots, tmp_path, Image(layers=[busybox_entries()]))
    yield h
    h.untouched()


READ = "cat /etc/hostname /data/sub/v"


@pytest.mark.parametrize("runtime", ["process", "crun", "runc"])
def test_containers(
    bb: Run, roots: Roots, hostile: Hostile, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolation = "process" if runtime == "process" else "container"
    if runtime != "process":
        monkeypatch.setenv("BAREBOAT_OCI_RUNTIME", runtime)
    r = bb("run", "--rm", "--isolation", isolation, "--hostname", "boat",
           "-v", f"{hostile.volume}:/data/sub:ro", hostile.ref, "sh", "-c", READ)  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "boat\nvolume\n"), r.stderr
    hostile.untouched()
    # and once more, detached: the mounts live while it runs, and only inside its root
    cid = bb("run", "-d", "--isolation", isolation, "-v", f"{hostile.volume}:/data/sub",
             hostile.ref, "sleep", "100").stdout.strip()  # fmt: skip
    assert cid, "the container did not start"
    hostile.untouched()
    assert bb("rm", "-f", cid).returncode == 0
    hostile.untouched()
    assert leftovers(roots) == []


@pytest.mark.slow
def test_microvm(bb: Run, roots: Roots, hostile: Hostile) -> None:
    from tests.microvm.test_backend import kernel_or_skip

    kernel_or_skip(roots)
    r = bb("run", "--rm", "--isolation", "microvm", "--no-template", "--hostname", "boat",
           "-v", f"{hostile.volume}:/data/sub:ro", hostile.ref, "sh", "-c", READ,
           timeout=180)  # fmt: skip
    # The guest init makes and mounts these inside the VM, which is its own machine; the
    # host side only builds a disk image of the tree and shares the volume. (The guest's
    # /tmp is a tmpfs of its own, so there the link targets are missing: a clean refusal.)
    assert (r.returncode, r.stdout) in ((0, "boat\nvolume\n"), (125, "")), r.stderr
    hostile.untouched()
    assert leftovers(roots) == []


def test_wasm(roots: Roots, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.wasm import wat
    from tests.wasm.test_cli import COMPAT, _engine_has_wasm

    if reason := _engine_has_wasm():
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("the engine's overlay mounts need root here")
    import subprocess
    import sys

    monkeypatch.setenv("BAREBOAT_CACHE", str(tmp_path / "cache"))  # compiled modules go there
    module = [Entry("app", "dir", mode=0o755), Entry("app/main.wasm", "file", wat.hello())]
    image = Image(layers=[module], entrypoint=["/app/main.wasm"], cmd=None, labels=COMPAT)
    h = make_hostile(roots, tmp_path, image)
    r = subprocess.run(
        [sys.executable, "-m", "bareboat.cli.main", "run", "--rm", "--isolation", "wasm",
         "-v", f"{h.volume}:/data/sub", h.ref],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hello\n")
    h.untouched()
    assert leftovers(roots) == []
