"""Executing a jail plan (jail.py) in QEMU's process, between fork and exec."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from bareboat.errors import BackendError

from .jail import JailPlan, check_plan

# --- executing a plan --------------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 0x1000, 0x4000, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SYS_PIVOT_ROOT, SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR, SYS_CAPSET = (
    155,
    428,
    429,
    442,
    126,
)  # x86-64
OPEN_TREE_CLONE, AT_RECURSIVE, AT_EMPTY_PATH, MOVE_MOUNT_F_EMPTY_PATH = 1, 0x8000, 0x1000, 4
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_IDMAP = 1, 2, 4, 0x100000
LINUX_CAPABILITY_VERSION_3 = 0x20080522


@contextlib.contextmanager
def new_pid_namespace_for_next_child() -> Iterator[None]:
    """While the block runs, this thread's children start in a new PID namespace (the first
    becomes its PID 1; when it exits, the namespace and anything left in it are gone). The
    thread itself stays where it is, and is put back for later children on the way out."""
    from bareboat.backends.base import libc

    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc().unshare(CLONE_NEWPID) != 0:
            import ctypes

            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWPID) for the VMM")
        try:
            yield
        finally:
            if libc().setns(own, CLONE_NEWPID) != 0:
                import ctypes

                raise OSError(ctypes.get_errno(), "setns back to our PID namespace")
    finally:
        os.close(own)


def idmap_userns(maps: set[tuple[int, int, int, int]]) -> dict[tuple[int, int, int, int], int]:
    """For each (on-disk uid, on-disk gid, vm uid, vm gid): a user namespace fd whose mapping
    makes the on-disk ids appear as the VM's through an idmapped mount."""
    out: dict[tuple[int, int, int, int], int] = {}
    try:
        for m in maps:
            out[m] = _userns(*m)
    except BaseException:
        for fd in out.values():
            os.close(fd)
        raise
    return out


def _userns(disk_uid: int, disk_gid: int, uid: int, gid: int) -> int:
    """A user namespace mapping (disk_uid, disk_gid) to (uid, gid): a child enters a new one
    and waits to be killed; we write its maps and keep a descriptor of its namespace. The
    child is killed, not told to exit by a pipe: other threads' forks may hold the pipe."""
    import time

    from bareboat.backends.base import libc

    unshare = libc().unshare
    own = os.readlink("/proc/self/ns/user")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only holds the namespace open
        if unshare(CLONE_NEWUSER) == 0:
            time.sleep(30)
        os._exit(0)
    try:
        deadline = time.monotonic() + 5.0
        while os.readlink(f"/proc/{pid}/ns/user") == own:
            if time.monotonic() > deadline:
                raise BackendError("a user namespace for an idmapped bind did not appear")
            time.sleep(0.0002)
        Path(f"/proc/{pid}/uid_map").write_text(f"{disk_uid} {uid} 1\n")
        Path(f"/proc/{pid}/gid_map").write_text(f"{disk_gid} {gid} 1\n")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


class Jailer:
    """Executes one `JailPlan` in QEMU's process (see the module's docstring for the order).

    Everything the child needs is prepared here, in the parent: the child between fork and exec
    only makes system calls on bytes it is handed, and on failure writes one line to its
    stderr (QEMU's log) and exits 127.
    """

    def __init__(
        self,
        plan: JailPlan,
        *,
        jail_base: Path,
        die_with_parent: bool = True,
    ) -> None:
        check_plan(plan)
        self.plan = plan
        self.jail_base = jail_base
        self.die_with_parent = die_with_parent
        self._userns: dict[tuple[int, int, int, int], int] = {}

    def __enter__(self) -> Jailer:
        maps = {
            (b.idmap[0], b.idmap[1], self.plan.uid, self.plan.gid)
            for b in self.plan.binds
            if b.idmap is not None
        }
        if maps:
            self._userns = idmap_userns(maps)
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._userns.values():
            os.close(fd)
        self._userns = {}

    def preexec(self) -> Callable[[], None]:
        import ctypes

        from bareboat.backends.base import libc

        c = libc()
        plan = self.plan
        enc = os.fsencode
        base = enc(self.jail_base)
        uid, gid = plan.uid, plan.gid
        steps_dirs: list[bytes] = []
        files: list[bytes] = []
        binds: list[tuple[bytes, bytes, bool, bool, int]] = []
        for b in plan.binds:
            target = base + enc(b.target)
            parent = os.path.dirname(b.target)
            steps_dirs += _parents(base, parent)
            if b.directory:
                steps_dirs.append(target)
            else:
                files.append(target)
            userns = self._userns[(b.idmap[0], b.idmap[1], uid, gid)] if b.idmap is not None else -1
            binds.append((enc(b.source), target, b.writable, b.directory, userns))
        links = [(enc(t), base + enc(p)) for p, t in plan.links]
        for p, _ in plan.links:
            steps_dirs += _parents(base, os.path.dirname(p))
        nodes = []
        for n in plan.nodes:
            steps_dirs += _parents(base, os.path.dirname(n.target))
            nodes.append((base + enc(n.target), os.makedev(n.major, n.minor), n.public))
        dirs = list(dict.fromkeys(steps_dirs))  # in order, once each
        flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
        new_network = plan.new_network
        if new_network:
            flags |= CLONE_NEWNET
        hostname = plan.hostname.encode()
        last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        die = self.die_with_parent

        class MountAttr(ctypes.Structure):
            _fields_ = [
                ("attr_set", ctypes.c_uint64),
                ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64),
            ]

        class CapHeader(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class CapData(ctypes.Structure):
            _fields_ = [
                ("effective", ctypes.c_uint32),
                ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32),
            ]

        cap_header = CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
        cap_data = (CapData * 2)()
        syscall = c.syscall

        def fail(what: bytes) -> None:
            err = ctypes.get_errno()
            os.write(2, b"bareboat: jail: " + what + b": " + os.strerror(err).encode() + b"\n")
            os._exit(127)

        def check(ret: int, what: bytes) -> None:
            if ret != 0:
                fail(what)

        def remount(target: bytes, extra: int) -> None:
            flags = MS_REMOUNT | MS_BIND | extra
            check(c.mount(None, target, None, flags, None), b"remount " + target)

        def idmapped(source: bytes, target: bytes, writable: bool, userns: int) -> bool:
            fd = syscall(SYS_OPEN_TREE, -100, source, OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE)
            if fd < 0:
                return False
            attr = MountAttr(
                MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
                | (0 if writable else MOUNT_ATTR_RDONLY),
                0, 0, userns,
            )  # fmt: skip
            ok: bool = syscall(
                SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH | AT_RECURSIVE,
                ctypes.byref(attr), ctypes.sizeof(attr),
            ) == 0 and syscall(
                SYS_MOVE_MOUNT, fd, b"", -100, target, MOVE_MOUNT_F_EMPTY_PATH
            ) == 0  # fmt: skip
            os.close(fd)
            return ok

        def hook() -> None:
            check(c.unshare(flags), b"unshare")
            if new_network:
                # QEMU's own, empty namespace: its slirp may bind ports below 1024 there (the
                # inner half of -p behind slirp4netns), as docker lets containers do.
                fd = os.open(b"/proc/sys/net/ipv4/ip_unprivileged_port_start", os.O_WRONLY)
                os.write(fd, b"0")
                os.close(fd)
            check(c.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), b"private mounts")
            tmpfs_options = b"mode=0755,size=1m,nr_inodes=256"
            check(c.mount(b"bareboat-vmm", base, b"tmpfs", MS_NOSUID, tmpfs_options), b"tmpfs")
            for d in dirs:
                if c.mkdir(d, 0o755) != 0 and ctypes.get_errno() != errno.EEXIST:
                    fail(b"mkdir " + d)
            for f in files:
                fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                os.close(fd)
            for source, target, writable, _directory, userns in binds:
                if userns >= 0 and idmapped(source, target, writable, userns):
                    continue
                # A plain bind: a volume on a filesystem without idmapped mounts keeps the
                # access its files give everyone else.
                check(c.mount(source, target, None, MS_BIND | MS_REC, None), b"bind " + source)
                extra = MS_NOSUID | MS_NODEV
                if not writable:
                    extra |= MS_RDONLY
                remount(target, extra)
            for target, dev, public in nodes:
                if public:
                    check(c.mknod(target, stat.S_IFCHR | 0o666, dev), b"mknod " + target)
                    check(c.chmod(target, 0o666), b"chmod " + target)  # past the umask
                else:
                    check(c.mknod(target, stat.S_IFCHR | 0o600, dev), b"mknod " + target)
                    check(c.chown(target, uid, gid), b"chown " + target)
            for link_target, path in links:
                os.symlink(link_target, path)
            # QEMU's 9p server reaches files through /proc/self/fd; this procfs (of the new
            # PID namespace, process directories only) shows QEMU itself and nothing else.
            check(c.mkdir(base + b"/proc", 0o555), b"mkdir /proc")
            check(
                c.mount(b"proc", base + b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                        b"subset=pid,hidepid=invisible"),
                b"mount /proc",
            )  # fmt: skip
            check(c.sethostname(hostname, len(hostname)), b"sethostname")
            os.chdir(base)
            check(syscall(SYS_PIVOT_ROOT, b".", b"."), b"pivot_root")
            check(c.umount2(b".", MNT_DETACH), b"detach the host's root")
            os.chdir("/")
            remount(b"/", MS_RDONLY | MS_NOSUID)
            for cap in range(last_cap + 1):
                check(c.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), b"drop from the bounding set")
            check(c.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), b"clear ambient")
            check(c.setgroups(0, None), b"setgroups")
            check(c.setresgid(gid, gid, gid), b"setresgid")
            check(c.setresuid(uid, uid, uid), b"setresuid")
            check(syscall(SYS_CAPSET, ctypes.byref(cap_header), cap_data), b"capset")
            check(c.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), b"no_new_privs")
            if die:
                # After the id change, which clears the parent-death signal.
                check(c.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0), b"pdeathsig")

        return hook


def _parents(base: bytes, parent: str) -> list[bytes]:
    out = []
    acc = ""
    for part in [p for p in parent.split("/") if p]:
        acc += "/" + part
        out.append(base + os.fsencode(acc))
    return out
