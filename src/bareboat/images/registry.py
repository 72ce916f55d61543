"""A client for the OCI distribution API (v2): manifests, blobs and the auth dance.

httpx is imported here, and this module is imported only by code that talks to registries.
The spec logic is ours: ping `/v2/`, answer a `WWW-Authenticate` challenge (Bearer token from
the realm, or Basic), fetch manifests with every manifest type accepted, and stream blobs
through a `BlobWriter` so digest and size are checked before anything enters the store.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

if "httpx" not in sys.modules:
    # httpx's package init imports its command-line client (rich, click, pygments: ~40 ms
    # here) when those are installed; we never use it, and a blocked import makes httpx
    # fall back to a stub.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
import httpx

from bareboat.closing import Closing
from bareboat.errors import AuthError, DigestMismatch, ImageNotFound, RegistryError
from bareboat.images.auth import Credentials, parse_challenge, resolve_credentials
from bareboat.images.blobs import BlobWriter
from bareboat.images.reference import Reference
from bareboat.images.wire import ACCEPT, MAX_DOCUMENT

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
CHUNK = 1 << 20


def is_loopback(registry: str) -> bool:
    host = registry
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint(registry: str) -> str:
    return "registry-1.docker.io" if registry == "docker.io" else registry


class _LazyTLS(httpx.BaseTransport):
    """An HTTPS transport made on first use: loading the CA bundle costs 25-60 ms here,
    which a pull from a plain-HTTP loopback registry should not pay."""

    def __init__(self, *, verify: bool, limits: httpx.Limits) -> None:
        self._verify = verify
        self._limits = limits
        self._transport: httpx.HTTPTransport | None = None
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            if self._transport is None:
                self._transport = httpx.HTTPTransport(verify=self._verify, limits=self._limits)
        return self._transport.handle_request(request)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@dataclass
class Manifest:
    """A manifest document as fetched: its bytes, media type and verified digest."""

    data: bytes
    media_type: str
    digest: str


class RegistryClient(Closing):
    """One registry, one repository; a pooled httpx client shared by the download threads."""

    def __init__(
        self,
        ref: Reference,
        *,
        insecure: bool = False,
        credentials: Credentials | None = None,
    ) -> None:
        self.ref = ref
        self.host = endpoint(ref.registry)
        self.insecure = insecure
        # Plain HTTP only where nothing can listen in: loopback, or when the user says so.
        self.scheme = "http" if (insecure or is_loopback(ref.registry)) else "https"
        self.credentials = resolve_credentials(ref.registry, credentials)
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        self.http = httpx.Client(
            timeout=TIMEOUT,
            # Never the default transport (it would load the CA bundle now): every URL is
            # http:// or https:// and has its mount.
            transport=_LazyTLS(verify=not insecure, limits=limits),
            follow_redirects=True,
            mounts={
                "http://": httpx.HTTPTransport(verify=False, limits=limits),
                "https://": _LazyTLS(verify=not insecure, limits=limits),
            },
            headers={"User-Agent": "bareboat"},
        )
        self._auth: str | None = None
        self._pinged = False  # a first answer (and its challenge, if any) was seen

    def close(self) -> None:
        self.http.close()

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}/v2"

    # --- auth ---------------------------------------------------------------------------

    def _send(self, url: str, headers: dict[str, str], **kw: object) -> httpx.Response:
        """A streamed GET: nothing is read until the caller reads, with a bound."""
        req = self.http.build_request("GET", url, headers=headers, **kw)  # type: ignore[arg-type]
        try:
            return self.http.send(req, stream=True)
        except httpx.HTTPError as err:
            raise RegistryError(f"{self.ref.registry}: {type(err).__name__}: {err}") from None

    def _body(self, r: httpx.Response, limit: int, what: str) -> bytes:
        """Read a whole (small) body, refusing more than `limit` bytes; closes `r`."""
        try:
            length = r.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                raise RegistryError(f"{self.ref}: {what} is larger than {limit} bytes")
            buf = bytearray()
            for chunk in r.iter_bytes():
                buf += chunk
                if len(buf) > limit:
                    raise RegistryError(f"{self.ref}: {what} is larger than {limit} bytes")
            return bytes(buf)
        except httpx.HTTPError as err:
            raise RegistryError(f"{self.ref.registry}: {type(err).__name__}: {err}") from None
        finally:
            r.close()

    def _authenticate(self, resp: httpx.Response) -> None:
        header = resp.headers.get("www-authenticate")
        if not header:
            raise AuthError(f"{self.ref.registry}: 401 without a WWW-Authenticate challenge")
        ch = parse_challenge(header)
        if ch.scheme == "basic":
            if self.credentials is None:
                raise AuthError(f"{self.ref.registry} requires a login (use --user USER:PASSWORD)")
            self._auth = self.credentials.basic()
        elif ch.scheme == "bearer":
            self._auth = "Bearer " + self._token(ch.params)
        else:
            raise AuthError(f"{self.ref.registry}: unsupported auth scheme {ch.scheme!r}")

    def _token(self, params: dict[str, str]) -> str:
        realm = params.get("realm")
        if not realm:
            raise AuthError(f"{self.ref.registry}: Bearer challenge without a realm")
        url = httpx.URL(realm)
        if url.scheme not in ("https", "http") or (
            url.scheme == "http" and not (self.insecure or is_loopback(url.netloc.decode()))
        ):
            raise AuthError(f"{self.ref.registry}: refusing token realm {realm!r}")
        query = {"scope": f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        headers = {"Authorization": self.credentials.basic()} if self.credentials else {}
        r = self._send(realm, headers, params=query)
        body = self._body(r, 1 << 20, "token response")
        if r.status_code in (401, 403):
            raise AuthError(f"{self.ref.registry}: token request refused (HTTP {r.status_code})")
        if r.status_code != 200:
            raise AuthError(f"{self.ref.registry}: token request failed (HTTP {r.status_code})")
        try:
            doc = json.loads(body)
        except ValueError:
            raise AuthError(f"{self.ref.registry}: token response is not JSON") from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"{self.ref.registry}: token response has no token")
        return token

    def _get(self, url: str, headers: dict[str, str]) -> httpx.Response:
        """GET with the current credentials. The first request goes out without a ping (one
        round trip less); a 401 is answered from its own challenge, then retried once."""
        for attempt in range(2):
            if self._auth:
                headers = {**headers, "Authorization": self._auth}
            r = self._send(url, headers)
            if r.status_code != 401:
                self._pinged = True
                return r
            self._body(r, 1 << 16, "401 answer")
            if attempt == 0 and not self._pinged:
                self._pinged = True
                self._authenticate(r)
                continue
            break
        raise AuthError(f"{self.ref.registry}: not authorized to pull {self.ref.repository}")

    # --- content ------------------------------------------------------------------------

    def manifest(self, reference: str, expected_digest: str | None = None) -> Manifest:
        """Fetch a manifest or index by tag or digest; a digest pins its content."""
        url = f"{self.base}/{self.ref.repository}/manifests/{reference}"
        r = self._get(url, {"Accept": ACCEPT})
        data = self._body(r, MAX_DOCUMENT, "manifest")
        if r.status_code == 404:
            sep = "@" if reference.startswith("sha256:") else ":"
            raise ImageNotFound(f"{self.ref.name}{sep}{reference}: manifest unknown")
        if r.status_code != 200:
            raise RegistryError(f"{self.ref}: manifest fetch answered HTTP {r.status_code}")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        pinned = expected_digest or (reference if reference.startswith("sha256:") else None)
        if pinned and digest != pinned:
            raise DigestMismatch(f"{self.ref}: manifest content is {digest}, expected {pinned}")
        media_type = r.headers.get("content-type", "").split(";")[0].strip()
        return Manifest(data, media_type, digest)

    def blob_bytes(self, digest: str, size: int, limit: int = MAX_DOCUMENT) -> bytes:
        """A small blob (config) in memory, verified."""
        if size > limit:
            raise RegistryError(f"{self.ref}: blob {digest} of {size} bytes is too large")
        url = f"{self.base}/{self.ref.repository}/blobs/{digest}"
        r = self._get(url, {})
        data = self._body(r, size, f"blob {digest}")
        if r.status_code != 200:
            raise RegistryError(f"{self.ref}: blob {digest} answered HTTP {r.status_code}")
        if len(data) != size or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise DigestMismatch(f"{self.ref}: blob {digest} does not match its digest or size")
        return data

    def blob_into(
        self, digest: str, writer: BlobWriter, progress: Callable[[int], None] | None = None
    ) -> None:
        """Stream a blob into `writer` (which checks size as it goes and digest at the end)."""
        url = f"{self.base}/{self.ref.repository}/blobs/{digest}"
        r = self._get(url, {})
        try:
            if r.status_code != 200:
                raise RegistryError(f"{self.ref}: blob {digest} answered HTTP {r.status_code}")
            for chunk in r.iter_raw(CHUNK):
                writer.write(chunk)
                if progress:
                    progress(len(chunk))
        except httpx.HTTPError as err:
            raise RegistryError(f"{self.ref.registry}: {type(err).__name__}: {err}") from None
        finally:
            r.close()
