"""What docker puts in every container's spec, written down once.

From moby's `oci/defaults.go` and `oci/caps/defaults.go` (and `runc spec`), so a container
run by bareboat sees the same /proc, /dev, capabilities and limits as under docker.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs import time on every `run`; mypy treats this as true
if TYPE_CHECKING:
    from typing import Any

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ISOLATION_ANNOTATION = "io.bareboat.isolation"
NETWORK_ANNOTATION = "io.bareboat.network"  # none | host | user: backends read it
PUBLISH_ANNOTATION = "io.bareboat.publish"  # -p mappings, comma-separated: the microVM's hostfwd

# Docker's default capability set. Inheritable and ambient stay empty, as in moby since the
# fix for CVE-2022-24769: a non-root process must not gain capabilities through execve.
CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# Docker raises the open-files limit to the kernel's default fs.nr_open.
DEFAULT_NOFILE = 1048576
_CAP_SYS_RESOURCE = 24


def attainable_nofile() -> int:
    """DEFAULT_NOFILE, or our own hard limit where we may not raise it.

    Raising a hard limit needs CAP_SYS_RESOURCE; a root without it (a sandbox, a rootless
    setup) gets "operation not permitted" from the runtime for the whole container, so ask
    for no more than the runtime can set.
    """
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= DEFAULT_NOFILE:
        return DEFAULT_NOFILE
    try:
        with open("/proc/self/status", "rb") as f:
            caps = next(int(line.split()[1], 16) for line in f if line.startswith(b"CapEff:"))
    except (OSError, StopIteration, ValueError):
        return hard
    return DEFAULT_NOFILE if caps >> _CAP_SYS_RESOURCE & 1 else hard


def base_mounts() -> list[dict[str, Any]]:
    """The kernel filesystems every container gets (fresh lists: callers may change them)."""
    return [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["ro", "nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
    ]


MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


def device_rules() -> list[dict[str, Any]]:
    """Deny every device, then allow the few a process needs (docker's default list).

    runc and crun create /dev/null, zero, full, random, urandom, tty and ptmx themselves.
    """
    rules: list[dict[str, Any]] = [{"allow": False, "access": "rwm"}]
    for kind, major, minor in (
        ("c", 1, 3),  # null
        ("c", 1, 5),  # zero
        ("c", 1, 7),  # full
        ("c", 1, 8),  # random
        ("c", 1, 9),  # urandom
        ("c", 5, 0),  # tty
        ("c", 5, 2),  # ptmx
        ("c", 136, None),  # pts/*
    ):
        rule: dict[str, Any] = {"allow": True, "type": kind, "major": major, "access": "rwm"}
        if minor is not None:
            rule["minor"] = minor
        rules.append(rule)
    return rules


# Syscalls refused with EPERM: docker's default profile refuses these to a container with
# the default capabilities. Ours is a deny list on top of "allow", not docker's allow list
# of ~350 names: shorter to check, and a new harmless syscall is not refused by mistake.
# Most also need a capability the container does not have; the filter is the second wall.
SECCOMP_DENIED = (
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
)
_SECCOMP_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}
_EPERM = 1


def seccomp_profile(machine: str) -> dict[str, Any]:
    """The `linux.seccomp` object for a host of `machine` (platform.machine())."""
    profile: dict[str, Any] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": list(SECCOMP_DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": _EPERM}
        ],
    }
    if machine in _SECCOMP_ARCHES:
        profile["architectures"] = list(_SECCOMP_ARCHES[machine])
    return profile
