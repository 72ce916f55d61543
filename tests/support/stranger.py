"""A real unprivileged local user, made for one test and removed after it, and a probe that
tries, as that user, to reach files: the oracle for "another uid gains nothing from ours"."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Run by /usr/bin/python3 as the stranger: reads [path, kind] pairs on stdin and prints, for
# each path, what it managed to do with it. A symlink is only looked at, never followed (an
# image's absolute link names a host file the stranger may read anyway).
PROBE = r"""
import json, os, socket, subprocess, sys
out = {}
for path, kind in json.load(sys.stdin):
    done = []
    try:
        os.lstat(path)
        done.append("stat")
    except OSError:
        pass
    if kind == "dir":
        try:
            os.listdir(path)
            done.append("list")
        except OSError:
            pass
    elif kind == "sock":
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            done.append("connect")
        except OSError:
            pass
        finally:
            s.close()
    elif kind != "link":
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW))
            done.append("open")
        except OSError:
            pass
        if kind == "exec":
            try:
                subprocess.run([path], stdin=subprocess.DEVNULL, capture_output=True, timeout=5)
                done.append("exec")
            except (OSError, subprocess.SubprocessError):
                pass
    out[path] = done
json.dump(out, sys.stdout)
"""


@dataclass(frozen=True)
class Stranger:
    name: str
    uid: int
    gid: int

    def argv(self, *args: str) -> list[str]:
        return [
            "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", *args,
        ]  # fmt: skip

    def probe(self, paths: Iterable[Path]) -> dict[str, list[str]]:
        """What this user could do with each path (stat, list, open, exec, connect)."""
        pairs = [[str(p), _kind(p)] for p in paths]
        proc = subprocess.run(
            self.argv("/usr/bin/python3", "-I", "-c", PROBE),
            input=json.dumps(pairs),
            capture_output=True,
            text=True,
            timeout=300,
            cwd="/",
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        assert proc.returncode == 0, proc.stderr
        result: dict[str, list[str]] = json.loads(proc.stdout)
        return result


def _kind(p: Path) -> str:
    st = p.lstat()
    if stat.S_ISLNK(st.st_mode):
        return "link"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISSOCK(st.st_mode):
        return "sock"
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
        return "exec"
    return "file"  # regular, device node, FIFO


def _retry(argv: list[str]) -> None:
    """useradd/userdel, waiting while another process holds the passwd lock."""
    for _ in range(50):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            return
        if "lock" not in proc.stderr:
            raise AssertionError(f"{' '.join(argv)}: {proc.stderr.strip()}")
        time.sleep(0.2)
    raise AssertionError(f"{' '.join(argv)}: the passwd lock stayed taken")


@contextlib.contextmanager
def stranger() -> Iterator[Stranger]:
    """A fresh system user with a group of its own, no home and no shell; gone afterwards."""
    import grp
    import pwd

    name = f"bbt-{secrets.token_hex(4)}"
    _retry(["useradd", "--system", "--no-create-home", "--user-group",
            "--shell", "/usr/sbin/nologin", name])  # fmt: skip
    try:
        pw = pwd.getpwnam(name)
        yield Stranger(name, pw.pw_uid, pw.pw_gid)
    finally:
        _retry(["userdel", name])
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            _retry(["groupdel", name])


def walk(top: Path, limit: int = 50_000) -> list[Path]:
    """`top` and everything under it, not descending into kernel filesystems mounted there
    (an overlay rootfs is walked: it is a container's tree)."""
    skip = set()
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] != "overlay":
                skip.add(fields[1].encode().decode("unicode_escape"))
    found = [top]
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        found += [Path(dirpath, n) for n in (*dirnames, *filenames)]
        assert len(found) < limit, f"more than {limit} paths under {top}"
    return found
