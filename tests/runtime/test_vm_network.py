"""Which network bareboat-runtime gives a VM, as data: a VM in the host's namespace never
reaches the host's loopback, while one in a namespace its client made keeps QEMU's slirp there
(its loopback is the container's own) with forwards that follow the guest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bareboat.backends.base import BackendContext
from bareboat.backends.microvm.backend import VmDir
from bareboat.backends.microvm.ocivm import OciVmBackend


def plan_for(tmp_path: Path, config: dict[str, Any]) -> Any:
    vmdir = VmDir(tmp_path / "state" / "vm", tmp_path / "state" / "s")
    backend = OciVmBackend(vmdir, tmp_path / "state", tmp_path / "rootfs")
    ctx = BackendContext(id="c1", bundle=tmp_path, state_dir=tmp_path / "state", spec=config)
    return backend.network_for(ctx, config.get("annotations") or {})


@pytest.mark.parametrize(
    ("value", "isolated"), [("user", True), ("user,host-loopback", False), ("none", False)]
)
def test_host_namespace_vm_with_user_network(tmp_path: Path, value: str, isolated: bool) -> None:
    plan = plan_for(tmp_path, {"annotations": {"io.bareboat.network": value}})
    assert plan.mode == value.split(",")[0]
    assert plan.isolated is isolated and not plan.watch_ports


def test_client_made_namespace_keeps_slirp_and_follows_the_guest(tmp_path: Path) -> None:
    config = {
        "linux": {"namespaces": [{"type": "network"}]},
        "hooks": {"prestart": [{"path": "/usr/bin/true"}]},  # docker's libnetwork-setkey
    }
    plan = plan_for(tmp_path, config)
    assert plan.mode == "user" and plan.watch_ports and not plan.isolated
