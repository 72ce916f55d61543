"""Real templates and clones under QEMU (TCG here): create, restore, identity, failures, leftovers.

One template is created per module (a ~1 s boot); each test restores clones from it. Skipped
where the guest kernel is not built (`bareboat guest build`, or $BAREBOAT_KERNEL).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from bareboat.backends.microvm import template as T
from bareboat.backends.microvm.agent import ProcessSpec, SessionResult, StartSpec
from bareboat.errors import KernelMissing, TemplateError
from bareboat.paths import Roots

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("musl-gcc", "umoci", "mkfs.erofs", "qemu-system-x86_64")),
        reason="needs musl-gcc, umoci, mkfs.erofs and qemu-system-x86_64",
    ),
]

PATH = "PATH=/usr/local/bin:/usr/bin:/bin"


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path
) -> tuple[Roots, T.TemplateInputs]:
    from bareboat.backends.microvm.initbuild import build_initramfs
    from bareboat.backends.microvm.kernel import resolve_kernel
    from bareboat.backends.microvm.qemu import host_tsc_khz

    try:
        kernel = resolve_kernel(Roots.from_env()).path
    except KernelMissing as e:
        pytest.skip(str(e))
    d = tmp_path_factory.mktemp("tpl")
    roots = Roots(root=d / "root", state=d / "state", cache=d / "cache")
    initrd = build_initramfs(roots)
    subprocess.run(
        ["umoci", "unpack", "--image", f"{busybox_layout}:latest", str(d / "bundle")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    erofs = d / "rootfs.erofs"
    subprocess.run(
        ["mkfs.erofs", "-Enoinline_data", str(erofs), str(d / "bundle" / "rootfs")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    inputs = T.TemplateInputs(
        image="sha256:test", kernel=kernel, initrd=initrd, lower=erofs, tsc_khz=host_tsc_khz()
    )
    return roots, inputs


@pytest.fixture(scope="module")
def template(setup: tuple[Roots, T.TemplateInputs]) -> T.Template:
    roots, inputs = setup
    return T.create_template(roots, inputs)


def run_in_clone(
    template: T.Template,
    inputs: T.TemplateInputs,
    script: str,
    *,
    env: tuple[str, ...] = (),
    hostname: str = "clone",
    lower: str = "/dev/vda",
    readonly_root: bool = False,
) -> SessionResult:
    with T.restore_clone(template, inputs) as clone:
        clone.agent.start(
            StartSpec(
                process=ProcessSpec(args=["sh", "-c", script], env=[PATH, *env]),
                hostname=hostname,
                time_ns=time.time_ns(),
                entropy=os.urandom(64),
                lower=lower,
                lower_fstype="erofs",
                readonly_root=readonly_root,
            )
        )
        return clone.agent.wait(0, timeout=60)


def our_qemus(marker: str) -> list[int]:
    """QEMU processes whose command line names `marker` (our socket dirs or template)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and marker.encode() in cmd:
            found.append(int(pid))
    return found


def socket_dirs() -> set[str]:
    tmp = Path(tempfile.gettempdir())
    return {p.name for p in tmp.iterdir() if p.name.startswith(("bb-clone-", "bb-tpl-"))}


def test_template_exists_once_created(
    setup: tuple[Roots, T.TemplateInputs], template: T.Template
) -> None:
    roots, inputs = setup
    assert T.find_template(roots, inputs) == template
    assert template.manifest.state_size < 1 << 20  # device state only, the RAM is the file
    assert template.ram.stat().st_size == inputs.memory_mib << 20
    # created again: the same one, not a second boot
    assert T.create_template(roots, inputs) == template
    assert [p.name for p in roots.templates.iterdir() if not p.name.endswith(".lock")] == [
        template.key
    ]
    # any changed input is another (absent) template
    assert T.find_template(roots, replace(inputs, memory_mib=192)) is None
    assert T.find_template(roots, replace(inputs, image="sha256:other")) is None


def test_clone_runs_the_workload_with_its_own_args_env_and_exit(
    setup: tuple[Roots, T.TemplateInputs], template: T.Template
) -> None:
    _, inputs = setup
    r = run_in_clone(template, inputs, 'echo "$FOO $0"; exit 42', env=("FOO=first",))
    assert (r.stdout, r.exit.code) == (b"first sh\n", 42)
    r = run_in_clone(template, inputs, "echo $FOO; cat /nonexistent", env=("FOO=second",))
    assert r.stdout == b"second\n" and r.exit.code == 1 and b"nonexistent" in r.stderr


def test_clones_differ_in_rng_and_hostname_and_have_the_time(
    setup: tuple[Roots, T.TemplateInputs], template: T.Template
) -> None:
    _, inputs = setup
    script = (
        "hostname; cat /proc/sys/kernel/random/uuid; head -c16 /dev/urandom | od -An -tx1; date +%s"
    )
    outs = []
    for name in ("clone-a", "clone-b"):
        r = run_in_clone(template, inputs, script, hostname=name)
        assert r.exit.code == 0, r.stderr
        outs.append(r.stdout.decode().splitlines())
    (host_a, uuid_a, rand_a, time_a), (host_b, uuid_b, rand_b, time_b) = outs
    assert (host_a, host_b) == ("clone-a", "clone-b")
    assert uuid_a != uuid_b
    assert rand_a != rand_b
    # the template was saved seconds ago; START set each clone's clock to now
    for t in (time_a, time_b):
        assert abs(int(t) - time.time()) < 30


def test_the_prepared_root_is_each_clones_own(
    setup: tuple[Roots, T.TemplateInputs], template: T.Template
) -> None:
    """The template assembled the root before its snapshot: a clone's writes to it (the
    overlay's upper layer, /tmp, /dev/shm) reach no other clone, and a clone whose START
    names the image otherwise gets a root of its own making."""
    _, inputs = setup
    write = "echo a > /written; echo a > /tmp/written; echo a > /dev/shm/written; ls /bin/sh"
    look = "ls /written /tmp/written /dev/shm/written; ls /bin/sh; grep -c overlay /proc/mounts"
    r = run_in_clone(template, inputs, write)
    assert r.exit.code == 0, r.stderr
    r = run_in_clone(template, inputs, look)
    assert r.exit.code == 0 and r.stderr.count(b"No such file") == 3
    assert r.stdout.split() == [b"/bin/sh", b"1"]
    # the same disk by its serial: not the prepared root's LOWER, so assembled afresh
    r = run_in_clone(template, inputs, look, lower="serial=bb-lower")
    assert r.exit.code == 0 and r.stderr.count(b"No such file") == 3
    assert r.stdout.split() == [b"/bin/sh", b"1"]
    r = run_in_clone(template, inputs, "touch /x", readonly_root=True)
    assert r.exit.code == 1 and b"Read-only" in r.stderr


def test_four_clones_in_parallel(
    setup: tuple[Roots, T.TemplateInputs], template: T.Template
) -> None:
    _, inputs = setup
    before = socket_dirs()
    umask = os.umask(0o022)
    os.umask(umask)
    results: dict[int, SessionResult | BaseException] = {}

    def one(i: int) -> None:
        try:
            results[i] = run_in_clone(template, inputs, f"echo clone {i}; exit {i}")
        except BaseException as e:  # noqa: BLE001 - reported below
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(4):
        r = results[i]
        assert not isinstance(r, BaseException), r
        assert (r.stdout, r.exit.code) == (f"clone {i}\n".encode(), i)
    assert our_qemus(str(template.ram)) == []
    assert socket_dirs() == before
    # the process's umask is everyone's: launching QEMU from threads must leave it alone
    now = os.umask(0o022)
    os.umask(now)
    assert now == umask


def test_corrupt_state_is_detected_before_use(
    setup: tuple[Roots, T.TemplateInputs], template: T.Template, tmp_path: Path
) -> None:
    roots, inputs = setup
    copy_roots = Roots(root=tmp_path / "root", state=tmp_path / "state", cache=roots.cache)
    copy = copy_roots.templates / template.key
    shutil.copytree(template.path, copy)
    data = bytearray((copy / T.STATE).read_bytes())
    data[len(data) // 2] ^= 0x55
    (copy / T.STATE).write_bytes(bytes(data))
    with pytest.raises(TemplateError, match="checksum"):
        T.find_template(copy_roots, inputs)
    os.truncate(copy / T.RAM, 4096)
    with pytest.raises(TemplateError):
        T.find_template(copy_roots, inputs)
    # create_template replaces the broken one
    fresh = T.create_template(copy_roots, inputs)
    assert T.find_template(copy_roots, inputs) == fresh


def test_garbage_state_that_passes_the_checksum_fails_cleanly(
    setup: tuple[Roots, T.TemplateInputs], template: T.Template, tmp_path: Path
) -> None:
    """A state file QEMU cannot load (forged manifest) ends in TemplateError, nothing left."""
    _, inputs = setup
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copyfile(template.ram, bad / T.RAM)
    (bad / T.STATE).write_bytes(b"QEVM\0\0\0\3" + os.urandom(2000))
    forged = T.Template(bad, template.manifest)
    before = socket_dirs()
    t0 = time.monotonic()
    with pytest.raises(TemplateError):
        T.restore_clone(forged, inputs, timeout=20)
    assert time.monotonic() - t0 < 20
    assert our_qemus(str(bad)) == []
    assert socket_dirs() == before


def test_no_leftovers_after_clones(
    setup: tuple[Roots, T.TemplateInputs], template: T.Template
) -> None:
    roots, inputs = setup
    before = socket_dirs()
    ram_before = T._sha256(template.ram)
    with T.restore_clone(template, inputs) as clone:
        clone.agent.start(
            StartSpec(
                process=ProcessSpec(args=["sh", "-c", "head -c 8m /dev/zero > /tmp/x"], env=[PATH]),
                lower="/dev/vda",
            )
        )
        assert clone.agent.wait(0, timeout=60).exit.code == 0
        pid = clone.vm.pid
        assert pid is not None and Path(f"/proc/{pid}").exists()
        assert clone.files.sockets.is_dir()
    assert not clone.files.sockets.exists()
    assert clone.vm.returncode is not None
    assert socket_dirs() == before
    assert not [p for p in roots.templates.iterdir() if p.name.startswith(".tmp-")]
    # a clone that wrote memory did not write the template's RAM file (share=off)
    assert T._sha256(template.ram) == ram_before
    assert T.load_template(template.path) == template


def test_concurrent_creation_makes_one_template(
    setup: tuple[Roots, T.TemplateInputs], tmp_path: Path
) -> None:
    roots, inputs = setup
    mine = Roots(root=tmp_path / "root", state=tmp_path / "state", cache=roots.cache)
    made: list[T.Template] = []
    threads = [
        threading.Thread(target=lambda: made.append(T.create_template(mine, inputs)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(made) == 2 and made[0] == made[1]
    names = [p.name for p in mine.templates.iterdir() if not p.name.endswith(".lock")]
    assert names == [made[0].key]


def test_a_clone_with_other_inputs_is_refused(
    setup: tuple[Roots, T.TemplateInputs], template: T.Template
) -> None:
    _, inputs = setup
    before = socket_dirs()
    with pytest.raises(TemplateError, match="memory"):
        T.restore_clone(template, replace(inputs, memory_mib=256))
    assert socket_dirs() == before
