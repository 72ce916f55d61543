"""`bench pull` runs end to end (tiny sizes); the numbers themselves live in bench/results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bareboat.cli.main import main


@pytest.mark.slow
def test_bench_pull_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    for tool in ("skopeo", "umoci", "docker-registry"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    out = tmp_path / "results"
    assert main(["bench", "pull", "--runs", "1", "--big-mb", "2", "--out", str(out)]) == 0
    doc = json.loads((out / "pull.json").read_text())
    assert set(doc["results"]) == {"small", "big"}
    assert all(r["bareboat"] > 0 and r["peers"] > 0 for r in doc["results"].values())
    assert (out / "pull.png").stat().st_size > 0
    assert "ratio" in capsys.readouterr().out
