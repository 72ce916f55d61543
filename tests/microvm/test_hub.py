"""The hub's control socket against hostile clients, with the real guest init (test mode) as
the VM's agent: no VM boots, the relay and the protocol are the ones a VM gets.

Any root process can connect to a VM's control socket (bareboat's CLI and bareboat-runtime do),
so what a client sends is input to check: garbage, oversized and truncated frames, frames a
client may not send and malformed payloads get that client REFUSED and a closed connection.
The VM (here the init process) runs on, the workload's exit is its own, and good clients are
still served.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bareboat import control as ctl
from bareboat.backends.microvm.agent import (
    Frame,
    FrameDecoder,
    FrameType,
    ProcessSpec,
    StartSpec,
    encode_frame,
    encode_process,
    encode_start,
)
from bareboat.backends.microvm.hub import MAX_CLIENTS, ExitRecord, Hub
from bareboat.backends.microvm.initbuild import build_init
from bareboat.control import ControlClient
from bareboat.paths import Roots

pytestmark = pytest.mark.skipif(shutil.which("musl-gcc") is None, reason="musl-gcc is missing")


@dataclass
class RunningHub:
    hub: Hub
    init: subprocess.Popen[bytes]
    stdin: int  # the workload's stdin, our end
    stdout: int  # the workload's stdout, our end
    ctl: Path
    exit: Path


def _until(
    sock: socket.socket, decoder: FrameDecoder, want: FrameType, *, after: list[Frame] | None = None
) -> list[Frame]:
    """Frames from the agent up to and including the first of type `want`; those that came
    in the same read after it go to `after` (a workload's EXIT can follow its STARTED)."""
    got: list[Frame] = []
    sock.settimeout(10)
    while not got or got[-1].type is not want:
        data = sock.recv(65536)
        assert data, "the init closed the channel"
        got += decoder.feed(data)
        for i, f in enumerate(got):
            if f.type is want:
                if after is not None:
                    after += got[i + 1 :]
                return got[: i + 1]
    return got


@pytest.fixture
def running(roots: Roots, tmp_path: Path) -> Iterator[RunningHub]:
    init = build_init(roots)
    host, guest = socket.socketpair()
    proc = subprocess.Popen(
        [str(init), "--test-fd", str(guest.fileno())], pass_fds=[guest.fileno()]
    )
    guest.close()
    decoder = FrameDecoder()
    host.sendall(encode_frame(Frame(FrameType.HELLO, 0)))
    _until(host, decoder, FrameType.HELLO)
    spec = ProcessSpec(args=["/bin/sh", "-c", "read x; echo got:$x; exit 5"], env=["PATH=/bin"])
    host.sendall(encode_frame(Frame(FrameType.START, 0, encode_start(StartSpec(process=spec)))))
    _until(host, decoder, FrameType.STARTED)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    hub = Hub(
        host,
        stdin=in_r,
        stdout=out_w,
        stderr=err_w,
        ctl_path=tmp_path / "hub.sock",
        exit_path=tmp_path / "exit.json",
        qemu_pid=proc.pid,
        decoder=decoder,
    )
    hub.start()
    try:
        yield RunningHub(hub, proc, in_w, out_r, tmp_path / "hub.sock", tmp_path / "exit.json")
    finally:
        hub.stop()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)
        for fd in (in_w, out_r, err_r):
            with contextlib.suppress(OSError):
                os.close(fd)


def _header(ftype: int, session: int, length: int) -> bytes:
    return ctl.HEADER.pack(ctl.MAGIC, ctl.VERSION, ftype, session, length)


def _send_raw(ctl: Path, data: bytes, *, close_early: bool = False) -> bytes:
    """Send `data` as a client would; what the hub answered before it closed (b"" if the
    client hung up first)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(ctl))
        s.sendall(data)
        if close_early:
            return b""
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got


def _refusal(answer: bytes) -> str:
    frames = ctl.Decoder(ctl.EVENT_LIMITS, "hub").feed(answer)
    assert [f[0] for f in frames] == [ctl.Type.REFUSED], answer
    return frames[0][2].decode()


BAD_CLIENTS = {
    "garbage": (b"this is not a frame at all", "bad magic"),
    "oversized": (_header(ctl.Type.STDIN, 1, ctl.MAX_DATA + 1), "limit"),
    "signal of 3 bytes": (_header(ctl.Type.SIGNAL, 0, 3) + b"\0\0\x0f", "4 bytes"),
    "signal 999": (ctl.encode(ctl.Type.SIGNAL, 0, (999).to_bytes(4, "big")), "999"),
    "signal 0": (ctl.encode(ctl.Type.SIGNAL, 0, bytes(4)), "no signal 0"),
    "resize of 5 bytes": (_header(ctl.Type.RESIZE, 0, 5) + bytes(5), "4 bytes"),
    "exec as session 0": (ctl.encode(ctl.Type.EXEC, 0, b"x"), "session"),
    "an agent's START": (encode_frame(Frame(FrameType.START, 0, b"")), "bad magic"),
    "an agent's HELLO": (encode_frame(Frame(FrameType.HELLO, 0)), "bad magic"),
    "a hub's frame": (_header(ctl.Type.DONE, 0, 0), "DONE"),
    "unknown type": (_header(15, 0, 0), "unknown frame type 15"),
    "bad version": (ctl.HEADER.pack(ctl.MAGIC, 9, ctl.Type.SIGNAL, 0, 4), "version"),
}


def test_bad_control_clients_get_an_error_and_the_vm_lives(running: RunningHub) -> None:
    for name, (data, reason) in BAD_CLIENTS.items():
        assert reason in _refusal(_send_raw(running.ctl, data)), name
    # Truncated: a header that promises more than comes, a header cut short. Nothing of either
    # may reach the guest.
    _send_raw(running.ctl, _header(ctl.Type.SIGNAL, 0, 4) + b"\0\0", close_early=True)
    _send_raw(running.ctl, ctl.encode(ctl.Type.SIGNAL, 0, b"\0\0\0\x09")[:7], close_early=True)
    # More connections than the hub serves: the ones over the limit are refused.
    crowd = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(MAX_CLIENTS + 8)]
    try:
        for s in crowd:
            s.connect(str(running.ctl))
        crowd[-1].settimeout(5)
        assert "too many" in _refusal(crowd[-1].recv(65536))
    finally:
        for s in crowd:
            s.close()

    time.sleep(0.3)
    assert running.init.poll() is None, "the VM died of a control client"
    assert not running.hub.done.is_set() and not running.exit.exists()

    # A good client is served: an exec session runs to its end.
    out_r, out_w = os.pipe()
    with ControlClient(running.ctl) as c:
        code = c.exec(
            encode_process(ProcessSpec(args=["/bin/echo", "still here"])),
            stdin=None,
            stdout=out_w,
            stderr=out_w,
        )
    os.close(out_w)
    with os.fdopen(out_r, "rb") as f:
        assert (code, f.read()) == (0, b"still here\n")

    # The workload ends by itself, with its own code and no error charged to it.
    os.write(running.stdin, b"hello\n")
    assert running.hub.done.wait(10)
    assert os.read(running.stdout, 100) == b"got:hello\n"
    assert ExitRecord.load(running.exit) == ExitRecord(5, "")


def test_a_good_signal_still_reaches_the_workload(running: RunningHub) -> None:
    with ControlClient(running.ctl) as c:
        c.signal(15)
    assert running.hub.done.wait(10)
    assert ExitRecord.load(running.exit) == ExitRecord(128 + 15, "")


def test_a_good_resize_is_taken(running: RunningHub) -> None:
    good = ctl.encode(ctl.Type.RESIZE, 0, struct.pack(">HH", 24, 80))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(running.ctl))
        s.sendall(good)
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(100)  # accepted: no answer, the connection stays open


@pytest.mark.parametrize("kill", [True, False])
def test_a_vm_with_nothing_to_flush_is_killed_once_the_exit_is_recorded(
    roots: Roots, tmp_path: Path, kill: bool
) -> None:
    """kill_after_exit: the exit is saved, then QEMU (here a stand-in process) is SIGKILLed
    without waiting for the guest to power off; otherwise it is left to end by itself."""
    init = build_init(roots)
    host, guest = socket.socketpair()
    proc = subprocess.Popen(
        [str(init), "--test-fd", str(guest.fileno())], pass_fds=[guest.fileno()]
    )
    guest.close()
    qemu = subprocess.Popen(["sleep", "60"])
    decoder = FrameDecoder()
    host.sendall(encode_frame(Frame(FrameType.HELLO, 0)))
    _until(host, decoder, FrameType.HELLO)
    spec = ProcessSpec(args=["/bin/sh", "-c", "exit 3"], env=["PATH=/bin"])
    host.sendall(encode_frame(Frame(FrameType.START, 0, encode_start(StartSpec(process=spec)))))
    pending: list[Frame] = []
    _until(host, decoder, FrameType.STARTED, after=pending)
    out_r, out_w = os.pipe()
    hub = Hub(
        host,
        stdin=None,
        stdout=out_w,
        stderr=os.dup(out_w),
        ctl_path=tmp_path / "hub.sock",
        exit_path=tmp_path / "exit.json",
        qemu_pid=qemu.pid,
        decoder=decoder,
        pending=pending,
        kill_after_exit=kill,
    )
    hub.start()
    try:
        assert hub.done.wait(10)  # the init (test mode) ends on the POWEROFF that follows EXIT
        assert ExitRecord.load(tmp_path / "exit.json") == ExitRecord(3)
        if kill:
            assert qemu.wait(5) == -9
        else:
            with pytest.raises(subprocess.TimeoutExpired):
                qemu.wait(0.2)
    finally:
        hub.stop()
        qemu.kill()
        qemu.wait(5)
        proc.wait(5)
        os.close(out_r)
