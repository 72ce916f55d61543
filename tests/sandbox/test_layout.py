"""One status and one directory layout for every sandbox, whichever front end made it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bareboat.backends.base import BackendContext
from bareboat.backends.microvm.backend import MicrovmBackend
from bareboat.errors import InvalidStateTransition
from bareboat.paths import Roots
from bareboat.runtime.records import RuntimeRoot
from bareboat.sandbox.microvm import VmFiles
from bareboat.sandbox.status import TRANSITIONS, Status, check_transition
from bareboat.sandboxdir import SandboxDir, short_socket_dir


def test_status_in_the_oci_spec_words() -> None:
    assert [s.oci for s in Status] == ["created", "running", "paused", "stopped"]
    assert Status("exited") is Status.EXITED  # the engine's records keep docker's word


def test_every_status_has_its_transitions_and_nothing_else_moves() -> None:
    assert set(TRANSITIONS) == set(Status)
    moves = {(a, b) for a in Status for b in Status if b in TRANSITIONS[a]}
    assert moves == {
        (Status.CREATED, Status.RUNNING), (Status.CREATED, Status.EXITED),
        (Status.RUNNING, Status.PAUSED), (Status.RUNNING, Status.EXITED),
        (Status.PAUSED, Status.RUNNING), (Status.PAUSED, Status.EXITED),
        (Status.EXITED, Status.RUNNING),
    }  # fmt: skip
    with pytest.raises(InvalidStateTransition, match="is created; cannot move it to paused"):
        check_transition("abc", Status.CREATED, Status.PAUSED)


def test_a_vm_has_the_same_files_under_both_front_ends(roots: Roots, tmp_path: Path) -> None:
    """The engine's backend and bareboat-runtime put a VM's files at `<sandbox>/vm`, and name
    its control socket and pid record alike."""
    cid = "c" * 64
    engine_sandbox = tmp_path / "run" / cid / "oci"
    vmdir = MicrovmBackend(roots).vmdir(
        BackendContext(cid, tmp_path / "bundle", engine_sandbox, {})
    )
    assert vmdir.path == Path(SandboxDir(str(engine_sandbox)).vm)
    assert str(vmdir.pidfile) == SandboxDir(str(engine_sandbox)).vm_record

    root = RuntimeRoot(str(tmp_path / "rt"))
    files = VmFiles(root.state_dir("ctr"))
    assert files.path == root.sandbox("ctr").vm
    runtime_vmdir = files.vmdir()
    assert (runtime_vmdir.path, str(runtime_vmdir.ctl)) == (Path(files.path), files.ctl)
    assert runtime_vmdir.ctl.name == vmdir.ctl.name and runtime_vmdir.pidfile.name == "vm.json"


def test_a_socket_dir_fits_a_sockaddr_un(tmp_path: Path) -> None:
    short = str(tmp_path / "s")
    assert short_socket_dir(short, "k") == short
    deep = "/" + "d" * 120
    moved = short_socket_dir(deep, "key-1")
    assert moved != deep and len(os.fsencode(moved + "/agent.sock")) < 108
    assert moved == short_socket_dir(deep, "key-1") != short_socket_dir(deep, "key-2")
