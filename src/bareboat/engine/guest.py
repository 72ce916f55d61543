"""The microVM guest and accelerator for the front ends (`bareboat guest build|info`, `info`).

The front ends reach the guest's builders (backends/microvm/kernel.py, initbuild.py) and the
accelerator probe (accel.py) only through here. The kernel build takes minutes and reports
its progress to the caller, which draws it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bareboat.backends.microvm.kernel import BuildProgress
    from bareboat.paths import Roots


def plain_progress(write: Callable[[str], object]) -> BuildProgress:
    """Progress as plain lines (logs, CI): each step, and the compile every 10 %."""
    from bareboat.backends.microvm.kernel import PlainProgress

    return PlainProgress(write)


def build_kernel(
    roots: Roots, *, force: bool = False, jobs: int | None = None, progress: BuildProgress
) -> Path:
    """Build our guest vmlinux, or find it built from the same source and fragment."""
    from bareboat.backends.microvm import kernel

    return kernel.build_kernel(roots, force=force, progress=progress, jobs=jobs)


def build_init(roots: Roots) -> Path:
    """Build the guest init and its initramfs (cached by their sources); the initramfs."""
    from bareboat.backends.microvm.initbuild import build_initramfs

    return build_initramfs(roots)


def guest_info(roots: Roots) -> dict[str, Any]:
    """The guest kernel and init as plain data: cache, keys, paths, sizes, problems."""
    import os

    from bareboat.backends.microvm import kernel

    k = kernel.kernel_info(roots)
    info: dict[str, Any] = {
        "cache": str(roots.guest),
        "kernel": {
            "fragment": str(k.fragment),
            "source_version": k.source_version,
            "key": k.key,
            "path": str(k.path) if k.path else None,
            "size": k.size,
            "built": k.path is not None,
            **({"problem": k.problem} if k.problem else {}),
        },
    }
    user = os.environ.get(kernel.ENV_KERNEL)
    if user:
        info["kernel"]["user_kernel"] = user
    info["init"] = _init_info(roots)
    return info


def _init_info(roots: Roots) -> dict[str, Any]:
    from bareboat.backends.microvm import initbuild

    try:
        plan = initbuild.plan_init()
    except Exception as e:  # noqa: BLE001 - report any reason the init cannot be planned
        return {"key": None, "built": False, "problem": str(e)}
    path = initbuild.init_dir(roots) / plan.key / "init"
    initramfs = path.parent / "initramfs.cpio"
    return {
        "key": plan.key,
        "path": str(path) if path.is_file() else None,
        "size": path.stat().st_size if path.is_file() else None,
        "initramfs": str(initramfs) if initramfs.is_file() else None,
        "built": path.is_file(),
    }


def accelerator(roots: Roots, requested: str | None = None) -> tuple[str, str]:
    """The accelerator microVMs get here (kvm or tcg) and why: `requested`, then
    $BAREBOAT_ACCEL, then a probe of whether KVM runs a guest at native speed."""
    from bareboat.backends.microvm.accel import choose_accel

    choice = choose_accel(roots, requested)
    return choice.accel, choice.reason
