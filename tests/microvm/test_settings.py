"""Bundle -> the VM's host-side settings, as data: what `run` flags and an image's labels do to
the network, ports, disk, kernel, command line and template of a VM (nothing is built or
booted here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bareboat.backends.base import BackendContext
from bareboat.backends.microvm.backend import MicrovmBackend, VmSettings
from bareboat.images.model import ImageConfig
from bareboat.paths import Roots
from bareboat.spec.builder import build_spec
from bareboat.spec.options import Isolation, PortMapping, RunOptions
from bareboat.spec.users import User
from tests.spec.test_builder import HOSTILE_LABELS

CID = "0123456789abcdef" * 4


def settings_of(
    roots: Roots, tmp_path: Path, options: RunOptions, labels: dict[str, str] | None = None
) -> VmSettings:
    """The settings of a VM whose bundle the engine's spec builder made."""
    config = ImageConfig(cmd=("/bin/sh",), env=("PATH=/bin",), labels=labels or {})
    spec = build_spec(config, options, rootfs=tmp_path, container_id=CID, user=User(0, 0))
    ctx = BackendContext(CID, tmp_path / "bundle", tmp_path / "oci", spec)
    return MicrovmBackend(roots).settings(ctx)


@pytest.fixture(autouse=True)
def _no_template_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BAREBOAT_TEMPLATE", raising=False)


def test_defaults(roots: Roots, tmp_path: Path) -> None:
    s = settings_of(roots, tmp_path, RunOptions(isolation=Isolation.MICROVM))
    assert (s.net.mode, s.net.ports) == ("none", ())
    assert (s.disk_size, s.kernel, s.cmdline, s.template) == (None, None, (), "auto")


def test_publish_from_the_cli_reaches_the_vm(roots: Roots, tmp_path: Path) -> None:
    """`run --isolation microvm --network user -p 8080:80`: the ports are the VM's forwards."""
    from bareboat.spec.parse import parse_publish

    ports = tuple(parse_publish(v) for v in ("8080:80", "0.0.0.0:5353:53/udp"))
    options = RunOptions(isolation=Isolation.MICROVM, network="user", publish=ports)
    s = settings_of(roots, tmp_path, options)
    assert s.net.mode == "user"
    assert s.net.ports == (PortMapping(8080, 80), PortMapping(5353, 53, "udp", "0.0.0.0"))


def test_operator_flags_and_labels_set_the_vm(roots: Roots, tmp_path: Path) -> None:
    labels = {
        "io.bareboat.vm.disk": "64m",
        "io.bareboat.vm.kernel": "/boot/vmlinux-test",
        "io.bareboat.vm.cmdline": "quiet loglevel=3",
        "io.bareboat.vm.template": "off",  # what --no-template writes
    }
    s = settings_of(roots, tmp_path, RunOptions(isolation=Isolation.MICROVM, labels=labels))
    assert s.disk_size == 64 << 20 and s.kernel == Path("/boot/vmlinux-test")
    assert (s.cmdline, s.template) == (("quiet", "loglevel=3"), "off")


@pytest.mark.parametrize("key", sorted(HOSTILE_LABELS))
def test_image_labels_set_nothing_of_the_vm(roots: Roots, tmp_path: Path, key: str) -> None:
    options = RunOptions(isolation=Isolation.MICROVM, network="user", publish=(PortMapping(8, 80),))
    want = settings_of(roots, tmp_path, options)
    assert settings_of(roots, tmp_path, options, {key: HOSTILE_LABELS[key]}) == want
    assert settings_of(roots, tmp_path, options, HOSTILE_LABELS) == want
    assert want.net.ports == (PortMapping(8, 80),)
