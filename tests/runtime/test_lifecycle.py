"""bareboat-runtime driven directly, the way conmon and the containerd shim drive runc:
create/start/state/kill/delete, exec, ps, pause/resume, update, list, features, spec, errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jsonschema
import pytest

from bareboat.runtime.records import Record, RuntimeRoot

from .conftest import Runtime, make_bundle


def state_schema() -> jsonschema.protocols.Validator:
    from tests.spec.schema import validator_for

    validator: jsonschema.protocols.Validator = validator_for("state-schema.json")
    return validator


def test_create_start_state_kill_delete(runtime: Runtime, tmp_path: Path) -> None:
    validator = state_schema()
    bundle = make_bundle(tmp_path / "b", ["sleep", "100"])
    pidfile = tmp_path / "pid"
    runtime("create", "--bundle", str(bundle), "--pid-file", str(pidfile), "c1")
    runtime.ids.append("c1")
    st = runtime.state("c1")
    validator.validate(st)
    assert st["status"] == "created"
    pid = int(pidfile.read_text())
    assert st["pid"] == pid and os.path.exists(f"/proc/{pid}")
    # Recorded isolation decides later calls.
    rec = (runtime.root / "bareboat" / "c1.rec").read_text()
    assert rec == f"container\n{bundle}\n"

    runtime("start", "c1")
    st = runtime.wait_state("c1", "running")
    validator.validate(st)
    assert st["status"] == "running"

    ps = json.loads(runtime("ps", "--format", "json", "c1").stdout)
    assert pid in ps

    runtime("pause", "c1")
    # runc's extra status (not in the OCI schema; podman and containerd expect it).
    assert runtime.state("c1")["status"] == "paused"
    runtime("resume", "c1")
    assert runtime.wait_state("c1", "running")["status"] == "running"

    runtime("update", "--resources", "-", "c1", input=json.dumps({"pids": {"limit": 50}}))

    listed = json.loads(runtime("list", "--format", "json").stdout)
    assert [c["id"] for c in listed] == ["c1"]

    # sleep as PID 1 ignores TERM: the name form of an uncatchable signal
    runtime("kill", "c1", "KILL")
    st = runtime.wait_state("c1", "stopped")
    validator.validate(st)
    assert st["status"] == "stopped"
    runtime("delete", "c1")
    assert not (runtime.root / "bareboat" / "c1.rec").exists()
    assert runtime("state", "c1", check=False).returncode != 0
    # force is idempotent
    runtime("delete", "--force", "c1")
    runtime("delete", "--force", "c1")


def test_exec_process_file_and_flags(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["sleep", "100"])
    runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "pid"), "c2")
    runtime.ids.append("c2")
    runtime("start", "c2")
    fixture = Path("/work/shared/fixtures/oci-client-configs/exec-process-podman-runc-wrap.json")
    process = (
        json.loads(fixture.read_text())
        if fixture.exists()
        else {"user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["PATH=/bin"]}
    )
    process["args"] = ["sh", "-c", "echo exec-ok; exit 3"]
    process.pop("capabilities", None)
    process.pop("rlimits", None)
    pfile = tmp_path / "process.json"
    pfile.write_text(json.dumps(process))
    res = runtime("exec", "--process", str(pfile), "c2", check=False)
    assert (res.returncode, res.stdout) == (3, "exec-ok\n")

    res = runtime(
        "exec", "--cwd", "/tmp", "-e", "X=42", "c2", "sh", "-c", "echo $X; pwd", check=False
    )
    assert (res.returncode, res.stdout) == (0, "42\n/tmp\n")

    epid = tmp_path / "exec.pid"
    runtime("exec", "--detach", "--pid-file", str(epid), "c2", "sleep", "50")
    assert os.path.exists(f"/proc/{int(epid.read_text())}")

    runtime("kill", "--all", "c2", "KILL")
    assert runtime.wait_state("c2", "stopped")["status"] == "stopped"
    runtime("delete", "--force", "c2")


def test_run_foreground_passes_exit_code_and_output(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["sh", "-c", "echo out; echo err >&2; exit 7"])
    res = runtime("run", "--bundle", str(bundle), "c3", check=False)
    assert (res.returncode, res.stdout, res.stderr) == (7, "out\n", "err\n")
    assert not (runtime.root / "bareboat" / "c3.rec").exists()


def test_hooks_run_when_delegated(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["true"])
    out = tmp_path / "hooks.log"
    config = json.loads((bundle / "config.json").read_text())

    def hook(name: str) -> dict[str, object]:
        return {"path": "/bin/sh", "args": ["sh", "-c", f"echo {name} >> {out}"]}

    config["hooks"] = {k: [hook(k)] for k in ("prestart", "createRuntime", "poststart", "poststop")}
    (bundle / "config.json").write_text(json.dumps(config))
    runtime("run", "--bundle", str(bundle), "c4")
    assert out.read_text().split() == [
        "prestart",
        "createRuntime",
        "poststart",
        "poststop",
    ] or out.read_text().split() == ["createRuntime", "prestart", "poststart", "poststop"]


def test_errors_go_to_log_as_json_lines(runtime: Runtime, tmp_path: Path) -> None:
    res = runtime("create", "--bundle", str(tmp_path / "nowhere"), "c5", check=False)
    assert res.returncode != 0
    assert "config.json" in res.stderr
    lines = [json.loads(x) for x in runtime.log.read_text().splitlines()]
    assert lines[-1]["level"] == "error" and "config.json" in lines[-1]["msg"]
    assert set(lines[-1]) == {"level", "msg", "time"}
    assert not (runtime.root / "bareboat" / "c5.rec").exists()
    # Unknown container: runc's own error, non-zero.
    assert runtime("state", "nope", check=False).returncode != 0
    assert runtime("kill", "../x", check=False).returncode != 0


def test_container_calls_import_little(runtime: Runtime, tmp_path: Path) -> None:
    """podman makes create, start and delete --force for every container (and clients ask
    state): under container isolation each is Python's start-up, a few small modules and
    runc. What the real calls import, from `python -X importtime`, names none of the modules
    that cost milliseconds here."""
    heavy = {"json", "re", "enum", "signal", "typing", "dataclasses", "pathlib", "subprocess",
             "socket", "tempfile", "msgspec"}  # fmt: skip
    traced = Runtime(runtime.root, runtime.log, prefix=(sys.executable, "-X", "importtime"))
    bundle = make_bundle(tmp_path / "b", ["true"])
    runtime.ids.append("c10")
    calls = [
        ("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "p"), "c10"),
        ("state", "c10"),
        ("start", "c10"),
        ("delete", "--force", "c10"),
    ]
    for call in calls:
        err = traced(*call).stderr
        names = {line.split("|")[-1].strip() for line in err.splitlines() if "import time:" in line}
        assert "bareboat.runtime.main" in names, err
        assert not names & heavy, (call, sorted(names & heavy))
        assert "bareboat.errors" not in names, call  # built only for an error (~1 ms)
    assert not (runtime.root / "bareboat" / "c10.rec").exists()


def test_runc_that_cannot_start_is_reported(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """container isolation's create and delete wait on runc and end without the interpreter's
    finalization (runtime/main.py `entry`): what they report still reaches stderr and the log."""
    bad = tmp_path / "runc"
    bad.write_bytes(b"")  # executable, but no program: its exec fails with ENOEXEC
    bad.chmod(0o755)
    monkeypatch.setenv("BAREBOAT_OCI_RUNTIME", str(bad))
    bundle = make_bundle(tmp_path / "b", ["true"])
    res = runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "p"), "c8",
                  check=False)  # fmt: skip
    assert res.returncode == 1 and "Exec format error" in res.stderr, res.stderr
    assert "Exec format error" in json.loads(runtime.log.read_text().splitlines()[-1])["msg"]
    assert not (runtime.root / "bareboat" / "c8.rec").exists()
    RuntimeRoot.of(str(runtime.root)).save(Record("c9", "container", str(bundle)))
    res = runtime("delete", "c9", check=False)
    assert res.returncode == 1 and "Exec format error" in res.stderr, res.stderr
    assert (runtime.root / "bareboat" / "c9.rec").exists()  # not deleted: the record stays


def test_unavailable_isolation_leaves_nothing(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["true"], annotations={"io.bareboat.isolation": "wasm"})
    res = runtime(
        "create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "p"), "c6", check=False
    )
    assert res.returncode != 0 and "wasm" in res.stderr
    assert not (runtime.root / "bareboat" / "c6.rec").exists()


def test_duplicate_id_is_refused(runtime: Runtime, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b", ["sleep", "100"])
    runtime("create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "p"), "c7")
    runtime.ids.append("c7")
    res = runtime(
        "create", "--bundle", str(bundle), "--pid-file", str(tmp_path / "p2"), "c7", check=False
    )
    assert res.returncode != 0 and "already exists" in res.stderr
    runtime("delete", "--force", "c7")
    assert not (runtime.root / "bareboat" / "c7.rec").exists()


def test_features_spec_version(runtime: Runtime, tmp_path: Path) -> None:
    doc = json.loads(runtime("features").stdout)
    assert "prestart" in doc["hooks"]
    assert doc["annotations"]["io.bareboat.isolation"] == "container,microvm,wasm,process"
    (tmp_path / "s").mkdir()
    runtime("spec", "--bundle", str(tmp_path / "s"))
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert config["ociVersion"]
    assert "bareboat-runtime version" in runtime("--version").stdout
