"""The VMM jail as data (the plan, the ids, the command line) and executed on a plain program
instead of QEMU: what the confined process is, sees and can do. Booting jailed VMs is in
test_jail_vm.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bareboat.backends.microvm import jail, jailer, vmmhost
from bareboat.backends.microvm.qemu import (
    SANDBOX,
    Disk,
    LaunchFds,
    SerialPort,
    Share,
    VMConfig,
    build_argv,
)
from bareboat.errors import BackendError, UsageError

QEMU = Path("/usr/bin/qemu-system-x86_64")


@pytest.fixture
def leases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lease directory of this test's own (the ids are still the real range)."""
    d = tmp_path / "leases"
    monkeypatch.setenv(vmmhost.ENV_LEASES, str(d))
    return d


def _files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("vmlinux", "initrd", "lower.erofs", "upper.ext4", "ram"):
        p = tmp_path / name
        p.write_bytes(name.encode())
        out[name] = p
    (tmp_path / "vol").mkdir(exist_ok=True)
    (tmp_path / "one.conf").write_text("x")
    return out


def _cfg(tmp_path: Path, **kw: object) -> VMConfig:
    f = _files(tmp_path)
    base: dict[str, object] = {
        "kernel": f["vmlinux"],
        "initrd": f["initrd"],
        "qmp_socket": tmp_path / "qmp.sock",
        "disks": (Disk(f["lower.erofs"], readonly=True, serial="bb-lower"),),
        "serial_ports": (SerialPort("bareboat.agent", tmp_path / "agent.sock"),),
        "console_log": tmp_path / "console.log",
    }
    base.update(kw)
    return VMConfig(**base)  # type: ignore[arg-type]


# --- the plan ----------------------------------------------------------------------------------


def test_plan_binds_only_what_the_vm_opens(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        disks=(
            Disk(tmp_path / "lower.erofs", readonly=True, serial="bb-lower"),
            Disk(tmp_path / "upper.ext4", serial="bb-upper"),
        ),
        shares=(
            Share(tmp_path / "vol", "bb0"),
            Share(tmp_path / "staging", "bb1", readonly=True, file=tmp_path / "one.conf"),
        ),
    )
    os.chmod(tmp_path / "initrd", 0o600)  # as the init cache keeps it
    plan, jailed = jail.plan_jail(cfg, 1_600_000_001, 1_600_000_001, qemu=QEMU)
    by_target = {b.target: b for b in plan.binds}
    assert by_target["/usr"] == jail.Bind(Path("/usr"), "/usr", directory=True)
    assert by_target["/vm/kernel"].source == tmp_path / "vmlinux"
    assert not by_target["/vm/kernel"].writable
    # a file others may not read is bound idmapped (its owner appears as the VM's uid)
    assert by_target["/vm/initrd"].idmap == (0, 0) and not by_target["/vm/initrd"].writable
    assert not by_target["/vm/disk0"].writable and by_target["/vm/disk1"].writable
    vol = jail.Bind(tmp_path / "vol", "/vm/share/bb0", True, True, (0, 0))
    assert by_target["/vm/share/bb0"] == vol
    # a single-file share: the file alone, in the jail's own (read-only) directory
    assert by_target["/vm/share/bb1/file"] == jail.Bind(
        tmp_path / "one.conf", "/vm/share/bb1/file", False, False, (0, 0)
    )
    assert not any("staging" in str(b.source) for b in plan.binds)
    # nothing of the host beyond /usr and these files
    assert {t for t in by_target if not t.startswith("/vm/")} <= {
        "/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"
    }  # fmt: skip
    # the config QEMU gets names the jail's paths
    assert jailed.kernel == Path("/vm/kernel") and jailed.initrd == Path("/vm/initrd")
    assert [d.path for d in jailed.disks] == [Path("/vm/disk0"), Path("/vm/disk1")]
    assert [d.readonly for d in jailed.disks] == [True, False]
    assert [s.path for s in jailed.shares] == [Path("/vm/share/bb0"), Path("/vm/share/bb1")]
    assert jailed.shares[1].file is None
    assert plan.uid == plan.gid == 1_600_000_001
    assert plan.nodes == (jail.DEV_NULL,)
    assert plan.new_network  # no NIC: an empty network namespace


def test_plan_for_kvm_user_network_and_a_template(tmp_path: Path) -> None:
    if not Path("/dev/kvm").exists():
        pytest.skip("no /dev/kvm on this host")
    cfg = _cfg(
        tmp_path, accel="kvm", network="user", ram_file=tmp_path / "ram", incoming=True, vcpus=2
    )
    plan, jailed = jail.plan_jail(cfg, 1_600_000_002, 1_600_000_002, qemu=QEMU)
    st = os.stat("/dev/kvm")
    assert jail.Node("/dev/kvm", os.major(st.st_rdev), os.minor(st.st_rdev)) in plan.nodes
    assert not plan.new_network  # slirp lives in QEMU: it keeps the network it was given
    ram = next(b for b in plan.binds if b.target == "/vm/ram")
    assert ram.writable and ram.source == tmp_path / "ram"
    assert jailed.ram_file == Path("/vm/ram")
    assert plan.limits == jail.Limits(
        memory_bytes=(128 << 20) + jail.OVERHEAD_BYTES, pids=jail.PIDS_BASE + 2
    )


def test_memory_limit_counts_tcgs_code_cache(tmp_path: Path) -> None:
    assert jail.memory_limit(_cfg(tmp_path, memory_mib=256)) == (
        (256 << 20) + jail.TCG_DEFAULT_TB_BYTES + jail.OVERHEAD_BYTES
    )
    small = _cfg(tmp_path, memory_mib=256, tb_size_mib=32)
    assert jail.memory_limit(small) == (256 << 20) + (32 << 20) + jail.OVERHEAD_BYTES


def test_a_missing_input_is_one_clear_error(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    (tmp_path / "vmlinux").unlink()
    with pytest.raises(BackendError, match=r"vmlinux.*No such file"):
        jail.plan_jail(cfg, 1_600_000_003, 1_600_000_003, qemu=QEMU)


def test_check_plan_refuses_root_and_nested_binds() -> None:
    with pytest.raises(BackendError, match="never runs as root"):
        jail.check_plan(jail.JailPlan(uid=0, gid=0))
    nested = jail.JailPlan(
        uid=5, gid=5, binds=(jail.Bind(Path("/usr"), "/usr"), jail.Bind(Path("/x"), "/usr/x"))
    )
    with pytest.raises(BackendError, match="inside"):
        jail.check_plan(nested)
    with pytest.raises(BackendError, match="clean absolute"):
        jail.check_plan(jail.JailPlan(uid=5, gid=5, binds=(jail.Bind(Path("/x"), "/vm/../etc"),)))


def test_jailed_command_line_uses_descriptors_and_the_sandbox(tmp_path: Path) -> None:
    _, jailed = jail.plan_jail(_cfg(tmp_path), 1_600_000_004, 1_600_000_004, qemu=QEMU)
    fds = LaunchFds(qmp=7, serial=(8,), console=9)
    argv = build_argv(jailed, qemu=str(QEMU), fds=fds, sandbox=True)
    line = " ".join(argv)
    assert (
        argv[argv.index("-sandbox") + 1]
        == SANDBOX
        == ("on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")
    )
    assert "socket,id=qmp,fd=7,server=off" in argv and "chardev=qmp,mode=control" in argv
    assert "socket,id=port0,fd=8,server=on,wait=off" in argv
    assert "fd=9,set=1" in argv and "file,id=console,path=/dev/fdset/1,append=on" in argv
    # no host path of the VM's reaches QEMU's command line; no runas/chroot (QEMU 7.2's
    # -runas with elevateprivileges=deny kills it: the ids are dropped before exec)
    assert str(tmp_path) not in line
    assert "-runas" not in argv and "-chroot" not in argv
    assert "rng-builtin,id=rng0" in argv  # no /dev/urandom to open


def test_id_range_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(vmmhost.ENV_IDS, raising=False)
    assert vmmhost.ids_from_env() == range(0x6000_0000, 0x6000_0000 + 65536)
    monkeypatch.setenv(vmmhost.ENV_IDS, "0x70000000:16")
    assert vmmhost.ids_from_env() == range(0x7000_0000, 0x7000_0000 + 16)
    for bad in ("nope", "0:10", "4294967290:100"):
        monkeypatch.setenv(vmmhost.ENV_IDS, bad)
        with pytest.raises(UsageError, match=vmmhost.ENV_IDS):
            vmmhost.ids_from_env()


# --- leases ------------------------------------------------------------------------------------


def test_leases_are_distinct_and_freed(leases: Path) -> None:
    ids = range(1_700_000_000, 1_700_000_003)
    a, b, c = (vmmhost.lease_id(ids) for _ in range(3))
    assert len({a.uid, b.uid, c.uid}) == 3
    with pytest.raises(BackendError, match="in use"):
        vmmhost.lease_id(ids)
    assert stat.S_IMODE(leases.stat().st_mode) == 0o700
    b.release()
    d = vmmhost.lease_id(ids)
    assert d.uid == b.uid
    for lease in (a, c, d):
        lease.release()
    assert list(leases.iterdir()) == []


def test_a_dead_holders_lease_is_free_and_its_cgroups_reclaimed(
    leases: Path, tmp_path: Path
) -> None:
    ids = range(1_700_000_100, 1_700_000_101)
    left = tmp_path / f"{vmmhost.CGROUP_PREFIX}1700000100"
    left.mkdir()
    pid = os.fork()
    if pid == 0:  # a holder that dies without releasing
        lease = vmmhost.lease_id(ids)
        lease.note(cgroups=[str(left)])
        os._exit(0)
    os.waitpid(pid, 0)
    assert (leases / "1700000100").exists()
    lease = vmmhost.lease_id(ids)
    assert lease.uid == 1_700_000_100 and not left.exists()
    lease.release()


# --- a plan executed (a shell instead of QEMU) -------------------------------------------------


@pytest.fixture
def confined(leases: Path, tmp_path: Path) -> Iterator[tuple[vmmhost.Lease, Path]]:
    lease = vmmhost.lease_id(range(1_700_000_200, 1_700_000_264))
    yield lease, tmp_path
    lease.release()


def _run_jailed(plan: jail.JailPlan, script: str, cgroups: vmmhost.VmmCgroups | None = None) -> str:
    with jailer.Jailer(plan, jail_base=vmmhost.leases_dir()) as j:
        hook = j.preexec()
        with jailer.new_pid_namespace_for_next_child():
            p = subprocess.Popen(
                ["/usr/bin/sh", "-c", script],
                preexec_fn=hook,
                env=plan.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE,
            )
        if cgroups is not None:
            cgroups.attach(p.pid)
        out, _ = p.communicate(b"go\n", timeout=30)
    return out.decode()


def _status(out: str) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)


def test_the_jailed_process_has_no_privilege_and_sees_only_its_files(
    confined: tuple[vmmhost.Lease, Path],
) -> None:
    lease, tmp = confined
    cfg = _cfg(tmp, shares=(Share(tmp / "vol", "bb0"),))
    (tmp / "vol" / "host.txt").write_text("from the host\n")
    plan, _ = jail.plan_jail(cfg, lease.uid, lease.gid, qemu=QEMU)
    out = _run_jailed(
        plan,
        "cat /proc/self/status; echo ROOT $(ls -A / | tr '\\n' ' ');"
        "echo VM $(ls -A /vm | tr '\\n' ' ');"
        "echo PROC $(ls /proc | tr '\\n' ' '); echo HOST $(hostname);"
        "cat /vm/share/bb0/host.txt; echo guest > /vm/share/bb0/made.txt && echo WROTE;"
        "ls /etc/shadow 2>&1; touch /newfile 2>&1; cat /vm/disk0; echo; echo x >> /vm/disk0 2>&1;"
        "ls -ln /dev/null",
    )
    st = _status(out)
    assert st["Uid"].split() == [str(lease.uid)] * 4 and st["Gid"].split() == [str(lease.gid)] * 4
    assert st["Groups"].strip() == ""
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert st[field] == "0000000000000000", (field, st[field])
    assert st["NoNewPrivs"] == "1"
    lines = out.splitlines()
    [root] = [ln.split()[1:] for ln in lines if ln.startswith("ROOT ")]
    assert set(root) <= {
        "bin",
        "dev",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "proc",
        "sbin",
        "usr",
        "vm",
    }
    assert "VM disk0 initrd kernel share" in lines, out
    # its own PID namespace: it is PID 1 (its shell's children aside, it sees nothing)
    [procs] = [ln.split()[1:] for ln in lines if ln.startswith("PROC ")]
    assert procs[0] == "1" and all(int(x) < 100 for x in procs if x.isdigit()), out
    assert "HOST bareboat-vmm" in lines
    assert "from the host" in lines and "WROTE" in lines
    assert "No such file or directory" in out.split("WROTE", 1)[1]  # /etc/shadow
    assert "'/newfile': Read-only file system" in out  # the jail's root
    assert "cannot create /vm/disk0" in out  # the shared read-only disk
    assert "lower.erofs" in out  # the disk it was given
    # what it wrote in the volume belongs to the volume's owner on the host, not to its uid
    made = tmp / "vol" / "made.txt"
    assert made.read_text() == "guest\n" and (made.stat().st_uid, made.stat().st_gid) == (0, 0)
    assert (tmp / "lower.erofs").read_text() == "lower.erofs"  # unchanged
    # the jail's mounts never reach the host's mount table
    assert "bareboat-vmm" not in Path("/proc/self/mountinfo").read_text()


def test_cgroups_bound_memory_and_tasks(confined: tuple[vmmhost.Lease, Path]) -> None:
    lease, tmp = confined
    plan, _ = jail.plan_jail(
        _cfg(tmp, memory_mib=64, tb_size_mib=16), lease.uid, lease.gid, qemu=QEMU
    )
    assert plan.limits is not None
    cg = vmmhost.VmmCgroups.create(lease.uid, plan.limits)
    if not cg.dirs:
        pytest.skip("this host's cgroups let no VMM cgroup be made here")
    try:
        out = _run_jailed(plan, "read go; cat /proc/self/cgroup", cgroups=cg)
        for d in cg.dirs:
            assert d.name == f"{vmmhost.CGROUP_PREFIX}{lease.uid}"
            assert any(ln.endswith("/" + d.name) for ln in out.splitlines()), out
        memory = next((d for d in cg.dirs if (d / "memory.limit_in_bytes").exists()), None)
        if memory is not None:
            assert int((memory / "memory.limit_in_bytes").read_text()) == plan.limits.memory_bytes
        pids = next((d for d in cg.dirs if (d / "pids.max").exists()), None)
        if pids is not None:
            assert (pids / "pids.max").read_text().strip() == str(plan.limits.pids)
    finally:
        cg.remove()
    assert not any(d.exists() for d in cg.dirs)


def test_a_failing_step_is_one_line_and_exit_127(confined: tuple[vmmhost.Lease, Path]) -> None:
    lease, tmp = confined
    plan, _ = jail.plan_jail(_cfg(tmp), lease.uid, lease.gid, qemu=QEMU)
    (tmp / "vmlinux").unlink()  # gone between plan and start
    with jailer.Jailer(plan, jail_base=vmmhost.leases_dir()) as j:
        hook = j.preexec()
        with jailer.new_pid_namespace_for_next_child():
            p = subprocess.Popen(
                ["/usr/bin/true"], preexec_fn=hook, stderr=subprocess.PIPE, env=plan.env
            )
        _, err = p.communicate(timeout=30)
    assert p.returncode == 127
    assert err.decode().startswith("bareboat: jail: bind ") and err.count(b"\n") == 1


def test_lease_notes_what_it_made(leases: Path) -> None:
    lease = vmmhost.lease_id(range(1_700_000_300, 1_700_000_301))
    lease.note(cgroups=["/sys/fs/cgroup/memory/x"])
    assert json.loads(lease.path.read_text())["cgroups"] == ["/sys/fs/cgroup/memory/x"]
    lease.release()
