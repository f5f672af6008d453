"""``WS /api/v1/owner/stream``: what happens in the conversations of every widget of the owner,
live, for the console's inbox and an open conversation.

The owner's access token comes in the first frame, ``{"type": "auth", "token": ...}`` (never in
the URL); a wrong or expired one closes with 4401. The socket follows the log's committed events
(the store's broker): a conversation that starts or changes is a ``conversation`` frame (its
inbox entry), a visitor's message or a reply that starts is a ``message`` frame, a reply's text
arrives as ``delta`` frames (the log's coalesced deltas, with their character offsets) and its
end as ``done``. The access token's expiry or its session's end (logout, a password change)
closes the socket with 4401; an ``auth`` frame with a fresh token before then keeps it open.
A client that falls behind is closed with 4008; it reconnects and reads the inbox again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from loacl.domain.accounts import SessionRevoked, session_stream
from loacl.domain.conversations import (
    END_EVENTS,
    AssistantDelta,
    AssistantStarted,
    MessagePosted,
)
from loacl.domain.errors import LoaclError
from loacl.domain.events import RecordedEvent
from loacl.domain.handoff import (
    AgentMessagePosted,
    ConversationAssigned,
    ConversationStateChanged,
)
from loacl.domain.privacy import SubjectErased
from loacl.domain.widgets import ConversationStarted
from loacl.domain.workspaces import AGENT, MemberRemoved, WorkspaceDeleted, workspace_stream
from loacl.http.auth import Member, current_member, refuse_cross_site
from loacl.http.common import accounts, handoffs
from loacl.http.errors import problem, status_for
from loacl.http.routing import Endpoint, Socket
from loacl.http.shapes import inbox_item_json, message_json
from loacl.http.stream_protocol import MAX_TEXT_FRAME, Close, Frame
from loacl.http.stream_send import Outbox
from loacl.http.validation import decode_json
from loacl.store.broker import Subscription, SubscriptionOverflow
from loacl.store.eventstore import EventStore
from loacl.store.views import conversations as conversation_views
from loacl.store.views import inbox as inbox_views

log = structlog.get_logger(__name__)

AUTH_TIMEOUT = 10.0
CLOSE_SECONDS = 10.0
OUTBOX_FRAMES = 2000
NEWS_BUFFER = 5000  # committed events waiting for this socket before it counts as too slow
OWNED_CACHE = 10_000
TYPING_BUFFER = 100
_CONVERSATION_PREFIX = "conversation-"

_encode = msgspec.json.Encoder().encode

CLIENT_FRAMES = (
    Frame("auth", ("token",), "the owner's access token: the first frame, and again with a "
          "fresh token before the last one expires"),
    Frame("ping", (), "answered with pong"),
    Frame("pong", (), "the answer to the server's ping"),
)
SERVER_FRAMES = (
    Frame("ready", ("user_id", "workspace_id", "role", "expires_in"), "authenticated (as "
          "role, in workspace_id); the token expires in expires_in seconds (send a fresh one "
          "in an auth frame before then)"),
    Frame("conversation", ("conversation",), "a conversation started or changed: its entry as "
          "GET /api/v1/conversations/{id} gives it"),
    Frame("message", ("conversation_id", "message"), "a visitor's message, a member's "
          "(role agent), or a reply that started (status streaming, no text yet), as the "
          "transcript gives it"),
    Frame("state", ("conversation_id", "state", "previous", "by", "cause", "assignee"),
          "who answers a conversation changed: state bot, waiting (a person was asked for), "
          "human or closed; by visitor, assistant or member:<account id>; cause a code "
          "(visitor_asked, assistant_asked, taken_over, agent_replied, released, closed, "
          "reopened); a conversation frame with the new entry follows"),
    Frame("typing", ("conversation_id", "from", "typing", "name?"),
          "someone is typing (true) or stopped (false) in a conversation: from visitor or "
          "agent (another member); never logged"),
    Frame("delta", ("conversation_id", "message_id", "offset", "text"),
          "a reply's text from a character offset"),
    Frame("done", ("conversation_id", "message_id", "status", "length", "message"),
          "a reply ended (completed, failed or interrupted); message is the whole of it"),
    Frame("error", ("code", "text"), "a frame was not understood"),
    Frame("ping", (), "answer with pong"),
    Frame("pong", (), "the answer to the client's ping"),
)
CLOSES = {
    Close.NORMAL: "the server ended the socket",
    Close.TOO_BIG: f"a frame was longer than {MAX_TEXT_FRAME} characters",
    Close.SERVER_ERROR: "the server failed; reconnect",
    Close.TOO_SLOW: "too slow to keep up; reconnect and read the inbox again",
    Close.BAD_TOKEN: "no auth frame in time, a wrong or expired token, another account's or "
                     "workspace's token in a later auth frame, the session ended (logout), or "
                     "the account's membership of the workspace ended",
    Close.IDLE: "no frame from the client for ws_idle_seconds (answer the pings)",
}


def describe() -> str:
    def frames(items: tuple[Frame, ...]) -> str:
        return "".join(f"\n- `{f.type}`" + (" {" + ", ".join(f.fields) + "}" if f.fields
                                            else "") + f": {f.meaning}" for f in items)

    closes = "".join(f"\n- {int(code)}: {meaning}" for code, meaning in CLOSES.items())
    return (
        "Live changes to the conversations of all the widgets of the token's workspace. Send "
        "`{\"type\": \"auth\", \"token\": ACCESS_TOKEN}` first (within 10 s); tokens never go "
        "in the URL. From a browser, the page must be this server's own (403 "
        "cross_site_request otherwise). Every frame is a JSON text frame with a `type`.\n\n"
        f"Client frames:{frames(CLIENT_FRAMES)}\n\nServer frames:{frames(SERVER_FRAMES)}"
        f"\n\nClose codes:{closes}"
    )


class OwnerSocket:
    def __init__(self, websocket: WebSocket, principal: Member, expires_at: int) -> None:
        self.ws = websocket
        self.principal = principal
        self.expires_at = expires_at
        self.store: EventStore = websocket.app.state.store
        self.settings = websocket.app.state.settings
        self.clock = websocket.app.state.clock
        self.outbox = Outbox(OUTBOX_FRAMES)
        self.closing: tuple[int, str] | None = None
        self.closed = asyncio.Event()
        self.renewed = asyncio.Event()
        self.owned: dict[str, bool] = {}
        self.news = self.store.broker.subscribe(self._wanted, NEWS_BUFFER)
        self.typing: asyncio.Queue[dict[str, Any]] = asyncio.Queue(TYPING_BUFFER)

    def on_typing(self, frame: dict[str, Any]) -> None:
        # Not this member's own signals; a socket behind on them loses some (a hint only).
        if frame.get("from") == "agent" and frame.get("member") == self.principal.user_id:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self.typing.put_nowait(frame)

    async def follow_typing(self) -> None:
        while True:
            frame = await self.typing.get()
            if await self._owns(frame["conversation_id"]):
                self.send({k: v for k, v in frame.items() if k != "member"})

    def _wanted(self, recorded: RecordedEvent) -> bool:
        stream = recorded.stream
        return stream.startswith(_CONVERSATION_PREFIX) or stream in (
            session_stream(self.principal.session_id),
            workspace_stream(self.principal.workspace_id),
        )

    def send(self, frame: dict[str, Any]) -> None:
        if self.closing is None and not self.outbox.put(frame):
            self.close(Close.TOO_SLOW, "too slow to keep up; reconnect")

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason)
            self.closed.set()
            self.outbox.end()

    # -- the log's news ---------------------------------------------------------------------

    async def _owns(self, conversation_id: str) -> bool:
        found = self.owned.get(conversation_id)
        if found is None:
            owner = await inbox_views.owner_of(self.store, conversation_id)
            found = owner == self.principal.workspace_id
            if len(self.owned) >= OWNED_CACHE:
                self.owned.clear()
            self.owned[conversation_id] = found
        return found

    async def follow_news(self, news: Subscription) -> None:
        try:
            async for recorded in news:
                await self._news(recorded)
        except SubscriptionOverflow:
            self.close(Close.TOO_SLOW, "too slow to keep up; reconnect")

    async def _news(self, recorded: RecordedEvent) -> None:
        event = recorded.event
        if not recorded.stream.startswith(_CONVERSATION_PREFIX):
            if isinstance(event, SessionRevoked):
                self.close(Close.BAD_TOKEN, "the session ended; log in again")
            elif isinstance(event, WorkspaceDeleted) or (
                isinstance(event, MemberRemoved) and event.user_id == self.principal.user_id
            ):
                self.close(Close.BAD_TOKEN, "no member of the workspace any more")
            return
        conversation_id = recorded.stream.removeprefix(_CONVERSATION_PREFIX)
        if not await self._owns(conversation_id):
            return
        if isinstance(event, AssistantDelta):
            self.send({"type": "delta", "conversation_id": conversation_id,
                       "message_id": event.message_id, "offset": event.offset,
                       "text": event.text})
            return
        if isinstance(event, ConversationStateChanged):
            self.send({"type": "state", "conversation_id": conversation_id,
                       "state": event.state, "previous": event.previous, "by": event.by,
                       "cause": event.cause, "assignee": None if event.assignee_id is None
                       else {"id": event.assignee_id, "name": event.assignee_name}})
        elif isinstance(event, MessagePosted | AssistantStarted | AgentMessagePosted):
            message = await conversation_views.message(self.store, event.message_id)
            if message is not None:
                self.send({"type": "message", "conversation_id": conversation_id,
                           "message": message_json(message)})
        elif isinstance(event, END_EVENTS):
            message = await conversation_views.message(self.store, event.message_id)
            if message is not None:
                self.send({"type": "done", "conversation_id": conversation_id,
                           "message_id": event.message_id, "status": message.status,
                           "length": len(message.text), "message": message_json(message)})
        elif not isinstance(event, ConversationStarted | SubjectErased | ConversationAssigned):
            return  # files and the like change no entry of the inbox
        item = await inbox_views.inbox_item(self.store, conversation_id,
                                            self.principal.user_id)
        if item is not None:
            self.send({"type": "conversation", "conversation": inbox_item_json(item)})

    # -- the socket's tasks -------------------------------------------------------------------

    async def write_frames(self) -> None:
        while (frame := await self.outbox.get()) is not None:
            await self.ws.send_text(_encode(frame).decode())

    async def ping(self) -> None:
        while True:
            await asyncio.sleep(self.settings.ws_ping_seconds)
            self.send({"type": "ping"})

    async def expire(self) -> None:
        """Close when the access token expires, unless an auth frame renews it first."""
        while True:
            left = self.expires_at - self.clock().timestamp()
            if left <= 0:
                self.close(Close.BAD_TOKEN, "the access token expired; reconnect with a new one")
                return
            self.renewed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.renewed.wait(), left)

    async def read_frames(self) -> None:
        while True:
            try:
                raw = await asyncio.wait_for(self.ws.receive_text(),
                                             self.settings.ws_idle_seconds)
            except TimeoutError:
                self.close(Close.IDLE, "idle")
                return
            except KeyError:  # a binary frame
                raw = None
            if raw is not None and len(raw) > MAX_TEXT_FRAME:
                self.close(Close.TOO_BIG, "frame too big")
                return
            frame = _frame(raw)
            kind = frame.get("type") if frame is not None else None
            if kind == "ping":
                self.send({"type": "pong"})
            elif kind == "pong":
                pass
            elif kind == "auth" and frame is not None:
                await self._renew(frame)
            else:
                self.send({"type": "error", "code": "invalid_frame",
                           "text": "send JSON objects of type auth, ping or pong"})

    async def _renew(self, frame: dict[str, Any]) -> None:
        try:
            principal, expires_at = await authenticate(self.ws, frame)
        except LoaclError:
            self.close(Close.BAD_TOKEN, "the token is not valid")
            return
        if (principal.user_id, principal.workspace_id) != (
            self.principal.user_id, self.principal.workspace_id
        ):
            self.close(Close.BAD_TOKEN, "a token of another account or workspace")
            return
        # The session may be another (after a new login); the news follows the new one.
        self.principal, self.expires_at = principal, expires_at
        self.renewed.set()

    async def wind_down(self, write: asyncio.Task[None], others: list[asyncio.Task[Any]]) -> None:
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self.close(Close.NORMAL, "bye")
        await asyncio.wait([write], timeout=1.0)
        write.cancel()
        await asyncio.gather(write, return_exceptions=True)
        ws = self.ws
        if ws.application_state == WebSocketState.CONNECTED and (
            ws.client_state == WebSocketState.CONNECTED
        ):
            code, reason = self.closing or (Close.NORMAL, "bye")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code, reason), CLOSE_SECONDS)


def _frame(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        frame = decode_json(raw, "the frame")
    except LoaclError:
        return None
    return frame if isinstance(frame, dict) else None


async def authenticate(websocket: WebSocket, frame: dict[str, Any]) -> tuple[Member, int]:
    """The member behind an auth frame's token (any role: agents read the inbox), and when
    the token expires (Unix seconds)."""
    token = frame.get("token")
    if frame.get("type") != "auth" or not isinstance(token, str) or not token:
        raise LoaclError("invalid_token", "send {\"type\": \"auth\", \"token\": ...} first")
    principal = await current_member(websocket, AGENT, token=token)
    return principal, accounts(websocket).tokens.read_access(token).expires_at


async def owner_stream(websocket: WebSocket) -> None:
    try:
        refuse_cross_site(websocket)
    except LoaclError as exc:
        response = problem(status_for(exc.code), exc.code, exc.message)
        try:
            await websocket.send_denial_response(response)
        except RuntimeError:
            await websocket.close(code=Close.BAD_TOKEN, reason=exc.code)
        return
    await websocket.accept()
    try:
        first = await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT)
        principal, expires_at = await authenticate(websocket, _frame(first) or {})
    except (TimeoutError, KeyError, LoaclError, WebSocketDisconnect):
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close(Close.BAD_TOKEN,
                                  "send {\"type\": \"auth\", \"token\": ...} first")
        return
    conn = OwnerSocket(websocket, principal, expires_at)  # subscribed from here on
    left = max(0, round(expires_at - conn.clock().timestamp()))
    conn.send({"type": "ready", "user_id": principal.user_id,
               "workspace_id": principal.workspace_id, "role": principal.role,
               "expires_in": left})
    write = asyncio.create_task(conn.write_frames())
    stop_typing = handoffs(websocket).typing.listen(None, conn.on_typing)
    # Online for a handoff's "nobody there" (services.handoff.Presence) while the socket is up.
    leave = handoffs(websocket).presence.join(principal.workspace_id)
    others = [asyncio.create_task(conn.read_frames()), asyncio.create_task(conn.ping()),
              asyncio.create_task(conn.follow_news(conn.news)),
              asyncio.create_task(conn.follow_typing()),
              asyncio.create_task(conn.expire()), asyncio.create_task(conn.closed.wait())]
    try:
        done, _ = await asyncio.wait([write, *others], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(error, WebSocketDisconnect):
                log.error("owner_stream.failed", error=repr(error))
                conn.close(Close.SERVER_ERROR, "server error")
    finally:
        conn.news.close()
        stop_typing()
        leave()
        await conn.wind_down(write, others)


async def not_upgraded(request: Request) -> Response:
    """A plain GET of the socket's URL: the token is checked as for any owner request, then
    the client is told to upgrade."""
    await current_member(request, AGENT)
    raise LoaclError("upgrade_required", "open this URL as a WebSocket (Upgrade: websocket)")


endpoints: list[Endpoint | Socket] = [
    Socket("/api/v1/owner/stream", owner_stream,
           "WebSocket: live changes to your conversations (see the description)", describe(),
           tag="conversations", auth="owner", role=AGENT,
           codes=("cross_site_request", "upgrade_required")),
    Endpoint("get", "/api/v1/owner/stream", not_upgraded, "", documented=False),
]
