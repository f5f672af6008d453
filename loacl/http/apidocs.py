"""The interactive API reference: ``GET /docs/try``, where a reader authorizes with a token and
sends real requests to this server, next to the plain list at ``/docs`` (``openapi.docs``: no
script, fast), each page linking to the other.

Why Swagger UI (``swagger-ui-dist``): of the offline bundles that can send a request, it is the
one both small enough and well kept (``apidocs/README.md`` compares them). Its Authorize dialog
takes the bearer token of each security scheme the document names (``ownerToken``,
``visitorToken``), and every operation can be sent from the page and its response read there.
Redoc's free edition cannot send requests; Scalar's standalone bundle is about three times the
size (about 1.4 MB gzipped) and loads its fonts from its vendor by default; RapiDoc is smaller
(about 220 KB gzipped) but loads Open Sans from a font host by default and has had no release
for over a year.

Its files are copied from npm at the exact version ``apidocs/package.json`` pins (``sh
apidocs/vendor.sh``) into ``loacl/static/apidocs/`` with their SHA-256 in ``manifest.json``;
they are committed and shipped in the wheel, so serving needs no Node.js and no network. The
page loads nothing from elsewhere: Swagger UI's stylesheet names no web font, the online
validator is off (``validatorUrl: null``), and ``docs-try.js`` (the init code, a served file:
the policy allows no inline script) turns off configuration from the address bar.

The policy (``csp.policy``): scripts, styles and requests from and to this origin only,
nothing inline, not even styles (Swagger UI sets its inline styles through the DOM, which
``style-src`` does not govern; the browser tests find no violation). Requests go to the server
the document names (``servers``: ``public_url`` when set), so a page opened at another address
than ``public_url`` cannot send them (``connect-src 'self'``).

The assets are served at ``/docs/assets/<first 16 hex digits of their SHA-256>/<name>``,
cacheable for good (``immutable``), gzipped when the browser accepts it.
"""

from __future__ import annotations

import asyncio
import html

from starlette.requests import Request
from starlette.responses import Response

from loacl import __version__
from loacl.domain.errors import LoaclError
from loacl.http.csp import SELF, policy
from loacl.http.routing import Endpoint
from loacl.http.static import FOREVER, Asset, asset, serve_asset

SPEC_URL = "/api/v1/openapi.json"
JS = "text/javascript; charset=utf-8"
CSS = "text/css; charset=utf-8"
# The name each is served by: the file under loacl/static/ and its media type.
ASSETS: dict[str, tuple[str, str]] = {
    "swagger-ui-bundle.js": ("apidocs/swagger-ui-bundle.js", JS),
    "swagger-ui.css": ("apidocs/swagger-ui.css", CSS),
    "try.js": ("docs-try.js", JS),
    "try.css": ("docs-try.css", CSS),
}
# Images: Swagger UI's icons are data: URLs in its stylesheet; an image answer is shown from a
# blob: URL the page makes itself.
TRY_CSP = policy(images=(SELF, "data:", "blob:"))


def docs_asset(name: str) -> Asset:
    file, media_type = ASSETS[name]
    return asset(file, media_type)


def asset_url(name: str) -> str:
    return f"/docs/assets/{docs_asset(name).version}/{name}"


async def try_page(request: Request) -> Response:
    # The first call reads and gzips the bundle (about 1.7 MB): off the event loop.
    await asyncio.gather(*(asyncio.to_thread(docs_asset, name) for name in ASSETS))
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<title>LOACL API: try it</title>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<link rel=icon href='data:,'>"
        f"<link rel=stylesheet href='{asset_url('swagger-ui.css')}'>"
        f"<link rel=stylesheet href='{asset_url('try.css')}'></head><body>"
        f"<nav class=loacl-bar><strong>LOACL API {html.escape(__version__)}</strong>"
        "<a href='/docs'>Plain list of every endpoint (no script)</a>"
        f"<a href='{SPEC_URL}'>OpenAPI document</a>"
        "<span>Log in with <code>POST /api/v1/auth/login</code>, then paste its "
        "<code>access_token</code> under <b>Authorize</b>.</span></nav>"
        f"<div id=swagger-ui data-spec='{SPEC_URL}'></div>"
        "<noscript><p>This page needs JavaScript; <a href='/docs'>the plain list</a> does "
        "not.</p></noscript>"
        f"<script src='{asset_url('swagger-ui-bundle.js')}'></script>"
        f"<script src='{asset_url('try.js')}'></script></body></html>"
    )
    return Response(page, media_type="text/html; charset=utf-8", headers={
        "Cache-Control": "no-cache", "Content-Security-Policy": TRY_CSP})


async def assets(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        raise LoaclError("not_found", "no such file")
    item = await asyncio.to_thread(docs_asset, name)
    if request.path_params["version"] != item.version:
        # Pages name the current version only; another is a file this server does not have.
        raise LoaclError("not_found", "no such version of this file")
    return serve_asset(request, item, FOREVER, cross_origin=False)


# Pages and assets, not part of the API.
endpoints = [
    Endpoint("get", "/docs/try", try_page,
             "The interactive API reference (Swagger UI): authorize, send requests",
             documented=False),
    Endpoint("get", "/docs/assets/{version}/{name}", assets,
             "The interactive reference's scripts and styles (immutable)", documented=False),
]
