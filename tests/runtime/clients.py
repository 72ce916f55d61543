"""Real container clients for the runtime tests, each with its config, state, storage and
sockets in a temp dir of its own (never the machine's defaults)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from .conftest import RUNTIME

IMAGE_TAG = "latest"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.skip(f"{tool} is not installed")
    if os.geteuid() != 0:
        pytest.skip(f"{tool} tests need root here")
    return path


def wrapper(base: Path, name: str, target: str, rtroot: Path) -> str:
    """A script that runs `target` with its state under `rtroot/name`."""
    path = base / "bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    root = rtroot / name
    if name == "runc":
        body = f'exec {target} --root {root} "$@"\n'
    else:
        body = f'BAREBOAT_RUNTIME_ROOT={root} exec {target} "$@"\n'
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def docker_archive(layout: Path, tag: str, archive: Path, name: str) -> None:
    """The image `tag` of an OCI layout as a docker-archive tar named `name` (skopeo), for
    clients that load only that format (docker 20.10, ctr import)."""
    subprocess.run(
        ["skopeo", "copy", f"oci:{layout}:{tag}", f"docker-archive:{archive}:{name}"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def run_client(
    name: str,
    argv: list[str],
    args: tuple[str, ...],
    env: dict[str, str],
    check: bool,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    """Run a client command with no stdin; with `check`, a failure names the call and stderr."""
    res = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)}: rc={res.returncode} {res.stderr!r}")
    return res


class Podman:
    """podman with private storage, run root, tmp dir and containers.conf; cgroupfs and file
    events because there is no systemd here."""

    def __init__(self, base: Path, layout: Path) -> None:
        self.podman = _need("podman")
        self.base = base
        conf = base / "containers.conf"
        # podman's default ulimits (nofile/nproc from its own limits) exceed this host's hard
        # limits, which runc then cannot set: pin them below.
        conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
        )
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        # podman hands a runtime neither our environment nor (on some calls, e.g. conmon's
        # `delete --force`) its --runtime-flag root: a wrapper per runtime pins the root.
        self.rtroot = base / "rtroot"
        self.wrappers = {
            "bareboat-runtime": wrapper(base, "bareboat-runtime", str(RUNTIME), self.rtroot),
            "runc": wrapper(base, "runc", shutil.which("runc") or "/usr/sbin/runc", self.rtroot),
        }
        res = self("pull", f"oci:{layout}:{IMAGE_TAG}", runtime="runc")
        self.image = res.stdout.strip().splitlines()[-1]

    def argv(self, *args: str, runtime: str = "") -> list[str]:
        rt = self.wrappers[runtime or "bareboat-runtime"]
        return [
            self.podman,
            "--root", str(self.base / "storage"),
            "--runroot", str(self.base / "runroot"),
            "--tmpdir", str(self.base / "tmp"),
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
            "--runtime", rt,
            *args,
        ]  # fmt: skip

    def __call__(
        self, *args: str, runtime: str = "", check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = self.argv(*args, runtime=runtime)
        return run_client("podman", argv, args, self.env, check, timeout)

    def close(self) -> None:
        self("rm", "--all", "--force", "--time", "0", check=False)
        self("rmi", "--all", "--force", check=False)
        unmount_under(self.base)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.base)


def unmount_under(base: Path) -> None:
    """Whatever a client left mounted below its temp dir (overlay, shm), deepest first."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    for line in reversed(mounts):
        target = line.split()[1]
        if target == str(base) or target.startswith(f"{base}/"):
            subprocess.run(["umount", "-l", target], check=False, timeout=30)


CONTAINERD_CONFIG = """\
version = 2
root = "{base}/root"
state = "{base}/state"
[grpc]
  address = "{base}/containerd.sock"
[ttrpc]
  address = "{base}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  disable_cgroup = true
  disable_apparmor = true
  # This host (itself a container) lacks CAP_SYS_RESOURCE: the sandbox's oom_score_adj -998
  # fails in runc with EACCES; keep scores at or above containerd's own.
  restrict_oom_score_adj = true
  sandbox_image = "{sandbox_image}"
[plugins."io.containerd.grpc.v1.cri".cni]
  # Debian's CNI plugins; the network list is this containerd's own (a bridge of its own).
  bin_dir = "/usr/lib/cni"
  conf_dir = "{base}/cni"
[plugins."io.containerd.grpc.v1.cri".containerd]
  # Declaring runtimes replaces the default `runc` entry, which the default name points at.
  default_runtime_name = "bareboat"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.bareboat]
  runtime_type = "io.containerd.runc.v2"
  container_annotations = ["io.bareboat.*"]
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.bareboat.options]
    BinaryName = "{runtime}"
    Root = "{base}/runc-root/cri"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.bareboat-vm]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.bareboat-vm.options]
    BinaryName = "{vm_runtime}"
    Root = "{base}/runc-root/cri"
[plugins."io.containerd.runtime.v1.linux"]
  runtime = "{runtime}"
"""


# The pod sandbox image of the CRI plugin (what registry.k8s.io/pause is elsewhere): a busybox
# image whose entrypoint sleeps, imported by the CRI tests; there is no registry to pull from.
SANDBOX_IMAGE = "docker.io/library/bareboat-sandbox:test"


def daemon_log(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def wait_daemon(client: Containerd | Docker, name: str, *, timeout: float, step: float) -> None:
    """Until the client's daemon answers `version` on its socket; its log if it dies or not."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if client.proc.poll() is not None:
            raise AssertionError(f"{name} exited: {client.logs()}")
        if client.sock.exists() and client("version", check=False).returncode == 0:
            return
        time.sleep(step)
    raise AssertionError(f"{name} did not come up: {client.logs()}")


def write_cni_config(conf_dir: Path) -> tuple[str, str]:
    """A CNI network list for pods with a network of their own: a bridge and a /24 named
    after this process (so parallel runs do not meet), no masquerading (the pods only talk to
    the host), addresses kept under `conf_dir`. The bridge's name and the subnet."""
    n = os.getpid() % 250
    bridge, subnet = f"bbcni{n}", f"10.197.{n}.0/24"
    ipam = {
        "type": "host-local",
        "ranges": [[{"subnet": subnet}]],
        "dataDir": str(conf_dir / "ipam"),
    }
    conf = {
        "cniVersion": "0.4.0",
        "name": "bareboat-test",
        "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": True, "ipam": ipam}],
    }
    conf_dir.mkdir(parents=True)
    (conf_dir / "10-bareboat-test.conflist").write_text(json.dumps(conf))
    return bridge, subnet


def start_daemon(argv: list[str], log: IO[bytes], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A client's daemon in a session of its own (a Ctrl-C of the tests must not reach it
    before its containers are cleaned up), its output to `log`."""
    return subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        start_new_session=True,
    )  # fmt: skip


def stop_daemon(proc: subprocess.Popen[bytes], log: IO[bytes], base: Path, grace: float) -> None:
    """SIGTERM the daemon (SIGKILL after `grace` seconds), close its log, then end what it
    left running and mounted under `base` (shims outlive their daemon)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
    log.close()
    kill_under(base)
    unmount_under(base)


class Containerd:
    """A private containerd 1.6 (root, state and sockets in a temp dir) and its `ctr`. Its CRI
    plugin has two runtime handlers (what a Kubernetes RuntimeClass names): `bareboat` and
    `bareboat-vm`, whose BinaryName is a `bareboat-runtime-vm` symlink (microvm by name); both
    keep their state under `runc-root/cri`."""

    def __init__(self, base: Path, layout: Path) -> None:
        self.containerd = _need("containerd")
        self.ctr = _need("ctr")
        _need("skopeo")
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.sock = base / "containerd.sock"
        cfg = base / "config.toml"
        vm_runtime = base / "bin" / "bareboat-runtime-vm"
        vm_runtime.parent.mkdir(exist_ok=True)
        vm_runtime.symlink_to(RUNTIME)
        cfg.write_text(
            CONTAINERD_CONFIG.format(
                base=base, runtime=RUNTIME, vm_runtime=vm_runtime, sandbox_image=SANDBOX_IMAGE
            )
        )
        self.bridge, self.subnet = write_cni_config(base / "cni")
        self.env = {**os.environ, "BAREBOAT_RUNTIME_ROOT": str(base / "rtroot")}
        self.log = open(base / "containerd.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = start_daemon([self.containerd, "--config", str(cfg)], self.log, self.env)
        try:
            self._wait_ready()
            archive = base / "image.tar"
            self.image = f"docker.io/library/busybox-test:{IMAGE_TAG}"
            docker_archive(layout, IMAGE_TAG, archive, self.image)
            self("images", "import", str(archive))
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        wait_daemon(self, "containerd", timeout=30, step=0.1)

    def logs(self) -> str:
        return daemon_log(self.base / "containerd.log")

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.ctr, "--address", str(self.sock), *args]
        return run_client("ctr", argv, args, self.env, check, timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            # ctr's namespace and the CRI plugin's (pods a failed CRI test left): a killed
            # shim would orphan a pod's first process, which its pid namespace keeps alive.
            for ns in ("default", "k8s.io"):
                ctr = functools.partial(self, "--namespace", ns, check=False)
                for c in ctr("containers", "list", "--quiet").stdout.split():
                    ctr("tasks", "kill", "--signal", "KILL", c)
                    ctr("tasks", "delete", "--force", c)
                    ctr("containers", "delete", c)
        # Shims outlive their containerd: what a failed CRI test left (by socket path) goes.
        stop_daemon(self.proc, self.log, self.base, grace=20)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.base)


@contextlib.contextmanager
def podman(base: Path, layout: Path) -> Iterator[Podman]:
    p = Podman(base, layout)
    try:
        yield p
    finally:
        p.close()


@contextlib.contextmanager
def containerd(base: Path, layout: Path) -> Iterator[Containerd]:
    c = Containerd(base, layout)
    try:
        yield c
    finally:
        c.close()


# One docker runtime name per isolation: docker 20.10 has no `run --annotation`, so each entry's
# path is a `bareboat-runtime-<suffix>` symlink and the runtime takes the isolation from the name.
DOCKER_RUNTIMES = {
    "container": "bareboat-container",
    "process": "bareboat-process",
    "microvm": "bareboat-vm",
    "wasm": "bareboat-wasm",
}
_NAME_SUFFIX = {"container": "container", "process": "process", "microvm": "vm", "wasm": "wasm"}
# dockerd's plugin manager puts its exec root here whatever --exec-root says.
_DOCKER_PLUGINS = Path("/run/docker/plugins")


class Docker:
    """A private dockerd 20.10 (data root, exec root, pid file, socket, config and trust key in
    a temp dir; its own containerd under the exec root) with one `runtimes` entry per
    isolation; no bridge, no iptables, cgroupfs (there is no systemd here)."""

    def __init__(self, base: Path, layout: Path) -> None:
        self.dockerd = _need("dockerd")
        # The client of the docker.io package, not whatever `docker` comes first on PATH.
        self.docker = "/usr/bin/docker"
        if not os.access(self.docker, os.X_OK):
            self.docker = _need("docker")
        _need("skopeo")
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.sock = base / "docker.sock"
        self.exec_root = base / "exec"
        self._made_plugins_dir = not _DOCKER_PLUGINS.parent.exists()
        cfg = base / "daemon.json"
        # The trust key would go to /etc/docker/key.json; only the config file can move it.
        config = {"runtimes": self._runtimes(), "deprecated-key-path": str(base / "key.json")}
        cfg.write_text(json.dumps(config))
        self.env = {**os.environ, "DOCKER_CONFIG": str(base / "client")}
        self.log = open(base / "dockerd.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = start_daemon(
            [
                self.dockerd,
                "--config-file", str(cfg),
                "--data-root", str(base / "data"),
                "--exec-root", str(self.exec_root),
                "--pidfile", str(base / "docker.pid"),
                "-H", f"unix://{self.sock}",
                "--iptables=false", "--ip6tables=false", "--bridge=none",
                "--exec-opt", "native.cgroupdriver=cgroupfs",
            ],
            self.log,
            self.env,
        )  # fmt: skip
        try:
            self._wait_ready()
            archive = base / "image.tar"
            self.image = f"busybox-test:{IMAGE_TAG}"
            docker_archive(layout, IMAGE_TAG, archive, self.image)
            self("load", "--input", str(archive))
        except BaseException:
            self.close()
            raise

    def _runtimes(self) -> dict[str, dict[str, str]]:
        bindir = self.base / "bin"
        bindir.mkdir(exist_ok=True)
        entries = {"bareboat": {"path": str(RUNTIME)}}
        for isolation, name in DOCKER_RUNTIMES.items():
            link = bindir / f"bareboat-runtime-{_NAME_SUFFIX[isolation]}"
            link.symlink_to(RUNTIME)
            entries[name] = {"path": str(link)}
        return entries

    def _wait_ready(self) -> None:
        wait_daemon(self, "dockerd", timeout=60, step=0.2)

    def logs(self) -> str:
        return daemon_log(self.base / "dockerd.log")

    @property
    def runtime_root(self) -> Path:
        """Where docker's shims tell every runtime to keep its state (`--root`)."""
        return self.exec_root / "runtime-runc" / "moby"

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.docker, "--host", f"unix://{self.sock}", *args]
        return run_client("docker", argv, args, self.env, check, timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            # A container stuck in the runtime must not keep the daemon up: then SIGTERM it.
            with contextlib.suppress(subprocess.TimeoutExpired):
                ids = self("ps", "--all", "--quiet", check=False, timeout=30).stdout.split()
                if ids:
                    self("rm", "--force", *ids, check=False, timeout=60)
        stop_daemon(self.proc, self.log, self.base, grace=40)
        if self._made_plugins_dir:
            for d in (_DOCKER_PLUGINS, _DOCKER_PLUGINS.parent):
                with contextlib.suppress(OSError):
                    d.rmdir()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.base)


def processes_under(base: Path) -> list[int]:
    """Processes whose command line names a path below `base` (a daemon's containerd, shims)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if f"{base}/" in cmdline.replace("\0", " "):
            found.append(int(entry.name))
    return found


def kill_under(base: Path) -> None:
    """KILL what a stopped daemon left running of its own (found by its temp dir), and wait."""
    pids = [p for p in processes_under(base) if p != os.getpid()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while pids and time.monotonic() < end:
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        time.sleep(0.05)


@contextlib.contextmanager
def docker(base: Path, layout: Path) -> Iterator[Docker]:
    d = Docker(base, layout)
    try:
        yield d
    finally:
        d.close()
