"""A client for the OCI distribution API (v2): manifests, blobs and the auth dance.

The spec logic is ours: answer a `WWW-Authenticate` challenge (Bearer token from the realm, or
Basic), fetch manifests with every manifest type accepted, and stream blobs through a
`BlobWriter` so digest and size are checked before anything enters the store. HTTP is
transport.py's (http.client; see there why not httpx).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from bareboat.closing import Closing
from bareboat.errors import AuthError, DigestMismatch, ImageNotFound, RegistryError
from bareboat.images.auth import Credentials, parse_challenge, resolve_credentials
from bareboat.images.blobs import BlobWriter
from bareboat.images.reference import Reference
from bareboat.images.transport import Client, HTTPError, Response, origin, with_query
from bareboat.images.wire import ACCEPT, MAX_DOCUMENT

if TYPE_CHECKING:
    import ssl

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


def tls_context(verify: bool) -> ssl.SSLContext:
    """The TLS context of https registries, made on first use: loading the CA bundle costs
    25-60 ms here, which a pull from a plain-HTTP loopback registry should not pay. The CAs
    are certifi's (as httpx used; the system's without it), or $SSL_CERT_FILE / $SSL_CERT_DIR
    when set."""
    import ssl

    if not verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


@dataclass
class Manifest:
    """A manifest document as fetched: its bytes, media type and verified digest."""

    data: bytes
    media_type: str
    digest: str


class RegistryClient(Closing):
    """One registry, one repository; kept-alive connections shared by the download threads."""

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
        self.http = Client(
            tls=lambda: tls_context(not insecure),
            allow_http=lambda host: insecure or is_loopback(host),
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

    def _send(self, url: str, headers: dict[str, str]) -> Response:
        """A streamed GET: nothing is read until the caller reads, with a bound."""
        try:
            return self.http.get(url, headers)
        except HTTPError as err:
            raise RegistryError(f"{self.ref.registry}: {err}") from None

    def _body(self, r: Response, limit: int, what: str) -> bytes:
        """Read a whole (small) body, refusing more than `limit` bytes; closes `r`."""
        try:
            length = r.headers.get("content-length", "")
            if length.isdigit() and int(length) > limit:
                raise RegistryError(f"{self.ref}: {what} is larger than {limit} bytes")
            buf = bytearray()
            for chunk in r.iter_raw(1 << 16):
                buf += chunk
                if len(buf) > limit:
                    raise RegistryError(f"{self.ref}: {what} is larger than {limit} bytes")
            return bytes(buf)
        except HTTPError as err:
            raise RegistryError(f"{self.ref.registry}: {err}") from None
        finally:
            r.close()

    def _authenticate(self, resp: Response) -> None:
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
        try:
            at = origin(realm)
        except HTTPError:
            raise AuthError(f"{self.ref.registry}: refusing token realm {realm!r}") from None
        if at.scheme == "http" and not (self.insecure or is_loopback(at.host)):
            raise AuthError(f"{self.ref.registry}: refusing token realm {realm!r}")
        query = {"scope": f"repository:{self.ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        headers = {"Authorization": self.credentials.basic()} if self.credentials else {}
        r = self._send(with_query(realm, query), headers)
        body = self._body(r, 1 << 20, "token response")
        if r.status_code in (401, 403):
            raise AuthError(f"{self.ref.registry}: token request refused (HTTP {r.status_code})")
        if r.status_code != 200:
            raise AuthError(f"{self.ref.registry}: token request failed (HTTP {r.status_code})")
        try:
            doc = msgspec.json.decode(body)
        except msgspec.DecodeError:
            raise AuthError(f"{self.ref.registry}: token response is not JSON") from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"{self.ref.registry}: token response has no token")
        return token

    def _get(self, url: str, headers: dict[str, str]) -> Response:
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
        except HTTPError as err:
            raise RegistryError(f"{self.ref.registry}: {err}") from None
        finally:
            r.close()
