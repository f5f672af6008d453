"""``WS /api/v1/widgets/{id}/stream``: replies token by token, resumable, several tabs at once.

Before the handshake completes, the page's ``Origin`` must be allowed; otherwise the handshake is
refused with an HTTP problem response (403 origin_not_allowed, 404 widget_not_found). The visitor
token comes in the first frame, ``{"type": "auth", "token": ...}`` (a wrong one closes with
4401). Widgets built before that send it as the ``token`` query parameter, checked before the
handshake (401 invalid_token); that form is still served, logged as ``stream.token_in_url``
without the token, and uvicorn's own lines about the socket have it redacted (``loacl.logs``).

The frames, their fields and the close codes are declared in ``stream_protocol``; the OpenAPI
document describes the socket from the same constants.

A socket that connects while a reply streams gets ``started`` at once and the reply's text from
the start, unless its first frame (sent within ``RESUME_GRACE`` seconds) is a ``resume`` of that
reply: a reconnecting client gets only what it missed. ``done`` carries the final text's length:
after a crash the saved text may be shorter than what was streamed, and the client trims to it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
import structlog
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from loacl.domain.conversations import AssistantStarted, MessagePosted
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.domain.handoff import (
    ASSISTANT_ASKED,
    AgentMessagePosted,
    ConversationAssigned,
    ConversationStateChanged,
)
from loacl.domain.privacy import SubjectErased
from loacl.domain.widgets import VisitorAccess
from loacl.http.chat import MessageBody
from loacl.http.common import chat, client_ip, handoffs, metadata, widgets
from loacl.http.errors import problem, status_for
from loacl.http.routing import Param, Socket
from loacl.http.shapes import away_json, citations_json, message_json, usage_json
from loacl.http.stream_protocol import MAX_TEXT_FRAME as MAX_TEXT_FRAME
from loacl.http.stream_protocol import ClientFrame, Close, ServerFrame, describe
from loacl.http.stream_send import DELTA_CHARS, Closing, Follower, Outbox, pacer_for
from loacl.http.validation import decode_json, validated
from loacl.services.limits import VisitorLimits
from loacl.services.replies import Run, reply_error_text
from loacl.store.broker import Subscription, SubscriptionOverflow
from loacl.store.views.conversations import ConversationView, MessageView

log = structlog.get_logger(__name__)

AUTH_TIMEOUT = 10.0
RESUME_GRACE = 1.0
FLUSH_SECONDS = 1.0  # to send what is queued when a socket closes
CLOSE_SECONDS = 10.0  # to get the close frame out to a client that has stopped reading
OUTBOX_FRAMES = 2000

# One frame per token per socket: msgspec writes one in about a tenth of json.dumps's time.
_encode_frame = msgspec.json.Encoder().encode


class Connection:
    def __init__(self, websocket: WebSocket, access: VisitorAccess) -> None:
        self.ws = websocket
        self.access = access
        self.chat = chat(websocket)
        self.settings = websocket.app.state.settings
        self.outbox = Outbox(OUTBOX_FRAMES)
        self.followers: dict[str, Follower] = {}
        self.none_followed = asyncio.Event()  # set while no reply is being followed
        self.none_followed.set()
        self.closing: Closing | None = None
        self.closed = asyncio.Event()
        # A reply that was streaming when this socket connected, not followed yet: the first
        # frame may resume it from an offset instead.
        self.pending: Run | None = None
        # The replies this socket has sent ``started`` for: the log's start, coming after the
        # reply was announced another way (this tab's own message, a start another instance
        # sent live, a reply running at greeting), is no news even once the reply is over.
        self.announced: set[str] = set()

    def send(self, frame: dict[str, Any]) -> None:
        if self.closing is not None:
            # Nothing after a dropped frame may go out: the client resumes after the last
            # offset it got, so what it got must have no gap.
            return
        if not self.outbox.put(frame):
            self.close(Close.TOO_SLOW, "too slow to keep up; reconnect and resume")

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = Closing(code, reason)
            self.closed.set()
            self.outbox.end()

    def send_text(self, message_id: str, offset: int, text: str) -> None:
        """``text`` from ``offset`` on, as deltas of a size any client takes."""
        for at in range(0, len(text), DELTA_CHARS):
            self.send({"type": ServerFrame.DELTA, "message_id": message_id, "offset": offset + at,
                       "text": text[at:at + DELTA_CHARS]})

    def end_grace(self, frame: dict[str, Any] | None) -> None:
        """The first frame arrived (or none did in time): follow the pending reply from the
        start, unless the frame resumes it."""
        run, self.pending = self.pending, None
        if run is None or (frame is not None and frame.get("type") == ClientFrame.RESUME
                            and frame.get("message_id") == run.message_id):
            return
        self.follow(run)

    # -- following replies -----------------------------------------------------------------

    def follow(self, run: Run, offset: int = 0) -> None:
        """Send the reply from ``offset``: what it already has, then the rest live."""
        old = self.followers.pop(run.message_id, None)
        if old is not None:
            old.stop()
        follower = Follower(self, run, offset)
        self.followers[run.message_id] = follower
        self.none_followed.clear()
        window = self.settings.ws_coalesce_ms / 1000
        if window > 0:
            pacer_for(self.ws, window).add(follower)
        else:
            follower.task = asyncio.create_task(self._forward(follower))

    async def _forward(self, follower: Follower) -> None:
        """Without a coalescing window: wake up for each piece the reply queues."""
        try:
            while not follower.pump([await follower.queue.get()]):
                pass
        finally:
            follower.run.unlisten(follower.queue)  # a socket that went away stops collecting
        await self._finish(follower)

    def ended(self, follower: Follower) -> None:
        """The pacer saw the reply's end marker: the rest and ``done`` go out from a task."""
        follower.run.unlisten(follower.queue)
        follower.task = asyncio.create_task(self._finish(follower))

    async def _finish(self, follower: Follower) -> None:
        run, sent_to = follower.run, follower.sent_to
        if follower.gap:
            return
        if not run.finished.is_set():  # the run dropped this socket's queue: too slow
            self.close(Close.TOO_SLOW, "too slow to keep up; reconnect and resume")
            return
        self.send_text(run.message_id, sent_to, run.text[sent_to:])
        await self._send_end(run.message_id, run)
        if self.followers.get(run.message_id) is follower:
            del self.followers[run.message_id]
            if not self.followers:
                self.none_followed.set()

    async def _send_end(self, message_id: str, run: Run | None = None) -> None:
        message = await self.chat.outcome(message_id, run)
        frame: dict[str, Any] = {"type": ServerFrame.DONE, "message_id": message_id,
                                 "status": message.status, "usage": usage_json(message),
                                 "length": len(message.text),
                                 "citations": citations_json(message)}
        if message.status != "completed":
            error: dict[str, Any] = {
                "type": ServerFrame.ERROR, "code": message.error_code or "provider_error",
                "message_id": message_id, "text": reply_error_text(message.error_code),
            }
            retry_after = run.error.retry_after if run and run.error else None
            if retry_after is not None:
                error["retry_after"] = max(1, round(retry_after))
            self.send(error)
        self.send(frame)

    def _following(self, reply_id: str) -> bool:
        pending = self.pending
        return reply_id in self.followers or reply_id in self.announced or (
            pending is not None and pending.message_id == reply_id)

    def _started(self, message: MessageView, reply_id: str) -> None:
        self.announced.add(reply_id)
        self.send({"type": ServerFrame.STARTED, "message": message_json(message),
                   "reply_id": reply_id})

    def started_elsewhere(self, run: Run, message: MessageView) -> None:
        """A reply another instance started in this conversation, before the log brings its
        start here (services.remote_replies): ``started``, then the reply live."""
        if not self._following(run.message_id):
            self._started(message, run.message_id)
            self.follow(run)

    async def follow_news(self, news: Subscription) -> None:
        """Replies that start in the conversation (this tab's, another tab's): ``started``,
        then the reply live, as the log's committed events say. Falling too far behind them
        closes the socket (4008); the client reconnects and resumes."""
        try:
            async for recorded in news:
                event = recorded.event
                if isinstance(event, AssistantStarted):
                    await self._reply_started(event.message_id, event.reply_to)
                elif isinstance(event, AgentMessagePosted | MessagePosted):
                    await self._posted(event.message_id)
                elif isinstance(event, ConversationStateChanged | ConversationAssigned):
                    await self.send_state()
                    if (isinstance(event, ConversationStateChanged)
                            and event.cause == ASSISTANT_ASKED):
                        # The model asked for a person: nobody there is said in every tab
                        # (a visitor's own request hears it in answer to its frame).
                        await self._send_away()
                elif isinstance(event, SubjectErased):
                    await self._erased()
        except SubscriptionOverflow:
            self.close(Close.TOO_SLOW, "too slow to keep up; reconnect and resume")

    async def _posted(self, message_id: str) -> None:
        """A member's message, or a visitor's message no reply follows (kept for a person):
        a ``message`` frame. A visitor's message with a reply arrives with ``started``."""
        try:
            message = await self.chat.message(message_id)
        except LoaclError:  # erased meanwhile: the erasure's own news closes the socket
            return
        if message.role == "user" and await self.chat.has_reply(message_id):
            return
        self.send({"type": ServerFrame.MESSAGE, "message": message_json(message)})

    async def send_state(self) -> None:
        """Who answers the conversation now: a ``state`` frame."""
        try:
            found = await self.chat.conversation_of_widget(self.access.widget_id,
                                                           self.access.conversation_id)
        except LoaclError:
            return
        self.send({"type": ServerFrame.STATE, "state": found.state,
                   "agent": found.assignee_name if found.state == "human" else None})

    def on_typing(self, frame: dict[str, Any]) -> None:
        if frame["from"] == "agent":
            self.send({"type": ServerFrame.TYPING, "typing": frame["typing"],
                       "name": frame.get("name")})

    async def _erased(self) -> None:
        """The conversation was erased: the reply it stopped is told (``done``, interrupted),
        then the socket closes as for a token no longer valid, and the widget starts afresh."""
        # The reply was stopped before the erasure: its followers finish (done) and leave.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.none_followed.wait(), FLUSH_SECONDS)
        self.close(Close.BAD_TOKEN, "this conversation was erased; start again")

    async def _reply_started(self, reply_id: str, reply_to: str) -> None:
        if self._following(reply_id):
            return
        message = await self.chat.message(reply_to)
        if self._following(reply_id):  # a resume got there while the message was read
            return
        self._started(message, reply_id)
        run = self.chat.running(self.access.conversation_id)
        if run is not None and run.message_id == reply_id:
            self.follow(run)
        else:  # already over (a short reply), or streaming in another process
            await self._replay_finished(reply_id, 0)

    # -- the socket's tasks -------------------------------------------------------------------

    async def greet(self) -> None:
        """``ready``, and a reply already streaming in another tab (followed once the first
        frame shows whether it is a resume of it)."""
        found = await self.chat.conversation_of_widget(self.access.widget_id,
                                                       self.access.conversation_id)
        self.send({"type": ServerFrame.READY, "conversation_id": self.access.conversation_id,
                   "state": found.state,
                   "agent": found.assignee_name if found.state == "human" else None})
        if found.state == "waiting":  # a reload still says that nobody answers now
            await self._send_away(found)
        run = await self.chat.running_now(self.access.conversation_id)
        if run is not None:
            self._started(await self.chat.message(run.reply_to), run.message_id)
            self.pending = run

    async def write_frames(self) -> None:
        while (frame := await self.outbox.get()) is not None:
            await self.ws.send_text(_encode_frame(frame).decode())

    async def ping(self) -> None:
        while True:
            await asyncio.sleep(self.settings.ws_ping_seconds)
            self.send({"type": ServerFrame.PING})

    async def read_frames(self) -> None:
        """Handle the client's frames until it goes idle (no reply streaming) or breaks the
        frame size limit."""
        while True:
            wait = self.settings.ws_idle_seconds
            if self.pending is not None:
                wait = min(wait, RESUME_GRACE)
            try:
                raw = await asyncio.wait_for(self.ws.receive_text(), wait)
            except TimeoutError:
                if self.pending is not None:
                    self.end_grace(None)
                elif self.chat.running(self.access.conversation_id) is None:
                    self.close(Close.IDLE, "idle")
                    return
                continue
            except KeyError:  # a binary frame
                raw = None
            if raw is not None and len(raw) > MAX_TEXT_FRAME:
                self.close(Close.TOO_BIG, "frame too big")
                return
            frame = _decoded(raw)
            self.end_grace(frame if isinstance(frame, dict) else None)
            if isinstance(frame, dict):
                await self.handle(frame)
            else:
                self.send({"type": ServerFrame.ERROR, "code": "invalid_frame", "text": frame})

    async def wind_down(self, write: asyncio.Task[None], others: list[asyncio.Task[Any]]) -> None:
        """Stop following and reading; let the writer send what is queued (briefly: the client
        may be the slow one; stopping it mid-frame is safe, nothing queued after that frame
        goes out), then close with the reason that ended the socket."""
        followers = list(self.followers.values())
        for follower in followers:
            follower.stop()
        for task in others:
            task.cancel()
        await asyncio.gather(*others, *(f.task for f in followers if f.task is not None),
                             return_exceptions=True)
        self.close(Close.NORMAL, "bye")
        await asyncio.wait([write], timeout=FLUSH_SECONDS)
        write.cancel()
        await asyncio.gather(write, return_exceptions=True)
        ws = self.ws
        if ws.application_state == WebSocketState.CONNECTED and (
            ws.client_state == WebSocketState.CONNECTED
        ):
            closing = self.closing or Closing(Close.NORMAL, "bye")
            # Bounded too: a client that stopped reading takes the close frame only when it
            # reads again; after that the transport is closed without one.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(closing.code, closing.reason), CLOSE_SECONDS)

    # -- client frames ---------------------------------------------------------------------

    async def handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == ClientFrame.MESSAGE:
            await self._message(frame)
        elif kind == ClientFrame.RESUME:
            await self._resume(frame)
        elif kind == ClientFrame.HANDOFF:
            await self._handoff(frame)
        elif kind == ClientFrame.REPLY_ADDRESS:
            await self._reply_address(frame)
        elif kind == ClientFrame.TYPING:
            handoffs(self.ws).typing.signal(self.access.conversation_id, "visitor",
                                            typing=frame.get("typing") is not False)
        elif kind in (ClientFrame.PONG, ClientFrame.PING):
            if kind == ClientFrame.PING:
                self.send({"type": ServerFrame.PONG})
        else:
            self.send({"type": ServerFrame.ERROR, "code": "invalid_frame",
                       "text": f"unknown frame type {kind!r}"})

    async def _message(self, frame: dict[str, Any]) -> None:
        """A ``message`` frame: decoded and checked exactly as ``POST .../messages`` is."""
        raw_id = frame.get("client_message_id")
        client_id = raw_id if isinstance(raw_id, str) else None
        try:
            body = validated(MessageBody, {k: v for k, v in frame.items() if k != "type"})
            message, run, started = await self.chat.post(
                self.access, body.text, tuple(body.file_ids), body.client_message_id,
                metadata_for(self.ws, self.access),
            )
        except LoaclError as exc:
            self.send({"type": ServerFrame.ERROR, "code": exc.code, "text": exc.message,
                       "client_message_id": client_id,
                       **({"retry_after": exc.extra["retry_after"]}
                          if "retry_after" in exc.extra else {})})
            return
        reply_id = run.message_id if isinstance(run, Run) else run
        if reply_id is None:  # kept for a person: no reply follows
            self.send({"type": ServerFrame.ACK, "client_message_id": client_id,
                       "message_id": message.message_id, "reply_id": None,
                       "duplicate": not started})
            return
        # ``ack`` first: the message is in the log; then this tab's own reply, at once (other
        # tabs get it from the news) and without waiting for the news to come round.
        self.send({"type": ServerFrame.ACK, "client_message_id": client_id,
                   "message_id": message.message_id, "reply_id": reply_id,
                   "duplicate": not started})
        if started and isinstance(run, Run) and not self._following(reply_id):
            self._started(message, reply_id)
            self.follow(run)
        if not started:
            # A resend: give this socket the reply, whether it is still streaming or done.
            if isinstance(run, Run) and run.message_id not in self.followers:
                self.follow(run)
            elif isinstance(run, str):
                await self._replay_finished(run, 0)

    async def _handoff(self, frame: dict[str, Any]) -> None:
        """The visitor asks for a person: every tab hears the new state from the news; this
        one hears it at once when nothing changed (one was asked for already)."""
        reason = frame.get("reason", "")
        try:
            before = (await self.chat.conversation_of_widget(
                self.access.widget_id, self.access.conversation_id)).state
            found = await handoffs(self.ws).visitor_asks(
                self.access, reason if isinstance(reason, str) else "",
                metadata_for(self.ws, self.access))
        except LoaclError as exc:
            self.send({"type": ServerFrame.ERROR, "code": exc.code, "text": exc.message})
            return
        if found.state == before:
            await self.send_state()
        await self._send_away(found)

    async def _send_away(self, found: ConversationView | None = None) -> None:
        """An ``away`` frame when the conversation waits and nobody can answer now."""
        if found is None:
            try:
                found = await self.chat.conversation_of_widget(self.access.widget_id,
                                                               self.access.conversation_id)
            except LoaclError:
                return
        away = await handoffs(self.ws).away(self.access, found, self.ws.app.state.clock())
        if away is not None:
            self.send({"type": ServerFrame.AWAY, **(away_json(away) or {}),
                       "reply_email": found.reply_email})

    async def _reply_address(self, frame: dict[str, Any]) -> None:
        email = frame.get("email")
        try:
            found = await handoffs(self.ws).leave_address(
                self.access, email if isinstance(email, str) else "",
                metadata_for(self.ws, self.access))
        except LoaclError as exc:
            self.send({"type": ServerFrame.ERROR, "code": exc.code, "text": exc.message})
            return
        self.send({"type": ServerFrame.REPLY_ADDRESS, "email": found.reply_email})

    async def _catch_up(self, after: int) -> None:
        """A reconnecting client's ``resume`` with ``after``: every whole message after that
        cursor (members' messages, the visitor's from other tabs, replies that ended while it
        was away), then the state; replies still streaming follow as usual."""
        page = await self.chat.messages(self.access.conversation_id, before=None, after=after,
                                        limit=100)
        for message in page.items:
            if message.status != "streaming":
                self.send({"type": ServerFrame.MESSAGE, "message": message_json(message)})
        await self.send_state()

    async def _resume(self, frame: dict[str, Any]) -> None:
        after = frame.get("after")
        if "after" in frame:
            if not isinstance(after, int) or isinstance(after, bool) or after < 0:
                self.send({"type": ServerFrame.ERROR, "code": "invalid_frame",
                           "text": "after: a message cursor (an integer >= 0)"})
                return
            await self._catch_up(after)
            if "message_id" not in frame:
                return
        message_id, offset = frame.get("message_id"), frame.get("offset", 0)
        if not isinstance(message_id, str) or not isinstance(offset, int) or offset < 0:
            self.send({"type": ServerFrame.ERROR, "code": "invalid_frame",
                       "text": "a resume frame needs message_id and a character offset >= 0"})
            return
        run = self.chat.running(self.access.conversation_id)
        if run is not None and run.message_id == message_id:
            self.follow(run, offset)
            return
        await self._replay_finished(message_id, offset)

    async def _replay_finished(self, message_id: str, offset: int) -> None:
        try:
            message = await self.chat.message(message_id)
        except LoaclError:
            message = None
        if (message is None or message.conversation_id != self.access.conversation_id
                or message.role != "assistant"):
            self.send({"type": ServerFrame.ERROR, "code": "not_found", "message_id": message_id,
                       "text": "no such reply in this conversation"})
            return
        if message.status == "streaming":
            # Streaming in another process or being closed at start-up; the run ends soon.
            run = self.chat.running(self.access.conversation_id)
            if run is not None and run.message_id == message_id:
                self.follow(run, offset)
                return
        self.send_text(message_id, offset, message.text[offset:])
        await self._send_end(message_id)




def metadata_for(websocket: WebSocket, access: VisitorAccess) -> Metadata:
    return metadata(websocket, f"visitor:{access.visitor_id}")


_CLOSE_FOR = {"origin_not_allowed": Close.ORIGIN_NOT_ALLOWED,
              "rate_limited": Close.RATE_LIMITED}


async def _refuse(websocket: WebSocket, exc: LoaclError) -> None:
    response = problem(status_for(exc.code), exc.code, exc.message, **exc.extra)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:
        await websocket.close(code=_CLOSE_FOR.get(exc.code, Close.BAD_TOKEN), reason=exc.code)


async def _refuse_accepted(websocket: WebSocket, exc: LoaclError) -> None:
    """Refuse a socket already accepted: an ``error`` frame with the code (and when to try
    again), then the close code for it."""
    frame: dict[str, Any] = {"type": ServerFrame.ERROR, "code": exc.code, "text": exc.message}
    if "retry_after" in exc.extra:
        frame["retry_after"] = exc.extra["retry_after"]
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.send_text(_encode_frame(frame).decode())
        await websocket.close(_CLOSE_FOR.get(exc.code, Close.BAD_TOKEN), exc.code)


async def _authenticate(websocket: WebSocket, token: str) -> VisitorAccess:
    return await widgets(websocket).visitor_access(
        websocket.path_params["id"], websocket.headers.get("origin"), token
    )


async def stream(websocket: WebSocket) -> None:
    widget_id = websocket.path_params["id"]
    token = websocket.query_params.get("token")
    limits: VisitorLimits = websocket.app.state.limits
    if token:
        # A widget built before the token moved into the first frame: still served, and
        # logged (never the token) so that an operator can see old builds in use.
        log.info("stream.token_in_url", widget_id=widget_id)
    try:
        await widgets(websocket).public(widget_id, websocket.headers.get("origin"))
        access = await _authenticate(websocket, token) if token else None
        # Held from here until the socket is gone: per address, and per visitor once known.
        lease = limits.socket(client_ip(websocket), access.visitor_id if access else None)
    except LoaclError as exc:
        await _refuse(websocket, exc)
        return
    try:
        await websocket.accept()
        if access is None:
            try:
                first = await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT)
                frame = decode_json(first, "the frame")
                access = await _authenticate(websocket, str(frame.get("token", "")))
            except (TimeoutError, ValueError, AttributeError, KeyError, LoaclError,
                    WebSocketDisconnect):
                # KeyError: a binary frame has no text.
                with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                    await websocket.close(Close.BAD_TOKEN,
                                          "send {\"type\": \"auth\", \"token\": ...} first")
                return
            try:
                limits.socket_visitor(lease, access.visitor_id)
            except LoaclError as exc:
                await _refuse_accepted(websocket, exc)
                return
        await _serve(websocket, access)
    finally:
        lease.release()


def open_connections(app: Any) -> set[Connection]:
    """The app's open streaming sockets (made on first use)."""
    state = app.state
    found: set[Connection] | None = getattr(state, "ws_connections", None)
    if found is None:
        found = state.ws_connections = set()
    return found


def _decoded(raw: str | None) -> dict[str, Any] | str:
    """A text frame as a JSON object, or what is wrong with it (None: a binary frame)."""
    if raw is None:
        return "send JSON text"
    try:
        frame = decode_json(raw, "the frame")
    except LoaclError as exc:
        return exc.message
    return frame if isinstance(frame, dict) else "a frame is a JSON object"


async def _serve(websocket: WebSocket, access: VisitorAccess) -> None:
    """Run the socket: greet, then write, read and ping until one of them ends or the socket
    is closed, then wind down."""
    conn = Connection(websocket, access)
    connections = open_connections(websocket.app)
    connections.add(conn)
    # Subscribed before greeting: a reply that starts meanwhile is in the news, or running.
    news = conn.chat.news(access.conversation_id)
    stop_typing = handoffs(websocket).typing.listen(access.conversation_id, conn.on_typing)
    stop_starts = conn.chat.started_elsewhere.listen(access.conversation_id,
                                                     conn.started_elsewhere)
    await conn.greet()
    write = asyncio.create_task(conn.write_frames())
    others = [asyncio.create_task(conn.read_frames()), asyncio.create_task(conn.ping()),
              asyncio.create_task(conn.follow_news(news)),
              asyncio.create_task(conn.closed.wait())]
    try:
        done, _ = await asyncio.wait([write, *others], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(error, WebSocketDisconnect):
                log.error("stream.failed", error=repr(error))
                conn.close(Close.SERVER_ERROR, "server error")
    finally:
        news.close()
        stop_typing()
        stop_starts()
        await conn.wind_down(write, others)
        connections.discard(conn)


endpoints = [
    Socket("/api/v1/widgets/{id}/stream", stream,
           "WebSocket: streamed replies, resumable (see the description)", describe(),
           tag="chat", auth="visitor",
           query=(Param("token", "the visitor token, for widgets built before the auth frame "
                        "(URLs land in proxies' logs)", deprecated=True),),
           codes=("origin_not_allowed", "widget_not_found", "rate_limited")),
]
