"""Reference parsing, docker's way."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bareboat.errors import InvalidReference
from bareboat.images.reference import parse_reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("user/app", "docker.io/user/app:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
        ("localhost/x", "localhost/x:latest"),
        ("localhost:5000/x/y:t", "localhost:5000/x/y:t"),
        ("127.0.0.1:5000/a", "127.0.0.1:5000/a:latest"),
        ("[::1]:5000/a:b", "[::1]:5000/a:b"),
        ("quay.io/a/b/c:v1.2-rc_3", "quay.io/a/b/c:v1.2-rc_3"),
        (f"busybox@{D}", f"docker.io/library/busybox@{D}"),
        (f"busybox:tag@{D}", f"docker.io/library/busybox:tag@{D}"),
        ("Host/a", "Host/a:latest"),
        ("a__b/c.d-e", "docker.io/a__b/c.d-e:latest"),
    ],
)
def test_parse_normalizes(text: str, want: str) -> None:
    assert str(parse_reference(text)) == want


@pytest.mark.parametrize(
    "text",
    [
        "",
        " busybox",
        "Busybox",
        "user/App",
        "a:b:c",
        "busybox:",
        "busybox@sha256:abc",
        f"busybox@md5:{'a' * 32}",
        "a//b",
        "-a",
        "a-/b",
        "busybox:" + "t" * 129,
        "x/" + "a" * 300,
        "host:port/x",
        "a b",
        ":tag",
        "@" + D,
    ],
)
def test_malformed_is_one_line_error(text: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    assert "\n" not in str(info.value)


def test_familiar_name_and_parts() -> None:
    r = parse_reference("busybox")
    assert (r.registry, r.repository, r.tag, r.digest) == (
        "docker.io",
        "library/busybox",
        "latest",
        "",
    )
    assert r.familiar_name == "busybox"
    assert parse_reference("user/x").familiar_name == "user/x"
    assert parse_reference("h:1/x").familiar_name == "h:1/x"
    assert parse_reference(f"x@{D}").reference == D


component = st.from_regex(r"[a-z0-9]+(?:[_-][a-z0-9]+)?", fullmatch=True).filter(
    lambda s: len(s) < 30
)
tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
digest = st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True)
host = st.sampled_from(["", "localhost/", "example.com/", "h.io:5000/", "127.0.0.1:1/"])


@given(host, st.lists(component, min_size=1, max_size=3), st.none() | tag, st.none() | digest)
def test_round_trip(h: str, parts: list[str], t: str | None, d: str | None) -> None:
    text = h + "/".join(parts) + (f":{t}" if t else "") + (f"@{d}" if d else "")
    r = parse_reference(text)
    assert parse_reference(str(r)) == r
    assert r.tag == (t or ("" if d else "latest"))
    assert r.digest == (d or "")
    assert r.repository.endswith("/".join(parts))


@given(st.text(max_size=80))
def test_never_crashes(text: str) -> None:
    try:
        r = parse_reference(text)
    except InvalidReference as err:
        assert "\n" not in str(err) or "\n" in text
    else:
        assert parse_reference(str(r)) == r
