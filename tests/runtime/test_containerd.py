"""A private containerd 1.6 driving bareboat-runtime through its runc shim v2
(`ctr run --runc-binary`): exit codes and output unchanged, exec, kill; and through its CRI
plugin, as a kubelet does for a pod whose RuntimeClass names a bareboat runtime handler."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.imagebuild import Image, write_image

from . import cri
from .clients import SANDBOX_IMAGE, Containerd, containerd, processes_under
from .conftest import RUNTIME, TALKER, OneShotServer, assert_same_as_reference, connect_and_read
from .test_vm import vm_or_skip


@pytest.fixture(scope="module")
def cd(tmp_path_factory: pytest.TempPathFactory, busybox_layout: Path) -> Iterator[Containerd]:
    with containerd(tmp_path_factory.mktemp("containerd"), busybox_layout) as c:
        yield c


def runtime_flags(cd: Containerd, name: str = "bareboat-runtime") -> list[str]:
    """The shim passes `--root` itself (from --runc-root), so the binary can be the real one."""
    binary = str(RUNTIME) if name == "bareboat-runtime" else (shutil.which(name) or name)
    return [
        "--runc-binary", binary,
        "--runc-root", str(cd.base / "runc-root" / name),
        "--fifo-dir", str(cd.base / "fifo"),
    ]  # fmt: skip


def test_ctr_run_exit_code_and_output(cd: Containerd) -> None:
    script = TALKER
    ours = cd("run", "--rm", *runtime_flags(cd), cd.image, "t1",
              "sh", "-c", script, check=False)  # fmt: skip
    ref = cd("run", "--rm", *runtime_flags(cd, "runc"), cd.image, "t1ref",
             "sh", "-c", script, check=False)  # fmt: skip
    assert_same_as_reference(ours, ref)


@pytest.mark.parametrize("isolation", ["process", "microvm"])
def test_ctr_run_own_isolation(cd: Containerd, isolation: str) -> None:
    script = "echo out; echo err >&2; exit 9"
    ann = ["--annotation", f"io.bareboat.isolation={isolation}"]
    res = cd("run", "--rm", *runtime_flags(cd), *ann, cd.image, "t3", "sh", "-c", script,
             check=False)  # fmt: skip
    assert (res.returncode, res.stdout, res.stderr) == (9, "out\n", "err\n")
    res = cd("run", "--rm", *runtime_flags(cd), *ann, cd.image, "t3", "/nonexistent",
             check=False)  # fmt: skip
    assert res.returncode != 0 and "no such file or directory" in res.stderr.lower()
    ours = cd.base / "runc-root" / "bareboat-runtime" / "default"
    assert list((ours / "bareboat").iterdir()) == []


@pytest.mark.parametrize("isolation", ["container", "process", "microvm"])
def test_ctr_detached_exec_kill(cd: Containerd, isolation: str) -> None:
    ann = ["--annotation", f"io.bareboat.isolation={isolation}"]
    cd("run", "-d", *runtime_flags(cd), *ann, cd.image, "t2", "sleep", "100")
    try:
        fifo = str(cd.base / "fifo")
        script = "echo exec-ok; exit 5"
        res = cd("tasks", "exec", "--fifo-dir", fifo, "--exec-id", "e1", "t2", "sh", "-c", script,
                 check=False)  # fmt: skip
        assert (res.returncode, res.stdout) == (5, "exec-ok\n")
        ps = cd("tasks", "ps", "t2").stdout
        assert len(ps.strip().splitlines()) >= 2
        cd("tasks", "pause", "t2")
        assert "PAUSED" in cd("tasks", "list").stdout
        cd("tasks", "resume", "t2")
        cd("tasks", "kill", "--signal", "SIGKILL", "t2")
        cd("tasks", "delete", "t2", check=False, timeout=30)
    finally:
        cd("tasks", "delete", "--force", "t2", check=False)
        cd("containers", "delete", "t2", check=False)
    assert "t2" not in cd("containers", "list", "--quiet").stdout.split()
    # The shim's calls all went to bareboat-runtime's root, and delete dropped the record.
    ours = cd.base / "runc-root" / "bareboat-runtime" / "default"
    assert (ours / "bareboat").is_dir()
    assert list((ours / "bareboat").iterdir()) == []
    assert list((ours / "runc").iterdir()) == []


@pytest.fixture(scope="module")
def crisvc(
    cd: Containerd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[cri.RuntimeService]:
    """The CRI runtime service of `cd`, with the sandbox image (busybox sleeping: the pause
    container's stand-in) and the test image in the CRI plugin's namespace, k8s.io."""
    layout = tmp_path_factory.mktemp("sandbox-layout")
    write_image(layout, Image(entrypoint=["/bin/sleep", "2147483647"], cmd=None))
    archive = cd.base / "sandbox.tar"
    subprocess.run(
        ["skopeo", "copy", f"oci:{layout}:latest", f"docker-archive:{archive}:{SANDBOX_IMAGE}"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    for tar in (archive, cd.base / "image.tar"):
        cd("--namespace", "k8s.io", "images", "import", str(tar))
    svc = cri.RuntimeService(cd.sock)
    try:
        yield svc
    finally:
        svc.close()


# case: (runtime handler, the app containers' io.bareboat.isolation annotation or "", the
# sandbox's isolation, the app containers' isolation). The pod sandbox (its sleeping first
# container) runs through the handler's binary as named; the app containers through the same
# binary, with the annotation if given (the handler's container_annotations let it through).
CRI_CASES = {
    "container": ("bareboat", "", "container", "container"),
    "process": ("bareboat", "process", "container", "process"),
    "microvm-annotation": ("bareboat", "microvm", "container", "microvm"),
    "microvm-handler": ("bareboat-vm", "", "microvm", "microvm"),
}


def _cri_root(cd: Containerd) -> Path:
    """The runtime root the CRI handlers' shims pass (`Root` option + the k8s.io namespace)."""
    return cd.base / "runc-root" / "cri" / "k8s.io"


def _isolation(cd: Containerd, cid: str) -> str:
    """The isolation bareboat-runtime recorded for a container (first line of its record)."""
    return (_cri_root(cd) / "bareboat" / f"{cid}.rec").read_text().splitlines()[0]


def _cri_records(cd: Containerd) -> list[Path]:
    """Containers the runtime still keeps in the CRI handlers' root."""
    return [p for sub in ("bareboat", "runc") for p in (_cri_root(cd) / sub).glob("*")]


def _left_running(cd: Containerd) -> list[str]:
    """Shims, gates and QEMUs of this containerd (their argv names its temp dir), once they
    have had a moment to go."""
    end = time.monotonic() + 10
    while True:
        pids = [p for p in processes_under(cd.base) if p != cd.proc.pid]
        if not pids or time.monotonic() > end:
            return [Path(f"/proc/{p}/cmdline").read_text(errors="replace") for p in pids]
        time.sleep(0.2)


@pytest.mark.parametrize("case", list(CRI_CASES))
def test_cri_pod_through_runtime_handler(
    cd: Containerd, crisvc: cri.RuntimeService, tmp_path: Path, case: str
) -> None:
    """RunPodSandbox with a runtime handler (what a Kubernetes RuntimeClass names), a container
    that prints and exits 3, ExecSync in a running one, then stop and remove everything."""
    handler, annotation, pod_isolation, app_isolation = CRI_CASES[case]
    if "microvm" in case:
        vm_or_skip()
    annotations = {"io.bareboat.isolation": annotation} if annotation else None
    pod = cri.pod_config(f"pod-{case}", str(uuid.uuid4()), tmp_path)
    pod_id = crisvc.run_pod_sandbox(pod, handler)
    try:
        assert crisvc.pod_sandbox_handler(pod_id) == handler
        assert _isolation(cd, pod_id) == pod_isolation
        script = "echo cri-ok; echo cri-err >&2; exit 3"
        app = cri.container_config("app", cd.image, ["sh", "-c", script], "app.log", annotations)
        cid = crisvc.create_container(pod_id, app, pod)
        crisvc.start_container(cid)
        status = crisvc.wait_exited(cid, timeout=60)
        assert (status.state, status.exit_code) == (cri.CONTAINER_EXITED, 3), (status, cd.logs())
        log = Path(status.log_path).read_text()
        # CRI log lines: "<time> stdout F cri-ok".
        assert " stdout F cri-ok\n" in log and " stderr F cri-err\n" in log, log

        sleeper = cri.container_config("sleeper", cd.image, ["sleep", "100"], "s.log", annotations)
        sid = crisvc.create_container(pod_id, sleeper, pod)
        crisvc.start_container(sid)
        assert crisvc.container_status(sid).state == cri.CONTAINER_RUNNING
        # The runtime drops a record when the shim deletes the task (at exit): ask a running one.
        assert _isolation(cd, sid) == app_isolation
        res = crisvc.exec_sync(sid, ["sh", "-c", "echo exec-ok; echo exec-err >&2; exit 4"])
        assert (res.exit_code, res.stdout, res.stderr) == (4, b"exec-ok\n", b"exec-err\n")
        crisvc.stop_container(sid, timeout=0)
        assert crisvc.container_status(sid).state == cri.CONTAINER_EXITED
        for c in (cid, sid):
            crisvc.remove_container(c)
    finally:
        crisvc.stop_pod_sandbox(pod_id)
        crisvc.remove_pod_sandbox(pod_id)
    assert pod_id not in crisvc.list_pod_sandboxes()
    assert _cri_records(cd) == []
    assert _left_running(cd) == []


def test_cri_unknown_runtime_handler(crisvc: cri.RuntimeService, tmp_path: Path) -> None:
    """A RuntimeClass whose handler the node lacks: RunPodSandbox fails and leaves no pod."""
    pod = cri.pod_config("pod-unknown", str(uuid.uuid4()), tmp_path)
    with pytest.raises(AssertionError, match=r"no runtime for .*nonesuch"):
        crisvc.run_pod_sandbox(pod, "nonesuch")
    assert crisvc.list_pod_sandboxes() == []


def test_cri_pod_network_reaches_a_vm(
    cd: Containerd, crisvc: cri.RuntimeService, tmp_path: Path
) -> None:
    """A pod with a network of its own (CNI bridge): its app container runs in a microVM in
    the pod's namespace, reaches the host from the pod's address, and the port it listens on
    answers at the pod's address (where a Service sends connections)."""
    vm_or_skip()
    pod = cri.pod_config("pod-net", str(uuid.uuid4()), tmp_path, host_network=False)
    pod_id = crisvc.run_pod_sandbox(pod, "bareboat")
    server = OneShotServer(b"hello-pod\n")
    try:
        ip = crisvc.pod_ip(pod_id)
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(cd.subnet), ip
        gateway = str(next(ipaddress.ip_network(cd.subnet).hosts()))
        script = f"nc {gateway} {server.port} && echo served-from-the-vm | nc -l -p 8080"
        app = cri.container_config("app", cd.image, ["sh", "-c", script], "app.log",
                                   {"io.bareboat.isolation": "microvm"})  # fmt: skip
        cid = crisvc.create_container(pod_id, app, pod)
        crisvc.start_container(cid)
        assert connect_and_read((ip, 8080)) == b"served-from-the-vm\n"
        status = crisvc.wait_exited(cid, timeout=60)
        assert status.exit_code == 0, (status, cd.logs())
        assert " stdout F hello-pod\n" in Path(status.log_path).read_text()
        server.close(10)
        assert server.peers == [ip]  # the guest's traffic leaves with the pod's address
        crisvc.remove_container(cid)
    finally:
        server.close()
        crisvc.stop_pod_sandbox(pod_id)
        crisvc.remove_pod_sandbox(pod_id)
    assert _cri_records(cd) == []
    assert _left_running(cd) == []
