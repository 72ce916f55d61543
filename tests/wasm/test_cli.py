"""Wasm containers through the real `bareboat` CLI and engine: run, -d, logs, stop, wait,
inspect, rm. Images are built here (tests/support/imagebuild.py) and loaded into the test's
own store. Skipped while the engine has no wasm backend wired in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bareboat.paths import Roots
from tests.cli.conftest import leftovers
from tests.support.imagebuild import Entry, Image, write_image

from . import wat

COMPAT = {"module.wasm.image/variant": "compat"}
Run = Callable[..., subprocess.CompletedProcess[str]]


def _engine_has_wasm() -> str:
    try:
        from bareboat.engine.engine import backend_for
        from bareboat.errors import BareboatError
        from bareboat.spec.options import Isolation

        backend_for(Isolation.WASM, Roots.from_env())
    except (ImportError, BareboatError) as err:
        return f"the engine has no wasm backend yet ({err})"
    return ""


@pytest.fixture
def bb(roots: Roots) -> Iterator[Run]:
    reason = _engine_has_wasm()
    if reason:
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("the engine's overlay mounts need root here")

    def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bareboat.cli.main", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    yield run
    ids = run("ps", "-aq", "--no-trunc").stdout.split()
    if ids:
        run("rm", "-f", *ids)


def load(roots: Roots, tmp: Path, image: Image, tag: str) -> str:
    from bareboat.images.store import ImageStore

    layout = tmp / f"layout-{tag}"
    write_image(layout, image, tag=tag)
    return ImageStore(roots).load(layout)[0].names[0]


def compat_image(module: bytes, **extra: bytes) -> Image:
    entries = [
        Entry("app", "dir", mode=0o755),
        Entry("app/main.wasm", "file", module, mode=0o644),  # not executable: not needed
        Entry("etc", "dir", mode=0o755),
        *[Entry(name, "file", data) for name, data in extra.items()],
    ]
    return Image(layers=[entries], entrypoint=["/app/main.wasm"], cmd=None, labels=COMPAT)


def test_run_compat_image(bb: Run, roots: Roots, tmp_path: Path) -> None:
    ref = load(roots, tmp_path, compat_image(wat.hello()), "hello")
    r = bb("run", "--rm", "--isolation", "wasm", "-e", "WHO=world", ref, "a", "b c")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:4] == ["hello", "/app/main.wasm", "a", "b c"]
    assert "WHO=world" in lines
    assert leftovers(roots) == []


def test_image_label_cannot_pick_the_module(bb: Run, roots: Roots, tmp_path: Path) -> None:
    evil = tmp_path / "evil.wasm"
    evil.write_bytes(wat.exit_with(66))
    image = compat_image(wat.exit_with(5))
    image.labels = {**COMPAT, "io.bareboat.wasm.module": str(evil), "io.bareboat.wasm.digest": ""}
    ref = load(roots, tmp_path, image, "evil")
    assert bb("run", "--rm", "--isolation", "wasm", ref).returncode == 5


@pytest.mark.parametrize(("module", "code"), [(wat.exit_with(7), 7), (wat.trap(), 134)])
def test_exit_codes(bb: Run, roots: Roots, tmp_path: Path, module: bytes, code: int) -> None:
    ref = load(roots, tmp_path, compat_image(module), "codes")
    r = bb("run", "--rm", "--isolation", "wasm", ref)
    assert r.returncode == code, r.stderr
    if code == 134:
        assert "wasm trap" in r.stderr
    assert leftovers(roots) == []


def test_reads_rootfs_writes_volume(bb: Run, roots: Roots, tmp_path: Path) -> None:
    ref = load(roots, tmp_path, compat_image(wat.cat(3, "etc/motd"), **{"etc/motd": b"hi\n"}), "c")
    r = bb("run", "--rm", "--isolation", "wasm", ref)
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    vol = tmp_path / "vol"
    vol.mkdir()
    ref = load(roots, tmp_path, compat_image(wat.write_file(4, "f", b"data\n")), "w")
    r = bb("run", "--rm", "--isolation", "wasm", "-v", f"{vol}:/out", ref)
    assert r.returncode == 0, r.stderr
    assert (vol / "f").read_text() == "data\n"


def test_interactive_stdin(bb: Run, roots: Roots, tmp_path: Path) -> None:
    ref = load(roots, tmp_path, compat_image(wat.echo_stdin()), "echo")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bareboat.cli.main",
            "run",
            "--rm",
            "-i",
            "--isolation",
            "wasm",
            ref,
        ],
        input="piped in\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (r.returncode, r.stdout) == (0, "piped in\n"), r.stderr


def test_memory_and_timeout(bb: Run, roots: Roots, tmp_path: Path) -> None:
    # The CLI's floor is docker's 6m: 96 pages. 1 + 200 pages is over it, 1 + 8 is not.
    ref = load(roots, tmp_path, compat_image(wat.grow(200)), "grow")
    r = bb("run", "--rm", "--isolation", "wasm", "--memory", "6m", ref)
    assert (r.returncode, r.stdout) == (1, "grow failed\n"), r.stderr
    ref = load(roots, tmp_path, compat_image(wat.grow(8)), "grow8")
    r = bb("run", "--rm", "--isolation", "wasm", "--memory", "6m", ref)
    assert (r.returncode, r.stdout) == (0, "grew\n"), r.stderr
    ref = load(roots, tmp_path, compat_image(wat.spin()), "spin")
    r = bb("run", "--rm", "--isolation", "wasm", "-l", "io.bareboat.wasm.timeout=1", ref)
    assert r.returncode == 124 and "timed out after 1s" in r.stderr
    r = bb("run", "--rm", "--timeout", "0.5", ref)
    assert r.returncode == 124 and "timed out after 0.5s" in r.stderr
    r = bb("run", "--rm", "--fuel", "100000", ref)
    assert r.returncode == 124 and "out of fuel (budget 100000)" in r.stderr
    r = bb("run", "--rm", "-p", "8080:80", ref)
    assert r.returncode == 125 and "port publishing" in r.stderr
    r = bb("run", "--rm", "--timeout", "-1", ref)
    assert r.returncode == 125 and "invalid --timeout" in r.stderr
    assert leftovers(roots) == []


def test_detached_lifecycle(bb: Run, roots: Roots, tmp_path: Path) -> None:
    ref = load(roots, tmp_path, compat_image(wat.spin()), "spin")
    r = bb("run", "-d", "--isolation", "wasm", "--name", "spinner", ref)
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    info = json.loads(bb("inspect", cid).stdout)
    info = info[0] if isinstance(info, list) else info
    assert "wasm" in json.dumps(info)
    time.sleep(0.5)
    assert bb("stop", "-t", "5", "spinner").returncode == 0
    w = bb("wait", cid)
    assert w.stdout.strip() == "143"
    assert bb("rm", cid).returncode == 0
    assert leftovers(roots) == []

    ref = load(roots, tmp_path, compat_image(wat.hello()), "hello")
    cid = bb("run", "-d", "--isolation", "wasm", ref, "x").stdout.strip()
    assert bb("wait", cid).stdout.strip() == "0"
    assert bb("logs", cid).stdout.splitlines()[:3] == ["hello", "/app/main.wasm", "x"]
    assert bb("rm", cid).returncode == 0
    assert leftovers(roots) == []


def test_wasm_layer_image(bb: Run, roots: Roots, tmp_path: Path) -> None:
    image = Image(
        layers=[wat.hello()],
        compression=None,
        layer_media_type="application/wasm",
        cmd=None,
        env=[],
    )
    ref = load(roots, tmp_path, image, "layer")
    r = bb("run", "--rm", "--isolation", "wasm", ref, "p", "q")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:4] == ["hello", "module.wasm", "p", "q"]


def test_auto_picks_wasm(bb: Run, roots: Roots, tmp_path: Path) -> None:
    help_text = bb("run", "--help").stdout
    if "auto" not in help_text:
        pytest.skip("the CLI has no --isolation auto yet")
    ref = load(roots, tmp_path, compat_image(wat.exit_with(3)), "auto")
    assert bb("run", "--rm", "--isolation", "auto", ref).returncode == 3
    assert bb("run", "--rm", ref).returncode == 3  # auto is the default
    cid = bb("create", ref).stdout.strip()
    assert "wasm" in bb("inspect", cid).stdout
    bb("rm", cid)
    # Without the compat annotation a .wasm entrypoint is an ordinary file: container isolation
    plain = compat_image(wat.exit_with(3))
    plain.labels = {}
    ref = load(roots, tmp_path, plain, "plain")
    cid = bb("create", ref).stdout.strip()
    assert '"container"' in bb("inspect", cid).stdout
    bb("rm", cid)
    image = Image(layers=[wat.hello()], compression=None, layer_media_type="application/wasm")
    image.cmd = None
    ref = load(roots, tmp_path, image, "layer")
    r = bb("run", "--rm", ref)
    assert r.returncode == 0 and r.stdout.startswith("hello\n"), r.stderr
    assert leftovers(roots) == []
