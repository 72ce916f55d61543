"""Building the guest init and its initramfs: cache keys, atomic results, errors, cpio format."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bareboat.backends.microvm import initbuild
from bareboat.backends.microvm.initbuild import (
    INIT_SOURCES,
    build_init,
    build_initramfs,
    cpio_newc,
    initramfs_entries,
    plan_init,
)
from bareboat.errors import BackendUnavailable, GuestError
from bareboat.paths import Roots

needs_musl = pytest.mark.skipif(shutil.which("musl-gcc") is None, reason="musl-gcc is missing")


def own_roots(tmp_path: Path) -> Roots:
    return Roots(root=tmp_path / "root", state=tmp_path / "state", cache=tmp_path / "cache")


def copy_sources(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    shutil.copytree(INIT_SOURCES, src, ignore=shutil.ignore_patterns("init"))
    return src


@needs_musl
def test_plan_is_plain_data_and_keyed_by_sources(tmp_path: Path) -> None:
    src = copy_sources(tmp_path)
    a = plan_init(src)
    assert a.argv[0] == "musl-gcc" and "-static" in a.argv and "-Werror" in a.argv
    assert {Path(p).name for p in a.argv if p.endswith(".c")} == {f.name for f in src.glob("*.c")}
    assert plan_init(src).key == a.key
    (src / "init.h").write_text((src / "init.h").read_text() + "\n/* changed */\n")
    assert plan_init(src).key != a.key


@needs_musl
def test_build_is_static_small_cached_and_runs(tmp_path: Path) -> None:
    roots = own_roots(tmp_path)
    init = build_init(roots)
    assert init.parent.parent == roots.guest / "init"
    assert init.stat().st_size < 300 * 1024
    file_out = subprocess.run(["file", str(init)], capture_output=True, text=True).stdout
    if file_out:
        assert "statically linked" in file_out or "static-pie" in file_out
    out = subprocess.run([str(init), "--version"], capture_output=True, text=True, timeout=10)
    assert out.stdout.startswith("bareboat-init") and "protocol 1" in out.stdout
    mtime = init.stat().st_mtime_ns
    assert build_init(roots) == init and init.stat().st_mtime_ns == mtime
    # nothing half-made beside it
    assert [p.name for p in init.parent.iterdir()] == ["init"]


@needs_musl
def test_usage_outside_pid1(tmp_path: Path) -> None:
    init = build_init(own_roots(tmp_path))
    res = subprocess.run([str(init)], capture_output=True, text=True, timeout=10)
    assert res.returncode == 2 and "usage" in res.stderr


@needs_musl
def test_compile_error_is_clear_and_leaves_nothing(tmp_path: Path) -> None:
    src = copy_sources(tmp_path)
    (src / "broken.c").write_text("int broken(void) { return undefined_thing; }\n")
    roots = own_roots(tmp_path)
    with pytest.raises(GuestError, match="undefined_thing"):
        build_init(roots, directory=src)
    leftovers = list((roots.guest / "init").rglob("*"))
    assert all(p.is_dir() for p in leftovers)


def test_missing_compiler_is_backend_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(initbuild, "CC", "no-such-musl-gcc")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailable, match="musl-tools"):
        initbuild.compiler_version("no-such-musl-gcc")


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio is missing")
def test_cpio_reads_back_with_gnu_cpio(tmp_path: Path) -> None:
    archive = cpio_newc(initramfs_entries(b"#!init-bytes"))
    assert len(archive) % 4 == 0
    listing = subprocess.run(
        ["cpio", "-itv", "--quiet"], input=archive, capture_output=True, timeout=10, check=True
    ).stdout.decode()
    names = [line.split()[-1] for line in listing.splitlines()]
    assert set(names) == {"dev", "proc", "sys", "run", "mnt", "tmp", "dev/console", "init"}
    lines = {line.split()[-1]: line for line in listing.splitlines()}
    assert lines["dev/console"].startswith("crw-------")
    assert lines["init"].startswith("-rwxr-xr-x")
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(
        ["cpio", "-id", "--quiet", "--no-absolute-filenames", "init"],
        input=archive,
        cwd=out,
        check=True,
        timeout=10,
    )
    assert (out / "init").read_bytes() == b"#!init-bytes"


@needs_musl
def test_initramfs_is_cached_next_to_init(tmp_path: Path) -> None:
    roots = own_roots(tmp_path)
    cpio = build_initramfs(roots)
    assert cpio.parent == build_init(roots).parent and cpio.name == "initramfs.cpio"
    assert build_initramfs(roots) == cpio
