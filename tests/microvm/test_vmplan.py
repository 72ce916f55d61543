"""Bundle -> VM plan, as data: every `run` option of the README that reaches a microVM goes
from `RunOptions` through the spec builder's bundle and the backend's reading of it to QEMU's
config and the agent's START. Nothing is built or booted: the artifacts are named, not made.

Each row says what its option changes against a VM of no options, in full: a field it should
not touch that changes fails the row as surely as one it should change that does not.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bareboat.backends.base import BackendContext
from bareboat.backends.microvm import template, vmplan
from bareboat.backends.microvm.agent import Mount, ProcessSpec, Rlimit, StartSpec
from bareboat.backends.microvm.backend import MicrovmBackend
from bareboat.backends.microvm.qemu import Disk, PortForward, SerialPort, Share, VMConfig
from bareboat.images.model import ImageConfig
from bareboat.paths import Roots
from bareboat.spec.builder import build_spec, write_bundle
from bareboat.spec.options import Isolation, PortMapping, RunOptions
from bareboat.spec.parse import parse_tmpfs, parse_volume
from tests.support.imagebuild import GROUP, PASSWD
from tests.support.vmplanning import (
    DISK,
    ENTROPY,
    IMAGE,
    INITRD,
    KERNEL,
    TIME_NS,
    TSC_KHZ,
    Planned,
    changes,
    plan_vm,
)

CID = "0123456789abcdef" * 4
HOSTNAME = CID[:12]
IMAGE_CONFIG = ImageConfig(cmd=("/bin/sh", "-c", "true"), env=("PATH=/bin",))
NINEP = "trans=virtio,version=9p2000.L,msize=262144,cache=none"
ENV = ["PATH=/bin", f"HOSTNAME={HOSTNAME}", "HOME=/root"]


def planned(roots: Roots, tmp_path: Path, options: RunOptions) -> Planned:
    """What `bareboat run --isolation microvm` plans for these options: the engine's bundle
    (with its /etc files), read by the backend, with named artifacts."""
    rootfs = tmp_path / "image"
    (rootfs / "etc").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    (rootfs / "etc" / "group").write_text(GROUP)
    bundle = tmp_path / "bundle"
    (bundle / "etc").mkdir(parents=True, exist_ok=True)
    config = build_spec(
        IMAGE_CONFIG, options, rootfs=rootfs, container_id=CID,
        root_path=str(bundle / "rootfs"), etc_dir=bundle / "etc", nofile=4096,
    )  # fmt: skip
    write_bundle(bundle, config, etc_dir=bundle / "etc", durable=False)
    # One container id and one state dir: every VM planned here has the same files.
    ctx = BackendContext(CID, bundle, roots.state / "microvm", config)
    return plan_vm(MicrovmBackend(roots), ctx)


@pytest.fixture(autouse=True)
def _no_template_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BAREBOAT_TEMPLATE", raising=False)


@pytest.fixture
def default(roots: Roots, tmp_path: Path) -> Planned:
    return planned(roots, tmp_path / "default", RunOptions(isolation=Isolation.MICROVM))


def etc_file(start: StartSpec, path: str) -> bytes:
    [data] = [f.data for f in start.files if f.path == path]
    return data


def test_a_vm_of_no_options(default: Planned) -> None:
    d = default.vmdir
    assert default.config == VMConfig(
        kernel=KERNEL,
        initrd=INITRD,
        qmp_socket=d.qmp,
        vcpus=1,
        memory_mib=256,
        accel="tcg",
        disks=(Disk(IMAGE.path, readonly=True, serial="bb-lower"),),
        serial_ports=(SerialPort("bareboat.agent", d.agent),),
        console_log=d.console,
        network="none",
        tsc_khz=TSC_KHZ,
        name=str(d.sockets),
    )
    s = default.start
    assert s.process == ProcessSpec(
        args=["/bin/sh", "-c", "true"], env=ENV, cwd="/", uid=0, gid=0, groups=[],
        umask=0o022, rlimits=[Rlimit(7, 4096, 4096)],
    )  # fmt: skip
    assert (s.hostname, s.time_ns, s.entropy) == (HOSTNAME, TIME_NS, ENTROPY)
    assert (s.lower, s.lower_fstype, s.upper) == ("/dev/vda", "erofs", None)
    assert (s.mounts, s.readonly_root, s.watch_ports, s.root_dir) == ([], False, False, None)
    # the bundle's own /etc files, copied in (the guest has no share to mount them from)
    assert [f.path for f in s.files] == ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]
    assert etc_file(s, "/etc/hostname") == f"{HOSTNAME}\n".encode()
    assert f"127.0.1.1\t{HOSTNAME}\n".encode() in etc_file(s, "/etc/hosts")
    assert default.vmm_cpu_limit == (None, None)
    assert vmplan.template_inputs(default.plan) == vmplan.TemplateInputs(
        image=IMAGE.key, kernel=KERNEL, initrd=INITRD, lower=IMAGE.path, vcpus=1,
        memory_mib=256, accel="tcg", tsc_khz=TSC_KHZ,
    )  # fmt: skip


def _user_network(d: Planned, tmp: Path) -> dict[str, Any]:
    files = [
        dataclasses.replace(f, data=b"nameserver 10.0.2.3\n") if f.path == "/etc/resolv.conf" else f
        for f in d.start.files
    ]
    return {"files": files}


def _hostname_web(d: Planned, tmp: Path) -> dict[str, Any]:
    files = []
    for f in d.start.files:
        if f.path == "/etc/hostname":
            f = dataclasses.replace(f, data=b"web\n")
        elif f.path == "/etc/hosts":
            f = dataclasses.replace(f, data=f.data.replace(HOSTNAME.encode(), b"web"))
        files.append(f)
    env = ["PATH=/bin", "HOSTNAME=web", "HOME=/root"]
    return {"hostname": "web", "process.env": env, "files": files}


def _host_cpus() -> int:
    return len(os.sched_getaffinity(0))


Changes = Callable[[Planned, Path], dict[str, Any]]
NONE: Changes = lambda d, tmp: {}  # noqa: E731


@dataclass(frozen=True)
class Case:
    flags: str  # the `run` flags, as the README writes them
    options: Callable[[Path], dict[str, Any]]  # RunOptions fields, given a directory of files
    config: Changes  # what changes in QEMU's config
    start: Changes  # what changes in START
    templated: bool = True  # whether such a VM may be a template's clone
    cpu_limit: tuple[int | None, int | None] = (None, None)  # the VMM's host CPU quota

    def __str__(self) -> str:
        return self.flags


CASES = [
    Case("-e FOO=bar", lambda tmp: {"env": ("FOO=bar",)}, NONE,
         lambda d, tmp: {"process.env": [*ENV[:2], "FOO=bar", "HOME=/root"]}),
    Case("-w /srv", lambda tmp: {"workdir": "/srv"}, NONE,
         lambda d, tmp: {"process.cwd": "/srv"}),
    Case("-u app", lambda tmp: {"user": "app"}, NONE,
         lambda d, tmp: {"process.uid": 1000, "process.gid": 1000, "process.groups": [50],
                         "process.env": [*ENV[:2], "HOME=/home/app"]}),
    Case("-u 4242:4343", lambda tmp: {"user": "4242:4343"}, NONE,
         lambda d, tmp: {"process.uid": 4242, "process.gid": 4343,
                         "process.env": [*ENV[:2], "HOME=/"]}),
    Case("-v DIR:/data", lambda tmp: {"mounts": (parse_volume(f"{tmp}/dir:/data"),)},
         lambda d, tmp: {"shares": (Share(tmp / "dir", "bb0"),)},
         lambda d, tmp: {"mounts": [Mount("/data", "9p", "bb0", f"rw,{NINEP}")]},
         templated=False),
    Case("-v FILE:/etc/app.conf:ro",
         lambda tmp: {"mounts": (parse_volume(f"{tmp}/app.conf:/etc/app.conf:ro"),)},
         lambda d, tmp: {"shares": (Share(d.vmdir.shared_files / "bb0", "bb0", True,
                                          file=tmp / "app.conf"),)},
         lambda d, tmp: {"mounts": [Mount("/etc/app.conf", "9p", "bb0", f"ro,{NINEP}",
                                          readonly=True, file=True)]},
         templated=False),
    Case("--tmpfs /scratch:size=1m,mode=1777",
         lambda tmp: {"mounts": (parse_tmpfs("/scratch:size=1m,mode=1777"),)}, NONE,
         lambda d, tmp: {"mounts": [Mount("/scratch", "tmpfs", "tmpfs",
                                          "nosuid,nodev,noexec,size=1m,mode=1777")]}),
    Case("--tmpfs /ro:ro,exec", lambda tmp: {"mounts": (parse_tmpfs("/ro:ro,exec"),)}, NONE,
         lambda d, tmp: {"mounts": [Mount("/ro", "tmpfs", "tmpfs", "nosuid,nodev,exec,ro",
                                          readonly=True)]}),
    Case("--read-only", lambda tmp: {"read_only": True}, NONE,
         lambda d, tmp: {"readonly_root": True}),
    Case("--memory 100m", lambda tmp: {"memory": 100 << 20},
         lambda d, tmp: {"memory_mib": 100}, NONE),
    Case("--memory 10m", lambda tmp: {"memory": 10 << 20},  # a guest needs 64 MiB
         lambda d, tmp: {"memory_mib": 64}, NONE),
    Case("--cpus 0.5", lambda tmp: {"cpus": 0.5}, NONE, NONE, cpu_limit=(50_000, 100_000)),
    Case("--cpus 1.5", lambda tmp: {"cpus": 1.5}, lambda d, tmp: {"vcpus": 2}, NONE,
         cpu_limit=(150_000, 100_000)),
    # The VM is the boundary: a guest has no pids cgroup, so the limit changes nothing in it.
    Case("--pids-limit 100", lambda tmp: {"pids_limit": 100}, NONE, NONE),
    Case("--network user", lambda tmp: {"network": "user"},
         lambda d, tmp: {"network": "user", "own_netns": True},
         _user_network, templated=False),
    Case("--network user,host-loopback", lambda tmp: {"network": "user,host-loopback"},
         lambda d, tmp: {"network": "user"},
         _user_network, templated=False),
    Case("--network user -p 8080:80 -p 0.0.0.0:5353:53/udp",
         lambda tmp: {"network": "user",
                      "publish": (PortMapping(8080, 80), PortMapping(5353, 53, "udp", "0.0.0.0"))},
         lambda d, tmp: {"network": "user", "own_netns": True,
                         "port_forwards": (PortForward(8080, 80, "tcp", "127.0.0.1"),
                                           PortForward(5353, 53, "udp", "0.0.0.0"))},
         _user_network, templated=False),
    Case("--hostname web", lambda tmp: {"hostname": "web"}, NONE, _hostname_web),
    Case("--entrypoint /bin/echo", lambda tmp: {"entrypoint": ("/bin/echo",)}, NONE,
         lambda d, tmp: {"process.args": ["/bin/echo"]}),
    Case("--entrypoint /bin/echo hi", lambda tmp: {"entrypoint": ("/bin/echo",),
                                                   "command": ("hi",)}, NONE,
         lambda d, tmp: {"process.args": ["/bin/echo", "hi"]}),
    # stdin is the monitor's to hold, not the guest's to know of
    Case("-i", lambda tmp: {"interactive": True}, NONE, NONE),
    Case("-t", lambda tmp: {"tty": True}, NONE,
         lambda d, tmp: {"process.terminal": True, "process.rows": 24, "process.cols": 80,
                         "process.env": [*ENV[:2], "TERM=xterm", "HOME=/root"]}),
    # not a `run` flag of its own: the operator's label for a persistent writable layer
    Case("--label io.bareboat.vm.disk=64m", lambda tmp: {"labels": {"io.bareboat.vm.disk": "64m"}},
         lambda d, tmp: {"disks": (*d.config.disks, Disk(DISK, serial="bb-upper"))},
         lambda d, tmp: {"upper": "/dev/vdb"}, templated=False),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=str)
def test_each_run_option_reaches_the_vm(
    roots: Roots, tmp_path: Path, default: Planned, case: Case
) -> None:
    if "--cpus 1.5" in case.flags and _host_cpus() < 2:
        pytest.skip("a 2-vCPU VM needs 2 CPUs here")
    files = tmp_path / "files"
    (files / "dir").mkdir(parents=True)
    (files / "app.conf").write_text("x=1\n")
    options = RunOptions(isolation=Isolation.MICROVM, **case.options(files))
    got = planned(roots, tmp_path / "vm", options)
    assert changes(default.config, got.config) == case.config(default, files)
    assert changes(default.start, got.start) == case.start(default, files)
    assert got.vmm_cpu_limit == case.cpu_limit
    inputs = vmplan.template_inputs(got.plan)
    assert (inputs is not None) == case.templated
    if inputs is not None:
        # A clone of its template runs this very config, whatever the option changed.
        clone = template.vm_config(inputs, ram=KERNEL, files=got.vmdir, clone=True)
        plain = dataclasses.replace(clone, ram_file=None, ram_shared=False, incoming=False)
        assert plain == got.config


def test_every_run_option_of_the_readme_has_a_row() -> None:
    """The README's `run` usage line, against the table: a new flag needs its row."""
    import re

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    usage = readme[readme.index("`bareboat run [") : readme.index("IMAGE [CMD...]`")]
    flags = set(re.findall(r"\[(-{1,2}[a-z-]+)", usage))
    not_for_a_vm = {"--isolation", "-d", "--rm", "--name", "--log-opt"}
    covered = {w for c in CASES for w in c.flags.split() if w.startswith("-")}
    assert flags - not_for_a_vm - covered == set()


def test_start_carries_the_host_files_as_read(roots: Roots, tmp_path: Path) -> None:
    """START copies what the backend read of each small host file, not what it finds later."""
    p = planned(roots, tmp_path, RunOptions(isolation=Isolation.MICROVM))
    contents = {f: f"read {f.path}\n".encode() for f in p.plan.spec.files}
    start = vmplan.start_spec(p.plan, contents=contents, time_ns=1, entropy=b"")
    assert [(f.path, f.data) for f in start.files] == [
        (f.path, f"read {f.path}\n".encode()) for f in p.plan.spec.files
    ]


def test_a_share_is_what_the_backend_found_it_to_be(roots: Roots, tmp_path: Path) -> None:
    """QEMU's share and the guest's mount agree on a file share: both read the plan, which the
    backend filled by looking once (a source that turns into a directory later changes
    neither)."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "one").write_text("1")
    options = RunOptions(isolation=Isolation.MICROVM, mounts=(parse_volume(f"{files}/one:/one"),))
    p = planned(roots, tmp_path / "vm", options)
    assert p.plan.file_shares == frozenset({f"{files}/one"})
    (files / "one").unlink()
    (files / "one").mkdir()
    [share] = vmplan.vm_config(p.plan, p.vmdir).shares
    [mount] = vmplan.guest_mounts(p.plan)
    assert share.file == files / "one" and mount.file
