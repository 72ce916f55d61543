"""Build OCI images for tests, with nothing but the standard library.

Images are written as OCI image layouts (a directory with oci-layout, index.json and
blobs/sha256/...), which `bareboat load`, `skopeo copy oci:DIR:TAG ...` and umoci all read.
The default image is busybox-static with a symlink per applet and an /etc/passwd and
/etc/group that name a few users, so tests can exercise `-u NAME`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {
    None: "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "app:x:1000:1000:app:/home/app:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n"


def host_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@dataclass
class Entry:
    """One tar member. `kind` is file, dir, symlink, hardlink, char, block or fifo."""

    path: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    devmajor: int = 0
    devminor: int = 0
    size: int | None = None  # a lie about the size, for hostile-layer tests

    def tarinfo(self) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(self.path)
        ti.mode, ti.uid, ti.gid, ti.mtime = self.mode, self.uid, self.gid, 1_700_000_000
        types = {
            "file": tarfile.REGTYPE,
            "dir": tarfile.DIRTYPE,
            "symlink": tarfile.SYMTYPE,
            "hardlink": tarfile.LNKTYPE,
            "char": tarfile.CHRTYPE,
            "block": tarfile.BLKTYPE,
            "fifo": tarfile.FIFOTYPE,
        }
        ti.type = types[self.kind]
        ti.linkname = self.target
        ti.devmajor, ti.devminor = self.devmajor, self.devminor
        ti.size = len(self.data) if self.kind == "file" else 0
        return ti


def tar_layer(entries: list[Entry]) -> bytes:
    """An uncompressed tar of the entries, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            ti = e.tarinfo()
            tar.addfile(ti, io.BytesIO(e.data) if e.kind == "file" else None)
    return buf.getvalue()


def compress(data: bytes, compression: str | None) -> bytes:
    if compression is None:
        return data
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(compression)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def busybox_applets() -> list[str]:
    out = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    return sorted({a for a in out.stdout.split() if a and a != "busybox"})


def busybox_entries() -> list[Entry]:
    """A minimal busybox root filesystem."""
    entries = [
        Entry("bin", "dir", mode=0o755),
        Entry("bin/busybox", "file", BUSYBOX.read_bytes(), mode=0o755),
        Entry("etc", "dir", mode=0o755),
        Entry("etc/passwd", "file", PASSWD.encode()),
        Entry("etc/group", "file", GROUP.encode()),
        Entry("home", "dir", mode=0o755),
        Entry("home/app", "dir", mode=0o755, uid=1000, gid=1000),
        Entry("root", "dir", mode=0o700),
        Entry("tmp", "dir", mode=0o1777),
        Entry("proc", "dir", mode=0o555),
        Entry("sys", "dir", mode=0o555),
        Entry("dev", "dir", mode=0o755),
        Entry("var", "dir", mode=0o755),
    ]
    applets = busybox_applets()
    entries += [Entry(f"bin/{a}", "symlink", target="busybox", mode=0o777) for a in applets]
    return entries


@dataclass
class Image:
    """An image to write: layers (as entry lists or ready tar bytes) plus config fields."""

    layers: list[list[Entry] | bytes] = field(default_factory=lambda: [busybox_entries()])
    compression: str | None = "gzip"
    entrypoint: list[str] | None = None
    cmd: list[str] | None = field(default_factory=lambda: ["/bin/sh"])
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/bin:/usr/bin:/bin"])
    workdir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: list[str] = field(default_factory=list)
    stop_signal: str = ""
    arch: str = field(default_factory=host_arch)
    os: str = "linux"
    layer_media_type: str | None = None  # override, e.g. for Wasm layers

    def config(self, diff_ids: list[str]) -> dict[str, Any]:
        cfg: dict[str, Any] = {"Env": self.env}
        if self.entrypoint is not None:
            cfg["Entrypoint"] = self.entrypoint
        if self.cmd is not None:
            cfg["Cmd"] = self.cmd
        if self.workdir:
            cfg["WorkingDir"] = self.workdir
        if self.user:
            cfg["User"] = self.user
        if self.labels:
            cfg["Labels"] = self.labels
        if self.exposed_ports:
            cfg["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.stop_signal:
            cfg["StopSignal"] = self.stop_signal
        return {
            "architecture": self.arch,
            "os": self.os,
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "bareboat tests"} for _ in diff_ids],
        }


class Layout:
    """An OCI image layout directory being written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        index = root / "index.json"
        self.index: dict[str, Any] = (
            json.loads(index.read_text())
            if index.exists()
            else {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}
        )

    def blob(self, data: bytes) -> str:
        digest = sha256(data)
        (self.root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return digest

    def descriptor(self, media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": self.blob(data), "size": len(data), **extra}

    def add_image(self, image: Image) -> dict[str, Any]:
        """Write the image's blobs and return its manifest descriptor (not yet in index.json)."""
        layer_descs, diff_ids = [], []
        for layer in image.layers:
            raw = layer if isinstance(layer, bytes) else tar_layer(layer)
            diff_ids.append(sha256(raw))
            mt = image.layer_media_type or MT_LAYER[image.compression]
            layer_descs.append(self.descriptor(mt, compress(raw, image.compression)))
        config = json.dumps(image.config(diff_ids)).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": self.descriptor(MT_CONFIG, config),
            "layers": layer_descs,
        }
        return self.descriptor(
            MT_MANIFEST,
            json.dumps(manifest).encode(),
            platform={"architecture": image.arch, "os": image.os},
        )

    def add_index(self, manifests: list[dict[str, Any]]) -> dict[str, Any]:
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests}
        return self.descriptor(MT_INDEX, json.dumps(index).encode())

    def tag(self, descriptor: dict[str, Any], tag: str) -> str:
        desc = dict(descriptor)
        desc.pop("platform", None)
        desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.index["manifests"] = [
            m
            for m in self.index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
        ] + [desc]
        (self.root / "index.json").write_text(json.dumps(self.index))
        return str(desc["digest"])


def write_image(root: Path, image: Image | None = None, tag: str = "latest") -> str:
    """Write one image into the layout at `root` under `tag`; return its manifest digest."""
    layout = Layout(root)
    return layout.tag(layout.add_image(image or Image()), tag)
