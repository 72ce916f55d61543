"""The docker-style flag parsers: good values become data, bad ones one clear UsageError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bareboat.errors import UsageError
from bareboat.spec.options import Mount, PortMapping, Rlimit
from bareboat.spec.parse import (
    RLIM_INFINITY,
    parse_cpus,
    parse_env,
    parse_label,
    parse_memory,
    parse_network,
    parse_pids_limit,
    parse_publish,
    parse_tmpfs,
    parse_ulimit,
    parse_volume,
    parse_workdir,
)


def one_line_usage_error(excinfo: pytest.ExceptionInfo[UsageError]) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


# --- volumes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/host:/data", Mount("/data", "bind", "/host", False)),
        ("/host:/data:ro", Mount("/data", "bind", "/host", True)),
        ("/host/:/data/x/../y:rw", Mount("/data/y", "bind", "/host", False)),
        ("/a/b:/c", Mount("/c", "bind", "/a/b", False)),
    ],
)
def test_volume(value: str, expected: Mount) -> None:
    assert parse_volume(value) == expected


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("myvol:/data", "named volumes are not supported"),
        ("relative/x:/data", "named volumes are not supported"),
        ("/host:data", "absolute"),
        ("/host:/", "cannot be /"),
        ("/host:/data:z", "mode must be ro or rw"),
        ("/host", "SRC:DST"),
        ("/a:/b:ro:x", "SRC:DST"),
        (":/data", "SRC:DST"),
    ],
)
def test_volume_bad(value: str, needle: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_volume(value)
    assert needle in one_line_usage_error(e)


# --- tmpfs --------------------------------------------------------------------------------


def test_tmpfs() -> None:
    assert parse_tmpfs("/run") == Mount("/run", "tmpfs", "tmpfs")
    m = parse_tmpfs("/tmp:size=64m,mode=1777,exec,ro")
    assert m == Mount("/tmp", "tmpfs", "tmpfs", True, ("size=64m", "mode=1777", "exec"))


@pytest.mark.parametrize(
    "value",
    ["run", "/", "/x:bind", "/x:rbind", "/x:size=", "/x:foo=1", "/x:size=1m;rm", ":size=1m"],
)
def test_tmpfs_bad(value: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_tmpfs(value)
    one_line_usage_error(e)


# --- memory, cpus, pids -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512m", 512 << 20),
        ("1g", 1 << 30),
        ("1G", 1 << 30),
        ("1gb", 1 << 30),
        ("1GiB", 1 << 30),
        ("1.5g", 3 << 29),
        ("100000000", 100_000_000),
        ("8192k", 8 << 20),
        ("6m", 6 << 20),
    ],
)
def test_memory(value: str, expected: int) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["", "m", "-1g", "1x", "1 g b", "1e9", "5m", "100000"])
def test_memory_bad(value: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_memory(value)
    one_line_usage_error(e)


@given(st.integers(min_value=6, max_value=1 << 20), st.sampled_from(["m", "M", "mb", "MiB"]))
def test_memory_units_roundtrip(n: int, unit: str) -> None:
    assert parse_memory(f"{n}{unit}") == n << 20


def test_cpus() -> None:
    assert parse_cpus("1.5") == 1.5
    assert parse_cpus("0.01") == 0.01
    for bad in ["0", "-1", "abc", "nan", "inf", "0.001", "2000"]:
        with pytest.raises(UsageError):
            parse_cpus(bad)


def test_pids_limit() -> None:
    assert parse_pids_limit("100") == 100
    assert parse_pids_limit("0") is None
    assert parse_pids_limit("-1") is None
    for bad in ["-2", "x", "1.5"]:
        with pytest.raises(UsageError):
            parse_pids_limit(bad)


def test_sizes_are_bounded_by_what_runtimes_and_the_kernel_take() -> None:
    # The runtime spec's memory limit is an int64; pids.max takes at most PID_MAX_LIMIT.
    assert parse_memory("8191p") == 8191 << 50
    assert parse_pids_limit("4194304") == 4194304
    for bad_memory in ["8192p", "99999999999g", "9223372036854775808"]:
        with pytest.raises(UsageError, match="too large") as e:
            parse_memory(bad_memory)
        one_line_usage_error(e)
    for bad_pids in ["4194305", "9223372036854775807", "1" + "0" * 400]:
        with pytest.raises(UsageError, match="4194304"):
            parse_pids_limit(bad_pids)


# --- publish ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8080:80", PortMapping(8080, 80, "tcp", "127.0.0.1")),
        ("8080:80/udp", PortMapping(8080, 80, "udp", "127.0.0.1")),
        ("0.0.0.0:8080:80", PortMapping(8080, 80, "tcp", "0.0.0.0")),
        ("[::1]:53:53/udp", PortMapping(53, 53, "udp", "::1")),
    ],
)
def test_publish(value: str, expected: PortMapping) -> None:
    assert parse_publish(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "80",
        "0:80",
        "8080:70000",
        "a:80",
        "8080:80/sctp",
        "1.2.3:80:80",
        "[::1:80:80",
        "host:80:80",
        "1:2:3:4",
    ],
)
def test_publish_bad(value: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_publish(value)
    one_line_usage_error(e)


@given(st.integers(1, 65535), st.integers(1, 65535), st.sampled_from(["tcp", "udp"]))
def test_publish_roundtrip(host: int, guest: int, proto: str) -> None:
    m = parse_publish(f"{host}:{guest}/{proto}")
    assert (m.host_port, m.guest_port, m.protocol) == (host, guest, proto)


# --- env, labels, ulimits -----------------------------------------------------------------


def test_env() -> None:
    assert parse_env("A=1") == "A=1"
    assert parse_env("A=") == "A="
    assert parse_env("A=b=c") == "A=b=c"
    assert parse_env("HOMEDIR", {"HOMEDIR": "/x"}) == "HOMEDIR=/x"
    assert parse_env("MISSING", {}) is None  # docker leaves it out
    for bad in ["=1", "", "A=\0"]:
        with pytest.raises(UsageError):
            parse_env(bad, {})


def test_env_bare_key_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAREBOAT_TEST_VAR", "hello")
    assert parse_env("BAREBOAT_TEST_VAR") == "BAREBOAT_TEST_VAR=hello"


@given(
    st.text(st.characters(blacklist_characters="=\0"), min_size=1),
    st.text(st.characters(blacklist_characters="\0")),
)
def test_env_roundtrip(key: str, value: str) -> None:
    assert parse_env(f"{key}={value}", {}) == f"{key}={value}"


def test_label() -> None:
    assert parse_label("a=b") == ("a", "b")
    assert parse_label("a=b=c") == ("a", "b=c")
    assert parse_label("flag") == ("flag", "")
    for bad in ["=x", "", " a=b"]:
        with pytest.raises(UsageError):
            parse_label(bad)


def test_ulimit() -> None:
    assert parse_ulimit("nofile=1024:2048") == Rlimit("RLIMIT_NOFILE", 1024, 2048)
    assert parse_ulimit("nproc=100") == Rlimit("RLIMIT_NPROC", 100, 100)
    assert parse_ulimit("core=-1") == Rlimit("RLIMIT_CORE", RLIM_INFINITY, RLIM_INFINITY)
    assert parse_ulimit("core=0:-1") == Rlimit("RLIMIT_CORE", 0, RLIM_INFINITY)
    for bad in ["nofile", "nofile=", "bogus=1", "nofile=2048:1024", "nofile=x", "nofile=-2"]:
        with pytest.raises(UsageError) as e:
            parse_ulimit(bad)
        one_line_usage_error(e)


def test_network_and_workdir() -> None:
    assert parse_network("host") == "host"
    assert parse_network("user,host-loopback") == "user,host-loopback"
    assert parse_network("user,host-loopback,host-loopback") == "user,host-loopback"
    for bad in ("bridge", "user,bogus", "none,host-loopback", "host,host-loopback", "user,"):
        with pytest.raises(UsageError) as e:
            parse_network(bad)
        one_line_usage_error(e)
    assert parse_workdir("/srv/../app/") == "/app"
    with pytest.raises(UsageError):
        parse_workdir("app")
