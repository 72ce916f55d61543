"""config.json -> what the guest runs, tested as data."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bareboat.backends.microvm import vmspec
from bareboat.backends.microvm.vmspec import GuestFile, GuestMount
from bareboat.errors import UsageError
from bareboat.spec.options import Rlimit

MIB = 1 << 20
CLIENT_CONFIGS = Path("/work/shared/fixtures/oci-client-configs")


def config(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {
            "args": ["/bin/sh", "-c", "echo hi"],
            "env": ["PATH=/bin", "A=b=c"],
            "cwd": "/home/app",
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [50], "umask": 0o22},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048}],
            "terminal": True,
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "box",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]},
            {
                "destination": "/scratch",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["size=16m", "noexec"],
            },
        ],
        "linux": {
            "resources": {
                "cpu": {"quota": 150000, "period": 100000},
                "memory": {"limit": 300 * MIB + 1},
            }
        },
    }
    base.update(over)
    return base


def test_full_config() -> None:
    spec = vmspec.parse_config(config())
    p = spec.process
    assert p.args == ("/bin/sh", "-c", "echo hi")
    assert p.env == ("PATH=/bin", "A=b=c")
    assert (p.cwd, p.uid, p.gid, p.additional_gids, p.umask) == ("/home/app", 1000, 1000, (50,), 18)
    assert p.rlimits == (Rlimit("RLIMIT_NOFILE", 1024, 2048),)
    assert p.terminal and p.no_new_privileges
    assert spec.hostname == "box"
    assert spec.mounts == (GuestMount("/scratch", "tmpfs", ("size=16m", "noexec")),)
    assert spec.vcpus == 2  # ceil(1.5)
    assert spec.memory == 301 * MIB  # rounded up to whole MiB, never less than asked


def test_defaults_and_floors() -> None:
    spec = vmspec.parse_config({"process": {"args": ["true"]}})
    assert (spec.vcpus, spec.memory) == (1, vmspec.DEFAULT_MEMORY)
    assert spec.process.cwd == "/" and spec.process.umask is None
    small = config(
        linux={
            "resources": {"memory": {"limit": 6 * MIB}, "cpu": {"quota": 1000, "period": 100000}}
        }
    )
    s = vmspec.parse_config(small)
    assert (s.vcpus, s.memory) == (1, vmspec.MIN_MEMORY)
    unlimited = config(linux={"resources": {"memory": {"limit": -1}, "cpu": {"quota": -1}}})
    assert vmspec.parse_config(unlimited).memory == vmspec.DEFAULT_MEMORY


def test_bind_mounts_become_9p_shares() -> None:
    cfg = config(mounts=[{"destination": "/data", "type": "bind", "source": "/srv",
                          "options": ["rbind", "rprivate", "ro", "nosuid"]}])  # fmt: skip
    assert vmspec.parse_config(cfg).mounts == (
        GuestMount("/data", "9p", ("ro", "nosuid"), source="/srv"),
    )
    odd = config(mounts=[{"destination": "/data", "type": "bind", "source": "/srv",
                          "options": ["rbind", "idmap"]}])  # fmt: skip
    with pytest.raises(UsageError, match="idmap"):
        vmspec.parse_config(odd)


def test_runtime_files_are_copied_not_mounted() -> None:
    cfg = config(mounts=[{"destination": "/etc/hosts", "type": "bind", "source": "/x/hosts",
                          "options": ["rbind", "ro"]}])  # fmt: skip
    assert vmspec.parse_config(cfg).files == (GuestFile("/etc/hosts", "/x/hosts", True),)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("process", "args"), [], "no command"),
        (("process", "args"), "sh", "list of strings"),
        (("process", "args"), ["a\0b"], "NUL"),
        (("process", "env"), ["NOEQUALS"], "NAME=VALUE"),
        (("process", "cwd"), "relative", "absolute"),
        (("process", "user"), {"uid": -1}, "uid"),
        (("process", "user"), {"uid": True}, "uid"),
        (("process", "user"), {"umask": 0o1000}, "umask"),
        (("process", "rlimits"), [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}], "rlimit"),
        (("process", "rlimits"), [{"type": "RLIMIT_CORE", "soft": 2, "hard": 1}], "soft"),
        (("hostname",), "a/b", "hostname"),
        (("mounts",), [{"destination": "/x", "type": "nfs", "source": "h:/"}], "nfs"),
        (("mounts",), [{"destination": "/x", "type": "tmpfs", "options": ["bogus"]}], "bogus"),
        (("linux",), {"resources": {"memory": {"limit": "1g"}}}, "memory.limit"),
    ],
)
def test_bad_configs_are_one_clear_error(path: tuple[str, ...], value: Any, match: str) -> None:
    cfg = config()
    target = cfg
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(UsageError, match=match):
        vmspec.parse_config(cfg)


@pytest.mark.skipif(not CLIENT_CONFIGS.is_dir(), reason="recorded client configs not present")
@pytest.mark.parametrize("client", ["podman", "docker", "ctr", "cri"])
def test_configs_real_clients_sent(client: str) -> None:
    path = CLIENT_CONFIGS / f"config-{client}-runc-wrap-1.json"
    spec = vmspec.parse_config(json.loads(path.read_text()))
    assert spec.process.args
    # the standard mounts are the guest's own; ctr's /run tmpfs is made in the guest
    assert all(m.fstype == "tmpfs" and m.destination == "/run" for m in spec.mounts)
    assert {f.path for f in spec.files} <= vmspec.COPIED_FILES


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "process": st.fixed_dictionaries(
                {},
                optional={
                    "args": json_values,
                    "env": json_values,
                    "cwd": json_values,
                    "user": json_values,
                    "rlimits": json_values,
                    "terminal": json_values,
                },
            ),
            "mounts": json_values,
            "hostname": json_values,
            "linux": json_values,
            "root": json_values,
        },
    )
)
def test_hostile_configs_only_ever_raise_usage_errors(cfg: dict[str, Any]) -> None:
    with contextlib.suppress(UsageError):
        vmspec.parse_config(cfg)


def test_podman_tmpfs_options_propagation_dropped_copyup_kept() -> None:
    # What `podman run --read-only` / `--tmpfs` put in config.json.
    mounts = [
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
         "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
         "options": ["rw", "rprivate", "noexec", "notmpcopyup", "size=1m"]},
    ]  # fmt: skip
    spec = vmspec.parse_config({"process": {"args": ["true"]}, "mounts": mounts})
    assert spec.mounts == (
        GuestMount("/run", "tmpfs", ("rw", "nosuid", "nodev"), copyup=True),
        GuestMount("/scratch", "tmpfs", ("rw", "noexec", "size=1m")),
    )


def test_copyup_only_over_nothing(tmp_path: Path) -> None:
    from bareboat.backends.microvm.backend import check_copyup
    from bareboat.errors import UsageError

    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "pidfile").write_text("1")
    for dest in ("/empty", "/absent"):
        check_copyup(vmspec.VmSpec(vmspec.GuestProcess(("true",)), mounts=(
            GuestMount(dest, "tmpfs", copyup=True),)), tmp_path)  # fmt: skip
    with pytest.raises(UsageError, match="tmpcopyup"):
        check_copyup(vmspec.VmSpec(vmspec.GuestProcess(("true",)), mounts=(
            GuestMount("/full", "tmpfs", copyup=True),)), tmp_path)  # fmt: skip


def test_a_vm_must_fit_the_host() -> None:
    spec = vmspec.parse_config(
        config(
            linux={
                "resources": {
                    "cpu": {"quota": 400000, "period": 100000},
                    "memory": {"limit": 301 * MIB},
                }
            }
        )
    )
    vmspec.check_host(spec, vmspec.HostSize(cpus=4, memory=spec.memory))
    with pytest.raises(UsageError, match=r"4 vCPUs .* this host has 2"):
        vmspec.check_host(spec, vmspec.HostSize(cpus=2, memory=1 << 40))
    with pytest.raises(UsageError, match=r"301 MiB .* host.s 256 MiB"):
        vmspec.check_host(spec, vmspec.HostSize(cpus=8, memory=256 * MIB))
    too_many = config(linux={"resources": {"cpu": {"quota": 6500, "period": 100}}})
    with pytest.raises(UsageError, match="at most 64 vCPUs, not 65"):
        vmspec.parse_config(too_many)  # refused, no longer cut to 64 without a word
    here = vmspec.HostSize.current()
    assert here.cpus >= 1 and here.memory > 64 * MIB
