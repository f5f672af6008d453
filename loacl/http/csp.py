"""``policy(...)``: the Content-Security-Policy of LOACL's HTML pages, built in one place.

Every page starts from nothing (``default-src 'none'``) and names what it loads: its scripts
from its own origin only (never inline, never ``eval``: init code goes in a served ``.js``
file), requests to its own origin only, no plugins, no ``<base>``, no form posts elsewhere and
no framing. A page may allow an inline ``<style>`` by its hash (``style_hash``); a page whose
bundle sets style attributes in its markup may allow ``'unsafe-inline'`` for styles, never for
scripts.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

SELF = "'self'"
NONE = "'none'"
UNSAFE_INLINE = "'unsafe-inline'"
# What a script source list may never hold: each lets text that is not a served file run.
_UNSAFE_SCRIPT = ("'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'", "'wasm-unsafe-eval'",
                  "data:", "blob:", "*")


def style_hash(css: str) -> str:
    """The source expression that allows one inline ``<style>`` with exactly ``css``."""
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    return f"'sha256-{digest}'"


def policy(
    *,
    scripts: Sequence[str] = (SELF,),
    styles: Sequence[str] = (SELF,),
    images: Sequence[str] = (SELF, "data:"),
    connect: Sequence[str] = (SELF,),
    fonts: Sequence[str] = (),
    forms: Sequence[str] = (),
    frames: Sequence[str] = (),
    framed_by: Sequence[str] = (NONE,),
) -> str:
    """The policy header's value; an empty list leaves that kind to ``default-src 'none'``.

    ``connect-src 'self'`` covers WebSockets to the same host and port as well (``ws:`` and
    ``wss:`` match ``'self'`` in CSP Level 3, as Chromium, Firefox and Safari implement it).
    """
    unsafe = [source for source in scripts if source.lower() in _UNSAFE_SCRIPT]
    if unsafe:
        raise ValueError(f"script-src may not allow {', '.join(unsafe)}")
    directives = [
        ("default-src", [NONE]),
        ("script-src", list(scripts)),
        ("style-src", list(styles)),
        ("img-src", list(images)),
        ("font-src", list(fonts)),
        ("connect-src", list(connect)),
        ("object-src", [NONE]),
        ("base-uri", [NONE]),
        ("frame-src", list(frames)),
        ("form-action", list(forms) or [NONE]),
        ("frame-ancestors", list(framed_by)),
    ]
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives if sources)
