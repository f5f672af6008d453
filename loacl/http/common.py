"""Small helpers shared by the API routes: pagination, ETags, metadata."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.domain.origins import normalize_origin

if TYPE_CHECKING:
    from loacl.services.accounts import Accounts
    from loacl.services.assistants import Assistants
    from loacl.services.chat import Chat
    from loacl.services.files import Files
    from loacl.services.handoff import Handoffs
    from loacl.services.widgets import Widgets
    from loacl.services.workspaces import Workspaces

MAX_LIMIT = 100


# The app's services, wired once by ``create_app``; HTTP and WebSocket handlers reach them here.
def accounts(conn: HTTPConnection) -> Accounts:
    return cast("Accounts", conn.app.state.accounts)


def assistants(conn: HTTPConnection) -> Assistants:
    return cast("Assistants", conn.app.state.assistants)


def chat(conn: HTTPConnection) -> Chat:
    return cast("Chat", conn.app.state.chat)


def files(conn: HTTPConnection) -> Files:
    return cast("Files", conn.app.state.files)


def handoffs(conn: HTTPConnection) -> Handoffs:
    return cast("Handoffs", conn.app.state.handoffs)


def widgets(conn: HTTPConnection) -> Widgets:
    return cast("Widgets", conn.app.state.widgets)


def workspaces(conn: HTTPConnection) -> Workspaces:
    return cast("Workspaces", conn.app.state.workspaces)


def public_base(conn: HTTPConnection) -> str:
    """This instance's public base URL, for embed code, the widget's URLs and the API
    document: ``public_url``; else the origin the request's ``Host`` names, when it can be
    believed (``request_origin``); else the address the connection came to."""
    configured = conn.app.state.settings.public_url
    if configured:
        return str(configured).rstrip("/")
    return request_origin(conn) or server_origin(conn)


def _scheme(conn: HTTPConnection) -> str:
    # A WebSocket's scheme is ws/wss; behind a trusted proxy, the proxy's (see create_app).
    return "https" if conn.url.scheme in ("https", "wss") else "http"


def request_origin(conn: HTTPConnection) -> str | None:
    """The origin the request's ``Host`` names, when it can be believed: a name listed in
    ``allowed_hosts``, or the very address and port the connection arrived on
    (``scope["server"]``, which a client cannot forge), or a loopback name for a loopback
    address. A made-up ``Host`` gives None."""
    host = conn.headers.get("host", "").strip().lower()
    if not host:
        return None
    scheme = _scheme(conn)
    try:
        parts = urlsplit(f"//{host}")
        name, given_port = parts.hostname or "", parts.port
        origin = normalize_origin(f"{scheme}://{host}")
    except (ValueError, LoaclError):
        return None
    allowed = conn.app.state.settings.allowed_hosts
    if host in allowed or (given_port is None and name in allowed):
        return origin
    server = conn.scope.get("server")
    if not server or server[1] is None:
        return None
    address, port = str(server[0]), int(server[1])
    if (given_port or (443 if scheme == "https" else 80)) != port:
        return None
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    if name != address.lower() and not (loopback and name in ("localhost", "127.0.0.1")):
        return None
    return origin


def server_origin(conn: HTTPConnection) -> str:
    """The scheme, address and port the connection came to."""
    server = conn.scope.get("server")
    if not server or server[1] is None:
        return f"{_scheme(conn)}://localhost"
    address = str(server[0])
    if ":" in address:
        address = f"[{address}]"
    return f"{_scheme(conn)}://{address}:{server[1]}"


def client_ip(request: HTTPConnection) -> str:
    return request.client.host if request.client else "unknown"


def metadata(request: HTTPConnection, actor: str | None = None) -> Metadata:
    return Metadata(
        actor=actor,
        request_id=getattr(request.state, "request_id", None),
        client_ip=client_ip(request),
    )


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:  # absent; present but empty (``?limit=``) is no whole number
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise LoaclError(
            "validation_error", f"{name} must be a whole number from {low} to {high}",
            errors=[{"field": name, "message": f"expected {low}..{high}"}],
        )
    return value


def page(request: Request) -> tuple[int, int]:
    """``(after, limit)`` from ``?after=CURSOR&limit=N``."""
    return (
        int_param(request, "after", 0, 0, 2**62),
        int_param(request, "limit", 20, 1, MAX_LIMIT),
    )


def page_response(items: list[dict[str, Any]], next_cursor: int | None) -> JSONResponse:
    return JSONResponse(
        {"data": items, "next_cursor": None if next_cursor is None else str(next_cursor)}
    )


def etag(version: int) -> str:
    return f'"{version}"'


def if_match(request: Request) -> int | None:
    """The stream version a client expects, from ``If-Match``; None when absent or ``*``.
    With ``require_if_match``, absent is refused (428): every change must name what it read."""
    raw = request.headers.get("if-match")
    if raw is None and request.app.state.settings.require_if_match:
        raise LoaclError(
            "precondition_required",
            "send If-Match with the ETag of the version you read (GET it first)",
        )
    if raw is None or raw.strip() == "*":
        return None
    value = raw.strip().removeprefix("W/").strip('"')
    try:
        return int(value)
    except ValueError:
        raise LoaclError(
            "version_conflict", "If-Match must be an ETag this API gave out", current_version=None
        ) from None


def with_etag(body: dict[str, Any], status_code: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, headers={"ETag": etag(body["version"])})
