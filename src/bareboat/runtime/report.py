"""Errors out of bareboat-runtime: to stderr always, and to `--log` in its format when given
(podman's conmon and containerd's shim read the log file to tell the user what failed)."""

from __future__ import annotations

import sys
import time


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def format_line(msg: str, log_format: str, level: str = "error") -> str:
    msg = " ".join(msg.split())  # one line, whatever the message held
    if log_format == "json":
        import json  # only here: json drags `re` in, and errors in text need neither

        return json.dumps({"level": level, "msg": msg, "time": _now()})
    return f"time={_quote(_now())} level={level} msg={_quote(msg)}"


def _quote(text: str) -> str:
    """logrus's text format quotes values like Go's %q (enough of it for one line)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def error(msg: str, *, log: str = "", log_format: str = "text") -> None:
    line = format_line(msg, log_format)
    if log:
        try:
            with open(log, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass  # the message still reaches stderr below
    print(f"bareboat-runtime: {' '.join(msg.split())}", file=sys.stderr)
