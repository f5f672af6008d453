"""Small helpers shared by the API routes: pagination, ETags, metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata

if TYPE_CHECKING:
    from loacl.services.accounts import Accounts
    from loacl.services.assistants import Assistants
    from loacl.services.chat import Chat
    from loacl.services.files import Files
    from loacl.services.widgets import Widgets

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


def widgets(conn: HTTPConnection) -> Widgets:
    return cast("Widgets", conn.app.state.widgets)


def public_base(conn: HTTPConnection) -> str:
    """This instance's public base URL: the configured one, else the one asked for."""
    configured = conn.app.state.settings.public_url
    return str(configured or conn.base_url).rstrip("/")


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
    if raw is None or raw == "":
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
    """The stream version a client expects, from ``If-Match``; None when absent or ``*``."""
    raw = request.headers.get("if-match")
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
