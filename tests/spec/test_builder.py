"""The config.json builder, tested as data; every spec it makes must pass the OCI schema."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bareboat.errors import ImageError, UsageError
from bareboat.images.model import ImageConfig
from bareboat.spec import defaults
from bareboat.spec.builder import (
    build_mounts,
    build_spec,
    exec_process,
    merge_env,
    process_args,
    working_dir,
    write_bundle,
)
from bareboat.spec.etcfiles import etc_files
from bareboat.spec.options import Isolation, Mount, PortMapping, Rlimit, RunOptions
from bareboat.spec.parse import parse_tmpfs, parse_volume
from bareboat.spec.users import User
from tests.spec.schema import validate_config
from tests.support.imagebuild import GROUP, PASSWD

CID = "0123456789abcdef0123"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def spec_of(rootfs: Path, config: ImageConfig | None = None, **options: Any) -> dict[str, Any]:
    spec = build_spec(
        config or ImageConfig(cmd=("/bin/sh",)),
        RunOptions(**options),
        rootfs=rootfs,
        container_id=CID,
        nofile=4096,
    )
    validate_config(spec)
    return spec


def env_dict(spec: dict[str, Any]) -> dict[str, str]:
    pairs = [e.partition("=") for e in spec["process"]["env"]]
    assert len({k for k, _, _ in pairs}) == len(pairs), "duplicate keys in env"
    return {k: v for k, _, v in pairs}


# --- args ---------------------------------------------------------------------------------

IMG = ImageConfig(entrypoint=("/ep", "-x"), cmd=("c1", "c2"))


@pytest.mark.parametrize(
    ("config", "entrypoint", "command", "expected"),
    [
        (IMG, None, None, ["/ep", "-x", "c1", "c2"]),
        (IMG, None, ("new",), ["/ep", "-x", "new"]),
        (IMG, ("/other",), None, ["/other"]),  # --entrypoint drops the image's cmd
        (IMG, ("/other",), ("a",), ["/other", "a"]),
        (IMG, (), ("sh",), ["sh"]),  # --entrypoint "" resets it
        (ImageConfig(cmd=("sh",)), None, None, ["sh"]),
        (ImageConfig(entrypoint=("/ep",)), None, None, ["/ep"]),
        (ImageConfig(), None, ("echo", "hi"), ["echo", "hi"]),
    ],
)
def test_args(
    config: ImageConfig,
    entrypoint: tuple[str, ...] | None,
    command: tuple[str, ...] | None,
    expected: list[str],
) -> None:
    assert process_args(config, RunOptions(entrypoint=entrypoint, command=command)) == expected


@pytest.mark.parametrize(
    ("config", "options"),
    [
        (ImageConfig(), RunOptions()),
        (ImageConfig(cmd=("sh",)), RunOptions(entrypoint=())),
        (ImageConfig(entrypoint=("/ep",)), RunOptions(entrypoint=(), command=None)),
    ],
)
def test_no_command(config: ImageConfig, options: RunOptions) -> None:
    with pytest.raises(UsageError, match=r"^no command specified$"):
        process_args(config, options)


# --- env ----------------------------------------------------------------------------------


def test_env_defaults(rootfs: Path) -> None:
    env = env_dict(spec_of(rootfs, ImageConfig(cmd=("sh",))))
    assert env == {"PATH": defaults.DEFAULT_PATH, "HOSTNAME": CID[:12], "HOME": "/root"}


def test_env_merge_order() -> None:
    config = ImageConfig(
        cmd=("sh",),
        env=("PATH=/img/bin", "A=image", "B=image", "NOEQUALS", "=x", "A=image2", "TERM=vt100"),
    )
    options = RunOptions(env=("B=user", "C=user", "TERM", "HOME=/h"), tty=True)
    env = merge_env(config, options, hostname="h", home="/root")
    assert env == ["PATH=/img/bin", "HOSTNAME=h", "A=image2", "B=user", "C=user", "HOME=/h"]


def test_env_tty_and_home(rootfs: Path) -> None:
    env = env_dict(spec_of(rootfs, tty=True, user="app"))
    assert env["TERM"] == "xterm" and env["HOME"] == "/home/app"
    env = env_dict(spec_of(rootfs, ImageConfig(cmd=("sh",), env=("HOME=/img",)), user="app"))
    assert env["HOME"] == "/img"  # set by the image: kept


def test_env_bad_user_entry(rootfs: Path) -> None:
    with pytest.raises(UsageError):
        spec_of(rootfs, env=("=x",))


# --- process ------------------------------------------------------------------------------


def test_workdir() -> None:
    assert working_dir(ImageConfig(), RunOptions()) == "/"
    assert working_dir(ImageConfig(workdir="srv/app"), RunOptions()) == "/srv/app"
    assert working_dir(ImageConfig(workdir="/srv"), RunOptions(workdir="/x/")) == "/x"
    with pytest.raises(UsageError, match="absolute"):
        working_dir(ImageConfig(), RunOptions(workdir="rel"))


def test_user_and_groups(rootfs: Path) -> None:
    s = spec_of(rootfs, user="app")
    assert s["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [50]}
    s = spec_of(rootfs, ImageConfig(cmd=("sh",), user="nobody"))
    assert s["process"]["user"] == {"uid": 65534, "gid": 65534}
    s = spec_of(rootfs, ImageConfig(cmd=("sh",), user="nobody"), user="1000:50")
    assert s["process"]["user"] == {"uid": 1000, "gid": 50}
    with pytest.raises(UsageError, match="unable to find user ghost"):
        spec_of(rootfs, user="ghost")


def test_user_given_skips_the_rootfs(tmp_path: Path) -> None:
    spec = build_spec(
        ImageConfig(cmd=("sh",)),
        RunOptions(user="whoever"),
        rootfs=tmp_path / "does-not-exist",
        container_id=CID,
        user=User(7, 8, (9,), "/seven"),
    )
    assert spec["process"]["user"] == {"uid": 7, "gid": 8, "additionalGids": [9]}
    assert "HOME=/seven" in spec["process"]["env"]


def test_process_defaults(rootfs: Path) -> None:
    p = spec_of(rootfs)["process"]
    assert p["terminal"] is False and p["noNewPrivileges"] is False and p["cwd"] == "/"
    caps = p["capabilities"]
    assert set(caps) == {"bounding", "effective", "permitted"}
    assert caps["bounding"] == list(defaults.CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in caps["bounding"]
    assert p["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}]


def test_rlimits(rootfs: Path) -> None:
    rl = (Rlimit("RLIMIT_NOFILE", 10, 20), Rlimit("RLIMIT_NPROC", 5, 5))
    p = spec_of(rootfs, rlimits=rl)["process"]
    assert p["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 20, "soft": 10},
        {"type": "RLIMIT_NPROC", "hard": 5, "soft": 5},
    ]
    with pytest.raises(UsageError):
        spec_of(rootfs, rlimits=(Rlimit("RLIMIT_CORE", 2, 1),))


def test_default_nofile_is_attainable() -> None:
    import resource

    n = defaults.attainable_nofile()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert n == defaults.DEFAULT_NOFILE or n == hard


# --- root, hostname, namespaces, annotations ----------------------------------------------


def test_root_and_hostname(rootfs: Path) -> None:
    s = spec_of(rootfs)
    assert s["root"] == {"path": str(rootfs), "readonly": False}
    assert s["hostname"] == CID[:12]
    s = spec_of(rootfs, read_only=True, hostname="web-1.local")
    assert s["root"]["readonly"] is True and s["hostname"] == "web-1.local"
    s = build_spec(
        ImageConfig(cmd=("sh",)), RunOptions(), rootfs=rootfs, container_id=CID, root_path="rootfs"
    )
    assert s["root"]["path"] == "rootfs"
    for bad in ["-x", "a b", "a" * 65, "x/y"]:
        with pytest.raises(UsageError):
            spec_of(rootfs, hostname=bad)


def test_namespaces(rootfs: Path) -> None:
    kinds = [n["type"] for n in spec_of(rootfs)["linux"]["namespaces"]]
    assert sorted(kinds) == ["cgroup", "ipc", "mount", "network", "pid", "uts"]
    s = spec_of(rootfs, network="host")
    kinds = [n["type"] for n in s["linux"]["namespaces"]]
    assert "network" not in kinds and "uts" not in kinds and "hostname" not in s
    assert "sysctl" not in s["linux"]  # the host's network: never change its settings
    assert spec_of(rootfs)["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"] == "0"
    assert env_dict(s)["HOSTNAME"] == os.uname().nodename
    with pytest.raises(UsageError, match="conflicting"):
        spec_of(rootfs, network="host", hostname="x")
    with pytest.raises(UsageError):
        spec_of(rootfs, network="bridge")


def test_annotations(rootfs: Path) -> None:
    config = ImageConfig(cmd=("sh",), labels={"a": "image", "b": "image"})
    s = spec_of(rootfs, config, labels={"b": "user"}, isolation=Isolation.MICROVM)
    assert s["annotations"] == {
        "b": "user",
        "io.bareboat.isolation": "microvm",
        "io.bareboat.network": "none",
    }


# What an image would set through each key, were its labels read as settings: every
# `io.bareboat.*` key in bareboat's source (test_every_bareboat_key_is_listed keeps this
# complete), and other runtimes' host settings (crun's run.oci.*, runc's systemd properties).
HOSTILE_LABELS = {
    "io.bareboat.publish": "0.0.0.0:2222:22",
    "io.bareboat.network": "user",
    "io.bareboat.isolation": "process",
    "io.bareboat.vm.disk": "20g",
    "io.bareboat.vm.kernel": "/etc/shadow",
    "io.bareboat.vm.cmdline": "init=/bin/sh",
    "io.bareboat.vm.template": "create",
    "io.bareboat.wasm.module": "/tmp/evil.wasm",
    "io.bareboat.wasm.digest": "sha256:" + "0" * 64,
    "io.bareboat.wasm.timeout": "0.001",
    "io.bareboat.wasm.fuel": "1",
    "io.bareboat.runtime.version": "9.9.9",
    "run.oci.keep_original_groups": "1",
    "org.systemd.property.DeviceAllow": "'/dev/sda rwm'",
}


def test_every_bareboat_key_is_listed() -> None:
    import re

    src = Path(__file__).resolve().parents[2] / "src" / "bareboat"
    keys = {
        k
        for f in src.rglob("*.py")
        for k in re.findall(r"[\"'](io\.bareboat\.[a-z0-9_.-]+)[\"']", f.read_text())
    }
    assert keys, "no io.bareboat. keys found: the pattern is stale"
    assert keys <= set(HOSTILE_LABELS), f"add these to HOSTILE_LABELS: {keys - set(HOSTILE_LABELS)}"


@pytest.mark.parametrize("key", sorted(HOSTILE_LABELS))
def test_an_image_label_changes_nothing(rootfs: Path, key: str) -> None:
    """Labels are the image's data: with any key, the spec is the one built without it."""
    options = {"isolation": Isolation.MICROVM, "network": "user", "labels": {"mine": "1"}}
    plain = spec_of(rootfs, ImageConfig(cmd=("sh",)), **options)
    labelled = ImageConfig(cmd=("sh",), labels={key: HOSTILE_LABELS[key]})
    assert spec_of(rootfs, labelled, **options) == plain
    all_of_them = ImageConfig(cmd=("sh",), labels=HOSTILE_LABELS)
    assert spec_of(rootfs, all_of_them, **options) == plain


def test_operator_settings_become_annotations(rootfs: Path) -> None:
    """-p reaches the bundle (the microVM backend reads it there); typed options win over a
    --label of the same key."""
    from bareboat.spec.parse import parse_publish

    ports = (
        PortMapping(8080, 80),
        PortMapping(5353, 53, "udp", "0.0.0.0"),
        PortMapping(8443, 443, host_ip="::1"),
    )
    s = spec_of(
        rootfs,
        isolation=Isolation.MICROVM,
        network="user",
        publish=ports,
        labels={"io.bareboat.publish": "1.2.3.4:1:1", "io.bareboat.network": "none", "x": "y"},
    )
    ann = s["annotations"]
    assert ann["x"] == "y" and ann["io.bareboat.network"] == "user"
    assert tuple(parse_publish(v) for v in ann["io.bareboat.publish"].split(",")) == ports
    assert "io.bareboat.publish" not in spec_of(rootfs)["annotations"]
    # without -p an operator's label still says what to publish
    s = spec_of(
        rootfs,
        isolation=Isolation.MICROVM,
        network="user",
        labels={"io.bareboat.publish": "127.0.0.1:9:9"},
    )
    assert s["annotations"]["io.bareboat.publish"] == "127.0.0.1:9:9"


@given(
    host=st.integers(1, 65535),
    guest=st.integers(1, 65535),
    proto=st.sampled_from(["tcp", "udp"]),
    ip=st.sampled_from(["127.0.0.1", "0.0.0.0", "10.1.2.3", "::1", "fe80::1"]),
)
def test_port_mapping_flag_round_trip(host: int, guest: int, proto: str, ip: str) -> None:
    from bareboat.spec.parse import parse_publish

    p = PortMapping(host, guest, proto, ip)
    assert parse_publish(p.to_flag()) == p


# --- mounts -------------------------------------------------------------------------------


def test_default_mounts_match_runc_spec(rootfs: Path, tmp_path: Path) -> None:
    """Our kernel filesystems and masks cover what `runc spec` writes (a peer's defaults)."""
    try:
        subprocess.run(["runc", "spec"], cwd=tmp_path, check=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("runc is not installed")
    runc = json.loads((tmp_path / "config.json").read_text())
    validate_config(runc)
    ours = spec_of(rootfs)
    assert {m["destination"]: m["type"] for m in ours["mounts"]} == {
        m["destination"]: m["type"] for m in runc["mounts"]
    }
    assert set(runc["linux"]["maskedPaths"]) <= set(ours["linux"]["maskedPaths"])
    assert set(runc["linux"]["readonlyPaths"]) == set(ours["linux"]["readonlyPaths"])


def test_user_mounts(rootfs: Path) -> None:
    opts = RunOptions(
        mounts=(
            parse_volume("/host/sub:/data/sub:ro"),
            parse_volume("/host:/data"),
            parse_tmpfs("/run:size=1m,exec"),
            parse_tmpfs("/dev/shm:size=8m"),
        )
    )
    mounts = build_mounts(opts)
    dests = [m["destination"] for m in mounts]
    assert dests.count("/dev/shm") == 1  # the user's replaced the default
    user = mounts[-4:]
    assert [m["destination"] for m in user] == ["/data", "/run", "/data/sub", "/dev/shm"]
    assert user[0] == {
        "destination": "/data",
        "type": "bind",
        "source": "/host",
        "options": ["rbind", "rprivate", "rw"],
    }
    assert user[2]["options"] == ["rbind", "rprivate", "ro"]
    assert user[1] == {
        "destination": "/run",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "nodev", "size=1m", "exec"],
    }
    assert user[3]["options"] == ["nosuid", "nodev", "noexec", "size=8m"]
    assert parse_tmpfs("/ro:ro").readonly
    assert build_mounts(RunOptions(mounts=(parse_tmpfs("/ro:ro"),)))[-1]["options"][-1] == "ro"
    validate_config(spec_of(rootfs, mounts=opts.mounts))


@pytest.mark.parametrize(
    ("mounts", "needle"),
    [
        ((parse_volume("/a:/x"), parse_tmpfs("/x")), "duplicate mount point: /x"),
        ((parse_volume("/a:/proc/sys"),), "reserved"),
        ((parse_tmpfs("/sys"),), "reserved"),
        ((Mount("relative", source="/a"),), "absolute"),
        ((Mount("/x/../y", source="/a"),), "invalid mount destination"),
        ((Mount("/x", source="rel"),), "absolute host path"),
        ((Mount("/x", kind="nfs"),), "unsupported mount kind"),
    ],
)
def test_bad_mounts(mounts: tuple[Mount, ...], needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        build_mounts(RunOptions(mounts=mounts))


# --- resources ----------------------------------------------------------------------------


def test_resources(rootfs: Path) -> None:
    res = spec_of(rootfs)["linux"]["resources"]
    assert set(res) == {"devices"} and res["devices"][0] == {"allow": False, "access": "rwm"}
    res = spec_of(rootfs, memory=64 << 20, cpus=1.5, pids_limit=100)["linux"]["resources"]
    assert res["memory"] == {"limit": 64 << 20, "swap": 64 << 20}
    assert res["cpu"] == {"quota": 150_000, "period": 100_000}
    assert res["pids"] == {"limit": 100}
    for bad in [{"memory": 0}, {"cpus": 0.0}, {"pids_limit": 0}]:
        with pytest.raises(UsageError):
            spec_of(rootfs, **bad)


def test_cgroups_path(rootfs: Path) -> None:
    s = build_spec(
        ImageConfig(cmd=("sh",)),
        RunOptions(),
        rootfs=rootfs,
        container_id=CID,
        cgroups_path="/bareboat/x",
    )
    assert s["linux"]["cgroupsPath"] == "/bareboat/x"
    validate_config(s)


# --- the oracle over many inputs ----------------------------------------------------------

_words = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters="="),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entrypoint=st.none() | st.lists(_words, max_size=3).map(tuple),
    command=st.none() | st.lists(_words, max_size=3).map(tuple),
    image_env=st.lists(st.text(max_size=12).filter(lambda s: "\0" not in s), max_size=4),
    env=st.lists(
        st.tuples(_words, st.text(max_size=5).filter(lambda s: "\0" not in s)), max_size=3
    ),
    user=st.sampled_from(["", "app", "0", "1000:50", "4242", "root:staff"]),
    memory=st.none() | st.integers(6 << 20, 1 << 40),
    cpus=st.none() | st.floats(0.01, 64),
    pids=st.none() | st.integers(1, 1 << 20),
    tty=st.booleans(),
    read_only=st.booleans(),
    network=st.sampled_from(["none", "host", "user", "user,host-loopback"]),
    labels=st.dictionaries(_words, st.text(max_size=5), max_size=3),
)
def test_every_spec_validates(
    rootfs: Path,
    entrypoint: tuple[str, ...] | None,
    command: tuple[str, ...] | None,
    image_env: list[str],
    env: list[tuple[str, str]],
    user: str,
    memory: int | None,
    cpus: float | None,
    pids: int | None,
    tty: bool,
    read_only: bool,
    network: str,
    labels: dict[str, str],
) -> None:
    config = ImageConfig(entrypoint=("/bin/sh",), cmd=("-c", "true"), env=tuple(image_env))
    options = RunOptions(
        # user-mode networking is the microVM's (refused for containers)
        isolation=Isolation.MICROVM if network.startswith("user") else Isolation.CONTAINER,
        entrypoint=entrypoint,
        command=command,
        env=tuple(f"{k}={v}" for k, v in env),
        user=user,
        memory=memory,
        cpus=cpus,
        pids_limit=pids,
        tty=tty,
        read_only=read_only,
        network=network,
        labels=labels,
        mounts=(parse_volume("/srv:/srv:ro"), parse_tmpfs("/tmp:size=1m")),
    )
    try:
        spec = build_spec(config, options, rootfs=rootfs, container_id=CID, nofile=1024)
    except UsageError as e:
        assert str(e) == "no command specified"
        return
    validate_config(spec)
    validate_config(json.loads(json.dumps(spec)))
    env_dict(spec)


# --- writing ------------------------------------------------------------------------------


def test_write_bundle(rootfs: Path, tmp_path: Path) -> None:
    spec = spec_of(rootfs)
    bundle = tmp_path / "bundle"
    path = write_bundle(bundle, spec)
    assert path == bundle / "config.json"
    assert json.loads(path.read_text()) == spec
    assert sorted(p.name for p in bundle.iterdir()) == ["config.json"]  # no temp files left


def test_write_bundle_failure_leaves_the_old_file(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    write_bundle(bundle, {"ociVersion": "1.0.2"})
    with pytest.raises(TypeError):
        write_bundle(bundle, {"bad": object()})
    assert json.loads((bundle / "config.json").read_text()) == {"ociVersion": "1.0.2"}
    assert [p.name for p in bundle.iterdir()] == ["config.json"]


def test_unreadable_passwd_is_an_image_error(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "etc" / "passwd").mkdir(parents=True)
    with pytest.raises(ImageError):
        build_spec(ImageConfig(cmd=("sh",)), RunOptions(), rootfs=root, container_id=CID)


# --- exec ---------------------------------------------------------------------------------


def test_exec_process(rootfs: Path) -> None:
    spec = spec_of(rootfs, env=("A=1", "B=2"))
    base = spec["process"]
    before = json.dumps(base)
    p = exec_process(base, ["sh", "-c", "env"], env=("B=3", "A", "C=4"), workdir="/tmp/", tty=True)
    assert json.dumps(base) == before  # the container's process is left alone
    assert p["args"] == ["sh", "-c", "env"] and p["cwd"] == "/tmp" and p["terminal"] is True
    env = dict(e.partition("=")[::2] for e in p["env"])
    assert "A" not in env and env["B"] == "3" and env["C"] == "4" and env["TERM"] == "xterm"
    assert len(p["env"]) == len(env)
    assert p["user"] == base["user"] and p["rlimits"] == base["rlimits"]
    p = exec_process(base, ["id"], user=User(1000, 1000, (50,), "/home/app"))
    assert p["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [50]}
    assert p["cwd"] == base["cwd"] and p["terminal"] is False
    validate_config({**spec, "process": p})
    with pytest.raises(UsageError, match="exec needs a command"):
        exec_process(base, [])
    with pytest.raises(UsageError, match="absolute"):
        exec_process(base, ["x"], workdir="rel")


# --- /etc files ---------------------------------------------------------------------------


def test_etc_files(rootfs: Path, tmp_path: Path) -> None:
    host = tmp_path / "hostetc"
    host.mkdir()
    (host / "hosts").write_text("127.0.0.1 localhost hostbox\n")
    (host / "resolv.conf").write_text("nameserver 127.0.0.53\nnameserver 9.9.9.9\nsearch x\n")
    etc = tmp_path / "bundle" / "etc"
    s = spec_of(rootfs, mounts=(parse_volume("/mine:/etc/resolv.conf:ro"),))
    assert not any(m["source"].startswith(str(etc)) for m in s["mounts"] if "source" in m)
    s = build_spec(
        ImageConfig(cmd=("sh",)), RunOptions(), rootfs=rootfs, container_id=CID, etc_dir=etc
    )
    validate_config(s)
    binds = {m["destination"]: m["source"] for m in s["mounts"] if m["type"] == "bind"}
    assert binds == {
        "/etc/hostname": str(etc / "hostname"),
        "/etc/hosts": str(etc / "hosts"),
        "/etc/resolv.conf": str(etc / "resolv.conf"),
    }
    files = etc_files(s, host_etc=host)
    assert files["hostname"] == f"{CID[:12]}\n".encode()
    assert f"127.0.1.1\t{CID[:12]}\n".encode() in files["hosts"]
    assert files["resolv.conf"] == b"nameserver 9.9.9.9\nsearch x\n"  # no host loopback
    for network in ("user", "user,host-loopback"):
        s = build_spec(
            ImageConfig(cmd=("sh",)),
            RunOptions(isolation=Isolation.MICROVM, network=network),
            rootfs=rootfs,
            container_id=CID,
            etc_dir=etc,
        )
        assert etc_files(s, host_etc=host)["resolv.conf"] == b"nameserver 10.0.2.3\n"
    s = build_spec(
        ImageConfig(cmd=("sh",)),
        RunOptions(network="host"),
        rootfs=rootfs,
        container_id=CID,
        etc_dir=etc,
    )
    files = etc_files(s, host_etc=host)
    assert files["hosts"] == (host / "hosts").read_bytes()
    assert files["resolv.conf"] == (host / "resolv.conf").read_bytes()
    # With a user mount over one of them, that one is the user's; the others are ours.
    s = build_spec(
        ImageConfig(cmd=("sh",)),
        RunOptions(mounts=(parse_volume("/mine:/etc/hosts:ro"),)),
        rootfs=rootfs,
        container_id=CID,
        etc_dir=etc,
    )
    assert [m["source"] for m in s["mounts"] if m["destination"] == "/etc/hosts"] == ["/mine"]
    path = write_bundle(tmp_path / "bundle", s, etc_dir=etc)
    assert sorted(p.name for p in etc.iterdir()) == ["hostname", "hosts", "resolv.conf"]
    assert json.loads(path.read_text()) == s


def test_seccomp(rootfs: Path) -> None:
    s = spec_of(rootfs)["linux"]["seccomp"]
    assert s["defaultAction"] == "SCMP_ACT_ALLOW"
    (rule,) = s["syscalls"]
    assert rule["action"] == "SCMP_ACT_ERRNO" and rule["errnoRet"] == 1
    assert {"mount", "unshare", "setns", "keyctl", "bpf", "reboot"} <= set(rule["names"])
    assert not {"read", "write", "execve", "clone", "futex"} & set(rule["names"])
    if os.uname().machine == "x86_64":
        assert s["architectures"][0] == "SCMP_ARCH_X86_64"
    assert "seccomp" not in spec_of(rootfs, seccomp=False)["linux"]
    assert "architectures" not in defaults.seccomp_profile("riscv64")


@pytest.mark.parametrize("isolation", [Isolation.CONTAINER, Isolation.PROCESS])
def test_user_networking_is_refused_where_there_is_none(rootfs: Path, isolation: Isolation) -> None:
    """A namespace container with --network user got only loopback and a resolv.conf naming
    slirp's 10.0.2.3, which nothing answered; a process has no network namespace at all."""
    for network in ("user", "user,host-loopback"):
        with pytest.raises(UsageError, match=f"not possible with --isolation {isolation}"):
            spec_of(rootfs, isolation=isolation, network=network)
    assert spec_of(rootfs, isolation=Isolation.MICROVM, network="user")
