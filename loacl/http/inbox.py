"""The owner's inbox: ``GET /api/v1/conversations`` across every widget of the owner, newest
activity first, filtered and searched; one conversation, its transcript and its files."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loacl.domain.errors import LoaclError
from loacl.domain.workspaces import AGENT
from loacl.http.auth import current_member
from loacl.http.chat import attachment
from loacl.http.common import int_param, page_response
from loacl.http.routing import CURSOR, Endpoint, Param, integer
from loacl.http.shapes import file_json, inbox_item_json, message_page_json
from loacl.store.codec import format_time
from loacl.store.views.inbox import STATUSES, InboxFilter

if TYPE_CHECKING:
    from loacl.services.inbox import Inbox

MAX_QUERY = 200


def inbox(request: Request) -> Inbox:
    return cast("Inbox", request.app.state.inbox)


def _bad(field: str, message: str, **extra: Any) -> LoaclError:
    return LoaclError("validation_error", f"{field}: {message}",
                      errors=[{"field": field, "message": message, **extra}])


def _moment(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _bad(name, "an ISO 8601 date-time, such as 2026-05-01T00:00:00Z") from None
    if moment.tzinfo is None:  # a time without its zone is read as UTC
        moment = moment.replace(tzinfo=UTC)
    return format_time(moment)


def _filter(request: Request) -> InboxFilter:
    query = request.query_params
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise _bad("status", f"one of {', '.join(STATUSES)}", accepted=list(STATUSES))
    widget_id = query.get("widget_id")
    if widget_id is not None and not 1 <= len(widget_id) <= 64:
        raise _bad("widget_id", "1 to 64 characters")
    text = query.get("q")
    if text is not None and len(text) > MAX_QUERY:
        raise _bad("q", f"at most {MAX_QUERY} characters")
    assignee = query.get("assignee")
    if assignee is not None and not 1 <= len(assignee) <= 64:
        raise _bad("assignee", "a member's id, or none")
    return InboxFilter(
        widget_id=widget_id, status=status, since=_moment(request, "since"),
        until=_moment(request, "until"), text=text if text and text.strip() else None,
        assignee=assignee,
    )


async def list_conversations(request: Request) -> Response:
    owner = await current_member(request, AGENT)
    where = _filter(request)
    after = int_param(request, "after", 0, 0, 2**62)
    limit = int_param(request, "limit", 20, 1, 100)
    found = await inbox(request).page(owner.workspace_id, where, after or None, limit,
                                      owner.user_id)
    return page_response([inbox_item_json(c) for c in found.items], found.next_cursor)


async def get_conversation(request: Request) -> Response:
    owner = await current_member(request, AGENT)
    found = await inbox(request).conversation(owner.workspace_id, request.path_params["id"],
                                              owner.user_id)
    return JSONResponse(inbox_item_json(found))


async def list_messages(request: Request) -> Response:
    owner = await current_member(request, AGENT)
    conversation_id = request.path_params["id"]
    before = request.query_params.get("before")
    after = request.query_params.get("after")
    if before is not None and after is not None:
        raise LoaclError("validation_error", "give before or after, not both", errors=[
            {"field": name, "message": "give before or after, not both"}
            for name in ("before", "after")])
    page, named = await inbox(request).transcript(
        owner.workspace_id, conversation_id,
        before=int_param(request, "before", 0, 1, 2**62) if before is not None else None,
        after=int_param(request, "after", 0, 0, 2**62) if after is not None else None,
        limit=int_param(request, "limit", 50, 1, 100),
    )
    body = message_page_json(conversation_id, page)
    body["files"] = [file_json(f) for f in named]
    return JSONResponse(body, headers={"Cache-Control": "private, no-store"})


async def get_file(request: Request) -> Response:
    owner = await current_member(request, AGENT)
    stored, data = await inbox(request).file(
        owner.workspace_id, request.path_params["id"], request.path_params["file_id"]
    )
    return attachment(stored, data)


_TIME = {"type": "string", "format": "date-time"}

endpoints = [
    Endpoint("get", "/api/v1/conversations", list_conversations,
             "Your conversations across every widget, newest activity first", "conversations",
             auth="owner", role=AGENT,
             query=(Param("after", "cursor: next_cursor of the previous page", CURSOR),
                    Param("limit", "1 to 100, default 20", integer(1, 100)),
                    Param("widget_id", "only this widget's", {"type": "string",
                                                              "minLength": 1,
                                                              "maxLength": 64}),
                    Param("status", "open (not erased) or erased; or who answers: bot, "
                          "waiting (a person was asked for), human, closed",
                          {"type": "string", "enum": list(STATUSES)}),
                    Param("assignee", "only those this member holds (an account id), or "
                          "none: those nobody holds", {"type": "string", "minLength": 1,
                                                       "maxLength": 64}),
                    Param("since", "last activity at or after this moment (ISO 8601; a time "
                          "without a zone is UTC)", _TIME),
                    Param("until", "last activity at or before this moment", _TIME),
                    Param("q", "words a message of the conversation has (every word; the "
                          "last may be the start of one)", {"type": "string",
                                                           "maxLength": MAX_QUERY})),
             returns="InboxPage",
             description="A conversation with new activity moves to the top of the list (the "
             "owner stream, `/api/v1/owner/stream`, says when); a client paging meanwhile may "
             "see it twice or miss it, and finds it at the top."),
    Endpoint("get", "/api/v1/conversations/{id}", get_conversation,
             "One of your conversations", "conversations", auth="owner", role=AGENT,
             returns="InboxConversation"),
    Endpoint("get", "/api/v1/conversations/{id}/messages", list_messages,
             "A conversation's transcript, by cursor, with the files its messages name",
             "conversations", auth="owner", role=AGENT,
             query=(Param("before", "cursor: messages before it", integer(1, 2**62)),
                    Param("after", "cursor: messages after it", CURSOR),
                    Param("limit", "1 to 100, default 50", integer(1, 100))),
             returns="OwnerMessagePage"),
    Endpoint("get", "/api/v1/conversations/{id}/files/{file_id}", get_file,
             "Download a file of the conversation (as an attachment)", "conversations",
             auth="owner", role=AGENT,
             content={"application/octet-stream": {"schema": {"type": "string",
                                                               "format": "binary"}}}),
]
