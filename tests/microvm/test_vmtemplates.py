"""`bareboat template create` plans its VM as `bareboat run --isolation microvm` does.

The template's inputs come from a bundle the spec builder makes of the same `-m`/`--cpus`,
read and planned by the backend (engine/vmtemplates.py): the key is the one a run with those
flags looks for, and what such a run refuses is refused here, in one line, before anything is
built or booted. Nothing here boots a VM; test_template_cli.py does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bareboat.backends.microvm import vmplan, vmspec
from bareboat.backends.microvm.backend import MicrovmBackend, image_of_tree
from bareboat.engine import vmtemplates
from bareboat.engine.engine import Engine
from bareboat.errors import KernelMissing
from bareboat.paths import Roots
from bareboat.spec.options import Isolation, RunOptions


def bb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bareboat.cli.main", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _no_template_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BAREBOAT_TEMPLATE", raising=False)


@pytest.fixture
def image(roots: Roots, busybox_layout: Path) -> str:
    from bareboat.images.store import ImageStore

    if os.geteuid() != 0:
        pytest.skip("the store's trees keep the image's owners: root only here")
    return ImageStore(roots).load(busybox_layout)[0].names[0]


def nothing_made(roots: Roots) -> list[Path]:
    """VM disks and templates under these roots (none, after a refusal)."""
    return [
        p
        for d in (roots.vm_images, roots.templates)
        if d.is_dir()
        for p in d.iterdir()
        if not p.name.endswith(".lock")
    ]


def _host() -> vmspec.HostSize:
    return vmspec.HostSize.current()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cpus", "inf"], "invalid --cpus 'inf'"),
        (["--cpus", "0"], "invalid --cpus '0'"),
        (["--cpus", str(_host().cpus + 1)], "needs as many CPUs"),
        (["-m", f"{2 * _host().memory >> 20}m"], "more than this host's"),
        (["-m", "lots"], "invalid memory size"),
    ],
)
def test_create_refuses_what_run_refuses(
    roots: Roots, image: str, flags: list[str], message: str
) -> None:
    r = bb("template", "create", image, *flags)
    assert r.returncode == 125, r.stderr
    assert r.stderr.startswith("bareboat: error: ") and r.stderr.count("\n") == 1
    assert message in r.stderr
    assert nothing_made(roots) == []


@pytest.mark.parametrize(
    "memory, cpus",
    [(None, None), (100 << 20, 0.5), (None, 1.000001), (64 << 20, 0.01)],
)
def test_create_keys_the_template_run_looks_for(
    roots: Roots, image: str, memory: int | None, cpus: float | None
) -> None:
    """The inputs `template create -m/--cpus` keys its template by are those of the VM that
    `run` with the same flags plans (the engine's bundle, the backend's reading of it)."""
    from bareboat.backends.microvm.kernel import resolve_kernel

    try:
        resolve_kernel(roots)
    except KernelMissing as e:
        pytest.skip(str(e))
    engine = Engine(roots)
    rec = engine.create(image, RunOptions(isolation=Isolation.MICROVM, memory=memory, cpus=cpus))
    try:
        ctx = engine.context(rec.id)
        lower = Path((engine.paths(rec.id).record / "lower").read_text())
        backend = MicrovmBackend(roots)
        # The run's plan, its image disk made of the tree under the container's overlay.
        run = backend.prepare(
            *backend.read(ctx), image=lambda: image_of_tree(roots, lower), disk=None
        )
        want = vmplan.template_inputs(run)
        assert want is not None
        got = vmtemplates.template_inputs(roots, image, memory=memory, cpus=cpus)
        assert got == want
        assert (got.vcpus, got.memory_mib) == (run.spec.vcpus, run.spec.memory >> 20)
    finally:
        engine.remove(rec.id, force=True)
