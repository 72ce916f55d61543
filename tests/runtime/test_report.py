"""Error lines: JSON lines with level/msg/time for `--log-format json`, logrus-style text
otherwise; always one line."""

from __future__ import annotations

import json
from pathlib import Path

from bareboat.runtime.report import error, format_line


def test_json_line() -> None:
    data = json.loads(format_line("bad\nthing", "json"))
    assert set(data) == {"level", "msg", "time"}
    assert (data["level"], data["msg"]) == ("error", "bad thing")
    assert data["time"].endswith("Z")


def test_text_line_quotes() -> None:
    line = format_line('say "hi" \\ now', "text")
    assert line.startswith('time="') and line.endswith('msg="say \\"hi\\" \\\\ now"')
    assert " level=error " in line


def test_error_appends_to_log_and_stderr(tmp_path: Path, capsys: object) -> None:
    log = tmp_path / "log.json"
    error("first", log=str(log), log_format="json")
    error("second", log=str(log), log_format="json")
    assert [json.loads(x)["msg"] for x in log.read_text().splitlines()] == ["first", "second"]
    error("unwritable log", log=str(tmp_path / "no" / "such" / "log"))
