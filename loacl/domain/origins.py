"""Allowed origins: exact (``https://example.com``, ``http://localhost:3000``) or every
subdomain of a domain (``https://*.example.com``, which does not admit the domain itself)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from loacl.domain.errors import LoaclError

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(value: str) -> str:
    """The canonical form of an allowed origin, or ``LoaclError`` saying what is wrong."""
    raw = value.strip()
    wildcard = False
    probe = raw
    if "://*." in raw:
        wildcard = True
        probe = raw.replace("://*.", "://", 1)
    try:
        parts = urlsplit(probe)
        port = parts.port
    except ValueError:
        raise LoaclError("validation_error", f"{value!r} is not an origin") from None
    if parts.scheme not in _DEFAULT_PORTS:
        raise LoaclError("validation_error", f"{value!r}: an origin starts with http:// or https://")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise LoaclError(
            "validation_error",
            f"{value!r}: an origin is scheme, host and port only (no path, query or user)",
        )
    host = (parts.hostname or "").lower()
    if not host or not _HOST.match(host):
        raise LoaclError("validation_error", f"{value!r}: {host!r} is not a valid host name")
    if wildcard and "." not in host:
        raise LoaclError("validation_error", f"{value!r}: a wildcard needs a domain, *.example.com")
    shown_port = "" if port is None or port == _DEFAULT_PORTS[parts.scheme] else f":{port}"
    return f"{parts.scheme}://{'*.' if wildcard else ''}{host}{shown_port}"


def origin_allowed(origin: str | None, allowed: tuple[str, ...] | list[str]) -> bool:
    """Whether a request's ``Origin`` header matches one of the allowed origins."""
    if not origin or origin == "null":
        return False
    try:
        candidate = normalize_origin(origin)
    except LoaclError:
        return False
    if "*" in candidate:
        return False
    for pattern in allowed:
        if pattern == candidate:
            return True
        if "://*." in pattern:
            scheme, rest = pattern.split("://*.", 1)
            c_scheme, c_rest = candidate.split("://", 1)
            if scheme == c_scheme and c_rest.endswith("." + rest):
                return True
    return False
