"""Image references, parsed the way docker parses them.

`busybox` is `docker.io/library/busybox:latest`; `host:5000/a/b@sha256:...` names a registry
with a port and pins a digest. The grammar follows distribution's `reference` package: a
domain is the first component only if it has a `.` or `:`, is `localhost`, or has an upper
case letter; repository components are lower case; a tag is at most 128 word characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bareboat.errors import InvalidReference

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
MAX_NAME = 255

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
)
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def is_digest(value: str) -> bool:
    return DIGEST_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class Reference:
    """A parsed, normalized reference. `tag` is empty when only a digest was given."""

    registry: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def familiar_name(self) -> str:
        """The short form docker shows: `busybox` for docker.io/library/busybox."""
        if self.registry == DEFAULT_REGISTRY:
            repo = self.repository
            return repo.removeprefix("library/") if repo.count("/") == 1 else repo
        return self.name

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, "")

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, "", digest)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        domain = "docker.io" if first in ("index.docker.io", "registry-1.docker.io") else first
        return domain, rest
    return DEFAULT_REGISTRY, name


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalize `text`; raise InvalidReference with a one-line message.

    With `default_tag`, a reference with neither tag nor digest gets `latest`.
    """
    if not text or text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReference(f"invalid reference format: {text!r}")
    rest, _, digest = text.partition("@")
    if digest and not is_digest(digest):
        raise InvalidReference(f"invalid reference format: {text!r}: bad digest {digest!r}")
    tag = ""
    # A tag follows the last colon that comes after the last slash (a port comes before).
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReference(f"invalid reference format: {text!r}: bad tag {tag!r}")
    if not rest:
        raise InvalidReference(f"invalid reference format: {text!r}: empty name")
    registry, repository = _split_domain(rest)
    if not _DOMAIN_RE.fullmatch(registry):
        raise InvalidReference(f"invalid reference format: {text!r}: bad registry {registry!r}")
    if repository.lower() != repository:
        raise InvalidReference(
            f"invalid reference format: {text!r}: repository name must be lowercase"
        )
    if not _PATH_RE.fullmatch(repository):
        raise InvalidReference(f"invalid reference format: {text!r}")
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    if len(f"{registry}/{repository}") > MAX_NAME:
        raise InvalidReference(
            f"invalid reference format: {text!r}: name longer than {MAX_NAME} characters"
        )
    if default_tag and not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)
