"""Chat endpoints under ``/api/v1/widgets/{id}``: messages, conversations and files.

Visitors call them with their visitor token from an allowed origin; owners with their access
token, to read any conversation of their widgets.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loacl.domain.conversations import MAX_ATTACHMENTS, MAX_CLIENT_ID, MAX_COMMENT
from loacl.domain.errors import LoaclError
from loacl.domain.widgets import VisitorAccess
from loacl.domain.workspaces import AGENT
from loacl.http.auth import bearer_token, current_member
from loacl.http.common import chat, files, int_param, metadata, page, page_response, widgets
from loacl.http.errors import problem, status_for
from loacl.http.routing import CURSOR, PAGE, Endpoint, Param, integer
from loacl.http.shapes import conversation_json, file_json, message_json, message_page_json
from loacl.http.validation import parse_body, read_upload
from loacl.http.visitors import visitor_endpoint
from loacl.providers.base import ProviderError
from loacl.services.replies import Run
from loacl.store.views.files import FileView


class MessageBody(BaseModel):
    """A visitor's message, over HTTP and in a WebSocket ``message`` frame alike; the domain
    (``conversations.checked_message``) checks the text and the caps for both."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"text": "What are your opening hours?"}]})
    text: str = Field(max_length=100_000)
    file_ids: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=MAX_ATTACHMENTS
    )
    client_message_id: str | None = Field(None, min_length=1, max_length=MAX_CLIENT_ID)





class FeedbackBody(BaseModel):
    """A visitor's rating of a reply; a later one replaces it."""

    model_config = ConfigDict(extra="forbid")
    rating: Literal["up", "down"]
    comment: str = Field("", max_length=MAX_COMMENT)


class ProfileBody(BaseModel):
    """The visitor's answers to the widget's pre-chat form (personal data: sealed in the log)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("", max_length=200)
    email: str = Field("", max_length=320)


async def visitor(request: Request, token: str | None = None) -> VisitorAccess:
    """The visitor behind a visitor token, calling from an origin the widget allows."""
    return await widgets(request).visitor_access(
        request.path_params["id"], request.headers.get("origin"), token or bearer_token(request)
    )


async def visitor_or_owner(request: Request) -> VisitorAccess | None:
    """A visitor's access, or None for the widget's owner (checked here)."""
    token = bearer_token(request)
    try:
        return await visitor(request, token)
    except LoaclError as exc:
        if exc.code not in ("invalid_token", "token_expired", "origin_not_allowed",
                            "widget_not_found"):
            raise
        try:
            owner = await current_member(request, AGENT)
        except LoaclError:
            raise exc from None
    # 404 unless the widget is the workspace's
    await widgets(request).get(owner.workspace_id, request.path_params["id"])
    return None


@visitor_endpoint
async def list_messages(request: Request) -> Response:
    access = await visitor_or_owner(request)
    if access is None:
        conversation_id = request.query_params.get("conversation_id")
        if not conversation_id:
            raise LoaclError(
                "validation_error", "conversation_id: required when an owner reads messages",
                errors=[{"field": "conversation_id", "message": "Field required"}],
            )
        await chat(request).conversation_of_widget(request.path_params["id"], conversation_id)
    else:
        conversation_id = access.conversation_id
    before = request.query_params.get("before")
    after = request.query_params.get("after")
    if before is not None and after is not None:
        raise LoaclError("validation_error", "give before or after, not both", errors=[
            {"field": name, "message": "give before or after, not both"}
            for name in ("before", "after")])
    limit = int_param(request, "limit", 50, 1, 100)
    found = await chat(request).messages(
        conversation_id,
        before=int_param(request, "before", 0, 1, 2**62) if before is not None else None,
        after=int_param(request, "after", 0, 0, 2**62) if after is not None else None,
        limit=limit,
    )
    return JSONResponse(message_page_json(conversation_id, found))


def _failure(error: ProviderError, body: dict[str, Any], request: Request) -> Response:
    extra: dict[str, Any] = dict(body)
    if error.retry_after is not None:
        extra["retry_after"] = max(1, round(error.retry_after))
    return problem(status_for(error.code), error.code, error.message, request, **extra)


@visitor_endpoint
async def post_message(request: Request) -> Response:
    access = await visitor(request)
    body = await parse_body(request, MessageBody)
    service = chat(request)
    message, run, _started = await service.post(
        access, body.text, tuple(body.file_ids), body.client_message_id,
        metadata(request, f"visitor:{access.visitor_id}"),
    )
    if run is None:  # a person is asked for or answers: kept for them, no reply
        return JSONResponse({"message": message_json(message), "reply": None},
                            status_code=201)
    if isinstance(run, Run):
        await service.wait(run)
        reply_id = run.message_id
    else:
        reply_id = run
    reply = await service.outcome(reply_id, run if isinstance(run, Run) else None)
    result = {"message": message_json(message), "reply": message_json(reply)}
    if reply.status == "failed":
        error = run.error if isinstance(run, Run) and run.error else ProviderError(
            reply.error_code or "provider_error", "the assistant could not answer"
        )
        return _failure(error, result, request)
    return JSONResponse(result, status_code=201)


@visitor_endpoint
async def give_feedback(request: Request) -> Response:
    access = await visitor(request)
    body = await parse_body(request, FeedbackBody)
    rated = await chat(request).give_feedback(
        access, request.path_params["message_id"], body.rating, body.comment,
        metadata(request, f"visitor:{access.visitor_id}"),
    )
    return JSONResponse(message_json(rated))


@visitor_endpoint
async def introduce(request: Request) -> Response:
    access = await visitor(request)
    body = await parse_body(request, ProfileBody)
    found = await chat(request).introduce(
        access, body.name, body.email, metadata(request, f"visitor:{access.visitor_id}")
    )
    return JSONResponse({"name": found.visitor_name, "email": found.visitor_email},
                        headers={"Cache-Control": "no-store"})


async def list_conversations(request: Request) -> Response:
    owner = await current_member(request, AGENT)
    widget_id = request.path_params["id"]
    await widgets(request).get(owner.workspace_id, widget_id)
    after, limit = page(request)
    found = await chat(request).conversations(widget_id, after, limit)
    return page_response([conversation_json(c) for c in found.items], found.next_cursor)


@visitor_endpoint
async def upload_file(request: Request) -> Response:
    access = await visitor(request)
    filename, data = await read_upload(request, request.app.state.settings.max_upload_size)
    stored = await files(request).upload(
        access, filename, data, metadata(request, f"visitor:{access.visitor_id}")
    )
    return JSONResponse(file_json(stored), status_code=201)


@visitor_endpoint
async def get_file(request: Request) -> Response:
    access = await visitor_or_owner(request)
    stored, data = await files(request).fetch(
        request.path_params["id"], request.path_params["file_id"],
        visitor_id=access.visitor_id if access else None,
    )
    return attachment(stored, data)


def attachment(stored: FileView, data: bytes) -> Response:
    """A stored file as a download that no browser renders or sniffs."""
    name = stored.filename
    # RFC 6266: an ASCII fallback for old clients, the exact name percent-encoded for the rest.
    fallback = name.encode("ascii", "replace").decode().replace('"', "").replace("?", "_")
    return Response(
        data,
        media_type=stored.content_type,
        headers={
            "Content-Disposition": (
                f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
            ),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
            "Content-Security-Policy": "default-src 'none'; sandbox",
        },
    )


endpoints = [
    Endpoint("get", "/api/v1/widgets/{id}/messages", list_messages,
             "Messages of a conversation, by cursor", "chat", auth="visitor_or_owner", role=AGENT,
             query=(Param("before", "cursor: messages before it", integer(1, 2**62)),
                    Param("after", "cursor: messages after it", CURSOR),
                    Param("limit", "1 to 100, default 50", integer(1, 100)),
                    Param("conversation_id", "owners: which conversation")),
             returns="MessagePage"),
    Endpoint("post", "/api/v1/widgets/{id}/messages", post_message,
             "Ask, and get the whole reply (not streamed)", "chat", auth="visitor",
             body=MessageBody, ok=201,
             codes=("rate_limited", "budget_exhausted", "reply_in_progress",
                    "message_too_long", "provider_rate_limited", "provider_unavailable",
                    "provider_error"), returns="Exchange"),
    Endpoint("post", "/api/v1/widgets/{id}/messages/{message_id}/feedback", give_feedback,
             "Rate a completed reply (thumbs up or down, an optional comment)", "chat",
             auth="visitor", body=FeedbackBody, codes=("not_found",), returns="Message"),
    Endpoint("post", "/api/v1/widgets/{id}/profile", introduce,
             "The visitor's name and e-mail address (the widget's pre-chat form)", "chat",
             auth="visitor", body=ProfileBody, returns="VisitorProfile"),
    Endpoint("get", "/api/v1/widgets/{id}/conversations", list_conversations,
             "A widget's conversations", "widgets", auth="owner", role=AGENT, query=PAGE,
             returns="ConversationPage"),
    Endpoint("post", "/api/v1/widgets/{id}/files", upload_file,
             "Upload a file (multipart field `file`)", "chat", auth="visitor", ok=201,
             multipart=True,
             codes=("file_too_large", "unsupported_file_type", "empty_file", "rate_limited"),
             returns="File"),
    Endpoint("get", "/api/v1/widgets/{id}/files/{file_id}", get_file,
             "Download a file (uploader or owner)", "chat", auth="visitor_or_owner", role=AGENT),
]
