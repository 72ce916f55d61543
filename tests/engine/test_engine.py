"""The engine through its Python API (the SDK's view), on a rootfs unpacked by umoci."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bareboat.engine.engine import Engine
from bareboat.errors import ContainerError, ContainerNotFound, NameInUse
from bareboat.sandbox.status import Status
from bareboat.spec.options import Isolation, RunOptions


def run_attached(engine: Engine, cid: str) -> int:
    engine.start(cid, wait_attach=True)
    client = engine.attach(cid)
    try:
        client.attach(stdin=False)
        return int(client.pump(stdin_fd=None, stdout_fd=_null(), stderr_fd=_null()))
    finally:
        client.close()


def _null() -> int:
    import os

    return os.open(os.devnull, os.O_WRONLY)


@pytest.mark.parametrize("isolation", [Isolation.PROCESS, Isolation.CONTAINER])
def test_lifecycle_and_the_image_is_never_modified(engine: Engine, isolation: Isolation) -> None:
    opts = RunOptions(
        isolation=isolation, command=("sh", "-c", "echo x > /etc/passwd; rm /bin/ls; exit 2")
    )
    rec = engine.create("latest", opts)
    assert rec.state is Status.CREATED and len(rec.id) == 64
    lower = Path((engine.paths(rec.id).record / "lower").read_text())
    before = (lower / "etc/passwd").read_text()
    assert run_attached(engine, rec.id) == 2
    rec = engine.get(rec.id)
    assert (rec.state, rec.exit_code) == (Status.EXITED, 2)
    assert rec.started is not None and rec.finished is not None and rec.finished >= rec.started
    assert (lower / "etc/passwd").read_text() == before
    assert (lower / "bin/ls").is_symlink()
    upper = engine.paths(rec.id).upper
    assert (upper / "etc/passwd").read_text() == "x\n"
    saved = json.loads((engine.paths(rec.id).record / "record.json").read_text())
    assert saved["state"] == "exited" and saved["exit_code"] == 2
    engine.remove(rec.id)
    with pytest.raises(ContainerNotFound):
        engine.get(rec.id)


def test_names_are_unique_and_resolve(engine: Engine) -> None:
    rec = engine.create("latest", RunOptions(isolation=Isolation.PROCESS, name="web"))
    assert engine.resolve("web") == rec.id == engine.resolve(rec.id[:12])
    with pytest.raises(NameInUse):
        engine.create("latest", RunOptions(isolation=Isolation.PROCESS, name="web"))
    engine.remove("web")


def test_running_container_cannot_be_started_or_removed(engine: Engine) -> None:
    rec = engine.create("latest", RunOptions(isolation=Isolation.PROCESS, command=("sleep", "30")))
    engine.start(rec.id)
    assert engine.get(rec.id).state is Status.RUNNING
    with pytest.raises(ContainerError, match="already running"):
        engine.start(rec.id)
    with pytest.raises(ContainerError, match="use -f"):
        engine.remove(rec.id)
    engine.remove(rec.id, force=True)
    assert engine.containers(all=True) == []


def _overlay_options(target: Path) -> str:
    """The superblock options of the overlay mounted at `target`, from mountinfo."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(target):
                return fields[-1]
    raise AssertionError(f"nothing is mounted at {target}")


@pytest.mark.parametrize("auto_remove", [True, False])
def test_only_a_removed_containers_overlay_skips_the_sync(
    engine: Engine, auto_remove: bool
) -> None:
    # A `--rm` container's upper layer is thrown away, so its overlay is `volatile` (no sync
    # of the host filesystem when it is unmounted); a kept container's changes are synced.
    opts = RunOptions(isolation=Isolation.PROCESS, command=("sleep", "30"))
    rec = engine.create("latest", opts, auto_remove=auto_remove)
    engine.start(rec.id)
    try:
        options = _overlay_options(engine.paths(rec.id).rootfs).split(",")
        # (kernels from 6.5 show it as `fsync=volatile`)
        assert ("volatile" in options or "fsync=volatile" in options) is auto_remove
    finally:
        engine.remove(rec.id, force=True)
    assert engine.containers(all=True) == []
