"""The embeddable widget script and the home page.

- ``GET /widget.js``: the script sites embed; cached for five minutes and revalidated with its
  ``ETag`` (``If-None-Match`` answers 304), gzipped when the client accepts it.
- ``GET /widget/<version>.js`` (or ``/widget.js?v=<version>``): the same bytes, cacheable for
  good (``immutable``); an old version redirects to ``/widget.js``.
- ``GET /widget/extra.<version>.js``: the widget's second file, loaded on demand by the first
  (which holds its version and integrity hash), cacheable for good.
- ``GET /widget.json``: the version, both URLs and the Subresource Integrity hash.
- ``GET /``: a short description, links to the API, and the live demo widget.

The script lives in ``loacl/static/widget.js`` (built from ``widget/src/``, shipped by
``pip install``); it is read once and kept with its gzipped form and hashes.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import html
import re
from dataclasses import dataclass
from importlib import resources

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from loacl import __version__
from loacl.domain.errors import LoaclError
from loacl.http.common import public_base, request_origin
from loacl.http.csp import policy, style_hash
from loacl.http.routing import Endpoint
from loacl.services.demo import Demo, demo_enabled, public_origin

log = structlog.get_logger(__name__)

SHORT_CACHE = "public, max-age=300"
FOREVER = "public, max-age=31536000, immutable"
_OLD_VERSION = re.compile(r"^[0-9a-f]{8,64}\.js$")


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    etag: str
    version: str
    integrity: str
    media_type: str


def _read(name: str) -> bytes:
    """A file under ``loacl/static/`` (``name`` may name a subfolder: ``apidocs/x.js``)."""
    path = resources.files("loacl") / "static"
    for part in name.split("/"):
        path = path / part
    return path.read_bytes()


@functools.cache
def asset(name: str, media_type: str) -> Asset:
    body = _read(name)
    digest = hashlib.sha256(body).hexdigest()
    return Asset(
        body=body,
        gzipped=gzip.compress(body, compresslevel=9, mtime=0),
        etag=f'"{digest[:32]}"',
        version=digest[:16],
        integrity="sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode(),
        media_type=media_type,
    )


def widget_script() -> Asset:
    return asset("widget.js", "text/javascript; charset=utf-8")


def widget_extra() -> Asset:
    """The widget's second file (attachments, the pre-chat form, the rating's comment), which
    widget.js loads on demand from ``/widget/extra.<version>.js`` with its integrity hash."""
    return asset("widget-extra.js", "text/javascript; charset=utf-8")


def accepts_gzip(request: Request) -> bool:
    for part in request.headers.get("accept-encoding", "").split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() in ("gzip", "*"):
            quality = params.strip().replace(" ", "")
            return not re.fullmatch(r"q=0(\.0{0,3})?", quality)
    return False


def not_modified(request: Request, etag: str) -> bool:
    given = request.headers.get("if-none-match")
    if given is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in given.split(",")}
    return "*" in tags or etag in tags


def serve_asset(request: Request, item: Asset, cache_control: str, *,
                cross_origin: bool = True) -> Response:
    """``item``, gzipped when the client takes it, 304 when its ``ETag`` is the one given.
    ``cross_origin``: other sites may load it (the widget); else only this server's pages."""
    headers = {
        "ETag": item.etag,
        "Cache-Control": cache_control,
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if cross_origin:
        # Sites may load it with integrity=... crossorigin=anonymous, which needs CORS.
        headers["Access-Control-Allow-Origin"] = "*"
        headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    else:
        headers["Cross-Origin-Resource-Policy"] = "same-origin"
    if not_modified(request, item.etag):
        return Response(status_code=304, headers=headers)
    body = item.body
    if accepts_gzip(request):
        body = item.gzipped
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=item.media_type, headers=headers)



async def widget_js(request: Request) -> Response:
    item = widget_script()
    versioned = request.query_params.get("v") == item.version
    return serve_asset(request, item, FOREVER if versioned else SHORT_CACHE)


async def widget_versioned(request: Request) -> Response:
    item = widget_script()
    name = request.path_params["name"]
    if name == f"{item.version}.js":
        return serve_asset(request, item, FOREVER)
    extra = widget_extra()
    if name == f"extra.{extra.version}.js":
        return serve_asset(request, extra, FOREVER)
    if _OLD_VERSION.match(name):
        # A page pinned to an older build: give it the current one (its integrity, if any,
        # will refuse it, which is what the site asked for).
        return RedirectResponse("/widget.js", status_code=307,
                                headers={"Cache-Control": "no-cache"})
    raise LoaclError("not_found", "no such widget script version")


async def widget_manifest(request: Request) -> Response:
    item = widget_script()
    base = public_base(request)
    return JSONResponse(
        {
            "version": item.version,
            "script_url": f"{base}/widget.js",
            "versioned_url": f"{base}/widget/{item.version}.js",
            "integrity": item.integrity,
            "bytes": len(item.body),
            "gzip_bytes": len(item.gzipped),
        },
        headers={"Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*"},
    )


class SameOriginMiddleware:
    """Give a same-origin request to the widget API the ``Origin`` browsers leave out.

    Browsers send no ``Origin`` with a same-origin GET, so a widget embedded on LOACL's own
    pages (the home page's demo) would be refused by the origin check. ``Sec-Fetch-Site`` is
    set by the browser alone (pages cannot forge it): ``same-origin`` there means the page's
    origin is this request's own scheme and host, which is what this adds. Other clients could
    send any ``Origin`` anyway; the check guards browsers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/v1/widgets/"):
            headers = dict(scope["headers"])
            host = headers.get(b"host")
            if (b"origin" not in headers and host
                    and headers.get(b"sec-fetch-site") == b"same-origin"):
                scheme = "https" if scope.get("scheme") == "https" else "http"
                origin = f"{scheme}://{host.decode('latin-1')}".encode("latin-1")
                scope = {**scope, "headers": [*scope["headers"], (b"origin", origin)]}
        await self.app(scope, receive, send)


# -- the home page -----------------------------------------------------------------------------


def own_origins(request: Request) -> list[str]:
    """The origins this page is really served from, which the demo widget may allow:
    ``public_url`` when set, else the page's ``Host`` when it can be believed
    (``common.request_origin``); a request with a made-up ``Host`` allows nothing."""
    public = public_origin(request.app.state.settings)
    if public:
        return [public]
    origin = request_origin(request)
    return [origin] if origin else []


@functools.cache
def _page() -> tuple[str, str]:
    """The page template and the CSP hash of its one inline style."""
    text = _read("index.html").decode()
    match = re.search(r"<style>(.*?)</style>", text, re.S)
    return text, style_hash(match.group(1) if match else "")


async def home(request: Request) -> Response:
    template, allowed_style = _page()
    item = widget_script()
    base = public_base(request)
    demo: Demo | None = getattr(request.app.state, "demo", None)
    widget_id = demo.widget_id if demo is not None else None
    live = False
    if demo is not None and widget_id:
        try:
            live = await demo.allow(own_origins(request))
        except LoaclError as exc:
            log.warning("demo.origin_failed", code=exc.code, error=exc.message)
    settings = request.app.state.settings
    if live and widget_id:
        embed = (
            f'<script src="/widget/{item.version}.js" integrity="{item.integrity}" '
            f'crossorigin="anonymous" data-widget-id="{html.escape(widget_id)}" async></script>'
        )
        provider = "OpenAI" if settings.openai_api_key else "the built-in demo provider"
        demo_note = (
            "The chat button in the corner is a live LOACL widget talking to this server; its "
            f"answers come from {provider}."
        )
    elif not demo_enabled(settings):
        embed = ""
        demo_note = (
            "The live demo is turned off here: it is off while an OpenAI key is configured, "
            "unless <code>LOACL_DEMO_WIDGET=true</code> turns it on."
        )
    else:
        embed = ""
        demo_note = (
            "The live demo appears when this page is opened at this server's own address "
            "(set <code>LOACL_PUBLIC_URL</code> when LOACL runs behind a proxy)."
        )
    values = {
        "version": html.escape(__version__),
        "base": html.escape(base),
        "demo_note": demo_note,
        "embed": embed,
        "integrity": item.integrity,
        "script_version": item.version,
    }
    page = re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)
    csp = policy(styles=(allowed_style,))
    return Response(
        page,
        media_type="text/html; charset=utf-8",
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


# Pages and assets, not part of the API.
endpoints = [
    Endpoint("get", "/", home, "The home page, with the demo widget", documented=False),
    Endpoint("get", "/widget.js", widget_js, "The embed script (short cache)", documented=False),
    Endpoint("get", "/widget.json", widget_manifest, "The script's versioned URL and SRI hash",
             documented=False),
    Endpoint("get", "/widget/{name}", widget_versioned, "The embed script, versioned (immutable)",
             documented=False),
]
