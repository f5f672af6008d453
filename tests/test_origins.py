"""Allowed origins: normalisation and matching, by table and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from loacl.domain.errors import LoaclError
from loacl.domain.origins import normalize_origin, origin_allowed


@pytest.mark.parametrize(
    ("given_value", "expected"),
    [
        ("https://example.com", "https://example.com"),
        ("https://example.com/", "https://example.com"),
        ("  https://example.com  ", "https://example.com"),
        ("HTTPS://Example.COM", "https://example.com"),
        ("https://example.com:443", "https://example.com"),
        ("http://example.com:80", "http://example.com"),
        ("https://example.com:8443", "https://example.com:8443"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://*.example.com", "https://*.example.com"),
        ("https://*.Example.com:443/", "https://*.example.com"),
        ("https://*.example.com:8443", "https://*.example.com:8443"),
        ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
    ],
)
def test_normalize_origin_accepts(given_value: str, expected: str) -> None:
    assert normalize_origin(given_value) == expected
    assert normalize_origin(expected) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "example.com",
        "//example.com",
        "ftp://example.com",
        "javascript:alert(1)",
        "null",
        "*",
        "https://",
        "https://example.com/path",
        "https://example.com?x=1",
        "https://example.com#top",
        "https://user@example.com",
        "https://user:pw@example.com",
        "https://example.com:99999",
        "https://example.com:port",
        "https://exa mple.com",
        "https://exa_mple.com",
        "https://-example.com",
        "https://example-.com",
        "https://example..com",
        "https://example.com.",
        "https://bücher.example",
        "https://" + "a" * 64 + ".com",
        "https://*.com",
        "https://*",
        "https://*example.com",
        "https://a.*.example.com",
        "https://*.*.example.com",
        "*://example.com",
        "https://[::1",
    ],
)
def test_normalize_origin_refuses(value: str) -> None:
    with pytest.raises(LoaclError) as caught:
        normalize_origin(value)
    assert caught.value.code == "validation_error"


ALLOWED = [
    normalize_origin(o)
    for o in ("https://shop.example.com", "https://*.example.org", "http://localhost:3000",
              "https://*.example.net:8443")
]


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://shop.example.com", True),
        ("HTTPS://SHOP.EXAMPLE.COM", True),
        ("https://shop.example.com:443", True),
        ("http://localhost:3000", True),
        ("https://a.example.org", True),
        ("https://deep.a.example.org", True),
        ("https://a.example.net:8443", True),
        # not allowed
        ("https://example.org", False),  # a wildcard's apex
        ("http://a.example.org", False),  # another scheme
        ("https://evilexample.org", False),  # a suffix lookalike
        ("https://a.example.org.evil.net", False),
        ("https://a.example.org:8443", False),  # another port
        ("https://a.example.net", False),  # the wildcard names a port
        ("https://example.net:8443", False),
        ("http://shop.example.com", False),
        ("https://shop.example.com:8443", False),
        ("https://www.shop.example.com", False),  # exact means exact
        ("http://localhost:3001", False),
        ("http://localhost", False),
        ("https://*.example.org", False),  # a pattern is not an origin
        ("null", False),
        ("", False),
        (None, False),
        ("not an origin", False),
        ("https://a.example.org/path", False),
    ],
)
def test_origin_allowed(origin: str | None, allowed: bool) -> None:
    assert origin_allowed(origin, ALLOWED) is allowed


def test_nothing_is_allowed_by_an_empty_list() -> None:
    assert origin_allowed("https://example.com", []) is False


# -- properties -------------------------------------------------------------------------------

_label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?\Z")
_domain = st.lists(_label, min_size=2, max_size=4).map(".".join)
_scheme = st.sampled_from(["http", "https"])
_port = st.one_of(st.none(), st.integers(min_value=1, max_value=65535))


def _with_port(port: int | None) -> str:
    return "" if port is None else f":{port}"


@st.composite
def _origin_text(draw: st.DrawFn) -> str:
    """An origin as someone might type it: any case, default ports, a trailing slash."""
    scheme = draw(_scheme)
    host = draw(_domain)
    wildcard = "*." if draw(st.booleans()) else ""
    text = f"{scheme}://{wildcard}{host}{_with_port(draw(_port))}{draw(st.sampled_from(['', '/']))}"
    if draw(st.booleans()):
        text = text.upper()
    return text


@hypothesis_settings(deadline=None)
@given(_origin_text())
def test_normalize_origin_is_idempotent(text: str) -> None:
    once = normalize_origin(text)
    assert normalize_origin(once) == once
    assert once == once.lower()
    assert not once.endswith("/")
    assert not once.endswith(":80") or once.startswith("https:")
    assert not once.endswith(":443") or once.startswith("http:")


@hypothesis_settings(deadline=None)
@given(st.text(max_size=60))
def test_normalize_origin_refuses_or_is_idempotent_on_any_text(text: str) -> None:
    try:
        once = normalize_origin(text)
    except LoaclError as exc:
        assert exc.code == "validation_error"
        return
    assert normalize_origin(once) == once
    assert origin_allowed(once, [once]) is ("*" not in once)


@hypothesis_settings(deadline=None)
@given(_scheme, _domain, _label, _label, _port)
def test_a_wildcard_admits_subdomains_only(
    scheme: str, domain: str, sub: str, lookalike: str, port: int | None
) -> None:
    pattern = normalize_origin(f"{scheme}://*.{domain}{_with_port(port)}")
    suffix = _with_port(port)
    other = "http" if scheme == "https" else "https"
    assert origin_allowed(f"{scheme}://{sub}.{domain}{suffix}", [pattern])
    assert origin_allowed(f"{scheme}://{sub}.{sub}.{domain}{suffix}", [pattern])
    assert not origin_allowed(f"{scheme}://{domain}{suffix}", [pattern])  # the apex
    assert not origin_allowed(f"{scheme}://{lookalike}{domain}{suffix}", [pattern])
    assert not origin_allowed(f"{other}://{sub}.{domain}{suffix}", [pattern])
    assert not origin_allowed(f"{scheme}://{sub}.{domain}.evil.test{suffix}", [pattern])


@hypothesis_settings(deadline=None)
@given(_origin_text(), _origin_text())
def test_an_exact_origin_admits_only_itself(first: str, second: str) -> None:
    a, b = normalize_origin(first), normalize_origin(second)
    if "*" in a or "*" in b:
        return
    assert origin_allowed(first, [a])
    assert origin_allowed(second, [a]) is (a == b)
