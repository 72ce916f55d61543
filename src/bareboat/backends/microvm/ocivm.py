"""The microVM backend as bareboat-runtime uses it under the OCI contract: the VM's files in
the runtime's state directory, the rootfs the client's bundle names (its disk the image's cached
one when the client only laid mount-point placeholders over it), the network the client's
namespace calls for, and the host CPU limits left to the container's cgroup.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

from bareboat.backends.base import BackendContext
from bareboat.errors import UsageError

from . import network
from . import rootfs as vmrootfs
from .backend import (
    ANN_NETWORK,
    MicrovmBackend,
    VmDir,
    VmPlan,
    lower_tree,
    overlay_layers,
    tree_key,
)
from .network import NetworkPlan
from .rootfs import RootfsImage
from .vmspec import COPIED_FILES

PLACEHOLDER_SCAN_LIMIT = 2000  # entries of an upper dir checked before giving up on the cache
PRIVATE_IMAGE = "rootfs"  # the key of a disk built for one container only


class OciVmBackend(MicrovmBackend):
    """The microVM backend with its files in bareboat-runtime's state dir (`vmdir`,
    `record_dir`) and the rootfs named by the bundle's config.json."""

    def __init__(self, vmdir: VmDir, record_dir: Path, rootfs: Path) -> None:
        super().__init__()
        self._vmdir = vmdir
        self._record_dir = record_dir
        self._rootfs = rootfs

    def vmdir(self, ctx: BackendContext) -> VmDir:
        return self._vmdir

    def record_dir(self, ctx: BackendContext) -> Path:
        return self._record_dir

    def rootfs_dir(self, ctx: BackendContext) -> Path:
        return self._rootfs

    def network_for(self, ctx: BackendContext, ann: dict[str, Any]) -> NetworkPlan:
        # QEMU runs in the container's network namespace with user-mode networking, so
        # the guest reaches out as the container would: in one the client set up with an
        # interface (podman's bridge, CNI), or in the new one the gate makes when asked,
        # which the client's prestart hook then configures (docker's bridge). A client's
        # namespace with only loopback (--network none), or none asked for (the host's),
        # gives no NIC. An annotation still wins.
        if ANN_NETWORK in ann:
            return super().network_for(ctx, ann)
        wanted, netns = _client_netns(ctx.spec)
        if netns is not None and not network.netns_has_links(netns):
            return super().network_for(ctx, ann)
        if netns is None and not (wanted and _may_be_configured(ctx.spec)):
            return super().network_for(ctx, ann)
        # QEMU inherits the gate's namespace. What the guest listens on is forwarded
        # from the same port there, where the client's port mappings (podman or
        # docker -p, a Kubernetes Service) send connections for the container.
        return network.plan_network("user", watch_ports=True)

    def image_for(self, ctx: BackendContext) -> RootfsImage:
        tree = lower_tree(self._rootfs)
        if tree != self._rootfs and _only_placeholders(self._rootfs):
            return vmrootfs.ensure_image(self.roots, tree, key=tree_key(tree))
        # The client's own tree (or one it changed): a disk of this container's only.
        return vmrootfs.build_image(
            self._rootfs, self._record_dir, key=PRIVATE_IMAGE, durable=False
        )

    def template_allowed(self, plan: VmPlan) -> bool:
        # A template is keyed by its image disk: only a shared, cached one can have one.
        return plan.image.key != PRIVATE_IMAGE

    def vmm_cpu_limit(self, ctx: BackendContext) -> tuple[int | None, int | None]:
        # The container's cgroup (the VMM's parent) holds the spec's CPU limits, and
        # `update` changes them there.
        return None, None


def _client_netns(config: dict[str, Any]) -> tuple[bool, Path | None]:
    """Whether config.json asks for a network namespace, and the path of the one the client
    made (None: a new one, the gate's)."""
    for ns in (config.get("linux") or {}).get("namespaces") or []:
        if isinstance(ns, dict) and ns.get("type") == "network":
            if not ns.get("path"):
                return True, None
            path = Path(str(ns["path"]))
            if not path.is_absolute():
                raise UsageError(f"config.json: network namespace path {path} is not absolute")
            return True, path
    return False, None


def _may_be_configured(config: dict[str, Any]) -> bool:
    """Whether a new network namespace may get an interface: only a hook of the client's can
    give it one before the workload starts (docker's libnetwork-setkey). Without one (podman
    --network none) it keeps only loopback, so the VM gets no NIC, and may be a template's
    clone."""
    hooks = config.get("hooks") or {}
    return bool(hooks.get("prestart") or hooks.get("createRuntime"))


def _only_placeholders(rootfs: Path) -> bool:
    """True if the overlay's upper dir holds nothing but directories, empty regular files
    (mount points the client made) and links into /proc: then the lower dir alone is the tree
    the VM must see."""
    lowers, upper = overlay_layers(rootfs)
    if upper is None:
        return True
    seen = 0
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in filenames + dirnames:
            seen += 1
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if seen > PLACEHOLDER_SCAN_LIMIT:
                return False  # too much to check: not placeholders
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                inside = "/" + os.path.relpath(path, upper)
                if inside in COPIED_FILES or not _has_content(lowers[0], inside):
                    continue
                return False  # an emptied image file: the merged view differs from the image
            if stat.S_ISLNK(st.st_mode) and os.readlink(path).startswith("/proc/"):
                continue  # podman's /etc/mtab -> /proc/mounts: about the guest's own /proc
            if not stat.S_ISDIR(st.st_mode) or _opaque(path):
                return False  # content, a symlink, a whiteout (0:0 char device), or a dir
                # that hides the lower one's entries
    return True


def _has_content(lower: Path, inside: str) -> bool:
    """Whether the image's tree has a non-empty regular file at `inside`."""
    try:
        st = os.lstat(lower / inside.lstrip("/"))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


def _opaque(path: str) -> bool:
    for name in ("trusted.overlay.opaque", "user.overlay.opaque"):
        with contextlib.suppress(OSError):
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
    return False
