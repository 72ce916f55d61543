"""What a real `bareboat run --isolation container` of an image in the store imports, its CLI
and its monitor (a fork of the CLI, which writes its imports to its log): none of the modules
that only other paths need (the store's decoders, the registry client, progress bars, typing,
tempfile). A list of names, not a timing: the time is measured by `bench run`."""

from __future__ import annotations

import os
import subprocess

from bareboat.paths import Roots
from tests.cli.conftest import Run, bareboat_argv

NOT_ON_THE_PATH = (
    "msgspec", "httpx", "rich", "psutil", "filelock", "typing", "tempfile",
    "bareboat.images.store", "bareboat.images.wire", "bareboat.cli.images", "bareboat.cli.guest",
)  # fmt: skip


def _imported(lines: list[str]) -> set[str]:
    return {
        parts[2].strip()
        for parts in (line.split("|") for line in lines if line.startswith("import time:"))
        if len(parts) == 3
    }


def test_run_imports_only_its_path(bb: Run, image: str, roots: Roots) -> None:
    bb("run", "--rm", image, "true")  # the first run keeps the image's view
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    r = subprocess.run(
        bareboat_argv("run", "--name", "imports", "--isolation", "container", image, "true"),
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    (log,) = roots.run.glob("*/monitor.log")
    lines += log.read_text().splitlines()
    imported = _imported(lines)
    assert "bareboat.engine.monitor" in imported  # the monitor's own imports are in the list
    assert sorted(imported & set(NOT_ON_THE_PATH)) == []
