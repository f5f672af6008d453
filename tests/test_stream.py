"""``WS /api/v1/widgets/{id}/stream`` end to end: a real uvicorn server on loopback, real
``websockets`` clients, and the real ``openai`` SDK streaming from LOACL's OpenAI test server.

Each test checks what a visitor's socket received against the provider's text and against the
log (``assistant.delta`` events and the ``messages`` table), read with plain sqlite3.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from loacl.domain.widgets import VisitorAccess
from loacl.http import stream as stream_module
from loacl.http import stream_send
from loacl.http.app import create_app
from loacl.openai_testserver import (
    Cut,
    ErrorEvent,
    HttpError,
    OpenAITestServer,
    Stall,
    running,
    split_deltas,
)
from loacl.services.replies import Run
from loacl.settings import Settings
from loacl.store.views.conversations import MessageView
from tests.live import serve
from tests.sealed import opened_rows

pytestmark = pytest.mark.e2e

ORIGIN = "http://localhost:3000"
PASSWORD = "correct horse battery staple"
MODEL = "gpt-fake-1"
WAIT = 30.0  # the bound on any single wait; a healthy run needs a small part of it
TOKEN_DELAY = 0.004  # seconds between the test server's deltas: streams take a little while


def reply_text(words: int = 60, tag: str = "") -> str:
    """A reply long enough to stream in many deltas, with non-ASCII characters (offsets count
    characters, not bytes)."""
    vocabulary = ["Grüße", "naïve", "café", "token", "stream", "offset", "日本語", "🙂ok", "log"]
    return tag + " ".join(f"{vocabulary[i % len(vocabulary)]}{i}" for i in range(words))


# -- the log, read as an operator would ------------------------------------------------------


class Log:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = settings.database_path

    def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        conn = sqlite3.connect(self.path, timeout=WAIT)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def message(self, message_id: str) -> dict[str, Any]:
        rows = self._rows(
            "SELECT text, status, error_code, input_tokens, output_tokens, conversation_id, "
            "role FROM messages WHERE message_id = ?", (message_id,),
        )
        assert rows, f"no message {message_id}"
        text, status, error_code, input_tokens, output_tokens, conversation_id, role = rows[0]
        return {"text": text, "status": status, "error_code": error_code,
                "input_tokens": input_tokens, "output_tokens": output_tokens,
                "conversation_id": conversation_id, "role": role}

    def events(self, message_id: str) -> list[tuple[str, dict[str, Any]]]:
        """The reply's events in log order: (type, payload)."""
        rows = opened_rows(
            self.settings, "SELECT type, schema_version, payload, metadata FROM events ORDER BY seq"
        )
        out = []
        for kind, _, payload, _ in rows:
            body = json.loads(payload)
            if body.get("message_id") == message_id:
                out.append((str(kind), body))
        return out

    def delta_events(self, message_id: str) -> list[tuple[int, str]]:
        return [(p["offset"], p["text"]) for k, p in self.events(message_id)
                if k == "assistant.delta"]

    async def finished(self, message_id: str) -> dict[str, Any]:
        """Wait (bounded) until the reply has its end event; return its row."""
        deadline = time.monotonic() + WAIT
        while True:
            row = self.message(message_id)
            if row["status"] != "streaming":
                return row
            assert time.monotonic() < deadline, f"reply {message_id} did not finish"
            await asyncio.sleep(0.02)


def contiguous(pieces: list[tuple[int, str]], start: int = 0) -> str:
    """Join (offset, text) pieces, asserting that each starts where the previous ended."""
    at, out = start, []
    for offset, text in pieces:
        assert offset == at, f"piece at {offset}, expected {at}: {pieces}"
        assert text, "an empty piece"
        out.append(text)
        at += len(text)
    return "".join(out)


def assert_log_matches(log: Log, reply_id: str, text: str, status: str = "completed") -> None:
    """The messages table, the delta events and the end event all hold ``text``."""
    row = log.message(reply_id)
    assert row["status"] == status
    assert row["text"] == text
    assert contiguous(log.delta_events(reply_id)) == text
    kinds = [k for k, _ in log.events(reply_id)]
    assert kinds[0] == "assistant.started"
    assert set(kinds[1:-1]) <= {"assistant.delta"}
    assert kinds[-1] == f"assistant.{status}"
    assert log.events(reply_id)[-1][1]["text"] == text


# -- a visitor's socket ------------------------------------------------------------------------


@dataclass
class Reply:
    """What one socket saw of one reply, checked as it arrives: each delta starts where the
    one before it ended."""

    message_id: str
    start: int | None = None
    deltas: list[tuple[int, str]] = field(default_factory=list)
    done: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(t for _, t in self.deltas)

    def add(self, offset: int, text: str) -> None:
        assert self.done is None, "a delta after done"
        assert text, "an empty delta"
        if self.start is None:
            self.start = offset
        end = self.start + len(self.text)
        assert offset == end, f"delta at {offset}, expected {end} (a gap or a repeat)"
        self.deltas.append((offset, text))


class Tab:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self.replies: dict[str, Reply] = {}

    def reply(self, message_id: str) -> Reply:
        return self.replies.setdefault(message_id, Reply(message_id))

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def recv(self, within: float = WAIT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), within)
        assert isinstance(raw, str), "the server sends text frames"
        frame: dict[str, Any] = json.loads(raw)
        self.seen.append(frame)
        message_id = frame.get("message_id")
        if isinstance(message_id, str):
            if frame["type"] == "delta":
                self.reply(message_id).add(frame["offset"], frame["text"])
            elif frame["type"] == "done":
                assert self.reply(message_id).done is None, "done twice"
                self.reply(message_id).done = frame
            elif frame["type"] == "error":
                self.reply(message_id).errors.append(frame)
        return frame

    async def until(
        self, wanted: Callable[[dict[str, Any]], bool], within: float = WAIT
    ) -> dict[str, Any]:
        """The next frame ``wanted`` accepts, skipping pings (and other frames)."""
        deadline = time.monotonic() + within
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if wanted(frame):
                return frame

    async def next_kind(self, *kinds: str) -> dict[str, Any]:
        return await self.until(lambda f: f["type"] in kinds)

    async def follow(
        self, message_id: str, start: int = 0, stop_after: int | None = None
    ) -> Reply:
        """Read until ``message_id`` is done (or has ``stop_after`` characters); its deltas
        must begin at ``start``."""
        reply = self.reply(message_id)
        deadline = time.monotonic() + WAIT
        while reply.done is None and (stop_after is None or len(reply.text) < stop_after):
            await self.recv(max(0.01, deadline - time.monotonic()))
        assert reply.start in (None, start), f"the first delta was at {reply.start}, not {start}"
        return reply

    async def closed(self, within: float = WAIT) -> tuple[int | None, str | None]:
        """Read until the server closes; return its close code and reason."""
        deadline = time.monotonic() + within
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.recv(max(0.01, deadline - time.monotonic()))
        received = self.ws.protocol.close_rcvd
        return (received.code, received.reason) if received else (None, None)


# -- a running LOACL with an owner, an assistant and a widget -----------------------------------


@dataclass(frozen=True)
class Session:
    token: str
    conversation_id: str


@dataclass
class Live:
    url: str
    settings: Settings
    provider: OpenAITestServer
    http: httpx.Client
    headers: dict[str, str]
    widget_id: str
    log: Log

    def widget(self, **fields: Any) -> str:
        assistant = self.http.post(
            "/api/v1/assistants", headers=self.headers,
            json={"name": "Helper", "provider": "openai", "model": MODEL},
        )
        assert assistant.status_code == 201, assistant.text
        body = {"name": "Site", "assistant_id": assistant.json()["id"],
                "allowed_origins": [ORIGIN], "limits": {"messages_per_minute": 600}, **fields}
        widget = self.http.post("/api/v1/widgets", headers=self.headers, json=body)
        assert widget.status_code == 201, widget.text
        return str(widget.json()["id"])

    def session(self, widget_id: str | None = None) -> Session:
        response = self.http.post(
            f"/api/v1/widgets/{widget_id or self.widget_id}/sessions", json={},
            headers={"Origin": ORIGIN},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        return Session(body["visitor_token"], body["conversation_id"])

    def ws_url(self, token: str | None, widget_id: str | None = None) -> str:
        base = self.url.replace("http://", "ws://", 1)
        url = f"{base}/api/v1/widgets/{widget_id or self.widget_id}/stream"
        return url if token is None else f"{url}?token={token}"

    @contextlib.asynccontextmanager
    async def tab(
        self, session: Session | None, *, origin: str | None = ORIGIN, ready: bool = True,
        **options: Any,
    ) -> AsyncIterator[Tab]:
        async with connect(
            self.ws_url(session.token if session else None),
            origin=Origin(origin) if origin else None, open_timeout=WAIT, close_timeout=5,
            **options,
        ) as ws:
            tab = Tab(ws)
            if ready:
                frame = await tab.recv()
                assert frame["type"] == "ready", frame
                assert session is not None
                assert frame["conversation_id"] == session.conversation_id
            yield tab

    async def ask(self, tab: Tab, text: str, client_id: str | None = None) -> dict[str, Any]:
        """Send a message; return its ack."""
        frame: dict[str, Any] = {"type": "message", "text": text}
        if client_id is not None:
            frame["client_message_id"] = client_id
        await tab.send(frame)
        ack = await tab.next_kind("ack", "error")
        assert ack["type"] == "ack", ack
        return ack


@contextlib.contextmanager
def provider_server(token_delay: float = TOKEN_DELAY) -> Iterator[tuple[OpenAITestServer, str]]:
    server = OpenAITestServer(token_delay=token_delay)
    with running(server) as url:
        yield server, url


@contextlib.contextmanager
def start(settings: Settings, provider: tuple[OpenAITestServer, str], **overrides: Any
          ) -> Iterator[Live]:
    """LOACL on a loopback port, talking to the test server, with an owner and a widget."""
    server, url = provider
    configured = settings.model_copy(update={
        "openai_api_key": "sk-test", "openai_base_url": f"{url}/v1",
        "require_verified_email": False, "provider_max_retries": 0, **overrides,
    })
    with serve(create_app(configured)) as base, httpx.Client(base_url=base, timeout=WAIT) as http:
        email = "owner@example.com"
        registered = http.post("/api/v1/auth/register", json={"email": email,
                                                              "password": PASSWORD})
        assert registered.status_code == 202, registered.text
        login = http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        live = Live(base, configured, server, http, headers, "", Log(configured))
        live.widget_id = live.widget()
        yield live


@pytest.fixture
def provider() -> Iterator[tuple[OpenAITestServer, str]]:
    with provider_server() as running_server:
        yield running_server


@pytest.fixture
def live(settings: Settings, provider: tuple[OpenAITestServer, str]) -> Iterator[Live]:
    with start(settings, provider) as started:
        yield started


# -- streaming ---------------------------------------------------------------------------------


async def test_a_reply_streams_and_the_log_holds_the_same_text(live: Live) -> None:
    text = reply_text(80)
    live.provider.script(text)
    session = live.session()
    async with live.tab(session) as tab:
        ack = await live.ask(tab, "Hello there", "c-1")
        assert ack["client_message_id"] == "c-1" and ack["duplicate"] is False
        started = await tab.next_kind("started")  # after the ack, as the protocol says
        assert started["reply_id"] == ack["reply_id"]
        assert started["message"]["id"] == ack["message_id"]
        assert started["message"]["text"] == "Hello there"
        reply = await tab.follow(ack["reply_id"])
    assert reply.text == text
    assert len(reply.deltas) > 1, "the reply arrives in pieces, not at the end"
    assert reply.done is not None and reply.done["status"] == "completed"
    assert reply.errors == []
    row = await live.log.finished(ack["reply_id"])
    assert reply.done["usage"] == {"input_tokens": row["input_tokens"],
                                   "output_tokens": row["output_tokens"]}
    assert row["output_tokens"] and row["output_tokens"] > 0
    assert_log_matches(live.log, ack["reply_id"], text)
    assert live.log.message(ack["message_id"])["text"] == "Hello there"


@pytest.mark.parametrize("interval_ms", [0, 60_000])
async def test_deltas_are_coalesced_per_flush_window(
    settings: Settings, provider: tuple[OpenAITestServer, str], interval_ms: int
) -> None:
    text = reply_text(30)
    pieces = split_deltas(text)
    with start(settings, provider, flush_interval_ms=interval_ms) as live:
        live.provider.script(text)
        async with live.tab(live.session()) as tab:
            ack = await live.ask(tab, "Coalesce")
            reply = await tab.follow(ack["reply_id"])
        assert reply.text == text
        await live.log.finished(ack["reply_id"])
        assert_log_matches(live.log, ack["reply_id"], text)
        written = live.log.delta_events(ack["reply_id"])
        if interval_ms == 0:
            # No window: a delta is written as soon as the one before it has committed, and
            # what arrived meanwhile goes with it; the first goes alone.
            assert written[0] == (0, pieces[0])
            assert len(written) >= 2
            ends = set(itertools.accumulate(len(p) for p in pieces))
            assert {offset + len(t) for offset, t in written} <= ends
        else:  # one window longer than the reply: written once, at the end
            assert written == [(0, text)]


# -- the coalescing window --------------------------------------------------------------------


class FakeChat:
    """What a socket asks of the chat service at a reply's end: the saved message."""

    def __init__(self, run: Run) -> None:
        self.run = run

    async def outcome(self, message_id: str, run: Run | None = None) -> MessageView:
        return await self.message(message_id)

    async def message(self, message_id: str) -> MessageView:
        return MessageView(
            message_id, self.run.conversation_id, "assistant", self.run.text, "completed", None,
            self.run.reply_to, (), None, None, None, 2, "2030-01-01T00:00:00Z", None,
        )


def socket_for(settings: Settings, run: Run, coalesce_ms: int) -> stream_module.Connection:
    """A socket's sending side, without a network: its frames stay in its outbox."""
    state = SimpleNamespace(
        chat=FakeChat(run), settings=settings.model_copy(update={"ws_coalesce_ms": coalesce_ms})
    )
    websocket: Any = SimpleNamespace(app=SimpleNamespace(state=state))
    return stream_module.Connection(websocket, VisitorAccess("w", "v", run.conversation_id))


def produce(run: Run, piece: str) -> None:
    """What the reply loop does with each piece from the provider."""
    offset = len(run.text)
    run.text += piece
    run._emit(offset, piece)


async def settled(conn: stream_module.Connection, frames: int) -> list[dict[str, Any]]:
    """Let the loop run until the outbox holds ``frames`` frames (bounded)."""
    deadline = time.monotonic() + WAIT
    while len(conn.outbox.frames) < frames:
        assert time.monotonic() < deadline, list(conn.outbox.frames)
        await asyncio.sleep(0.001)
    return list(conn.outbox.frames)


@pytest.mark.parametrize("coalesce_ms", [0, 200])
async def test_pieces_within_the_window_leave_as_one_frame_and_done_comes_last(
    settings: Settings, coalesce_ms: int
) -> None:
    run = Run("c", "reply", "question")
    conn = socket_for(settings, run, coalesce_ms)
    produce(run, "Hello")
    conn.follow(run)
    if coalesce_ms == 0:  # no window: each piece goes out as it comes
        await settled(conn, 1)
    for piece in (" there", ", visitor"):
        for _ in range(5):
            await asyncio.sleep(0)
        produce(run, piece)
        if coalesce_ms == 0:
            await settled(conn, len(conn.outbox.frames) + 1)
    run._finish()
    frames = await settled(conn, 4 if coalesce_ms == 0 else 3)  # the deltas, then done
    deltas = [(f["offset"], f["text"]) for f in frames if f["type"] == "delta"]
    assert contiguous(deltas) == "Hello there, visitor"
    if coalesce_ms == 0:
        assert deltas == [(0, "Hello"), (5, " there"), (11, ", visitor")]
    else:  # the snapshot at follow time, then one frame for what came within the window
        assert deltas == [(0, "Hello"), (5, " there, visitor")]
    assert frames[-1] == {"type": "done", "message_id": "reply", "status": "completed",
                          "usage": None, "length": len("Hello there, visitor"),
                          "citations": []}
    assert "reply" not in conn.followers


@pytest.mark.parametrize("coalesce_ms", [0, 1000])
async def test_tabs_get_the_whole_reply_with_or_without_a_window(
    settings: Settings, provider: tuple[OpenAITestServer, str], coalesce_ms: int
) -> None:
    text = reply_text(40)
    with start(settings, provider, ws_coalesce_ms=coalesce_ms) as live:
        live.provider.script(text)
        session = live.session()
        async with live.tab(session) as first, live.tab(session) as second:
            ack = await live.ask(first, "Window")
            replies = [await first.follow(ack["reply_id"]),
                       await second.follow(ack["reply_id"])]
        for reply in replies:  # Reply.add refuses a gap, a repeat or a delta after done
            assert reply.text == text
            assert reply.done is not None and reply.done["length"] == len(text)
        await live.log.finished(ack["reply_id"])
        assert_log_matches(live.log, ack["reply_id"], text)


async def test_a_busy_log_does_not_hold_back_the_visitor(live: Live) -> None:
    """Another process holds the database's write lock mid-reply: the socket still gets every
    token as it comes, and the log catches up when the lock is let go."""
    text = reply_text(60)
    live.provider.script(text)
    async with live.tab(live.session()) as tab:
        ack = await live.ask(tab, "Busy log")
        first = await tab.follow(ack["reply_id"], stop_after=1)
        other = sqlite3.connect(live.settings.database_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # below the writer's busy timeout of 5 s
            held_at = len(first.text)
            reply = await tab.follow(ack["reply_id"], stop_after=len(text))
            assert reply.text == text  # all of it while nothing could be written
            assert reply.done is None  # the end event waits for the log
            assert len(reply.deltas) > 2 and held_at < len(text)
        finally:
            other.execute("ROLLBACK")
            other.close()
        reply = await tab.follow(ack["reply_id"])
    assert reply.done is not None and reply.done["status"] == "completed"
    await live.log.finished(ack["reply_id"])
    assert_log_matches(live.log, ack["reply_id"], text)


async def test_two_tabs_both_see_the_whole_reply_and_a_late_tab_catches_up(live: Live) -> None:
    text = reply_text(60)
    # A pause after some deltas, so that a third tab surely joins while the reply streams.
    live.provider.script(text, [Stall(seconds=1.0, after_deltas=10)])
    session = live.session()
    async with live.tab(session) as one, live.tab(session) as two:
        ack = await live.ask(one, "From tab one")
        started = await two.next_kind("started")
        assert started["reply_id"] == ack["reply_id"]
        assert started["message"]["text"] == "From tab one"
        await two.follow(ack["reply_id"], stop_after=5)
        async with live.tab(session) as late:
            late_started = await late.next_kind("started")
            assert late_started["reply_id"] == ack["reply_id"]
            # It says nothing: after the grace it gets the reply from the start.
            seen_late = await late.follow(ack["reply_id"])
        seen_one = await one.follow(ack["reply_id"])
        seen_two = await two.follow(ack["reply_id"])
    assert seen_one.text == seen_two.text == seen_late.text == text
    for reply in (seen_one, seen_two, seen_late):
        assert reply.done is not None and reply.done["status"] == "completed"
        assert reply.done["length"] == len(text)
    assert not [f for f in two.seen if f["type"] == "ack"], "only the sender gets the ack"
    await live.log.finished(ack["reply_id"])
    assert_log_matches(live.log, ack["reply_id"], text)


async def test_resume_mid_stream_gets_exactly_what_was_missed(live: Live) -> None:
    text = reply_text(60)
    live.provider.script(text, [Stall(seconds=2.0, after_deltas=12)])
    session = live.session()
    async with live.tab(session) as tab:
        ack = await live.ask(tab, "Resume me")
        before = await tab.follow(ack["reply_id"], stop_after=20)
    offset = len(before.text)
    assert 20 <= offset < len(text)
    async with live.tab(session, ready=False) as again:
        # A reconnecting client's first frame is its resume.
        await again.send({"type": "resume", "message_id": ack["reply_id"], "offset": offset})
        assert (await again.recv())["type"] == "ready"
        started = await again.recv()
        assert started["type"] == "started" and started["reply_id"] == ack["reply_id"]
        after = await again.follow(ack["reply_id"], start=offset)
    assert before.text + after.text == text  # no gap, no repeat
    assert after.done is not None and after.done["status"] == "completed"
    assert next(f["offset"] for f in again.seen if f["type"] == "delta") == offset
    await live.log.finished(ack["reply_id"])
    assert_log_matches(live.log, ack["reply_id"], text)


@pytest.mark.parametrize("cut", [0, 17, None])
async def test_resume_after_the_reply_is_done(live: Live, cut: int | None) -> None:
    text = reply_text(20)
    live.provider.script(text)
    session = live.session()
    async with live.tab(session) as tab:
        ack = await live.ask(tab, "Done already")
        whole = await tab.follow(ack["reply_id"])
    assert whole.text == text
    offset = len(text) if cut is None else cut
    async with live.tab(session, ready=False) as again:
        await again.send({"type": "resume", "message_id": ack["reply_id"], "offset": offset})
        assert (await again.recv())["type"] == "ready"
        rest = await again.follow(ack["reply_id"], start=offset)
        assert not [f for f in again.seen if f["type"] == "started"]
    assert text[:offset] + rest.text == text
    assert rest.done is not None and rest.done["status"] == "completed"
    assert rest.done["length"] == len(text)
    if cut is None:
        assert rest.deltas == [], "nothing was missed"


async def test_resume_of_a_reply_elsewhere_is_not_found(live: Live) -> None:
    live.provider.script("Mine only")
    mine, other = live.session(), live.session()
    async with live.tab(mine) as tab:
        ack = await live.ask(tab, "Private")
        await tab.follow(ack["reply_id"])
    async with live.tab(other) as stranger:
        for message_id in (ack["reply_id"], ack["message_id"], "no-such-message"):
            await stranger.send({"type": "resume", "message_id": message_id, "offset": 0})
            error = await stranger.next_kind("error", "delta", "done")
            assert error["type"] == "error" and error["code"] == "not_found", error
        assert not [f for f in stranger.seen if f["type"] in ("delta", "done")]


async def test_a_cut_socket_does_not_stop_the_reply(live: Live) -> None:
    text = reply_text(60)
    live.provider.script(text, [Stall(seconds=0.5, after_deltas=8)])
    session = live.session()
    async with live.tab(session) as tab:
        ack = await live.ask(tab, "Then I vanish")
        await tab.follow(ack["reply_id"], stop_after=5)
        tab.ws.transport.abort()  # no close frame: the line just drops
    row = await live.log.finished(ack["reply_id"])
    assert row["status"] == "completed"
    assert_log_matches(live.log, ack["reply_id"], text)
    # And the visitor, back later, gets it whole.
    async with live.tab(session, ready=False) as again:
        await again.send({"type": "resume", "message_id": ack["reply_id"], "offset": 0})
        assert (await again.follow(ack["reply_id"])).text == text


def _tiny_receive_buffer(url: str) -> socket.socket:
    """A connected socket that holds little unread data, so a client that stops reading
    pushes back on the server quickly."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(WAIT)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return sock


async def test_a_slow_socket_is_closed_and_can_resume(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_module, "OUTBOX_FRAMES", 8)
    monkeypatch.setattr(stream_send, "RUN_QUEUE", 8)
    # Big deltas (leading spaces stay with their word), quickly: a few megabytes in all.
    text = "".join(f"{' ' * 4000}w{i}" for i in range(400))
    live.provider.script(text, token_delay=0)
    session = live.session()
    async with live.tab(session, max_queue=1, sock=_tiny_receive_buffer(live.url)) as slow:
        ack = await live.ask(slow, "Flood me")
        # Stop reading until the reply is over: the server cannot wait for this socket.
        row = await live.log.finished(ack["reply_id"])
        assert row["status"] == "completed"
        assert_log_matches(live.log, ack["reply_id"], text)
        got: list[tuple[int, str]] = []
        code, reason = None, None
        with contextlib.suppress(ConnectionClosed):
            while True:
                frame = await slow.recv()
                assert frame["type"] != "done", "the slow socket was not dropped"
                if frame["type"] == "delta":
                    got.append((frame["offset"], frame["text"]))
        if slow.ws.protocol.close_rcvd is not None:
            code, reason = slow.ws.protocol.close_rcvd.code, slow.ws.protocol.close_rcvd.reason
    assert code == 4008, (code, reason)
    received = contiguous(got)  # what it got has no gap
    assert len(received) < len(text)
    monkeypatch.undo()  # catching up sends many frames at once: give it the usual queues
    async with live.tab(session, ready=False) as again:
        await again.send({"type": "resume", "message_id": ack["reply_id"],
                          "offset": len(received)})
        rest = await again.follow(ack["reply_id"], start=len(received))
    assert received + rest.text == text
    assert rest.done is not None and rest.done["status"] == "completed"


# -- who may connect ---------------------------------------------------------------------------


async def _refused(live: Live, url: str, origin: str | None) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, origin=Origin(origin) if origin else None, open_timeout=WAIT):
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def test_the_handshake_is_refused_without_a_valid_token_and_origin(live: Live) -> None:
    session = live.session()
    other_widget = live.widget()
    foreign = live.session(other_widget)
    cases: list[tuple[str, str | None, int, str]] = [
        (live.ws_url("not-a-token"), ORIGIN, 401, "invalid_token"),
        (live.ws_url(session.token[:-4] + "AAAA"), ORIGIN, 401, "invalid_token"),
        (live.ws_url(foreign.token), ORIGIN, 401, "invalid_token"),  # another widget's
        (live.ws_url(session.token), "https://evil.example.com", 403, "origin_not_allowed"),
        (live.ws_url(session.token), None, 403, "origin_not_allowed"),
        (live.ws_url(None), "https://evil.example.com", 403, "origin_not_allowed"),
        (live.ws_url(session.token, widget_id="no-such-widget"), ORIGIN, 404,
         "widget_not_found"),
    ]
    for url, origin, status, code in cases:
        got_status, body = await _refused(live, url, origin)
        assert (got_status, body.get("code")) == (status, code), (url, origin, body)
    # The same token works for its own widget, and the other widget's for that one.
    async with live.tab(session):
        pass
    async with connect(live.ws_url(foreign.token, other_widget), origin=Origin(ORIGIN),
                       open_timeout=WAIT) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["type"] == "ready"


async def test_a_disabled_widget_refuses_the_handshake(live: Live) -> None:
    session = live.session()
    got = live.http.get(f"/api/v1/widgets/{live.widget_id}", headers=live.headers)
    body = {k: got.json()[k] for k in ("name", "assistant_id", "allowed_origins", "settings",
                                        "limits", "budget", "require_identity",
                                        "retention_days", "office_hours")}
    updated = live.http.put(
        f"/api/v1/widgets/{live.widget_id}", json={**body, "enabled": False},
        headers={**live.headers, "If-Match": got.headers["ETag"]},
    )
    assert updated.status_code == 200, updated.text
    status, problem = await _refused(live, live.ws_url(session.token), ORIGIN)
    assert (status, problem["code"]) == (404, "widget_not_found")


async def test_the_token_may_come_in_the_first_frame(live: Live) -> None:
    live.provider.script("Authenticated by frame")
    session = live.session()
    async with live.tab(None, ready=False) as tab:
        await tab.send({"type": "auth", "token": session.token})
        ready = await tab.recv()
        assert ready == {"type": "ready", "conversation_id": session.conversation_id,
                         "state": "bot", "agent": None}
        ack = await live.ask(tab, "Hi")
        assert (await tab.follow(ack["reply_id"])).text == "Authenticated by frame"


async def test_a_token_in_the_url_still_works_and_is_never_logged(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    """Widgets built before the auth frame put the token in the URL, which proxies log: the
    server still serves them, says so in its log, and writes the token in no line, its own or
    uvicorn's."""
    session = live.session()
    forged = session.token[:-6] + "AAAAAA"
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    with capture_logs() as lines:
        async with live.tab(session):  # the token in the URL: accepted
            pass
        status, _ = await _refused(live, live.ws_url(forged), ORIGIN)
        assert status == 401
        async with live.tab(None, ready=False) as tab:  # the widget's way: the first frame
            await tab.send({"type": "auth", "token": session.token})
            assert (await tab.recv())["type"] == "ready"
    said = [line for line in lines if line["event"] == "stream.token_in_url"]
    assert [line["widget_id"] for line in said] == [live.widget_id] * 2
    uvicorn_lines = [record.getMessage() for record in caplog.records
                     if record.name == "uvicorn.error" and "WebSocket" in record.getMessage()]
    assert any("?token=[redacted]" in line and "[accepted]" in line for line in uvicorn_lines)
    assert any("?token=[redacted]" in line and "401" in line for line in uvicorn_lines)
    everything = repr(lines) + caplog.text + "".join(uvicorn_lines)
    for secret in (session.token, forged, session.token.split(".")[2]):
        assert secret not in everything


BAD_FIRST_FRAMES: list[tuple[str, Any]] = [
    ("bad-token", {"type": "auth", "token": "forged"}),
    ("no-token", {"type": "auth"}),
    ("another-widgets-token", "other-widget"),
    ("not-json", "not json {"),
    ("json-array", "[1, 2]"),
    ("binary", b"\x00binary"),
]


async def test_a_bad_first_frame_closes_4401(live: Live) -> None:
    other = live.session(live.widget()).token
    for name, first in BAD_FIRST_FRAMES:
        async with live.tab(None, ready=False) as tab:
            await tab.send({"type": "auth", "token": other} if first == "other-widget" else first)
            code, reason = await tab.closed()
        assert code == 4401 and reason and "auth" in reason, (name, code, reason)
        assert tab.seen == [], f"{name}: nothing is said before the visitor is known"


# -- frames ------------------------------------------------------------------------------------


MALFORMED: list[tuple[str, Any, str]] = [
    ("not-json", "not json {", "invalid_frame"),
    ("json-array", "[1, 2, 3]", "invalid_frame"),
    ("json-string", '"a string"', "invalid_frame"),
    ("binary", b"\x00\x01binary", "invalid_frame"),
    ("unknown-type", {"type": "dance"}, "invalid_frame"),
    ("no-type", {"no": "type"}, "invalid_frame"),
    # A message frame is decoded and checked as the HTTP body is: the same errors.
    ("message-without-text", {"type": "message"}, "validation_error"),
    ("text-not-string", {"type": "message", "text": 42}, "validation_error"),
    ("file-ids-not-a-list", {"type": "message", "text": "hi", "file_ids": "f1"},
     "validation_error"),
    ("empty-client-id", {"type": "message", "text": "hi", "client_message_id": ""},
     "validation_error"),
    ("long-client-id", {"type": "message", "text": "hi", "client_message_id": "x" * 101},
     "validation_error"),
    ("unknown-field", {"type": "message", "text": "hi", "colour": "red"}, "validation_error"),
    ("too-many-files", {"type": "message", "text": "hi", "file_ids": ["f"] * 11},
     "validation_error"),
    ("blank-text", {"type": "message", "text": "   "}, "validation_error"),
    ("text-too-long", {"type": "message", "text": "x" * 4001}, "message_too_long"),
    ("unknown-file", {"type": "message", "text": "hi", "file_ids": ["nope"]}, "unknown_file"),
    ("resume-without-id", {"type": "resume"}, "invalid_frame"),
    ("negative-offset", {"type": "resume", "message_id": "m", "offset": -1}, "invalid_frame"),
    ("offset-not-int", {"type": "resume", "message_id": "m", "offset": "3"}, "invalid_frame"),
]


async def test_malformed_frames_get_errors_and_the_socket_stays_usable(live: Live) -> None:
    live.provider.script("Still here")
    async with live.tab(live.session()) as tab:
        for name, frame, code in MALFORMED:
            await tab.send(frame)
            error = await tab.next_kind("error")
            assert error["code"] == code and error["text"], (name, error)
            await tab.send({"type": "ping"})
            assert (await tab.next_kind("pong")) == {"type": "pong"}, name
        ack = await live.ask(tab, "Are you still there?")
        assert (await tab.follow(ack["reply_id"])).text == "Still here"
        assert [f["type"] for f in tab.seen if f["type"] in ("ack", "started")] == [
            "ack", "started"], "only the good message started a reply, acknowledged first"
    assert len(live.provider.requests_to("responses")) == 1, "no bad frame reached the provider"


async def test_a_frame_over_the_limit_closes_1009(live: Live) -> None:
    async with live.tab(live.session()) as tab:
        await tab.send(json.dumps({"type": "message",
                                   "text": "x" * (stream_module.MAX_TEXT_FRAME + 1)}))
        code, _ = await tab.closed()
    assert code == 1009
    assert not live.provider.requests_to("responses")


async def test_an_idle_socket_is_closed_4408_but_not_while_a_reply_streams(
    settings: Settings, provider: tuple[OpenAITestServer, str]
) -> None:
    with start(settings, provider, ws_idle_seconds=0.3) as live:
        text = reply_text(10)
        # The reply takes longer than the idle limit: the socket must stay for all of it.
        live.provider.script(text, [Stall(seconds=1.0, after_deltas=3)])
        async with live.tab(live.session()) as tab:
            ack = await live.ask(tab, "Take your time")
            reply = await tab.follow(ack["reply_id"])
            assert reply.text == text and reply.done is not None
            code, reason = await tab.closed()
        assert (code, reason) == (4408, "idle")


async def test_pings_arrive(settings: Settings, provider: tuple[OpenAITestServer, str]) -> None:
    with start(settings, provider, ws_ping_seconds=0.05) as live:
        async with live.tab(live.session()) as tab:
            for _ in range(3):
                assert (await tab.next_kind("ping")) == {"type": "ping"}
            await tab.send({"type": "pong"})
            await tab.next_kind("ping")
        assert {f["type"] for f in tab.seen} == {"ready", "ping"}


async def test_a_resend_with_the_same_client_id_is_not_asked_twice(live: Live) -> None:
    text = reply_text(40)
    live.provider.script(text, [Stall(seconds=0.5, after_deltas=5)])
    session = live.session()
    async with live.tab(session) as one, live.tab(session) as two:
        ack = await live.ask(one, "Once", "same-id")
        await two.next_kind("started")
        again = await live.ask(two, "Once", "same-id")  # a resend while it streams
        assert again["duplicate"] is True
        assert (again["message_id"], again["reply_id"]) == (ack["message_id"], ack["reply_id"])
        busy = {"type": "message", "text": "Another question"}
        await one.send(busy)
        refused = await one.next_kind("error")
        assert refused["code"] == "reply_in_progress"
        assert (await one.follow(ack["reply_id"])).text == text
        assert (await two.follow(ack["reply_id"])).text == text
    async with live.tab(session) as later:  # a resend after it is done gets it whole
        late = await live.ask(later, "Once", "same-id")
        assert late["duplicate"] is True and late["reply_id"] == ack["reply_id"]
        assert (await later.follow(ack["reply_id"])).text == text
    assert len(live.provider.requests_to("responses")) == 1
    assert_log_matches(live.log, ack["reply_id"], text)


async def test_a_message_may_carry_uploaded_files(live: Live) -> None:
    session = live.session()
    uploaded = live.http.post(
        f"/api/v1/widgets/{live.widget_id}/files",
        headers={"Origin": ORIGIN, "Authorization": f"Bearer {session.token}"},
        files={"file": ("notes.txt", b"Opening hours: 9 to 5.", "text/plain")},
    )
    assert uploaded.status_code == 201, uploaded.text
    file_id = uploaded.json()["id"]
    async with live.tab(session) as tab:
        await tab.send({"type": "message", "text": "See attached", "file_ids": [file_id],
                        "client_message_id": "with-file"})
        ack = await tab.next_kind("ack")
        started = await tab.next_kind("started")
        assert started["message"]["file_ids"] == [file_id]
        reply = await tab.follow(ack["reply_id"])
    assert "Attached: notes.txt." in reply.text
    sent = live.provider.requests_to("responses")[-1].json
    parts = sent["input"][-1]["content"]
    assert [p["type"] for p in parts] == ["input_file", "input_text"]


# -- provider faults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        pytest.param(Cut(after_deltas=6), "provider_unavailable", id="cut"),
        pytest.param(ErrorEvent(after_deltas=6), "provider_error", id="error-event"),
        pytest.param(Stall(seconds=20, after_deltas=6), "provider_unavailable",
                     id="stall-past-the-read-timeout"),
    ],
)
async def test_a_provider_fault_mid_stream_keeps_the_partial_text(
    settings: Settings, provider: tuple[OpenAITestServer, str], fault: Any, code: str
) -> None:
    text = reply_text(30)
    partial = "".join(split_deltas(text)[:6])
    with start(settings, provider, provider_read_timeout=2) as live:
        live.provider.script(text, [fault])
        session = live.session()
        async with live.tab(session) as tab:
            ack = await live.ask(tab, "Fail halfway")
            reply = await tab.follow(ack["reply_id"])
            assert reply.text == partial
            assert [e["code"] for e in reply.errors] == [code]
            assert reply.errors[0]["text"]
            assert reply.done is not None and reply.done["status"] == "failed"
            assert reply.done["length"] == len(partial)
            row = await live.log.finished(ack["reply_id"])
            assert (row["status"], row["error_code"]) == ("failed", code)
            assert_log_matches(live.log, ack["reply_id"], partial, status="failed")
            # The visitor asks again and gets an answer.
            live.provider.script("Better now")
            again = await live.ask(tab, "Try again")
            assert (await tab.follow(again["reply_id"])).text == "Better now"
        # What failed is not sent back to the provider as history.
        history = live.provider.requests_to("responses")[-1].json["input"]
        assert [m["role"] for m in history] == ["user", "assistant", "user"] or [
            m["role"] for m in history] == ["user", "user"]


# -- many at once ------------------------------------------------------------------------------


@pytest.mark.long
async def test_two_hundred_visitors_stream_at_once(
    settings: Settings, provider: tuple[OpenAITestServer, str]
) -> None:
    visitors = 200
    # Retries and a long read timeout: on a loaded machine a connection to the provider may
    # time out before any text, and is asked again as in production. What is tested is that
    # every visitor gets the whole reply, not how fast.
    with start(settings, provider, provider_concurrency=visitors, provider_max_retries=4,
               provider_read_timeout=120.0) as live:
        sessions = [live.session() for _ in range(visitors)]
        expected = [f"visitor {i} asks: " + " ".join(f"w{i}x{j}" for j in range(8))
                    for i in range(visitors)]

        async def visit(session: Session, text: str) -> tuple[str, Reply]:
            async with live.tab(session) as tab:
                ack = await live.ask(tab, f"echo:{text}")
                return ack["reply_id"], await tab.follow(ack["reply_id"])

        results = await asyncio.wait_for(
            asyncio.gather(*(visit(s, t) for s, t in zip(sessions, expected, strict=True))),
            WAIT * 3,
        )
        for session, text, (reply_id, reply) in zip(sessions, expected, results, strict=True):
            assert reply.text == text
            assert reply.done is not None and reply.done["status"] == "completed"
            row = live.log.message(reply_id)
            assert row["conversation_id"] == session.conversation_id
            assert row["text"] == text
            assert contiguous(live.log.delta_events(reply_id)) == text


async def test_a_shutdown_mid_reply_closes_the_socket_and_keeps_the_text(
    settings: Settings, provider: tuple[OpenAITestServer, str]
) -> None:
    text = reply_text(30)
    pieces = split_deltas(text)
    stack = contextlib.ExitStack()
    live = stack.enter_context(start(settings, provider))
    try:
        live.provider.script(text, [Stall(seconds=WAIT, after_deltas=8)])
        session = live.session()
        async with live.tab(session) as tab:
            ack = await live.ask(tab, "Stop halfway")
            seen = await tab.follow(ack["reply_id"], stop_after=len("".join(pieces[:8])))
            # The server stops while the reply waits for the provider.
            await asyncio.to_thread(stack.close)
            code, _ = await tab.closed()
    finally:
        stack.close()
    assert code == 1012  # uvicorn's "service restart"
    assert seen.text == "".join(pieces[:8])
    row = live.log.message(ack["reply_id"])
    assert (row["status"], row["text"]) == ("interrupted", seen.text)
    events = live.log.events(ack["reply_id"])
    assert events[-1] == ("assistant.interrupted",
                          {"message_id": ack["reply_id"], "text": seen.text})


# -- a provider that keeps the visitor waiting ---------------------------------------------------


async def test_a_visitor_waiting_for_the_first_text_hears_so_then_gets_the_reply(
    settings: Settings, provider: tuple[OpenAITestServer, str]
) -> None:
    with start(settings, provider, waiting_notice_seconds=0.2) as live:
        live.provider.script("Sorry for the wait.", [Stall(seconds=1.5)])
        async with live.tab(live.session()) as tab:
            ack = await live.ask(tab, "Hello?")
            reply = await tab.follow(ack["reply_id"])
        kinds = [f["type"] for f in tab.seen if f.get("message_id") == ack["reply_id"]]
        assert kinds.index("status") < kinds.index("delta"), kinds
        [status] = [f for f in tab.seen if f["type"] == "status"]
        assert status == {"type": "status", "message_id": ack["reply_id"], "state": "waiting"}
    assert reply.text == "Sorry for the wait." and reply.done is not None
    assert reply.done["status"] == "completed"


async def test_a_reply_past_its_deadline_ends_as_failed_and_the_next_one_works(
    settings: Settings, provider: tuple[OpenAITestServer, str]
) -> None:
    with start(settings, provider, reply_deadline_seconds=1, provider_read_timeout=30) as live:
        live.provider.script("Too late.", [Stall(seconds=20)])
        async with live.tab(live.session()) as tab:
            ack = await live.ask(tab, "Hello?")
            reply = await tab.follow(ack["reply_id"])
            assert reply.done is not None and reply.done["status"] == "failed"
            assert [e["code"] for e in reply.errors] == ["provider_unavailable"]
            live.provider.script("On time.")
            again = await live.ask(tab, "And now?")
            assert (await tab.follow(again["reply_id"])).text == "On time."
        row = await live.log.finished(ack["reply_id"])
        assert row["status"] == "failed" and row["error_code"] == "provider_unavailable"


async def test_refused_attempts_are_retried_and_the_visitor_told_each_time(
    settings: Settings, provider: tuple[OpenAITestServer, str]
) -> None:
    with start(settings, provider, provider_max_retries=2) as live:
        live.provider.script(faults=[HttpError(status=429, retry_after=0.3)])
        live.provider.script(faults=[HttpError(status=500)])
        live.provider.script("Third time lucky.")
        async with live.tab(live.session()) as tab:
            ack = await live.ask(tab, "Hello?")
            reply = await tab.follow(ack["reply_id"])
        first, second = [f for f in tab.seen if f["type"] == "status"]
        assert first == {"type": "status", "message_id": ack["reply_id"], "state": "retrying",
                         "retry_in": 0.3, "attempt": 1, "code": "provider_rate_limited"}
        assert (second["state"], second["attempt"], second["code"]) == (
            "retrying", 2, "provider_unavailable")
        assert 0.375 <= second["retry_in"] <= 1.0  # backoff: 1 s, less up to a quarter
        kinds = [f["type"] for f in tab.seen if f.get("message_id") == ack["reply_id"]]
        assert kinds.index("status") < kinds.index("delta")
        assert reply.text == "Third time lucky." and reply.done is not None
        assert reply.done["status"] == "completed"
        assert len(live.provider.requests_to("responses")) == 3
        row = await live.log.finished(ack["reply_id"])
        assert (row["status"], row["text"]) == ("completed", "Third time lucky.")
        assert [t for t, _ in live.log.events(ack["reply_id"])][-1] == "assistant.completed"


@pytest.mark.parametrize(("fault", "why"), [
    (HttpError(status=429, should_retry=False), "the provider said not to"),
    (HttpError(status=429, retry_after=90), "its wait would pass the reply's deadline"),
    (HttpError(status=400, message="Bad request."), "a refusal is final"),
])
async def test_an_attempt_not_worth_repeating_fails_at_once(
    settings: Settings, provider: tuple[OpenAITestServer, str], fault: HttpError, why: str
) -> None:
    with start(settings, provider, provider_max_retries=2, reply_deadline_seconds=60) as live:
        live.provider.script(faults=[fault])
        live.provider.script("Never asked for.")
        async with live.tab(live.session()) as tab:
            ack = await live.ask(tab, "Hello?")
            reply = await tab.follow(ack["reply_id"])
        assert reply.done is not None and reply.done["status"] == "failed", why
        assert [f for f in tab.seen if f["type"] == "status"] == [], why
        assert len(live.provider.requests_to("responses")) == 1, why
        if fault.retry_after:
            assert [e.get("retry_after") for e in reply.errors] == [90], why
