"""Every invocation shape recorded from podman (conmon), containerd's shim and docker parses
into the same plain data."""

from __future__ import annotations

import pytest

from bareboat.errors import UsageError
from bareboat.runtime.args import parse


def test_podman_create() -> None:
    inv = parse(
        [
            "--root=/run/runc",
            "--log=/x/oci-log",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/b/pidfile",
            "--no-new-keyring",
            "--console-socket",
            "/s.sock",
            "abc",
        ]
    )
    assert inv.command == "create"
    assert inv.globals.root == "/run/runc"
    assert inv.globals.log == "/x/oci-log"
    assert inv.globals.systemd_cgroup
    assert inv.flags["--bundle"] == "/b"
    assert inv.flags["--pid-file"] == "/b/pidfile"
    assert inv.flags["--console-socket"] == "/s.sock"
    assert inv.has("--no-new-keyring")
    assert inv.id == "abc"


def test_containerd_shim_create_globals_with_space_and_id_before_flags() -> None:
    inv = parse(
        [
            "--root",
            "/run/containerd/runc/default",
            "--log",
            "/l/log.json",
            "--log-format",
            "json",
            "create",
            "ctr1",
            "--bundle",
            "/b",
            "--pid-file",
            "/b/init.pid",
            "--no-pivot",
        ]
    )
    assert inv.globals.log_format == "json"
    assert inv.id == "ctr1"
    assert inv.flag("--bundle") == "/b"
    assert inv.has("--no-pivot")
    # The command's tokens go to runc unchanged; globals normalised to --x=y.
    assert inv.tokens == ["ctr1", "--bundle", "/b", "--pid-file", "/b/init.pid", "--no-pivot"]
    assert inv.globals.passthrough == [
        "--root=/run/containerd/runc/default",
        "--log=/l/log.json",
        "--log-format=json",
    ]


@pytest.mark.parametrize(
    ("argv", "sig", "all_"),
    [
        (["kill", "c", "15"], "15", False),
        (["kill", "c", "KILL"], "KILL", False),
        (["kill", "--all", "c", "SIGKILL"], "SIGKILL", True),
        (["kill", "c", "9", "--all"], "9", True),
        (["kill", "-a", "c"], None, True),
    ],
)
def test_kill_shapes(argv: list[str], sig: str | None, all_: bool) -> None:
    inv = parse(argv)
    assert inv.id == "c"
    assert (inv.positionals[1] if len(inv.positionals) > 1 else None) == sig
    assert inv.has("--all") == all_


def test_delete_force_both_spellings() -> None:
    assert parse(["delete", "--force", "c"]).has("--force")
    assert parse(["delete", "c", "-f"]).has("--force")
    assert not parse(["delete", "c"]).has("--force")


def test_exec_process_file_detach_tty() -> None:
    inv = parse(
        [
            "--root",
            "/r",
            "exec",
            "--process",
            "/tmp/p.json",
            "--detach",
            "--pid-file",
            "/tmp/exec.pid",
            "--tty",
            "--console-socket",
            "/tmp/c.sock",
            "c1",
        ]
    )
    assert inv.flag("--process") == "/tmp/p.json"
    assert inv.has("--detach") and inv.has("--tty")
    assert inv.id == "c1" and inv.trailer == []


def test_exec_flags_form_keeps_command_flags_as_args() -> None:
    inv = parse(
        [
            "exec",
            "--cwd",
            "/tmp",
            "-e",
            "A=1",
            "--env=B=2",
            "-u",
            "1000:1000",
            "c1",
            "sh",
            "-c",
            "echo -e hi",
        ]
    )
    assert inv.multi["--env"] == ["A=1", "B=2"]
    assert inv.flag("--user") == "1000:1000"
    assert inv.flag("--cwd") == "/tmp"
    assert inv.trailer == ["sh", "-c", "echo -e hi"]


def test_ps_update_list_features_spec() -> None:
    assert parse(["ps", "--format", "json", "c"]).flag("--format") == "json"
    assert parse(["ps", "--format=json", "c"]).flag("--format") == "json"
    assert parse(["update", "--resources", "-", "c"]).flag("--resources") == "-"
    assert parse(["update", "-r", "/f.json", "c"]).flag("--resources") == "/f.json"
    assert parse(["list", "--format", "json"]).command == "list"
    assert parse(["features"]).command == "features"
    assert parse(["spec", "--bundle", "/b"]).flag("--bundle") == "/b"
    for cmd in ("start", "state", "pause", "resume"):
        assert parse(["--debug", cmd, "x"]).id == "x"


def test_version_alone() -> None:
    inv = parse(["--version"])
    assert inv.globals.version and inv.command == ""


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate", "x"],
        ["start"],
        ["state", "a", "b"],
        ["create", "--bundle"],
        ["create", "--bogus", "x"],
        ["--log-format", "xml", "state", "x"],
        ["--nope", "state", "x"],
    ],
)
def test_bad_usage_is_one_usage_error(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse(argv)
