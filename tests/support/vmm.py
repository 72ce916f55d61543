"""What a test sees of a VM's QEMU process from the host: which QEMUs run, and whether one is
confined as the jailer promises (jail.py)."""

from __future__ import annotations

import os
from pathlib import Path


def qemu_pids(parent_has: str = "") -> set[int]:
    """The qemu-system processes on the host; with `parent_has`, those whose parent's command
    line or environment contains it (a runtime's root: its gates own its VMs' QEMUs)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if not (proc / "cmdline").read_bytes().startswith(b"/usr/bin/qemu-system"):
                    continue
                if parent_has:
                    ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
                    parent = Path(f"/proc/{ppid}")
                    seen = (parent / "cmdline").read_bytes() + (parent / "environ").read_bytes()
                    if parent_has.encode() not in seen:
                        continue
            except OSError:
                continue
            found.add(int(proc.name))
    return found


def status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def assert_confined(pid: int) -> int:
    """The QEMU `pid` runs jailed; its uid."""
    st = status(pid)
    uids, gids = st["Uid"].split(), st["Gid"].split()
    assert len(set(uids)) == 1 and uids[0] != "0", st["Uid"]
    assert len(set(gids)) == 1 and gids[0] != "0", st["Gid"]
    for field in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"):
        assert st[field] == "0000000000000000", (field, st[field])
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", (st["NoNewPrivs"], st["Seccomp"])
    argv = cmdline(pid)
    assert "-sandbox" in argv and "spawn=deny" in argv[argv.index("-sandbox") + 1]
    root = Path(f"/proc/{pid}/root")
    assert not (root / "etc").exists() and not (root / "root").exists()
    assert set(os.listdir(root)) <= set(
        ["bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "usr", "vm"]
    )
    # new PID, IPC, UTS and mount namespaces
    for ns in ("pid", "ipc", "uts", "mnt"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    assert f"bareboat-vmm-{uids[0]}" in cgroups, cgroups
    return int(uids[0])


def jail_files(pid: int) -> set[str]:
    """What the jail's /vm holds, as paths inside it."""
    root = Path(f"/proc/{pid}/root/vm")
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def vmm_leftovers(uids: list[int]) -> list[str]:
    """Leases and cgroups of these VMM ids still on the host."""
    from bareboat.backends.microvm.vmmhost import CGROUP_PREFIX, leases_dir

    found = [f"lease {uid}" for uid in uids if (leases_dir() / str(uid)).exists()]
    for uid in uids:
        for d in Path("/sys/fs/cgroup").rglob(f"{CGROUP_PREFIX}{uid}"):
            found.append(f"cgroup {d}")
    return found
