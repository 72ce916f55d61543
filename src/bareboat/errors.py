"""The one exception hierarchy of bareboat.

Every error a user can cause or meet is a `BareboatError` child whose message reads as one
line that says what went wrong and, where it helps, what to do. Front ends print `str(err)`
and exit with `err.exit_code` (docker's conventions: 125 for bareboat's own errors, 126 for a
command that cannot be executed, 127 for a command that does not exist).
"""

from __future__ import annotations


class BareboatError(Exception):
    """Base of every error bareboat reports to a user."""

    exit_code = 125


class UsageError(BareboatError):
    """Bad command-line usage or option value."""


# --- images -------------------------------------------------------------------------------


class ImageError(BareboatError):
    """Anything wrong with an image, its reference or the store."""


class InvalidReference(ImageError):
    """An image reference that cannot be parsed."""


class ImageNotFound(ImageError):
    """The image is neither in the store nor (where asked) in the registry."""


class RegistryError(ImageError):
    """The registry refused, failed or answered something we cannot use."""


class AuthError(RegistryError):
    """Authentication with the registry failed."""


class DigestMismatch(ImageError):
    """Content did not match its digest or size: corrupt or tampered."""


class ManifestError(ImageError):
    """A manifest, index or image config is malformed or unsupported."""


class LayerError(ImageError):
    """A layer is corrupt or hostile (path traversal, escaping links, absurd sizes...)."""


class StoreError(ImageError):
    """The local store is locked, inconsistent or cannot be written."""


class ImageTooLarge(ImageError):
    """An image would take more disk than its cap (images.diskcap): its blobs, its unpacked
    tree or its VM disk."""

    entry = ""  # the layer entry being written when the cap was reached


# --- containers and engine ----------------------------------------------------------------


class ContainerError(BareboatError):
    """Anything wrong with a container's lifecycle."""


class ContainerNotFound(ContainerError):
    """No container with that id or name."""


class NameInUse(ContainerError):
    """A container with that name already exists."""


class InvalidStateTransition(ContainerError):
    """A lifecycle operation that is not allowed in the container's current state."""

    def __init__(self, container: str, current: str, wanted: str) -> None:
        super().__init__(f"container {container} is {current}; cannot move it to {wanted}")
        self.current = current
        self.wanted = wanted


class CommandNotFound(ContainerError):
    """The command to run does not exist in the image."""

    exit_code = 127


class CommandNotExecutable(ContainerError):
    """The command exists but cannot be executed (permissions, bad format)."""

    exit_code = 126


class BackendError(BareboatError):
    """A backend (runc/crun, QEMU, wasmtime) failed."""


class BackendUnavailable(BackendError):
    """A backend cannot run on this host (missing tool, no KVM, ...)."""


# --- microVMs -----------------------------------------------------------------------------


class GuestError(BackendError):
    """The guest kernel or init failed: panic, crash, protocol violation."""


class KernelMissing(GuestError):
    """No guest kernel was found or built."""


class BootTimeout(GuestError):
    """The guest did not become ready in time."""


class AgentProtocolError(GuestError):
    """The guest agent sent a message that breaks the protocol (treated as hostile)."""


class AgentTimeout(GuestError):
    """The guest agent did not answer in time."""


class TemplateError(GuestError):
    """A microVM template is missing, corrupt, stale or failed to restore (boot cold instead)."""


# --- wasm ---------------------------------------------------------------------------------


class WasmError(BackendError):
    """A Wasm module failed to compile, trapped, or ran out of its budget."""


# --- control sockets ----------------------------------------------------------------------


class ControlError(BareboatError):
    """A sandbox's control socket: its supervisor is not there, refused a request, or a peer
    broke the control protocol (bareboat.control)."""
