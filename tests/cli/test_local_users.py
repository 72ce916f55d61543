"""Another local user gains nothing from bareboat's files: a real unprivileged user, made by
the test, can stat, list, open, run or connect to nothing under any root, while a hostile image
(a setuid-root binary, a device node) is stored, a container has planted a setuid shell in its
writable layer, a VM runs with a disk of its own, and bareboat-runtime holds a VM whose disk it
built from a client's rootfs. The roots start out as an older installation left them (0755)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.paths import Roots
from tests.cli.conftest import bareboat_argv, leftovers
from tests.runtime.conftest import Runtime, make_bundle, need_runc
from tests.support.imagebuild import BUSYBOX, Entry, Image, busybox_entries, write_image
from tests.support.stranger import Stranger, stranger, walk

pytestmark = pytest.mark.slow


@pytest.fixture
def old_roots(monkeypatch: pytest.MonkeyPatch) -> Iterator[Roots]:
    """Roots under a directory every user may traverse (pytest's own are 0700, which would
    hide everything whatever bareboat did), with the guest kernel and init copied in."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("useradd") is None:
        pytest.skip("needs root, setpriv and useradd")
    need_runc()
    guest = Path(os.environ.get("BAREBOAT_CACHE") or "/var/cache/bareboat") / "guest"
    if not (guest / "kernel").is_dir() or not Path("/usr/bin/qemu-system-x86_64").exists():
        pytest.skip("no guest kernel built, or no QEMU")
    base = Path(tempfile.mkdtemp(prefix="bb-users-"))
    base.chmod(0o755)
    roots = Roots(root=base / "root", state=base / "state", cache=base / "cache")
    try:
        shutil.copytree(guest, roots.guest)
        # what an older bareboat made: every directory 0755
        for d in (roots.root, roots.images, roots.containers, roots.state, roots.run, base / "rt"):
            d.mkdir(parents=True, exist_ok=True)
        for d in (base, roots.cache, *roots.cache.rglob("*"), *roots.root.rglob("*")):
            if d.is_dir():
                d.chmod(0o755)
        monkeypatch.setenv("BAREBOAT_ROOT", str(roots.root))
        monkeypatch.setenv("BAREBOAT_STATE", str(roots.state))
        monkeypatch.setenv("BAREBOAT_CACHE", str(roots.cache))
        monkeypatch.delenv("BAREBOAT_TEMPLATE", raising=False)
        yield roots
    finally:
        ids = bb("ps", "-aq", "--no-trunc").stdout.split()
        if ids:
            bb("rm", "-f", *ids)
        assert leftovers(roots) == []
        shutil.rmtree(base)


@pytest.fixture
def other_user() -> Iterator[Stranger]:
    with stranger() as s:
        yield s


def bb(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(bareboat_argv(*args), capture_output=True, text=True, timeout=timeout)


def hostile_image(tmp: Path) -> Path:
    layer = [
        *busybox_entries(),
        Entry("bin/suid", "file", BUSYBOX.read_bytes(), mode=0o4755),
        Entry("dev/evil", "char", devmajor=1, devminor=3, mode=0o666),
    ]
    layout = tmp / "layout"
    write_image(layout, Image(layers=[layer]), tag="hostile")
    return layout


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def test_another_user_reaches_nothing(
    old_roots: Roots, other_user: Stranger, tmp_path: Path
) -> None:
    roots = old_roots
    r = bb("load", "-i", str(hostile_image(tmp_path)))
    assert r.returncode == 0 and r.stdout.startswith("Loaded image: "), r.stderr
    ref = r.stdout.split(": ", 1)[1].split(",")[0].strip()

    plant = "cp /bin/busybox /planted && chmod 4755 /planted && echo planted && exec sleep 600"
    r = bb("run", "-d", ref, "sh", "-c", plant)
    assert r.returncode == 0, r.stderr
    planter = r.stdout.strip()
    r = bb(
        "run", "-d", "--isolation", "microvm", "--no-template",
        "--label", "io.bareboat.vm.disk=16m", ref, "sleep", "600",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    vm = r.stdout.strip()

    rt = Runtime(roots.root.parent / "rt", tmp_path / "runtime.log")
    bundle = make_bundle(
        tmp_path / "bundle", ["sleep", "600"], annotations={"io.bareboat.isolation": "microvm"}
    )
    rt("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "rtvm", timeout=120)
    rt.ids.append("rtvm")
    try:
        # What there is to find, seen as root: the test is not vacuous.
        planted = roots.containers / planter / "upper" / "planted"
        wait_for(planted)
        tree = next((roots.images / "rootfs").iterdir())
        assert mode(tree / "bin/suid") == 0o4755 and mode(planted) == 0o4755
        assert stat.S_ISCHR((tree / "dev/evil").lstat().st_mode)
        assert any((roots.images / "blobs" / "sha256").iterdir())
        vmdir = roots.run / vm / "oci" / "vm"
        logs = [
            roots.containers / planter / "log.jsonl",
            roots.run / planter / "monitor.log",
            vmdir / "console.log",
            vmdir / "qemu.log",
            rt.root / "bareboat" / "rtvm" / "vm" / "console.log",
        ]
        disks = [roots.containers / vm / "vm-disk.ext4"]
        for p in [*logs, *disks]:
            assert mode(p) == 0o600, f"{p} is {oct(mode(p))}"
        assert (rt.root / "bareboat" / "rtvm" / "rootfs.erofs").is_file()
        assert any(roots.vm_images.glob("*.erofs"))
        tops = [roots.root, roots.state, rt.root, roots.guest, roots.wasm_cache]
        for d in [*tops, *roots.content_dirs(), rt.root / "bareboat"]:
            assert mode(d) == 0o700, f"{d} is {oct(mode(d))}"

        # Everything under every root, as the other user.
        paths = [p for top in tops for p in walk(top)]
        assert len(paths) > 500, len(paths)
        got = other_user.probe(paths)
        # Only the roots themselves may be seen to exist (their parent is open to all).
        reached = {p: ops for p, ops in got.items() if ops != (["stat"] if Path(p) in tops else [])}
        assert reached == {}, json.dumps(dict(list(reached.items())[:20]), indent=1)
    finally:
        rt.cleanup()
