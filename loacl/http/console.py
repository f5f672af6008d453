"""The owner console at ``/console/``: a client of the public API, built from ``console/`` into
``loacl/static/console/`` (shipped by ``pip install``; serving needs no Node.js).

- ``GET /console/`` and any ``/console/<path>`` (the console's own routes: ``/console/verify``,
  ``/console/widgets/<id>`` ...): ``index.html``, revalidated on every load.
- ``GET /console/assets/<name>``: the bundle's files, named by their content, cached for good.
- ``GET /console/preview.html``: the page the widget editor frames to preview the real
  ``/widget.js`` with unsaved settings; only the console may frame it.

Each page carries a strict Content-Security-Policy (``policy`` below): scripts and styles from
this server only, nothing inline, no framing by others.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from loacl.domain.errors import LoaclError
from loacl.http import csp
from loacl.http.common import public_base
from loacl.http.routing import Endpoint
from loacl.http.static import FOREVER, Asset, asset, serve_asset

_ASSET = re.compile(r"^[A-Za-z0-9_-]+\.(js|css|txt)$")
MEDIA_TYPES = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
}


def _socket_origin(request: Request) -> str:
    """This server's WebSocket origin (``ws://host``), which ``'self'`` covers in current
    browsers but not in all."""
    return "ws" + public_base(request).removeprefix("http")


# What both console pages allow besides scripts and styles from their own files (as before the
# one policy builder: images also from data: and blob: URLs, fonts and forms from the origin).
_PAGE = {"images": ("'self'", "data:", "blob:"), "fonts": ("'self'",), "forms": ("'self'",)}


def console_policy(request: Request) -> str:
    return csp.policy(connect=("'self'", _socket_origin(request)), frames=("'self'",), **_PAGE)


def preview_policy(request: Request) -> str:
    # The real widget runs here: its stylesheet is a constructed one, its colours set through
    # the CSSOM, so nothing needs 'unsafe-inline'. Only the console (same origin) frames it.
    return csp.policy(connect=("'self'", _socket_origin(request)), framed_by=("'self'",),
                      **_PAGE)


def _read(*parts: str) -> bytes:
    path = resources.files("loacl").joinpath("static", "console", *parts)
    return path.read_bytes()


@functools.cache
def _assets() -> frozenset[str]:
    folder = resources.files("loacl").joinpath("static", "console", "assets")
    return frozenset(item.name for item in folder.iterdir() if _ASSET.match(item.name))


def _page(request: Request, body: bytes, csp: str, *, framed: bool = False) -> Response:
    return Response(body, media_type="text/html; charset=utf-8", headers={
        "Cache-Control": "no-cache",
        "Content-Security-Policy": csp,
        "X-Frame-Options": "SAMEORIGIN" if framed else "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
    })


async def console_page(request: Request) -> Response:
    return _page(request, _read("index.html"), console_policy(request))


async def console_root(request: Request) -> Response:
    return RedirectResponse("/console/", status_code=308)


async def preview_page(request: Request) -> Response:
    return _page(request, _read("preview.html"), preview_policy(request), framed=True)


def console_asset(name: str) -> Asset:
    if name not in _assets():
        raise LoaclError("not_found", "no such console file")
    return asset(f"console/assets/{name}", MEDIA_TYPES[name.rsplit(".", 1)[1]])


async def asset_file(request: Request) -> Response:
    response = serve_asset(request, console_asset(request.path_params["name"]), FOREVER)
    # The console's own files: no other site needs them.
    del response.headers["access-control-allow-origin"]
    response.headers["cross-origin-resource-policy"] = "same-origin"
    return response


endpoints = [
    Endpoint("get", "/console", console_root, "The owner console", documented=False),
    Endpoint("get", "/console/assets/{name}", asset_file, "The console's files (immutable)",
             documented=False),
    Endpoint("get", "/console/preview.html", preview_page, "The widget preview frame",
             documented=False),
    Endpoint("get", "/console/{path:path}", console_page, "The owner console", documented=False),
]
