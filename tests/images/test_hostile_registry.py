"""A registry that lies: every answer is bounded and checked before it can enter the store."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from bareboat.errors import DigestMismatch, ManifestError, RegistryError
from bareboat.images import wire
from bareboat.images.store import ImageStore
from bareboat.paths import Roots


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


CONFIG = json.dumps(
    {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [sha(b"")]}}
).encode()
LAYER = b"layer bytes"


def manifest(layer_size: int = len(LAYER)) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": wire.OCI_MANIFEST,
            "config": {"mediaType": wire.OCI_CONFIG, "digest": sha(CONFIG), "size": len(CONFIG)},
            "layers": [{"mediaType": wire.OCI_LAYER, "digest": sha(LAYER), "size": layer_size}],
        }
    ).encode()


class Liar(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, bytes]] = {}
    flaky: ClassVar[set[str]] = set()  # paths whose next answer is cut short

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = self.routes.get(self.path)
        if body is None:
            body = b"{}" if self.path == "/v2/" else b""
            code = 200 if self.path == "/v2/" else 404
        else:
            code = 200
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in self.flaky:
            self.flaky.discard(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def liar() -> Iterator[tuple[str, dict[str, bytes]]]:
    routes: dict[str, bytes] = {}
    handler = type("L", (Liar,), {"routes": routes, "flaky": set()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.handle_error = lambda *a: None  # type: ignore[method-assign]  # clients hang up on us
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def serve(routes: dict[str, bytes], man: bytes, layer: bytes = LAYER) -> None:
    routes["/v2/x/manifests/t"] = man
    routes[f"/v2/x/manifests/{sha(man)}"] = man
    routes[f"/v2/x/blobs/{sha(CONFIG)}"] = CONFIG
    routes[f"/v2/x/blobs/{sha(LAYER)}"] = layer


def test_honest_baseline(roots: Roots, liar: tuple[str, dict[str, bytes]]) -> None:
    host, routes = liar
    serve(routes, manifest())
    img = ImageStore(roots).pull(f"{host}/x:t", progress=False)
    assert img.layers[0].digest == sha(LAYER)


def test_huge_manifest(roots: Roots, liar: tuple[str, dict[str, bytes]]) -> None:
    host, routes = liar
    serve(routes, b" " * (wire.MAX_DOCUMENT + 10))
    with pytest.raises(RegistryError, match="larger than"):
        ImageStore(roots).pull(f"{host}/x:t", progress=False)


def test_manifest_not_matching_its_digest(roots: Roots, liar: tuple[str, dict[str, bytes]]) -> None:
    host, routes = liar
    serve(routes, manifest())
    wrong = "sha256:" + "1" * 64
    routes[f"/v2/x/manifests/{wrong}"] = manifest()
    with pytest.raises(DigestMismatch):
        ImageStore(roots).pull(f"{host}/x@{wrong}", progress=False)


def test_longer_blob_than_declared(roots: Roots, liar: tuple[str, dict[str, bytes]]) -> None:
    host, routes = liar
    serve(routes, manifest(), layer=LAYER + b"x" * 100)
    store = ImageStore(roots)
    with pytest.raises(DigestMismatch, match="larger"):
        store.pull(f"{host}/x:t", progress=False)
    assert store.list() == [] and list((store.root / "tmp").iterdir()) == []


def test_manifest_size_lie(roots: Roots, liar: tuple[str, dict[str, bytes]]) -> None:
    host, routes = liar
    serve(routes, manifest(layer_size=3))
    with pytest.raises(DigestMismatch):
        ImageStore(roots).pull(f"{host}/x:t", progress=False)


def test_not_a_manifest(roots: Roots, liar: tuple[str, dict[str, bytes]]) -> None:
    host, routes = liar
    serve(routes, b'{"schemaVersion": 2, "layers": "nope", "config": {}}')
    with pytest.raises(ManifestError):
        ImageStore(roots).pull(f"{host}/x:t", progress=False)


def test_dropped_download_is_retried(roots: Roots, liar: tuple[str, dict[str, bytes]]) -> None:
    host, routes = liar
    serve(routes, manifest())
    handler = next(c for c in Liar.__subclasses__() if c.routes is routes)
    handler.flaky.add(f"/v2/x/blobs/{sha(LAYER)}")
    store = ImageStore(roots)
    img = store.pull(f"{host}/x:t", progress=False)
    assert not handler.flaky and store.blobs.has(img.layers[0].digest)
