"""`bareboat run` with real OCI runtimes: exit codes, streams, options, limits, cleanup."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bareboat.paths import Roots
from tests.cli.conftest import Run, bareboat_argv, leftovers, read_pty


@pytest.mark.parametrize("runtime", ["crun", "runc"])
def test_exit_code_and_separate_streams(
    bb: Run, image: str, runtime: str, monkeypatch: pytest.MonkeyPatch, roots: Roots
) -> None:
    monkeypatch.setenv("BAREBOAT_OCI_RUNTIME", runtime)
    r = bb("run", "--rm", image, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert leftovers(roots) == []


def test_process_isolation(bb: Run, image: str, roots: Roots) -> None:
    r = bb("run", "--rm", "--isolation", "process", image, "sh", "-c", "echo hi; exit 5")
    assert (r.returncode, r.stdout) == (5, "hi\n")
    assert leftovers(roots) == []


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["true"], 0),
        (["nosuchcommand"], 127),
        (["/etc/passwd"], 126),
        (["--memory", "lots", "{image}", "true"], 125),
        (["--isolation", "nosuch", "{image}", "true"], 125),
    ],
)
def test_docker_exit_codes(bb: Run, image: str, roots: Roots, argv: list[str], code: int) -> None:
    args = [a.replace("{image}", image) for a in argv] if "{image}" in argv else [image, *argv]
    r = bb("run", "--rm", *args)
    assert r.returncode == code, r.stderr
    if code:
        assert r.stderr.count("\n") == 1  # one clear line
    assert leftovers(roots) == []


def test_memory_limit_is_enforced(bb: Run, image: str, roots: Roots) -> None:
    # dd touches a 64 MiB buffer: over a 32 MiB limit (no swap on top) it is OOM-killed
    r = bb(
        "run",
        "--rm",
        "--memory",
        "32m",
        image,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=64M",
        "count=1",
    )
    assert r.returncode == 137, r.stderr
    ok = bb(
        "run",
        "--rm",
        "--memory",
        "32m",
        image,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=1M",
        "count=1",
    )
    assert ok.returncode == 0
    assert leftovers(roots) == []


def test_pids_limit_is_enforced(bb: Run, image: str) -> None:
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 2 & done; wait"
    r = bb("run", "--rm", "--pids-limit", "5", image, "sh", "-c", script)
    assert "can't fork" in r.stderr or "Resource temporarily unavailable" in r.stderr, r.stderr
    free = bb("run", "--rm", image, "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do true & done; wait")
    assert free.returncode == 0 and free.stderr == ""


def test_user_env_workdir(bb: Run, image: str) -> None:
    r = bb(
        "run",
        "--rm",
        "-u",
        "app",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        image,
        "sh",
        "-c",
        "id -u; id -g; echo $FOO; pwd",
    )
    assert r.stdout.split() == ["1000", "1000", "bar", "/tmp"], r.stderr
    r = bb("run", "--rm", "-u", "1234:50", image, "sh", "-c", "id -u; id -g")
    assert r.stdout.split() == ["1234", "50"]


def test_volumes_and_read_only_rootfs(bb: Run, image: str, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "f").write_text("data")
    r = bb(
        "run",
        "--rm",
        "--read-only",
        "-v",
        f"{rw}:/rw",
        "-v",
        f"{ro}:/ro:ro",
        "--tmpfs",
        "/scratch",
        image,
        "sh",
        "-c",
        "echo hi > /rw/out && cat /ro/f && echo x > /scratch/y && "
        "! touch /ro/g 2>/dev/null && ! touch /nope 2>/dev/null && echo ok",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "dataok\n"
    assert (rw / "out").read_text() == "hi\n"
    assert not (ro / "g").exists()


def test_writes_go_to_the_containers_own_layer(bb: Run, image: str, roots: Roots) -> None:
    r = bb("run", "--rm", image, "sh", "-c", "echo changed > /etc/passwd && rm /bin/ls")
    assert r.returncode == 0, r.stderr
    again = bb("run", "--rm", image, "sh", "-c", "head -1 /etc/passwd; ls / >/dev/null && echo ls")
    assert again.stdout == "root:x:0:0:root:/root:/bin/sh\nls\n"


def test_sigterm_reaches_the_workload(bb: Run, image: str, roots: Roots) -> None:
    proc = subprocess.Popen(
        bareboat_argv(
            "run",
            "--rm",
            image,
            "sh",
            "-c",
            "trap 'echo trapped; exit 7' TERM; echo ready; while :; do sleep 0.1; done",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (7, "trapped\n"), err
    assert leftovers(roots) == []


def test_stdin_is_passed_with_i(bb: Run, image: str) -> None:
    r = bb("run", "--rm", "-i", image, "sh", "-c", "tr a-z A-Z", input="hello\n")
    assert (r.returncode, r.stdout) == (0, "HELLO\n")
    r = bb("run", "--rm", image, "cat", input="ignored\n")  # no -i: stdin is empty
    assert (r.returncode, r.stdout) == (0, "")


def test_tty(bb: Run, image: str, roots: Roots) -> None:
    import fcntl
    import pty
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        os.execv(
            bareboat_argv()[0],
            bareboat_argv("run", "--rm", "-it", image, "sh", "-c", "tty; stty size"),
        )
    code, out = read_pty(pid, fd)
    text = out.decode(errors="replace")
    assert code == 0, text
    assert "/dev/pts/" in text and "33 101" in text


def test_ctrl_c_before_attach_leaves_nothing(bb: Run, image: str, roots: Roots) -> None:
    """SIGINT at any moment of a foreground run: nothing stays behind (--rm)."""
    for delay in (0.05, 0.15, 0.3):
        proc = subprocess.Popen(
            bareboat_argv("run", "--rm", image, "sleep", "5"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while leftovers(roots) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leftovers(roots) == []


def test_interactive_tty_input(bb: Run, image: str) -> None:
    import pty

    script = "echo ready; read x; echo got-$x; exit 5"
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(bareboat_argv()[0], bareboat_argv("run", "--rm", "-it", image, "sh", "-c", script))
    # typed once the workload listens, as a user would
    code, out = read_pty(pid, fd, answer=(b"ready", b"hello\n"))
    assert code == 5, out
    assert b"got-hello" in out


@pytest.mark.parametrize("isolation", ["container", "process"])
def test_container_gets_its_own_etc_files(bb: Run, image: str, isolation: str) -> None:
    r = bb(
        "run", "--rm", "--isolation", isolation, "--hostname", "boaty", image,
        "sh", "-c", "cat /etc/hostname; grep -c boaty /etc/hosts; test -s /etc/resolv.conf",
    )  # fmt: skip
    assert (r.returncode, r.stdout.split()) == (0, ["boaty", "1"]), r.stderr


def test_missing_bind_source_is_created(bb: Run, image: str, tmp_path: Path) -> None:
    src = tmp_path / "new" / "dir"
    r = bb("run", "--rm", "-v", f"{src}:/data", image, "sh", "-c", "echo hi > /data/f")
    assert r.returncode == 0, r.stderr
    assert (src / "f").read_text() == "hi\n"


@pytest.mark.parametrize("isolation", ["container", "process"])
def test_user_network_needs_a_vm(bb: Run, image: str, roots: Roots, isolation: str) -> None:
    """--network user gave a container only loopback and a resolver that was not there."""
    r = bb("run", "--rm", "--isolation", isolation, "--network", "user", image, "true")
    assert r.returncode == 125
    assert r.stderr.strip() == (
        f"bareboat: error: --network user is not possible with --isolation {isolation} "
        "(user-mode networking is for microvm; use none or host)"
    )
    assert leftovers(roots) == []


@pytest.mark.parametrize("isolation", ["container", "process"])
def test_mount_options_reach_the_kernel(
    bb: Run, image: str, tmp_path: Path, isolation: str
) -> None:
    """--tmpfs and -v options hold under every isolation that mounts them itself: a read-only
    tmpfs cannot be written, and docker's nosuid, nodev and noexec stay on a tmpfs (process
    isolation once mounted every tmpfs plain rw)."""
    volume = tmp_path / "v"
    volume.mkdir()
    r = bb(
        "run", "--rm", "--isolation", isolation, "--tmpfs", "/ro:ro", "--tmpfs", "/scratch",
        "-v", f"{volume}:/v:ro", image, "sh", "-c",
        "! touch /ro/x 2>/dev/null && ! touch /v/x 2>/dev/null && touch /scratch/x && "
        "grep -E ' /(ro|scratch|v) ' /proc/mounts",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    options = {line.split()[1]: set(line.split()[3].split(",")) for line in r.stdout.splitlines()}
    assert {"ro", "nosuid", "nodev", "noexec"} <= options["/ro"]
    assert {"rw", "nosuid", "nodev", "noexec"} <= options["/scratch"]
    assert "ro" in options["/v"]
