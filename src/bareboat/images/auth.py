"""Registry credentials and `WWW-Authenticate` challenges.

Credentials come from, in order: what the caller passes (`--user`), the environment
(`BAREBOAT_REGISTRY_USER` / `BAREBOAT_REGISTRY_PASSWORD`), then a docker-style auths file
(`BAREBOAT_AUTH_FILE`, `$DOCKER_CONFIG/config.json`, `~/.docker/config.json`).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from bareboat.errors import AuthError, UsageError


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """`user:password` (as `--user` takes it)."""
        user, sep, password = text.partition(":")
        if not user or not sep:
            raise UsageError("credentials must be given as USER:PASSWORD")
        return cls(user, password)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "bearer" or "basic"
    params: dict[str, str]


_PARAM = re.compile(
    r'\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)'
)


def parse_challenge(header: str) -> Challenge:
    """Parse one `WWW-Authenticate` value, e.g. `Bearer realm="..",service="..",scope=".."`."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", scheme):
        raise AuthError(f"malformed WWW-Authenticate header: {header[:200]!r}")
    params: dict[str, str] = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m or m.end() == pos:
            raise AuthError(f"malformed WWW-Authenticate header: {header[:200]!r}")
        value = m.group(2) if m.group(2) is not None else m.group(3)
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
        pos = m.end()
    return Challenge(scheme.lower(), params)


def _auth_files() -> list[Path]:
    env = os.environ
    files = []
    if env.get("BAREBOAT_AUTH_FILE"):
        files.append(Path(env["BAREBOAT_AUTH_FILE"]))
    if env.get("DOCKER_CONFIG"):
        files.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    files.append(Path.home() / ".docker" / "config.json")
    return files


def _keys(registry: str) -> list[str]:
    keys = [registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/"]
    if registry == "docker.io":
        keys += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    return keys


def from_auths_file(path: Path, registry: str) -> Credentials | None:
    try:
        doc = msgspec.json.decode(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as err:
        raise AuthError(f"cannot read auths file {path}: {err}") from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    for key in _keys(registry):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                raw = base64.b64decode(entry["auth"], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise AuthError(f"bad 'auth' entry for {key} in {path}") from None
            user, _, password = raw.partition(":")
            return Credentials(user, password)
        if isinstance(entry.get("username"), str):
            return Credentials(entry["username"], str(entry.get("password", "")))
    return None


def resolve_credentials(registry: str, explicit: Credentials | None = None) -> Credentials | None:
    if explicit is not None:
        return explicit
    env = os.environ
    if env.get("BAREBOAT_REGISTRY_USER"):
        return Credentials(env["BAREBOAT_REGISTRY_USER"], env.get("BAREBOAT_REGISTRY_PASSWORD", ""))
    for path in _auth_files():
        creds = from_auths_file(path, registry)
        if creds is not None:
            return creds
    return None
