"""The container backend: an OCI runtime (crun or runc) on the container's bundle."""

from .backend import ContainerBackend
from .runtime import OciRuntime, select_runtime

__all__ = ["ContainerBackend", "OciRuntime", "select_runtime"]
