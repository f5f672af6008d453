"""Visitor endpoints the embed script calls from other sites: public config and sessions.

Each answers only when the page's ``Origin`` is one of the widget's allowed origins, and its CORS
headers name that origin and no other. Refusals carry CORS headers for the asking origin too, so
that the widget can read *why* it was refused and say so; they reveal nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loacl.domain.errors import LoaclError
from loacl.domain.origins import normalize_origin
from loacl.http.common import metadata, widgets
from loacl.http.errors import loacl_error
from loacl.http.routing import Endpoint
from loacl.http.shapes import availability_json, widget_settings_json
from loacl.http.validation import parse_body
from loacl.store.views import widgets as widget_views

Handler = Callable[[Request], Awaitable[Response]]

ALLOW_HEADERS = "Authorization, Content-Type, X-Request-ID"
EXPOSE_HEADERS = "Retry-After, X-Request-ID, ETag"


class SessionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = Field(None, min_length=1, max_length=256)
    user_hash: str | None = Field(None, max_length=128)
    visitor_token: str | None = Field(None, max_length=4096)



def _echoable(origin: str) -> bool:
    """Whether ``origin`` is a real origin (not ``null``, ``*`` or junk) that CORS may name."""
    if "*" in origin:
        return False
    try:
        normalize_origin(origin)
    except LoaclError:
        return False
    return True


def cors(response: Response, origin: str | None) -> Response:
    response.headers["Vary"] = "Origin"
    if origin and _echoable(origin):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    return response


def visitor_endpoint(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        origin = request.headers.get("origin")
        try:
            response = await handler(request)
        except LoaclError as exc:
            response = await loacl_error(request, exc)
        return cors(response, origin)

    return wrapped


@visitor_endpoint
async def config(request: Request) -> Response:
    widget = await widgets(request).public(
        request.path_params["id"], request.headers.get("origin")
    )
    settings = request.app.state.settings
    setup = await widget_views.reply_setup(request.app.state.store, widget.widget_id)
    body = {
        "widget_id": widget.widget_id,
        # The assistant may hand over to people: the widget offers "Talk to a person".
        "handoff": setup is not None and setup.assistant.handoff,
        "settings": widget_settings_json(widget),
        "require_identity": widget.definition.require_identity,
        "uploads": {
            "max_size": settings.max_upload_size,
            "allowed_types": settings.allowed_file_types,
        },
        "limits": {
            "messages_per_minute": widget.definition.messages_per_minute,
            "max_message_chars": settings.max_message_chars,
        },
        "availability": availability_json(widget.definition.office_hours, datetime.now(UTC)),
    }
    return JSONResponse(body, headers={"Cache-Control": "no-cache"})


@visitor_endpoint
async def sessions(request: Request) -> Response:
    # Refuse a foreign origin, or a gone widget, before saying anything about the body.
    await widgets(request).public(request.path_params["id"], request.headers.get("origin"))
    body = await parse_body(request, SessionBody)
    session = await widgets(request).start_session(
        request.path_params["id"], request.headers.get("origin"),
        user_id=body.user_id, user_hash=body.user_hash, visitor_token=body.visitor_token,
        meta=metadata(request),
    )
    return JSONResponse(session, status_code=201, headers={"Cache-Control": "no-store"})


async def preflight(request: Request) -> Response:
    """CORS preflight for a widget's visitor endpoints: granted to its allowed origins only."""
    origin = request.headers.get("origin")
    try:
        await widgets(request).public(request.path_params["id"], origin)
    except LoaclError:
        return Response(status_code=204, headers={"Vary": "Origin"})
    response = Response(
        status_code=204,
        headers={
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": "600",
        },
    )
    return cors(response, origin)


endpoints = [
    Endpoint("get", "/api/v1/widgets/{id}/config", config,
             "Public settings for the embed script (Origin checked)", "visitors",
             codes=("origin_not_allowed", "widget_not_found"), returns="WidgetConfig"),
    Endpoint("post", "/api/v1/widgets/{id}/sessions", sessions,
             "A visitor token and conversation (Origin checked; optional signed identity)",
             "visitors", body=SessionBody, ok=201,
             codes=("origin_not_allowed", "widget_not_found", "invalid_identity",
                    "rate_limited"), returns="VisitorSession"),
    # Preflight only for the paths an embedding page calls; owner paths get none.
    *(
        Endpoint("options", f"/api/v1/widgets/{{id}}/{path}", preflight, "CORS preflight",
                 documented=False)
        for path in ("config", "sessions", "messages", "files", "files/{file_id}",
                     "messages/{message_id}/feedback", "profile", "handoff", "reply-address")
    ),
]
