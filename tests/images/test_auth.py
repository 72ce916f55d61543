"""Registry authentication: Basic against a real htpasswd registry; Bearer through a token stub.

docker-registry's own token auth needs a signing certificate and a token issuer, so the Bearer
test puts a small test-only proxy in front of the real registry: it answers `/v2/` with a
Bearer challenge, issues a token at its realm (checking Basic credentials), and forwards
authorized requests to the registry.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from bareboat.errors import AuthError
from bareboat.images.auth import Credentials, from_auths_file, parse_challenge
from bareboat.images.store import ImageStore
from bareboat.paths import Roots
from tests.support.registry import Registry

TOKEN = "t0ken-for-tests"


def test_parse_challenge() -> None:
    ch = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert ch.scheme == "bearer"
    assert ch.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_challenge('Basic realm="x y"').params == {"realm": "x y"}
    assert parse_challenge('Bearer realm="a\\"b"').params == {"realm": 'a"b'}
    for bad in ("", "Bearer realm", 'Bearer realm="x', "B@d x=y"):
        with pytest.raises(AuthError):
            parse_challenge(bad)


def test_auths_file(tmp_path: Path) -> None:
    f = tmp_path / "config.json"
    auth = base64.b64encode(b"u:p:w").decode()
    f.write_text(json.dumps({"auths": {"https://h:5000": {"auth": auth}}}))
    assert from_auths_file(f, "h:5000") == Credentials("u", "p:w")
    assert from_auths_file(f, "other") is None
    f.write_text(json.dumps({"auths": {"h": {"auth": "!!"}}}))
    with pytest.raises(AuthError):
        from_auths_file(f, "h")


@pytest.fixture
def auth_registry(tmp_path: Path, image_layout: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "registry", users={"alice": "s3cret"}) as reg:
        reg.push(image_layout, "latest", "private/busybox:1")
        yield reg


def test_basic_auth(
    roots: Roots, auth_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = auth_registry.ref("private/busybox:1")
    store = ImageStore(roots)
    with pytest.raises(AuthError, match="login"):
        store.pull(ref, progress=False)
    with pytest.raises(AuthError):
        store.pull(ref, auth=Credentials("alice", "wrong"), progress=False)
    assert store.list() == []
    assert store.pull(ref, auth=Credentials("alice", "s3cret"), progress=False).names
    # The same credentials from a docker-style auths file.
    store.remove(ref)
    auths = tmp_path / "auths.json"
    auths.write_text(
        json.dumps(
            {"auths": {auth_registry.host: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}
        )
    )
    monkeypatch.setenv("BAREBOAT_AUTH_FILE", str(auths))
    assert store.pull(ref, progress=False).names


class _TokenProxy(BaseHTTPRequestHandler):
    upstream = ""
    issued: ClassVar[list[str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        host = self.headers["Host"]
        if self.path.startswith("/token"):
            good = "Basic " + base64.b64encode(b"bob:pw").decode()
            if self.headers.get("Authorization") != good:
                self._send(401, b"{}", {})
                return
            self.issued.append(self.path)
            self._send(200, json.dumps({"token": TOKEN}).encode(), {})
            return
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            challenge = f'Bearer realm="http://{host}/token",service="stub",scope="x"'
            self._send(401, b"{}", {"WWW-Authenticate": challenge})
            return
        req = urllib.request.Request(self.upstream + self.path)
        if self.headers.get("Accept"):
            req.add_header("Accept", self.headers["Accept"])
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                self._send(r.status, r.read(), {"Content-Type": r.headers["Content-Type"]})
        except urllib.error.HTTPError as err:
            self._send(err.code, err.read(), {})


def test_bearer_token_from_challenge(roots: Roots, fresh_registry: Registry) -> None:
    handler = type("H", (_TokenProxy,), {"upstream": f"http://{fresh_registry.host}", "issued": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        ref = f"127.0.0.1:{server.server_address[1]}/test/busybox:latest"
        store = ImageStore(roots)
        with pytest.raises(AuthError, match="token request refused"):
            store.pull(ref, progress=False)
        img = store.pull(ref, auth=Credentials("bob", "pw"), progress=False)
        assert img.names == (ref,)
        [path] = handler.issued[-1:]
        assert "scope=repository%3Atest%2Fbusybox%3Apull" in path and "service=stub" in path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
