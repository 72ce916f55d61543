"""`bareboat guest info`, `bareboat info` and `bareboat guest` through the real CLI entry point."""

from __future__ import annotations

import json

import pytest

from bareboat.backends.microvm import kernel
from bareboat.cli.main import main
from bareboat.paths import Roots


def test_guest_info_json_names_the_kernel_key_and_paths(
    roots: Roots, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["guest", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cache"] == str(roots.guest)
    k = info["kernel"]
    assert k["fragment"] == str(kernel.fragment_path())
    if kernel.SOURCE_TARBALL.exists():
        expected = kernel.cache_key(kernel.find_source().version, kernel.read_fragment())
        assert k["key"] == expected
        assert k["built"] == (k["path"] is not None)
    assert "init" in info


def test_info_reports_the_accelerator_and_why(
    roots: Roots, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["info", "--json", "--accel", "tcg"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["microvm"]["accelerator"] == "tcg"
    assert "requested" in info["microvm"]["reason"]
    assert info["roots"]["state"] == str(roots.state)
    assert set(info["tools"]) == {"qemu", "runc", "crun"}


def test_info_plain_text(roots: Roots, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--accel", "tcg"]) == 0
    out = capsys.readouterr().out
    assert "accelerator: tcg" in out and "kernel:" in out


def test_guest_without_subcommand_is_usage(
    roots: Roots, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["guest"]) == 125
    assert "build" in capsys.readouterr().err


def test_guest_build_with_a_bad_fragment_is_one_line_error(
    roots: Roots, tmp_path: object, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv(kernel.ENV_FRAGMENT, "/nonexistent/fragment.config")
    assert main(["guest", "build"]) == 125
    err = capsys.readouterr().err.strip()
    assert err.startswith("bareboat: error: ") and "fragment" in err and "\n" not in err
