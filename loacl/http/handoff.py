"""Handing a conversation to a person: the visitor asks (``POST /api/v1/widgets/{id}/handoff``),
a member takes over, writes, gives back, closes, assigns, marks read and shows typing
(``/api/v1/conversations/{id}/...``). The rules are :mod:`loacl.domain.handoff`'s."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loacl.domain.conversations import MAX_CLIENT_ID
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.domain.handoff import MAX_AGENT_TEXT, MAX_REASON
from loacl.domain.workspaces import AGENT
from loacl.http.auth import Member, current_member
from loacl.http.chat import visitor
from loacl.http.common import handoffs, metadata
from loacl.http.inbox import inbox
from loacl.http.routing import Endpoint
from loacl.http.shapes import away_json, inbox_item_json, message_json
from loacl.http.validation import parse_body
from loacl.http.visitors import visitor_endpoint
from loacl.services.handoff import MAX_ADDRESS, Handoffs


class HandoffBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=MAX_REASON)


class ReplyAddressBody(BaseModel):
    """The visitor's e-mail address for the team's replies (personal data: sealed in the log)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"email": "ada@example.com"}]})
    email: str = Field(max_length=MAX_ADDRESS)


class ForceBody(BaseModel):
    """``force``: take (or give back) a conversation another member holds."""

    model_config = ConfigDict(extra="forbid")
    force: bool = False


class AssignBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignee_id: str | None = Field(..., min_length=1, max_length=64)


class AgentMessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"text": "Hello, I am looking at your order now."}]})
    text: str = Field(max_length=MAX_AGENT_TEXT * 2)
    client_message_id: str | None = Field(None, min_length=1, max_length=MAX_CLIENT_ID)
    force: bool = False


class ReadBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cursor: int | None = Field(None, ge=0, le=2**62)


class TypingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    typing: bool = True


async def _body(request: Request, model: type[BaseModel]) -> BaseModel:
    """A JSON body, or the model's defaults when there is none."""
    if not await request.body():
        return model()
    return await parse_body(request, model)


@visitor_endpoint
async def visitor_handoff(request: Request) -> Response:
    access = await visitor(request)
    body = await _body(request, HandoffBody)
    assert isinstance(body, HandoffBody)
    service = handoffs(request)
    found = await service.visitor_asks(
        access, body.reason, metadata(request, f"visitor:{access.visitor_id}"))
    away = await service.away(access, found, request.app.state.clock())
    return JSONResponse({"state": found.state,
                         "agent": found.assignee_name if found.state == "human" else None,
                         "away": away_json(away)})


@visitor_endpoint
async def reply_address(request: Request) -> Response:
    access = await visitor(request)
    body = await parse_body(request, ReplyAddressBody)
    found = await handoffs(request).leave_address(
        access, body.email, metadata(request, f"visitor:{access.visitor_id}"))
    return JSONResponse({"email": found.reply_email}, headers={"Cache-Control": "no-store"})


async def _entry(request: Request, member_id: str, owner_id: str) -> Response:
    item = await inbox(request).conversation(owner_id, request.path_params["id"], member_id)
    return JSONResponse(inbox_item_json(item))


# A member's action on the conversation at ``{id}``: ``act(service, member, conversation_id,
# body, metadata)``; the answer is the conversation's inbox entry as it is afterwards.
Act = Callable[[Handoffs, Member, str, Any, Metadata], Awaitable[object]]


async def _acting(
    request: Request, body: type[BaseModel] | None, act: Act, *, required: bool = False
) -> Response:
    """``body``: the JSON body's model (its defaults when there is none, unless ``required``)."""
    owner = await current_member(request, AGENT)
    parsed = (None if body is None else await parse_body(request, body) if required
              else await _body(request, body))
    await act(handoffs(request), owner, request.path_params["id"], parsed,
              metadata(request, owner.user_id))
    return await _entry(request, owner.user_id, owner.workspace_id)


async def take_over(request: Request) -> Response:
    return await _acting(request, ForceBody, lambda service, m, cid, body, meta: (
        service.take_over(m.workspace_id, m.user_id, cid, body.force, meta)))


async def release(request: Request) -> Response:
    return await _acting(request, ForceBody, lambda service, m, cid, body, meta: (
        service.release(m.workspace_id, m.user_id, cid, body.force, meta)))


async def close(request: Request) -> Response:
    return await _acting(request, None, lambda service, m, cid, _, meta: (
        service.close(m.workspace_id, m.user_id, cid, meta)))


async def assign(request: Request) -> Response:
    return await _acting(request, AssignBody, lambda service, m, cid, body, meta: (
        service.assign(m.workspace_id, m.user_id, cid, body.assignee_id, meta)), required=True)


async def post_message(request: Request) -> Response:
    owner = await current_member(request, AGENT)
    body = await parse_body(request, AgentMessageBody)
    message, new = await handoffs(request).post(
        owner.workspace_id, owner.user_id, request.path_params["id"], body.text,
        body.client_message_id, body.force, metadata(request, owner.user_id))
    return JSONResponse(message_json(message), status_code=201 if new else 200)


async def mark_read(request: Request) -> Response:
    owner = await current_member(request, AGENT)
    body = await _body(request, ReadBody)
    assert isinstance(body, ReadBody)
    conversation_id = request.path_params["id"]
    mark = await handoffs(request).mark_read(owner.workspace_id, owner.user_id, conversation_id,
                                             body.cursor, metadata(request, owner.user_id))
    item = await inbox(request).conversation(owner.workspace_id, conversation_id, owner.user_id)
    return JSONResponse({"conversation_id": conversation_id, "cursor": str(mark),
                         "unread": item.unread})


async def typing(request: Request) -> Response:
    owner = await current_member(request, AGENT)
    body = await _body(request, TypingBody)
    assert isinstance(body, TypingBody)
    service = handoffs(request)
    conversation_id = request.path_params["id"]
    found = await service.conversation(owner.workspace_id, conversation_id)
    who = f"member:{owner.user_id}"
    if body.typing and (wait := service.typing.wait_for(conversation_id, who)) > 0:
        raise LoaclError("rate_limited", "typing is passed on at most once per "
                         f"{service.typing.interval:g} s", retry_after=max(1, round(wait)))
    name = found.assignee_name if found.assignee_id == owner.user_id else None
    service.typing.signal(conversation_id, who, name or None, body.typing)
    return Response(status_code=204)


_MEMBER = ("not_found", "subject_erased", "conversation_taken")

endpoints = [
    Endpoint("post", "/api/v1/widgets/{id}/handoff", visitor_handoff,
             "Ask for a person (the visitor's \"Talk to a person\")", "chat", auth="visitor",
             body=HandoffBody, returns="HandoffState",
             description="The conversation waits for a member of the team (`waiting`); the "
             "assistant stops answering, and the visitor's messages are kept for the team. "
             "Asking again while a person is asked for or answers changes nothing. The "
             "WebSocket's `handoff` frame does the same. `away` is null when someone can "
             "answer now; otherwise it says why nobody does (`closed`: outside the widget's "
             "office hours, with the `next_opening` and its `timezone`; `nobody`: no member "
             "is online) and the widget offers to leave an e-mail address."),
    Endpoint("post", "/api/v1/widgets/{id}/reply-address", reply_address,
             "Leave an e-mail address for the team's replies", "chat", auth="visitor",
             body=ReplyAddressBody, codes=("invalid_email", "subject_erased"),
             returns="ReplyAddress",
             description="Members' messages in this conversation are then also sent to the "
             "address by mail while no tab of the widget holds the conversation open. The "
             "address is personal data: sealed with the conversation's key, in its export, "
             "gone with its erasure. The WebSocket's `reply_address` frame does the same."),
    Endpoint("post", "/api/v1/conversations/{id}/takeover", take_over,
             "Take the conversation over: you answer it, the assistant stops", "conversations",
             auth="owner", role=AGENT, body=ForceBody, codes=_MEMBER, returns="InboxConversation",
             description="409 `conversation_taken` when another member holds it, unless "
             "`force` is true. Taking over one you hold changes nothing."),
    Endpoint("post", "/api/v1/conversations/{id}/release", release,
             "Give the conversation back to the assistant", "conversations", auth="owner",
             role=AGENT, body=ForceBody, codes=_MEMBER, returns="InboxConversation"),
    Endpoint("post", "/api/v1/conversations/{id}/close", close,
             "Close the conversation (the visitor's next message reopens it to the "
             "assistant)", "conversations", auth="owner", role=AGENT, codes=_MEMBER[:2],
             returns="InboxConversation"),
    Endpoint("post", "/api/v1/conversations/{id}/assign", assign,
             "Name the member who answers the conversation (null: nobody)", "conversations",
             auth="owner", role=AGENT, body=AssignBody,
             codes=(*_MEMBER[:2], "conversation_closed", "unknown_member"),
             returns="InboxConversation"),
    Endpoint("post", "/api/v1/conversations/{id}/messages", post_message,
             "Write to the visitor (role agent, with your display name)", "conversations",
             auth="owner", role=AGENT, body=AgentMessageBody, ok=201,
             codes=(*_MEMBER, "message_too_long"), returns="Message",
             description="Reaches every open tab of the visitor's widget at once and is in "
             "their history. A conversation the assistant (or nobody) answers is taken over "
             "first. A resend with the same `client_message_id` answers 200 with the first "
             "message."),
    Endpoint("post", "/api/v1/conversations/{id}/read", mark_read,
             "Mark the conversation read (up to a message's cursor, or all of it)",
             "conversations", auth="owner", role=AGENT, body=ReadBody, codes=_MEMBER[:2],
             returns="ReadMark"),
    Endpoint("post", "/api/v1/conversations/{id}/typing", typing,
             "Show the visitor that you are typing (or stopped); never logged",
             "conversations", auth="owner", role=AGENT, body=TypingBody, ok=204,
             codes=(*_MEMBER[:2], "rate_limited")),
]
