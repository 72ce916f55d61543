"""The registry's HTTP client against real servers on 127.0.0.1 (redirects, keep-alive, bounds)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from bareboat.images.registry import tls_context
from bareboat.images.transport import Client, HTTPError, with_query


class Recorder(BaseHTTPRequestHandler):
    """Answers each path as `routes` says: (status, headers, body); records what came in."""

    protocol_version = "HTTP/1.1"  # keep-alive, as registries answer
    routes: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}
    seen: ClassVar[list[tuple[str, dict[str, str], int]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append((self.path, dict(self.headers.items()), self.client_address[1]))
        status, headers, body = self.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server:
    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.seen: list[tuple[str, dict[str, str], int]] = []
        handler = type("R", (Recorder,), {"routes": self.routes, "seen": self.seen})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    a, b = Server(), Server()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def client(allow_http: bool = True) -> Client:
    def no_tls() -> object:
        raise AssertionError("no TLS here")

    return Client(tls=no_tls, allow_http=lambda host: allow_http)  # type: ignore[arg-type]


def read(c: Client, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    r = c.get(url, headers or {})
    try:
        return r.status_code, b"".join(r.iter_raw(1 << 16))
    finally:
        r.close()


def test_redirect_to_another_origin_drops_credentials(servers: tuple[Server, Server]) -> None:
    a, b = servers
    a.routes["/v2/x/blobs/1"] = (307, {"Location": "/v2/x/blobs/2"}, b"")
    a.routes["/v2/x/blobs/2"] = (302, {"Location": f"{b.url}/signed?sig=1"}, b"moved")
    b.routes["/signed?sig=1"] = (200, {}, b"blob")
    with client() as c:
        assert read(c, f"{a.url}/v2/x/blobs/1", {"Authorization": "Bearer t"}) == (200, b"blob")
    # Same origin: the token goes along; another origin never sees it.
    assert [h.get("Authorization") for _, h, _ in a.seen] == ["Bearer t", "Bearer t"]
    assert [(p, h.get("Authorization")) for p, h, _ in b.seen] == [("/signed?sig=1", None)]


def test_redirect_to_plain_http_needs_permission(servers: tuple[Server, Server]) -> None:
    a, b = servers
    a.routes["/v2/"] = (302, {"Location": f"{b.url}/v2/"}, b"")
    with client(allow_http=False) as c, pytest.raises(HTTPError, match="plain HTTP"):
        c.get(f"{a.url}/v2/", {})
    assert b.seen == []


def test_redirect_loop_ends(servers: tuple[Server, Server]) -> None:
    a, _ = servers
    a.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    with client() as c, pytest.raises(HTTPError, match="redirects"):
        c.get(f"{a.url}/loop", {})


def test_connections_are_kept_alive(servers: tuple[Server, Server]) -> None:
    a, _ = servers
    a.routes["/one"] = (200, {}, b"1" * 100_000)
    with client() as c:
        for _ in range(3):
            assert read(c, f"{a.url}/one") == (200, b"1" * 100_000)
        # A body left unread closes its connection instead of poisoning the pool.
        c.get(f"{a.url}/one", {}).close()
        assert read(c, f"{a.url}/one")[0] == 200
    ports = [port for _, _, port in a.seen]
    assert len(set(ports[:4])) == 1 and ports[4] != ports[0]


def test_query_and_bad_urls() -> None:
    assert with_query("https://auth.example/token?a=1#f", {"scope": "repository:x:pull"}) == (
        "https://auth.example/token?a=1&scope=repository%3Ax%3Apull"
    )
    with client() as c:
        for url in ("ftp://127.0.0.1/x", "http://127.0.0.1:99999/x", "http:///x"):
            with pytest.raises(HTTPError):
                c.get(url, {})


def test_tls_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    a = Server()
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        a.httpd.socket = ctx.wrap_socket(a.httpd.socket, server_side=True)
        a.routes["/v2/"] = (200, {}, b"{}")
        url = f"https://127.0.0.1:{a.httpd.server_address[1]}/v2/"
        with (
            Client(tls=lambda: tls_context(True), allow_http=lambda h: False) as c,
            pytest.raises(HTTPError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            c.get(url, {})
        with Client(tls=lambda: tls_context(False), allow_http=lambda h: False) as c:
            assert read(c, url) == (200, b"{}")  # --insecure
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with Client(tls=lambda: tls_context(True), allow_http=lambda h: False) as c:
            assert read(c, url) == (200, b"{}")
            assert read(c, url) == (200, b"{}")
    finally:
        a.close()
    # The refused handshake never got an answer; the last client kept its connection.
    ports = [port for _, _, port in a.seen]
    assert len(ports) == 3 and ports[1] == ports[2] != ports[0]
