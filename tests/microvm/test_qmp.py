"""Our QMP client against a real QEMU, and against a hostile one (a guest that escaped into
QEMU speaks for it)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest

from bareboat.backends.microvm.qmp import (
    MAX_MESSAGE,
    QmpClient,
    QmpClosed,
    QmpCommandError,
    QmpError,
)

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is missing"
)


@pytest.fixture
def qemu() -> Iterator[QmpClient]:
    """A real QEMU with no machine (it starts at once), its QMP on a socket pair."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "none", "-nodefaults", "-nographic", "-S",
         "-chardev", f"socket,id=qmp,fd={theirs.fileno()},server=off",
         "-mon", "chardev=qmp,mode=control"],
        pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    theirs.close()
    client = QmpClient(ours, timeout=10)
    try:
        yield client
    finally:
        client.close()
        proc.kill()
        proc.wait(10)


@needs_qemu
def test_a_real_qemu_answers_refuses_and_takes_a_descriptor(qemu: QmpClient) -> None:
    greeting = qemu.handshake()
    assert "version" in greeting["QMP"]
    assert qemu.execute("query-status")["status"] == "prelaunch"
    with pytest.raises(QmpCommandError) as refused:
        qemu.execute("no-such-command")
    assert (
        refused.value.error_class == "CommandNotFound" and "no-such-command" in refused.value.desc
    )
    r, w = os.pipe()
    try:
        qemu.send_fd(r)
        assert qemu.execute("getfd", {"fdname": "probe"}) == {}
        assert qemu.execute("closefd", {"fdname": "probe"}) == {}
    finally:
        os.close(r)
        os.close(w)
    # `quit` answers, then QEMU hangs up: the next command finds the connection closed.
    qemu.execute("quit")
    with pytest.raises((QmpClosed, OSError)):
        qemu.execute("query-status")


def _fake(script: list[bytes]) -> tuple[QmpClient, threading.Thread]:
    """A client whose peer sends `script` (one write each, after reading a request for each
    but the first) and then hangs up."""
    ours, theirs = socket.socketpair()

    def serve() -> None:
        with theirs:
            for i, data in enumerate(script):
                if i:
                    theirs.recv(65536)
                theirs.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return QmpClient(ours, timeout=2), t


GREETING = b'{"QMP": {"version": {}, "capabilities": []}}\r\n'


def test_events_are_read_past_and_answers_matched_by_id() -> None:
    event = b'{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}\r\n'
    answer = b'{"return": {"status": "running"}, "id": "bb2"}\r\n'
    client, t = _fake(
        [GREETING, event + b'{"return": {}, "id": "bb1"}\r\n', b"\r\n" + event + answer]
    )
    client.handshake()
    assert client.execute("query-status") == {"status": "running"}
    client.close()
    t.join(5)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "not an object"),
        (b"[" * 100_000 + b"\n", "not JSON"),
        (b'{"return": {}, "id": "someone-else"}\n', "out of turn"),
        (b'{"id": "bb1"}\n', "neither a result nor an error"),
        (b"x" * (MAX_MESSAGE + 10), "over"),
        (b"", "closed"),
    ],
)
def test_a_hostile_answer_is_one_clear_error(answer: bytes, problem: str) -> None:
    client, t = _fake([GREETING, answer])
    with pytest.raises(QmpError, match=problem):
        client.handshake()
    client.close()
    t.join(5)


def test_a_greeting_that_is_not_qmp_is_refused() -> None:
    client, t = _fake([json.dumps({"hello": 1}).encode() + b"\n"])
    with pytest.raises(QmpError, match="did not greet"):
        client.handshake()
    client.close()
    t.join(5)


def test_silence_times_out() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        client = QmpClient(ours, timeout=0.2)
        with pytest.raises(TimeoutError):
            client.handshake()
