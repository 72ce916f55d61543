"""A private docker 20.10 daemon with bareboat-runtime in daemon.json `runtimes`, one entry per
isolation: run/exec/stop/rm, exit codes and output unchanged against runc, docker's prestart
hook, and nothing left behind."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .clients import DOCKER_RUNTIMES, Docker, docker, docker_archive, processes_under
from .conftest import TALKER, assert_same_as_reference


@pytest.fixture(scope="module")
def dk(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path) -> Iterator[Docker]:
    with docker(tmp_path_factory.mktemp("docker"), busybox_layout) as d:
        yield d


ISOLATIONS = ["container", "process", "microvm"]


def run_args(dk: Docker, isolation: str) -> list[str]:
    return ["--network", "none", "--runtime", DOCKER_RUNTIMES[isolation]]


def record(dk: Docker, cid: str) -> Path:
    return dk.runtime_root / "bareboat" / f"{cid}.rec"


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_run_exit_code_and_streams_unchanged(dk: Docker, isolation: str) -> None:
    script = TALKER
    ours = dk("run", "--rm", *run_args(dk, isolation), dk.image, "sh", "-c", script,
              check=False)  # fmt: skip
    ref = dk("run", "--rm", "--network", "none", "--runtime", "runc", dk.image,
             "sh", "-c", script, check=False)  # fmt: skip
    assert_same_as_reference(ours, ref)


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_run_missing_command_is_127(dk: Docker, isolation: str) -> None:
    res = dk("run", "--rm", *run_args(dk, isolation), dk.image, "/nonexistent", check=False)
    assert res.returncode == 127, res.stderr


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_run_tty(dk: Docker, isolation: str) -> None:
    res = dk("run", "--rm", "-t", *run_args(dk, isolation), dk.image, "sh", "-c", "tty; exit 4",
             check=False)  # fmt: skip
    assert res.returncode == 4
    assert res.stdout.startswith("/dev/pts/")


def prestart_hook_ran(dk: Docker, cid: str) -> bool:
    """docker's prestart hook (`libnetwork-setkey`) bind-mounts the container's network
    namespace onto the sandbox key: the key then is that namespace."""
    key, pid = dk("inspect", "--format", "{{.NetworkSettings.SandboxKey}} {{.State.Pid}}",
                  cid).stdout.split()  # fmt: skip
    try:
        ns = os.stat(f"/proc/{pid}/ns/net").st_ino
        # ...and never the host's: the hook moves the container's interface into it.
        return os.stat(key).st_ino == ns and ns != os.stat("/proc/self/ns/net").st_ino
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_detached_exec_hook_stop_rm(dk: Docker, isolation: str) -> None:
    cid = dk("run", "-d", *run_args(dk, isolation), dk.image, "sleep", "100").stdout.strip()
    try:
        assert record(dk, cid).read_text().splitlines()[0] == isolation
        assert prestart_hook_ran(dk, cid)
        res = dk("exec", cid, "sh", "-c", "echo exec-ok; echo exec-err >&2; exit 3", check=False)
        assert (res.returncode, res.stdout, res.stderr) == (3, "exec-ok\n", "exec-err\n")
        res = dk("exec", "-t", cid, "sh", "-c", "tty", check=False)
        assert res.returncode == 0 and res.stdout.startswith("/dev/pts/")
        dk("exec", "-d", cid, "sleep", "30")
        dk("stop", "--time", "1", cid)
        state = json.loads(dk("inspect", cid).stdout)[0]["State"]
        assert state["Status"] == "exited"
        # In a PID namespace sleep is PID 1 and ignores TERM, so docker KILLs it.
        assert state["ExitCode"] == (137 if isolation == "container" else 143)
        dk("rm", cid)
    finally:
        dk("rm", "--force", cid, check=False)
    assert cid not in dk("ps", "--all", "--quiet", "--no-trunc").stdout
    assert not record(dk, cid).exists()


@pytest.mark.parametrize("isolation", ISOLATIONS)
def test_rm_force_running(dk: Docker, isolation: str) -> None:
    cid = dk("run", "-d", *run_args(dk, isolation), dk.image, "sleep", "100").stdout.strip()
    pid = int(dk("inspect", "--format", "{{.State.Pid}}", cid).stdout)
    assert Path(f"/proc/{pid}").exists()
    dk("rm", "--force", cid)
    assert cid not in dk("ps", "--all", "--quiet", "--no-trunc").stdout
    assert not Path(f"/proc/{pid}").exists()
    assert not record(dk, cid).exists()


def test_plain_entry_is_container_isolation(dk: Docker) -> None:
    cid = dk("run", "-d", "--network", "none", "--runtime", "bareboat", dk.image,
             "sleep", "100").stdout.strip()  # fmt: skip
    try:
        assert record(dk, cid).read_text().splitlines()[0] == "container"
    finally:
        dk("rm", "--force", cid)


def test_nothing_left_behind(dk: Docker) -> None:
    # Runs last among the tests on the shared daemon: every container above was removed.
    dk("run", "--rm", "--network", "none", "--runtime", "bareboat", dk.image, "true")
    assert list((dk.runtime_root / "runc").iterdir()) == []
    assert list((dk.runtime_root / "bareboat").iterdir()) == []


@pytest.fixture(scope="module")
def wasm_image(dk: Docker, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A "compat" Wasm image (entrypoint /app/talk.wasm: says out/err, exits 7), loaded into
    the daemon as a docker-archive."""
    from tests.support.imagebuild import Entry, Image, write_image

    from .test_wasm_runtime import talker

    base = tmp_path_factory.mktemp("wasm-image")
    app = [
        Entry("app", "dir", mode=0o755),
        Entry("app/talk.wasm", data=talker(code=7), mode=0o755),
    ]
    write_image(base / "layout", Image(layers=[app], entrypoint=["/app/talk.wasm"], cmd=None))
    name = "wasm-test:latest"
    docker_archive(base / "layout", "latest", base / "image.tar", name)
    dk("load", "--input", str(base / "image.tar"))
    return name


def test_wasm_exit_code_output_and_bad_entrypoint(dk: Docker, wasm_image: str) -> None:
    res = dk("run", "--rm", *run_args(dk, "wasm"), wasm_image, check=False)
    assert (res.returncode, res.stdout, res.stderr) == (7, "out\n", "err\n")
    res = dk("run", "--rm", *run_args(dk, "wasm"), dk.image, "sh", check=False)
    assert res.returncode != 0 and "not a Wasm module" in res.stderr


def test_daemon_stops_clean(tmp_path: Path, busybox_layout: Path) -> None:
    """A daemon closed with a container still running leaves no process, mount or file."""
    base = tmp_path / "dockerd"
    pids = []
    with docker(base, busybox_layout) as d:
        for isolation in ISOLATIONS:
            cid = d("run", "-d", *run_args(d, isolation), d.image, "sleep", "100").stdout.strip()
            pids.append(int(d("inspect", "--format", "{{.State.Pid}}", cid).stdout))
        assert processes_under(base)
    assert processes_under(base) == []
    assert [p for p in pids if Path(f"/proc/{p}").exists()] == []
    mounts = Path("/proc/self/mounts").read_text()
    assert f" {base}" not in mounts
    assert not base.exists()
