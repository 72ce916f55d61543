"""The process backend: chroot into the container's rootfs, no isolation."""

from .backend import ProcessBackend

__all__ = ["ProcessBackend"]
