"""One OCI runtime choice for both front ends (ociruntime.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bareboat import ociruntime
from bareboat.errors import BackendUnavailable


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_the_variable_wins_then_the_preferences_in_order(tmp_path: Path) -> None:
    crun, runc = _exe(tmp_path / "bin" / "crun"), _exe(tmp_path / "bin" / "runc")
    env = {"PATH": str(tmp_path / "bin")}
    assert ociruntime.find(env, ("crun", "runc")) == str(crun)
    assert ociruntime.find(env, ("runc",)) == str(runc)
    assert ociruntime.find({**env, ociruntime.ENV: "runc"}, ("crun",)) == str(runc)
    mine = _exe(tmp_path / "elsewhere" / "my-runtime")
    assert ociruntime.find({**env, ociruntime.ENV: str(mine)}, ("crun",)) == str(mine)


def test_a_missing_runtime_is_one_clear_error(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), ociruntime.ENV: str(tmp_path / "nope")}
    with pytest.raises(BackendUnavailable, match=ociruntime.ENV):
        ociruntime.find(env, ("crun",))


def test_the_runtime_front_end_reads_the_same_variable(tmp_path: Path) -> None:
    from bareboat.runtime.delegate import find_runtime

    mine = _exe(tmp_path / "my-runc")
    assert find_runtime({**os.environ, ociruntime.ENV: str(mine)}) == str(mine)
    assert find_runtime({**os.environ, "BAREBOAT_RUNTIME_OCI": str(mine)}) != str(mine)
