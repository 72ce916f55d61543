"""The registry client's HTTP/1.1: GET only, streamed bodies, kept-alive connections shared by
the download threads, redirects and timeouts, on the standard library's `http.client`.

Why not httpx (DESIGN.md's choice for registry HTTP): a pull pays its imports in every process,
and measured here (2026-12-03, Python 3.11, load ~3.7 on 2 cores) importing httpx and making its
client took ~190 ms of CPU, against ~40 ms for `http.client` on top of what a pull imports anyway
(~110 ms), in a 5 MB pull of ~600 ms. The registry needs none of httpx's features beyond these,
and the spec logic on top (auth, digests, bounds) was ours already.

Everything a server says is hostile: http.client bounds the status and header lines (64 KiB
each, 100 headers); callers bound the bodies; a body cut short of its Content-Length is an
error (http.client's read(n) would just return less); a redirect never carries credentials to
another origin, and goes to plain HTTP only where the caller allows it.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from bareboat.closing import Closing

if TYPE_CHECKING:
    import ssl

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
MAX_REDIRECTS = 10
MAX_IDLE = 8  # kept-alive connections per origin
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DRAIN = 1 << 16  # a redirect's body is read (to reuse its connection) up to this much


class HTTPError(Exception):
    """A transport failure: connect, TLS, timeout, a malformed or dropped answer."""


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int


def origin(url: str) -> Origin:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise HTTPError(f"invalid URL {url[:200]!r}: {err}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HTTPError(f"invalid URL {url[:200]!r}")
    return Origin(parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80))


def with_query(url: str, params: dict[str, str]) -> str:
    """`url` with `params` added to its query (a fragment is dropped)."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class Response:
    """A streamed answer; `close` hands a fully read connection back to the pool."""

    def __init__(
        self,
        client: Client,
        at: Origin,
        conn: http.client.HTTPConnection,
        raw: http.client.HTTPResponse,
    ) -> None:
        self._client = client
        self._origin = at
        self._conn: http.client.HTTPConnection | None = conn
        self._raw = raw
        self.status_code = raw.status
        self.headers = raw.headers  # an email.message.Message: get() ignores case

    def iter_raw(self, size: int) -> Iterator[bytes]:
        """The body as the server sends it, in chunks of at most `size` bytes."""
        try:
            while data := self._raw.read(size):
                yield data
        except (OSError, http.client.HTTPException) as err:
            raise HTTPError(f"{type(err).__name__}: {err}") from None
        if self._raw.length:  # Content-Length not reached: the server hung up
            raise HTTPError(f"connection closed {self._raw.length} bytes before the end")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._raw.isclosed() and not self._raw.will_close:
            self._client._release(self._origin, conn)
        else:
            self._raw.close()
            conn.close()


class Client(Closing):
    """GET over kept-alive connections, thread-safe. `tls` makes the TLS context on first
    use of https; `allow_http(host)` says where a redirect may go over plain HTTP."""

    def __init__(
        self,
        *,
        tls: Callable[[], ssl.SSLContext],
        allow_http: Callable[[str], bool],
        headers: dict[str, str] | None = None,
    ) -> None:
        self._make_tls = tls
        self._tls: ssl.SSLContext | None = None
        self._allow_http = allow_http
        self._headers = headers or {}
        self._idle: dict[Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def get(self, url: str, headers: dict[str, str]) -> Response:
        """GET `url`, following redirects; the caller reads and closes the answer."""
        at = origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            r = self._send(at, url, headers)
            location = r.headers.get("location")
            if r.status_code not in _REDIRECTS or not location:
                return r
            self._discard_body(r)
            url = urljoin(url, location)
            to = origin(url)
            if to.scheme == "http" and not self._allow_http(to.host):
                raise HTTPError(f"refusing a redirect to plain HTTP: {url[:200]!r}")
            if to != at:
                # Credentials are for the origin that asked for them, never for where it
                # sends us (a blob store's signed URL carries its own).
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            at = to
        raise HTTPError(f"more than {MAX_REDIRECTS} redirects")

    @staticmethod
    def _discard_body(r: Response) -> None:
        try:
            got = 0
            for chunk in r.iter_raw(_DRAIN):
                got += len(chunk)
                if got > _DRAIN:
                    break
        except HTTPError:
            pass
        finally:
            r.close()

    def _send(self, at: Origin, url: str, headers: dict[str, str]) -> Response:
        target = _target(url)
        conn, reused = self._acquire(at)
        for attempt in range(2):
            try:
                conn.request("GET", target, headers={**self._headers, **headers})
                raw = conn.getresponse()
                return Response(self, at, conn, raw)
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                if (
                    reused
                    and attempt == 0
                    and isinstance(err, ConnectionError | http.client.BadStatusLine)
                ):
                    # A kept-alive connection the server had closed: once more, on a new one.
                    conn, reused = self._connect(at), False
                    continue
                raise HTTPError(f"{type(err).__name__}: {err}") from None
        raise AssertionError  # pragma: no cover

    def _acquire(self, at: Origin) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(at)
            if idle:
                return idle.pop(), True
        return self._connect(at), False

    def _release(self, at: Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(at, [])
            if len(idle) < MAX_IDLE:
                idle.append(conn)
                return
        conn.close()

    def _connect(self, at: Origin) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if at.scheme == "https":
            with self._lock:
                if self._tls is None:
                    self._tls = self._make_tls()
            conn = http.client.HTTPSConnection(
                at.host, at.port, timeout=CONNECT_TIMEOUT, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(at.host, at.port, timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(READ_TIMEOUT)
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise HTTPError(f"{type(err).__name__}: {err}") from None
        return conn
