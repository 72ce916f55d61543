"""The OCI and Docker JSON wire formats, decoded and validated at the edge.

Everything here comes from registries or archives we do not trust: documents are size
bounded before decoding, digests must be `sha256:<64 hex>`, sizes are non-negative and
bounded, and media types decide what a document is. Nothing above this module sees raw JSON.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from bareboat.errors import ManifestError

MAX_DOCUMENT = 4 * 1024 * 1024  # manifests, indexes and configs; registries cap at 4 MiB too
MAX_BLOB = 1 << 40  # 1 TiB: larger is absurd for one layer
MAX_LAYERS = 1000
# The image config's container settings. Real images carry tens of env vars, a few args,
# labels and ports; the bounds are far above that and far below what makes the host slow:
# crun applies env with a quadratic loop (200,000 vars took 104 s to fail with E2BIG,
# 20,000 take 3.7 s, 10,000 take 1.2 s here). execve takes ~2 MiB of args and env together
# (a quarter of the 8 MiB stack limit) and 128 KiB per string, so more can never run.
MAX_CONFIG_ENTRIES = 10_000  # Env, Cmd, Entrypoint, Labels, ExposedPorts: each
MAX_EXEC_BYTES = 1 << 20  # Env, and Cmd + Entrypoint, each: bytes of all their strings
MAX_EXEC_STRING = 128 * 1024  # one Env entry or argument (the kernel's MAX_ARG_STRLEN)
MAX_LABEL_KEY = 1024
MAX_PATH = 4096  # WorkingDir (PATH_MAX)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
ACCEPT = ", ".join((*MANIFEST_TYPES, *INDEX_TYPES))

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYER_TYPES = frozenset(
    {
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        DOCKER_LAYER_GZIP,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar",
        # Wasm images carry the module as their one layer.
        "application/wasm",
        "application/vnd.wasm.content.layer.v1+wasm",
    }
)

WASM_LAYER_TYPES = frozenset({"application/wasm", "application/vnd.wasm.content.layer.v1+wasm"})

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

Digest = Annotated[str, msgspec.Meta(pattern=r"^sha256:[0-9a-f]{64}$")]
Size = Annotated[int, msgspec.Meta(ge=0, le=MAX_BLOB)]
Short = Annotated[str, msgspec.Meta(max_length=256)]
ExecString = Annotated[str, msgspec.Meta(max_length=MAX_EXEC_STRING)]
ExecList = Annotated[list[ExecString], msgspec.Meta(max_length=MAX_CONFIG_ENTRIES)]
LabelKey = Annotated[str, msgspec.Meta(max_length=MAX_LABEL_KEY)]


# The specs name the fields of descriptors, manifests and indexes in camelCase and those of
# docker's container config in PascalCase (msgspec's `rename`); `os.version` and RootFS's
# `diff_ids` are spelled as they are.
class Platform(msgspec.Struct, frozen=True, rename={"os_version": "os.version"}):
    architecture: Short = ""
    os: Short = ""
    variant: Short = ""
    os_version: Short = ""


class Descriptor(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    media_type: Short
    digest: Digest
    size: Size
    annotations: dict[str, str] | None = None
    platform: Platform | None = None


class Manifest(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    schema_version: int
    config: Descriptor
    layers: Annotated[list[Descriptor], msgspec.Meta(max_length=MAX_LAYERS)]
    media_type: Short = ""
    annotations: dict[str, str] | None = None


class Index(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    schema_version: int
    manifests: Annotated[list[Descriptor], msgspec.Meta(max_length=10_000)]
    media_type: Short = ""
    annotations: dict[str, str] | None = None


class ContainerConfig(msgspec.Struct, frozen=True, rename="pascal"):
    user: Short = ""
    exposed_ports: (
        Annotated[dict[Short, Any], msgspec.Meta(max_length=MAX_CONFIG_ENTRIES)] | None
    ) = None
    env: ExecList | None = None
    entrypoint: ExecList | None = None
    cmd: ExecList | None = None
    working_dir: Annotated[str, msgspec.Meta(max_length=MAX_PATH)] = ""
    labels: Annotated[dict[LabelKey, str], msgspec.Meta(max_length=MAX_CONFIG_ENTRIES)] | None = (
        None
    )
    stop_signal: Short = ""

    def __post_init__(self) -> None:
        # Raised here, msgspec names the place (`- at $.config`) after our words.
        env = _string_bytes(self.env)
        if env > MAX_EXEC_BYTES:
            raise ValueError(f"Env holds {env} bytes, more than the limit of {MAX_EXEC_BYTES}")
        args = _string_bytes(self.entrypoint) + _string_bytes(self.cmd)
        if args > MAX_EXEC_BYTES:
            raise ValueError(
                f"Entrypoint and Cmd hold {args} bytes, more than the limit of {MAX_EXEC_BYTES}"
            )


def _string_bytes(items: list[str] | None) -> int:
    """What the strings take in execve's argument area: UTF-8 bytes and a NUL each."""
    return sum(len(x.encode("utf-8", "surrogatepass")) + 1 for x in items or ())


class RootFS(msgspec.Struct, frozen=True):
    type: str
    diff_ids: Annotated[list[Digest], msgspec.Meta(max_length=MAX_LAYERS)]


class Config(msgspec.Struct, frozen=True):
    architecture: Short
    os: Short
    rootfs: RootFS
    variant: Short = ""
    config: ContainerConfig | None = None


class MediaTypeOnly(msgspec.Struct, rename="camel"):
    media_type: str = ""
    schema_version: int = 0
    manifests: list[Any] | None = None
    layers: list[Any] | None = None


def _decode(data: bytes, kind: type[Any], what: str) -> Any:
    if len(data) > MAX_DOCUMENT:
        raise ManifestError(f"{what} is {len(data)} bytes, more than {MAX_DOCUMENT}")
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as err:
        raise ManifestError(f"invalid {what}: {err}") from None
    except msgspec.DecodeError as err:
        raise ManifestError(f"{what} is not valid JSON: {err}") from None


def sniff_media_type(data: bytes, declared: str = "") -> str:
    """The media type of a manifest document: the declared one, else its own, else its shape."""
    head: MediaTypeOnly = _decode(data, MediaTypeOnly, "manifest")
    mt = head.media_type or declared.split(";")[0].strip()
    if mt in MANIFEST_TYPES or mt in INDEX_TYPES:
        return mt
    if not mt or mt == "application/json":
        if head.manifests is not None:
            return OCI_INDEX
        if head.layers is not None:
            return OCI_MANIFEST
    raise ManifestError(f"unsupported manifest media type {mt or '(none)'!r}")


def decode_manifest(data: bytes) -> Manifest:
    m: Manifest = _decode(data, Manifest, "manifest")
    if m.schema_version != 2:
        raise ManifestError(f"unsupported manifest schemaVersion {m.schema_version}")
    for layer in m.layers:
        if layer.media_type not in LAYER_TYPES:
            raise ManifestError(f"unsupported layer media type {layer.media_type!r}")
    return m


def decode_index(data: bytes) -> Index:
    i: Index = _decode(data, Index, "image index")
    if i.schema_version != 2:
        raise ManifestError(f"unsupported index schemaVersion {i.schema_version}")
    return i


def decode_config(data: bytes) -> Config:
    c: Config = _decode(data, Config, "image config")
    if c.rootfs.type != "layers":
        raise ManifestError(f"unsupported rootfs type {c.rootfs.type!r}")
    return c


def encode(obj: Any) -> bytes:
    return msgspec.json.encode(obj)
