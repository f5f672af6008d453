"""Chat through the HTTP API on a real uvicorn server, with the real ``openai`` SDK talking to
LOACL's OpenAI-compatible test server: answers, every provider fault as the visitor sees it and as
the log keeps it, idempotent resends, limits, many visitors at once, pagination, recovery."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from loacl.domain.conversations import (
    AssistantCompleted,
    AssistantDelta,
    AssistantStarted,
    MessagePosted,
)
from loacl.domain.events import Metadata
from loacl.domain.widgets import conversation_stream
from loacl.http.app import create_app
from loacl.openai_testserver import (
    Cut,
    ErrorEvent,
    Failed,
    Fault,
    HttpError,
    Incomplete,
    OpenAITestServer,
    Stall,
    split_deltas,
)
from loacl.providers import provider_for
from loacl.providers.base import Provider, ProviderError, ReplyRequest, ReplyResult
from loacl.services.replies import retry_delay
from loacl.settings import Settings
from loacl.store import audit
from loacl.store.eventstore import EventStore
from loacl.store.projections import default_projections
from loacl.store.replay import dump_tables, replay
from loacl.store.sqlite import connect
from tests.live import OPEN_LIMITS, serve

ORIGIN = "http://localhost:3000"
PASSWORD = "correct horse battery staple"
MODEL = "gpt-4o-mini"
REPLY = "Scripted replies arrive in many small pieces, and they join up again exactly."
PIECES = split_deltas(REPLY)
WAIT = 30.0  # bound on every wait for the server; no assertion depends on it

# -- the world: a test server for the SDK, LOACL on uvicorn, an owner, widgets, visitors ----------


def chat_settings(tmp_path: Path, root: str | None, **overrides: Any) -> Settings:
    """Settings for a LOACL whose providers talk to the test server at ``root``."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'loacl.db'}",
        "data_dir": tmp_path / "data",
        "log_format": "text",
        "argon2_time_cost": 1,
        "argon2_memory_kib": 64,
        "argon2_parallelism": 1,
        "require_verified_email": False,
        # Generous, so that a loaded machine does not fail a reply; the stall cases set less.
        "provider_read_timeout": 10.0,
        "provider_max_retries": 1,
        "demo_delay": 0,
        **OPEN_LIMITS,
    }
    if root is not None:
        values |= {"openai_api_key": "test", "openai_base_url": f"{root}/v1"}
    return Settings(**(values | overrides))


@dataclass(frozen=True)
class Visitor:
    widget_id: str
    visitor_id: str
    conversation_id: str
    headers: dict[str, str]


@dataclass
class Site:
    url: str
    http: httpx.Client
    app: Starlette
    settings: Settings
    owner: dict[str, str] = field(default_factory=dict)

    def register(self, email: str = "owner@example.com") -> dict[str, str]:
        registered = self.http.post(
            "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert registered.status_code == 202, registered.text
        return self.login(email)

    def login(self, email: str = "owner@example.com") -> dict[str, str]:
        login = self.http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        self.owner = {"Authorization": f"Bearer {login.json()['access_token']}"}
        return self.owner

    def widget(self, provider: str | None = "openai", model: str | None = MODEL,
               per_minute: int = 600, **assistant: Any) -> str:
        body: dict[str, Any] = {"name": "Helper", **assistant}
        if provider is not None:
            body["provider"] = provider
        if model is not None:
            body["model"] = model
        created = self.http.post("/api/v1/assistants", json=body, headers=self.owner)
        assert created.status_code == 201, created.text
        widget = self.http.post(
            "/api/v1/widgets",
            json={"name": "Site", "assistant_id": created.json()["id"],
                  "allowed_origins": [ORIGIN], "limits": {"messages_per_minute": per_minute}},
            headers=self.owner,
        )
        assert widget.status_code == 201, widget.text
        widget_id: str = widget.json()["id"]
        return widget_id

    def visitor(self, widget_id: str) -> Visitor:
        session = self.http.post(
            f"/api/v1/widgets/{widget_id}/sessions", json={}, headers={"Origin": ORIGIN}
        )
        assert session.status_code == 201, session.text
        body = session.json()
        return Visitor(
            widget_id, body["visitor_id"], body["conversation_id"],
            {"Origin": ORIGIN, "Authorization": f"Bearer {body['visitor_token']}"},
        )

    def post(self, visitor: Visitor, text: str, **fields: Any) -> httpx.Response:
        return self.http.post(
            f"/api/v1/widgets/{visitor.widget_id}/messages", json={"text": text, **fields},
            headers=visitor.headers,
        )

    def messages(self, visitor: Visitor, **params: Any) -> dict[str, Any]:
        response = self.http.get(
            f"/api/v1/widgets/{visitor.widget_id}/messages", params=params,
            headers=visitor.headers,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@contextmanager
def live(settings: Settings) -> Iterator[Site]:
    app = create_app(settings)
    with serve(app) as url, httpx.Client(base_url=url, timeout=WAIT) as http:
        yield Site(url, http, app, settings)


# -- the log, read as an operator would ----------------------------------------------------------


@dataclass(frozen=True)
class Row:
    seq: int
    type: str
    payload: dict[str, Any]


def log_of(settings: Settings, conversation_id: str | None = None) -> list[Row]:
    conn = sqlite3.connect(settings.database_path)
    try:
        if conversation_id is None:
            rows = conn.execute("SELECT seq, type, payload FROM events ORDER BY seq").fetchall()
        else:
            rows = conn.execute(
                "SELECT seq, type, payload FROM events WHERE stream = ? ORDER BY seq",
                (conversation_stream(conversation_id),),
            ).fetchall()
    finally:
        conn.close()
    return [Row(seq, kind, json.loads(payload)) for seq, kind, payload in rows]


def event_count(settings: Settings) -> int:
    return len(log_of(settings))


def audit_ok(settings: Settings) -> None:
    conn = connect(settings.database_path)
    try:
        result = audit.verify(conn)
    finally:
        conn.close()
    assert result.ok, result


def replay_matches(settings: Settings) -> None:
    """``loacl replay`` on the stopped server's database rebuilds exactly what it had built."""
    tables = default_projections().tables
    conn = connect(settings.database_path)
    try:
        live_tables = dump_tables(conn, tables)
        assert live_tables["messages"], "nothing to compare"
        replay(conn, default_projections())
        assert dump_tables(conn, tables) == live_tables
    finally:
        conn.close()


def turn_log(settings: Settings, conversation_id: str, message_id: str) -> list[Row]:
    """The events of one turn: the message, its reply's start, deltas and end."""
    rows = log_of(settings, conversation_id)
    start = next(i for i, r in enumerate(rows) if r.payload.get("message_id") == message_id)
    reply_id = rows[start + 1].payload["message_id"]
    return [rows[start]] + [r for r in rows[start + 1:] if r.payload.get("message_id") == reply_id]


def assert_streamed_then(rows: list[Row], end: str, text: str) -> Row:
    """message.posted, assistant.started, deltas that join to ``text``, one ``end`` event."""
    kinds = [r.type for r in rows]
    assert kinds[:2] == ["message.posted", "assistant.started"], kinds
    assert set(kinds[2:-1]) <= {"assistant.delta"}, kinds
    assert kinds[-1] == end, kinds
    deltas = rows[2:-1]
    offset = 0
    for delta in deltas:
        assert delta.payload["offset"] == offset
        offset += len(delta.payload["text"])
    assert "".join(d.payload["text"] for d in deltas) == text
    assert rows[-1].payload["text"] == text
    return rows[-1]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- a gate in front of the real provider, so a test can hold replies mid-flight ---------------


class Gate:
    """Replies wait here before streaming until the test opens the gate."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self._lock = threading.Lock()
        self.waiting = 0

    def install(self, app: Starlette) -> None:
        chat = app.state.chat
        real = chat.providers

        def gated(settings: Settings, name: str) -> Provider:
            return GatedProvider(real(settings, name), self)

        chat.providers = gated

    def arrived(self) -> None:
        with self._lock:
            self.waiting += 1


class GatedProvider:
    def __init__(self, inner: Provider, gate: Gate) -> None:
        self.inner = inner
        self.gate = gate
        self.name = inner.name

    async def aclose(self) -> None:
        # The app closes its providers at shutdown; this one's connections are the inner one's.
        await self.inner.aclose()

    async def stream(self, request: ReplyRequest, result: ReplyResult) -> AsyncIterator[str]:
        self.gate.arrived()
        deadline = time.monotonic() + WAIT
        while not self.gate.opened.is_set():
            if time.monotonic() > deadline:
                raise ProviderError("provider_unavailable", "the test's gate never opened")
            await asyncio.sleep(0.01)
        async for delta in self.inner.stream(request, result):
            yield delta


# -- a site shared by the fault cases (one server start instead of one per case) --------------


@dataclass
class Shared:
    site: Site
    responses: str
    chat_completions: str


@pytest.fixture(scope="module")
def shared(
    openai_server: tuple[OpenAITestServer, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shared]:
    settings = chat_settings(
        tmp_path_factory.mktemp("shared"), openai_server[1], provider_read_timeout=2.0
    )
    with live(settings) as site:
        site.register()
        yield Shared(site, site.widget("openai"), site.widget("chat_completions"))
    audit_ok(settings)
    replay_matches(settings)


# -- answers -------------------------------------------------------------------------------------


def test_without_a_key_the_demo_answers_and_says_how_to_set_one(tmp_path: Path) -> None:
    settings = chat_settings(tmp_path, None, flush_interval_ms=0)
    assert settings.openai_api_key is None
    with live(settings) as site:
        site.register()
        widget_id = site.widget(provider=None, model=None)  # the default without a key
        visitor = site.visitor(widget_id)
        posted = site.post(visitor, "What are your opening hours?")
        assert posted.status_code == 201, posted.text
        reply = posted.json()["reply"]
        assert reply["status"] == "completed"
        assert reply["text"].startswith("**Demo answer.**")
        assert "OPENAI_API_KEY" in reply["text"]
        assert "What are your opening hours?" in reply["text"]
        rows = turn_log(settings, visitor.conversation_id, posted.json()["message"]["id"])
        assert_streamed_then(rows, "assistant.completed", reply["text"])
        # Streamed: deltas before the end, coalesced while the previous one commits.
        assert [r.type for r in rows[2:-1]] == ["assistant.delta"] * (len(rows) - 3)
        assert len(rows) > 3
        assert rows[1].payload["provider"] == "demo"
        assert rows[-1].payload["provider_request_id"] == "demo"
    audit_ok(settings)


def test_responses_answer_with_instructions_history_and_file_search(
    server: OpenAITestServer, shared: Shared
) -> None:
    site = shared.site
    widget_id = site.widget(
        "openai", instructions="Answer politely.", file_search={"vector_store_ids": ["vs_docs"]}
    )
    visitor = site.visitor(widget_id)
    server.script(REPLY)
    first = site.post(visitor, "Hello there")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["message"]["text"] == "Hello there"
    assert body["message"]["role"] == "user"
    assert body["reply"]["text"] == REPLY
    assert body["reply"]["status"] == "completed"
    assert body["reply"]["reply_to"] == body["message"]["id"]
    assert body["reply"]["usage"]["output_tokens"] == len(PIECES)
    second = site.post(visitor, "And again")
    assert second.status_code == 201, second.text
    assert second.json()["reply"]["text"].startswith("This is the LOACL test server. You said: "
                                                     "And again.")
    sent = server.requests_to("responses")
    assert len(sent) == 2
    request = sent[1].json
    assert request["instructions"] == "Answer politely."
    assert request["store"] is False
    assert request["tools"] == [{"type": "file_search", "vector_store_ids": ["vs_docs"]}]
    assert request["input"] == [
        {"role": "user", "content": [{"type": "input_text", "text": "Hello there"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": REPLY}]},
        {"role": "user", "content": [{"type": "input_text", "text": "And again"}]},
    ]
    rows = turn_log(site.settings, visitor.conversation_id, body["message"]["id"])
    end = assert_streamed_then(rows, "assistant.completed", REPLY)
    assert end.payload["usage"]["output_tokens"] == len(PIECES)
    assert end.payload["provider_request_id"].startswith("resp_")
    assert rows[1].payload["provider"] == "openai" and rows[1].payload["model"] == MODEL
    listed = site.messages(visitor)["data"]
    assert [(m["role"], m["status"]) for m in listed] == [
        ("user", "completed"), ("assistant", "completed"),
    ] * 2


def test_chat_completions_answer(server: OpenAITestServer, root: str, tmp_path: Path) -> None:
    # Only chat_completions_base_url: the openai provider is not configured at all.
    settings = chat_settings(tmp_path, None, chat_completions_base_url=f"{root}/v1",
                             chat_completions_api_key="local-key")
    with live(settings) as site:
        site.register()
        widget_id = site.widget("chat_completions", instructions="Be brief.")
        visitor = site.visitor(widget_id)
        server.script(REPLY)
        posted = site.post(visitor, "Hi")
        assert posted.status_code == 201, posted.text
        assert posted.json()["reply"]["text"] == REPLY
    sent = server.requests_to("chat")
    assert len(sent) == 1 and not server.requests_to("responses")
    assert sent[0].json["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
    ]
    assert sent[0].headers["authorization"] == "Bearer local-key"
    rows = turn_log(settings, visitor.conversation_id, posted.json()["message"]["id"])
    end = assert_streamed_then(rows, "assistant.completed", REPLY)
    assert end.payload["provider_request_id"].startswith("chatcmpl-")
    audit_ok(settings)


def test_history_sent_is_trimmed_to_the_context_budget(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    settings = chat_settings(tmp_path, root, context_chars=1000)
    with live(settings) as site:
        site.register()
        visitor = site.visitor(site.widget("openai"))
        for n in range(4):
            server.script("ok")
            posted = site.post(visitor, f"question {n} " + "q" * 389)
            assert posted.status_code == 201, posted.text
    sent = server.requests_to("responses")
    assert len(sent) == 4
    last = sent[-1].json["input"]
    # 400 + 2 + 400 characters fit 1000; the answer before them would leave the history opening
    # with the assistant, so the oldest question and answer are dropped together.
    assert [(i["role"], i["content"][0]["text"][:10]) for i in last] == [
        ("user", "question 2"), ("assistant", "ok"), ("user", "question 3"),
    ]
    assert len(sent[1].json["input"]) == 3  # while it fits, all of it goes


# -- faults, as the visitor sees them and as the log keeps them ---------------------------------

HTTP_FAULTS: list[tuple[str, str, list[Fault], int, str, int]] = [
    # id, provider, faults (one per attempt), status, code, deltas kept
    ("429-exhausted", "openai", [HttpError(status=429, retry_after=0.01)] * 2, 429,
     "provider_rate_limited", 0),
    ("500-exhausted", "openai", [HttpError(status=500, retry_after=0.01)] * 2, 503,
     "provider_unavailable", 0),
    ("stall", "openai", [Stall(seconds=30, after_deltas=3)], 503, "provider_unavailable", 3),
    ("cut", "openai", [Cut(after_deltas=3)], 503, "provider_unavailable", 3),
    ("error-event", "openai", [ErrorEvent(after_deltas=3)], 502, "provider_error", 3),
    ("error-event-nested", "openai", [ErrorEvent(after_deltas=3, nested=True)], 502,
     "provider_error", 3),
    ("failed", "openai", [Failed(after_deltas=3)], 502, "provider_error", 3),
    ("incomplete-filtered", "openai", [Incomplete(after_deltas=3, reason="content_filter")],
     502, "provider_error", 3),
    ("cc-cut", "chat_completions", [Cut(after_deltas=2)], 503, "provider_unavailable", 2),
    ("cc-error", "chat_completions", [ErrorEvent(after_deltas=2)], 502, "provider_error", 2),
    ("cc-429-exhausted", "chat_completions", [HttpError(status=429, retry_after=0.01)] * 2,
     429, "provider_rate_limited", 0),
]


@pytest.mark.parametrize(
    ("provider", "faults", "status", "code", "kept"),
    [case[1:] for case in HTTP_FAULTS], ids=[case[0] for case in HTTP_FAULTS],
)
def test_provider_faults_reach_the_visitor_and_the_log(
    server: OpenAITestServer, shared: Shared, provider: str, faults: list[Fault], status: int,
    code: str, kept: int,
) -> None:
    site = shared.site
    widget_id = shared.responses if provider == "openai" else shared.chat_completions
    visitor = site.visitor(widget_id)
    server.script(REPLY, faults)
    partial = "".join(PIECES[:kept])

    failed = site.post(visitor, "Tell me something")
    assert failed.status_code == status, failed.text
    assert failed.headers["content-type"] == "application/problem+json"
    problem = failed.json()
    assert problem["code"] == code
    assert problem["detail"]
    assert problem["message"]["text"] == "Tell me something"
    assert problem["reply"]["status"] == "failed"
    assert problem["reply"]["error_code"] == code
    assert problem["reply"]["text"] == partial
    if code == "provider_rate_limited":
        assert failed.headers["Retry-After"] == "1"
    assert not server.pending, "every scripted attempt was used"

    rows = turn_log(site.settings, visitor.conversation_id, problem["message"]["id"])
    end = assert_streamed_then(rows, "assistant.failed", partial)
    assert end.payload["code"] == code
    assert end.payload["error"] == problem["detail"]
    listed = site.messages(visitor)["data"]
    assert [(m["role"], m["status"], m["text"]) for m in listed] == [
        ("user", "completed", "Tell me something"), ("assistant", "failed", partial),
    ]
    audit_ok(site.settings)

    # Nothing is stuck: the visitor asks again and gets an answer.
    again = site.post(visitor, "echo:all good")
    assert again.status_code == 201, again.text
    assert again.json()["reply"]["text"] == "all good"


@pytest.mark.parametrize(("provider", "kept"), [("openai", 3), ("chat_completions", 2)])
def test_an_answer_cut_at_the_output_limit_is_kept_as_completed(
    server: OpenAITestServer, shared: Shared, provider: str, kept: int
) -> None:
    widget_id = shared.responses if provider == "openai" else shared.chat_completions
    visitor = shared.site.visitor(widget_id)
    server.script(REPLY, [Incomplete(after_deltas=kept)])
    partial = "".join(PIECES[:kept])
    posted = shared.site.post(visitor, "Tell me everything")
    assert posted.status_code == 201, posted.text
    assert (posted.json()["reply"]["status"], posted.json()["reply"]["text"]) == (
        "completed", partial)
    rows = turn_log(shared.site.settings, visitor.conversation_id, posted.json()["message"]["id"])
    assert_streamed_then(rows, "assistant.completed", partial)


def test_a_429_with_retry_after_is_retried_and_answers(
    server: OpenAITestServer, shared: Shared
) -> None:
    visitor = shared.site.visitor(shared.responses)
    server.script(faults=[HttpError(status=429, retry_after=0.01)])
    server.script(REPLY)
    posted = shared.site.post(visitor, "Hi")
    assert posted.status_code == 201, posted.text
    assert posted.json()["reply"]["text"] == REPLY
    assert len(server.requests_to("responses")) == 2


def test_a_pdf_for_chat_completions_is_refused_clearly(shared: Shared) -> None:
    site = shared.site
    visitor = site.visitor(shared.chat_completions)
    uploaded = site.http.post(
        f"/api/v1/widgets/{visitor.widget_id}/files", headers=visitor.headers,
        files={"file": ("menu.pdf", b"%PDF-1.7\n%%EOF\n", "application/pdf")},
    )
    assert uploaded.status_code == 201, uploaded.text
    before = event_count(site.settings)
    refused = site.post(visitor, "Read this", file_ids=[uploaded.json()["id"]])
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "unsupported_file_for_provider"
    assert "menu.pdf" in refused.json()["detail"]
    assert event_count(site.settings) == before  # refused before anything was written
    # The conversation is not stuck with a file its server cannot take.
    assert site.post(visitor, "echo:fine").json()["reply"]["text"] == "fine"


# -- idempotency, limits -------------------------------------------------------------------------


def test_a_resend_returns_the_first_result_and_writes_nothing(
    server: OpenAITestServer, shared: Shared
) -> None:
    site = shared.site
    visitor = site.visitor(shared.responses)
    server.script(REPLY)
    first = site.post(visitor, "Once only", client_message_id="c-1")
    assert first.status_code == 201, first.text
    before = event_count(site.settings)
    for text in ("Once only", "a changed text is still the same message"):
        again = site.post(visitor, text, client_message_id="c-1")
        assert again.status_code == 201, again.text
        assert again.json() == first.json()
    assert event_count(site.settings) == before
    assert len(server.requests_to("responses")) == 1
    # Another id is another message.
    other = site.post(visitor, "echo:second", client_message_id="c-2")
    assert other.status_code == 201
    assert other.json()["message"]["id"] != first.json()["message"]["id"]
    kinds = [r.type for r in log_of(site.settings, visitor.conversation_id)]
    assert kinds.count("message.posted") == 2


def test_a_resend_of_a_failed_message_reports_the_failure_again(
    server: OpenAITestServer, shared: Shared
) -> None:
    site = shared.site
    visitor = site.visitor(shared.responses)
    server.script(REPLY, [Cut(after_deltas=1)])
    first = site.post(visitor, "Hi", client_message_id="x")
    assert first.status_code == 503
    before = event_count(site.settings)
    again = site.post(visitor, "Hi", client_message_id="x")
    assert again.status_code == 503
    assert again.json()["code"] == "provider_unavailable"
    assert again.json()["reply"] == first.json()["reply"]
    assert event_count(site.settings) == before


def test_while_a_reply_streams_a_new_message_waits_and_a_resend_gets_its_own_reply(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    settings = chat_settings(tmp_path, root)
    gate = Gate()
    gate.opened.set()
    with live(settings) as site:
        gate.install(site.app)
        site.register()
        visitor = site.visitor(site.widget("openai"))
        earlier = site.post(visitor, "echo:earlier answer", client_message_id="early")
        assert earlier.status_code == 201, earlier.text
        gate.opened.clear()
        with httpx.Client(base_url=site.url, timeout=WAIT) as other:
            result: dict[str, httpx.Response] = {}
            thread = threading.Thread(target=lambda: result.setdefault("first", other.post(
                f"/api/v1/widgets/{visitor.widget_id}/messages", json={"text": "echo:First"},
                headers=visitor.headers,
            )))
            thread.start()
            try:
                wait_until(lambda: gate.waiting == 2, "the reply to start")
                before = event_count(settings)
                second = site.post(visitor, "Second")
                assert second.status_code == 409, second.text
                assert second.json()["code"] == "reply_in_progress"
                listed = site.messages(visitor)["data"]
                assert [m["status"] for m in listed] == ["completed"] * 3 + ["streaming"]
                # A resend of the earlier message answers with the earlier reply, at once,
                # not with the one streaming now.
                resent = site.post(visitor, "echo:earlier answer", client_message_id="early")
                assert resent.status_code == 201, resent.text
                assert resent.json() == earlier.json()
                assert event_count(settings) == before
            finally:
                gate.opened.set()
                thread.join(WAIT)
        assert result["first"].status_code == 201, result["first"].text
        assert result["first"].json()["reply"]["text"] == "First"
        assert site.post(visitor, "Third").status_code == 201


def test_a_visitor_sending_too_fast_gets_429_with_retry_after(
    server: OpenAITestServer, shared: Shared
) -> None:
    site = shared.site
    widget_id = site.widget("openai", per_minute=2)
    visitor = site.visitor(widget_id)
    for n in range(2):
        assert site.post(visitor, f"echo:{n}").status_code == 201
    before = event_count(site.settings)
    refused = site.post(visitor, "echo:3")
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert event_count(site.settings) == before
    # The limit is per visitor: another one on the same widget is not held back.
    assert site.post(site.visitor(widget_id), "echo:ok").status_code == 201


def test_a_message_too_long_is_413_and_writes_nothing(shared: Shared) -> None:
    site = shared.site
    visitor = site.visitor(shared.responses)
    before = event_count(site.settings)
    limit = site.settings.max_message_chars
    refused = site.post(visitor, "x" * (limit + 1))
    assert refused.status_code == 413, refused.text
    assert refused.json()["code"] == "message_too_long"
    assert str(limit) in refused.json()["detail"]
    blank = site.post(visitor, "   ")
    assert blank.status_code == 422 and blank.json()["code"] == "validation_error"
    assert event_count(site.settings) == before
    exact = site.post(visitor, "echo:" + "y" * (limit - 5))
    assert exact.status_code == 201, exact.text


def test_a_guessed_field_name_is_refused_naming_the_one_meant(shared: Shared) -> None:
    site = shared.site
    visitor = site.visitor(shared.responses)
    before = event_count(site.settings)
    refused = site.http.post(f"/api/v1/widgets/{visitor.widget_id}/messages",
                             json={"content": "hello"}, headers=visitor.headers)
    assert refused.status_code == 422
    problem = refused.json()
    assert problem["code"] == "validation_error" and problem["status"] == 422
    assert {"type", "title", "detail", "request_id"} <= problem.keys()
    by_field = {e["field"]: e for e in problem["errors"]}
    assert by_field["text"]["reason"] == "missing"
    assert by_field["content"]["did_you_mean"] == "text"
    assert by_field["content"]["accepted"] == ["text", "file_ids", "client_message_id"]
    assert "did you mean `text`?" in problem["detail"]
    both = site.http.get(f"/api/v1/widgets/{visitor.widget_id}/messages",
                         params={"before": 1, "after": 1}, headers=visitor.headers)
    assert both.status_code == 422
    assert [e["field"] for e in both.json()["errors"]] == ["before", "after"]
    assert event_count(site.settings) == before


async def test_the_per_widget_concurrency_limit_holds_under_a_burst(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    settings = chat_settings(tmp_path, root, provider_concurrency=2)
    gate = Gate()
    with live(settings) as site:
        gate.install(site.app)
        site.register()
        widget_id = site.widget("openai")
        visitors = [site.visitor(widget_id) for _ in range(5)]
        async with httpx.AsyncClient(base_url=site.url, timeout=WAIT) as client:
            tasks = [
                asyncio.create_task(client.post(
                    f"/api/v1/widgets/{widget_id}/messages", json={"text": f"echo:{n}"},
                    headers=v.headers,
                ))
                for n, v in enumerate(visitors)
            ]
            try:
                deadline = time.monotonic() + WAIT
                while gate.waiting + sum(t.done() for t in tasks) < 5:
                    assert time.monotonic() < deadline, "the burst did not settle"
                    await asyncio.sleep(0.01)
                refused = [t.result() for t in tasks if t.done()]
                assert gate.waiting == 2, f"{gate.waiting} replies streaming at once"
                assert len(refused) == 3
                for response in refused:
                    assert response.status_code == 429, response.text
                    assert response.json()["code"] == "rate_limited"
                    assert int(response.headers["Retry-After"]) >= 1
            finally:
                gate.opened.set()
                done = await asyncio.gather(*tasks)
        assert sorted(r.status_code for r in done) == [201, 201, 429, 429, 429]
        # The slots are free again once the replies end.
        for visitor in visitors:
            if not site.messages(visitor)["data"]:
                assert site.post(visitor, "echo:later").status_code == 201
    audit_ok(settings)


# -- many visitors at once -----------------------------------------------------------------------


async def test_fifty_visitors_at_once_each_get_their_own_complete_answer(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    settings = chat_settings(tmp_path, root)  # the default serves fifty at once
    with live(settings) as site:
        site.register()
        widget_id = site.widget("openai")

        async def visit(client: httpx.AsyncClient, n: int) -> tuple[dict[str, Any], Any]:
            session = await client.post(
                f"/api/v1/widgets/{widget_id}/sessions", json={}, headers={"Origin": ORIGIN}
            )
            assert session.status_code == 201, session.text
            token = session.json()["visitor_token"]
            headers = {"Origin": ORIGIN, "Authorization": f"Bearer {token}"}
            posted = await client.post(
                f"/api/v1/widgets/{widget_id}/messages",
                json={"text": f"I am visitor {n}"}, headers=headers,
            )
            assert posted.status_code == 201, posted.text
            listed = await client.get(f"/api/v1/widgets/{widget_id}/messages", headers=headers)
            assert listed.status_code == 200
            return session.json(), (posted.json(), listed.json())

        # Idle connections are dropped well before uvicorn's keep-alive ends them (5 s), so that
        # none is reused just as the server closes it.
        limits = httpx.Limits(max_connections=50, keepalive_expiry=2.0)
        async with httpx.AsyncClient(base_url=site.url, timeout=WAIT, limits=limits) as client:
            results = await asyncio.gather(*(visit(client, n) for n in range(50)))
    conversations = {session["conversation_id"] for session, _ in results}
    assert len(conversations) == 50
    for n, (session, (posted, listed)) in enumerate(results):
        expected = f"This is the LOACL test server. You said: I am visitor {n}. "
        reply = posted["reply"]
        assert reply["status"] == "completed"
        assert reply["text"].startswith(expected)
        assert reply["conversation_id"] == session["conversation_id"]
        assert listed["conversation_id"] == session["conversation_id"]
        assert [m["text"] for m in listed["data"]] == [f"I am visitor {n}", reply["text"]]
        rows = turn_log(settings, session["conversation_id"], posted["message"]["id"])
        assert_streamed_then(rows, "assistant.completed", reply["text"])
    assert len(server.requests_to("responses")) == 50
    audit_ok(settings)
    replay_matches(settings)


# -- reading: pagination, owners, conversations --------------------------------------------------


async def seed(settings: Settings, conversation_id: str, turns: int) -> list[str]:
    """``turns`` questions and answers appended straight to the log; their message ids."""
    ids: list[str] = []
    async with EventStore(settings.database_path, default_projections()) as store:
        for n in range(turns):
            question, answer = f"{conversation_id}-q{n:03d}", f"{conversation_id}-a{n:03d}"
            await store.append(conversation_stream(conversation_id), [
                MessagePosted(conversation_id=conversation_id, message_id=question,
                              text=f"question {n}"),
                AssistantStarted(conversation_id=conversation_id, message_id=answer,
                                 reply_to=question, assistant_id="seeded", provider="demo",
                                 model="demo"),
                AssistantCompleted(message_id=answer, text=f"answer {n}"),
            ], metadata=Metadata(actor="test"))
            ids += [question, answer]
    return ids


def test_pagination_walks_250_messages_both_ways_without_gaps_or_repeats(
    tmp_path: Path
) -> None:
    settings = chat_settings(tmp_path, None)
    with live(settings) as site:
        site.register()
        widget_id = site.widget(provider="demo", model="demo")
        visitor = site.visitor(widget_id)
        other = site.visitor(widget_id)
    ids = asyncio.run(seed(settings, visitor.conversation_id, 125))
    asyncio.run(seed(settings, other.conversation_id, 3))  # must never show up
    with live(settings) as site:
        owner = site.login()
        # Forwards from the start.
        seen: list[str] = []
        page = site.messages(visitor, after=0, limit=100)
        assert page["prev_cursor"] is None
        while True:
            seen += [m["id"] for m in page["data"]]
            if page["next_cursor"] is None:
                break
            page = site.messages(visitor, after=page["next_cursor"], limit=100)
        assert seen == ids
        # Backwards from the newest.
        seen = []
        page = site.messages(visitor, limit=40)
        assert page["next_cursor"] is None
        while True:
            seen = [m["id"] for m in page["data"]] + seen
            if page["prev_cursor"] is None:
                break
            previous = site.messages(visitor, before=page["prev_cursor"], limit=40)
            assert previous["next_cursor"] is not None  # and forwards again from there
            page = previous
        assert seen == ids
        # A page in the middle can go either way and meets its neighbours exactly.
        middle = site.messages(visitor, after=ids_cursor(site, visitor, 99), limit=50)
        assert [m["id"] for m in middle["data"]] == ids[100:150]
        back = site.messages(visitor, before=middle["prev_cursor"], limit=10)
        assert [m["id"] for m in back["data"]] == ids[90:100]
        # The owner reads any conversation of the widget; a visitor only its own.
        as_owner = site.http.get(
            f"/api/v1/widgets/{widget_id}/messages",
            params={"conversation_id": visitor.conversation_id, "limit": 100, "after": 0},
            headers=owner,
        )
        assert as_owner.status_code == 200, as_owner.text
        assert [m["id"] for m in as_owner.json()["data"]] == ids[:100]
        peek = site.http.get(
            f"/api/v1/widgets/{widget_id}/messages",
            params={"conversation_id": visitor.conversation_id}, headers=other.headers,
        )
        assert peek.json()["conversation_id"] == other.conversation_id
        assert len(peek.json()["data"]) == 6
        wrong: list[dict[str, str | int]] = [
            {"limit": 101}, {"limit": 0}, {"before": 5, "after": 1}, {"after": "x"},
        ]
        for params in wrong:
            bad = site.http.get(f"/api/v1/widgets/{widget_id}/messages", params=params,
                                headers=visitor.headers)
            assert bad.status_code == 422, (params, bad.text)
            assert bad.json()["code"] == "validation_error"


def ids_cursor(site: Site, visitor: Visitor, index: int) -> str:
    page = site.messages(visitor, after=0, limit=100)
    cursor: str = page["data"][index]["cursor"]
    return cursor


def test_owners_read_conversations_of_their_widgets_only(
    server: OpenAITestServer, shared: Shared
) -> None:
    site = shared.site
    widget_id = site.widget("openai")
    first, second = site.visitor(widget_id), site.visitor(widget_id)
    assert site.post(first, "echo:one").status_code == 201
    owner = site.owner
    listed = site.http.get(f"/api/v1/widgets/{widget_id}/conversations", headers=owner)
    assert listed.status_code == 200, listed.text
    rows = {c["id"]: c for c in listed.json()["data"]}
    assert set(rows) == {first.conversation_id, second.conversation_id}
    assert rows[first.conversation_id]["message_count"] == 2
    assert rows[first.conversation_id]["visitor_id"] == first.visitor_id
    assert rows[second.conversation_id]["message_count"] == 0
    paged = site.http.get(f"/api/v1/widgets/{widget_id}/conversations", params={"limit": 1},
                          headers=owner).json()
    assert len(paged["data"]) == 1 and paged["next_cursor"] is not None
    rest = site.http.get(f"/api/v1/widgets/{widget_id}/conversations",
                         params={"after": paged["next_cursor"]}, headers=owner).json()
    assert [c["id"] for c in paged["data"] + rest["data"]] == [
        first.conversation_id, second.conversation_id,
    ]
    read = site.http.get(f"/api/v1/widgets/{widget_id}/messages",
                         params={"conversation_id": first.conversation_id}, headers=owner)
    assert [m["text"] for m in read.json()["data"]] == ["echo:one", "one"]
    missing = site.http.get(f"/api/v1/widgets/{widget_id}/messages", headers=owner)
    assert missing.status_code == 422
    # A conversation of another widget, even the same owner's, is not this widget's.
    elsewhere = site.visitor(shared.responses)
    foreign = site.http.get(f"/api/v1/widgets/{widget_id}/messages",
                            params={"conversation_id": elsewhere.conversation_id}, headers=owner)
    assert foreign.status_code == 404
    # Another owner sees nothing of it; a visitor cannot list conversations.
    stranger = site.register("stranger@example.com")
    site.login()
    for path in ("conversations", f"messages?conversation_id={first.conversation_id}"):
        response = site.http.get(f"/api/v1/widgets/{widget_id}/{path}", headers=stranger)
        assert response.status_code == 404, response.text
    as_visitor = site.http.get(f"/api/v1/widgets/{widget_id}/conversations",
                               headers=first.headers)
    assert as_visitor.status_code == 401


# -- recovery ------------------------------------------------------------------------------------


def test_a_reply_cut_off_by_a_stop_is_closed_as_interrupted_at_start_up(tmp_path: Path) -> None:
    settings = chat_settings(tmp_path, None)
    with live(settings) as site:
        site.register()
        widget_id = site.widget(provider="demo", model="demo")
        visitor = site.visitor(widget_id)
        assert site.post(visitor, "before the crash").status_code == 201

    async def crashed_mid_reply() -> None:
        async with EventStore(settings.database_path, default_projections()) as store:
            stream = conversation_stream(visitor.conversation_id)
            await store.append(stream, [
                MessagePosted(conversation_id=visitor.conversation_id, message_id="m-crash",
                              text="are you there?"),
                AssistantStarted(conversation_id=visitor.conversation_id, message_id="r-crash",
                                 reply_to="m-crash", assistant_id="a", provider="demo",
                                 model="demo"),
            ])
            await store.append(stream, [AssistantDelta(message_id="r-crash", offset=0,
                                                       text="Half of ")])
            await store.append(stream, [AssistantDelta(message_id="r-crash", offset=8,
                                                       text="an answer")])

    asyncio.run(crashed_mid_reply())
    before = log_of(settings, visitor.conversation_id)
    with live(settings) as site:
        after = log_of(settings, visitor.conversation_id)
        assert after[:len(before)] == before
        added = after[len(before):]
        assert [r.type for r in added] == ["assistant.interrupted"]
        assert added[0].payload == {"message_id": "r-crash", "text": "Half of an answer"}
        listed = site.messages(visitor)["data"]
        assert (listed[-1]["id"], listed[-1]["status"], listed[-1]["text"]) == (
            "r-crash", "interrupted", "Half of an answer",
        )
        assert listed[-1]["error_code"] == "interrupted"
        again = site.post(visitor, "are you there now?")
        assert again.status_code == 201, again.text
        assert again.json()["reply"]["status"] == "completed"
    with live(settings):
        # A second start finds nothing left to close.
        assert [r.type for r in log_of(settings, visitor.conversation_id)].count(
            "assistant.interrupted") == 1
    audit_ok(settings)
    replay_matches(settings)


def test_provider_for_is_what_the_app_uses(tmp_path: Path) -> None:
    # The gate above wraps app.state.chat.providers; it must be the real factory.
    app = create_app(chat_settings(tmp_path, None))
    assert app.state.chat.providers is provider_for


# -- the store refusing writes -------------------------------------------------------------------


async def test_a_reply_the_store_cannot_save_is_told_as_failed_and_lands_once_it_can(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    # No delta flush mid-reply: the reply's text and its end are its only writes.
    settings = chat_settings(tmp_path, root, flush_interval_ms=5000)
    gate = Gate()
    server.script(REPLY)
    with live(settings) as site:
        gate.install(site.app)
        site.register()
        visitor = site.visitor(site.widget("openai"))
        async with httpx.AsyncClient(base_url=site.url, timeout=WAIT) as client:
            posting = asyncio.create_task(client.post(
                f"/api/v1/widgets/{visitor.widget_id}/messages", json={"text": "Hello"},
                headers=visitor.headers,
            ))
            deadline = time.monotonic() + WAIT
            while gate.waiting < 1:
                assert time.monotonic() < deadline, "the reply never reached the provider"
                await asyncio.sleep(0.01)
            # Another process takes the database's write lock until the reply has ended.
            holder = sqlite3.connect(settings.database_path, timeout=0, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            try:
                gate.opened.set()
                response = await posting
                listed = site.messages(visitor)["data"]
            finally:
                holder.execute("ROLLBACK")
                holder.close()
        # The store's own failure, named as such, never the provider's, and never "streaming".
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["code"] == "store_unavailable"
        assert response.headers["Retry-After"] == "5"
        assert (body["reply"]["status"], body["reply"]["text"]) == ("failed", REPLY)
        # The log had no end yet while the lock was held.
        assert listed[-1]["status"] == "streaming"
        reply_id = body["reply"]["id"]
        # Once the lock is gone, the end lands without a restart, with the whole text.
        wait_until(
            lambda: any(r.type == "assistant.failed" and r.payload["message_id"] == reply_id
                        for r in log_of(settings, visitor.conversation_id)),
            "the reply's end to reach the log",
        )
        [end] = [r for r in log_of(settings, visitor.conversation_id)
                 if r.payload.get("message_id") == reply_id and r.type.startswith("assistant.")
                 and r.type not in ("assistant.started", "assistant.delta")]
        assert (end.payload["code"], end.payload["text"]) == ("store_unavailable", REPLY)
        assert "provider" not in end.payload["error"]
        server.script("Still here")
        again = site.post(visitor, "Are you there?")
        assert again.status_code == 201, again.text
        assert again.json()["reply"]["text"] == "Still here"
    audit_ok(settings)
    replay_matches(settings)


# -- the retry policy itself --------------------------------------------------------------------

RETRY_CASES: list[tuple[str, ProviderError, int, float, float | None]] = [
    # id, error, attempt (failed so far), time left, delay (jitter 0)
    ("retry-after", ProviderError("provider_rate_limited", "", 3.0, retryable=True), 1, 60, 3.0),
    ("backoff-1", ProviderError("provider_unavailable", "", retryable=True), 1, 60, 0.5),
    ("backoff-2", ProviderError("provider_unavailable", "", retryable=True), 2, 60, 1.0),
    ("final", ProviderError("provider_error", "", retryable=False), 1, 60, None),
    ("spent", ProviderError("provider_unavailable", "", retryable=True), 3, 60, None),
    ("past-deadline", ProviderError("provider_rate_limited", "", 40.0, retryable=True), 1, 60,
     None),
]


@pytest.mark.parametrize(("error", "attempt", "left", "delay"),
                         [c[1:] for c in RETRY_CASES], ids=[c[0] for c in RETRY_CASES])
def test_retry_delay(error: ProviderError, attempt: int, left: float, delay: float | None) -> None:
    assert retry_delay(error, attempt, retries=2, time_left=left, jitter=0.0) == delay


def test_retry_backoff_is_capped_and_spread() -> None:
    error = ProviderError("provider_unavailable", "", retryable=True)
    assert retry_delay(error, 9, retries=10, time_left=600, jitter=0.0) == 8.0
    assert retry_delay(error, 9, retries=10, time_left=600, jitter=0.999) == pytest.approx(6.002)
