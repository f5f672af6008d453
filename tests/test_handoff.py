"""Handing a conversation to a person, end to end: a real server, real WebSocket clients, the
real openai SDK against the test server; the log, the inbox and what the provider was sent."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import pytest
from websockets.asyncio.client import ClientConnection, connect

from loacl.openai_testserver import FunctionCall, OpenAITestServer
from loacl.settings import Settings
from tests.test_stream import WAIT, Live, Tab, provider_server, start

pytestmark = pytest.mark.e2e


@pytest.fixture
def provider() -> Iterator[tuple[OpenAITestServer, str]]:
    with provider_server(token_delay=0.0) as running_server:
        yield running_server


@pytest.fixture
def live(settings: Settings, provider: tuple[OpenAITestServer, str]) -> Iterator[Live]:
    _, url = provider
    with start(settings, provider, typing_interval_seconds=60.0,
               chat_completions_base_url=f"{url}/v1") as started:
        yield started


def conversation_events(live: Live, conversation_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The conversation's events, oldest first (type and payload; sealed fields as stored)."""
    conn = sqlite3.connect(live.settings.database_path)
    try:
        rows = conn.execute("SELECT type, payload FROM events WHERE stream = ? ORDER BY seq",
                            (f"conversation-{conversation_id}",)).fetchall()
    finally:
        conn.close()
    return [(kind, json.loads(payload)) for kind, payload in rows]


def states(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, str, str]]:
    return [(p["previous"], p["state"], p["by"], p["cause"]) for kind, p in events
            if kind == "conversation.state_changed"]


def owner_id(live: Live) -> str:
    me = live.http.get("/api/v1/auth/me", headers=live.headers)
    assert me.status_code == 200, me.text
    return str(me.json()["id"])


def member_post(live: Live, conversation_id: str, action: str, body: Any = None,
                status: int = 200) -> dict[str, Any]:
    response = live.http.post(f"/api/v1/conversations/{conversation_id}/{action}",
                              headers=live.headers, json=body)
    assert response.status_code == status, response.text
    return response.json() if response.content else {}


def inbox(live: Live, **params: str) -> list[dict[str, Any]]:
    response = live.http.get("/api/v1/conversations", headers=live.headers, params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


async def replied(live: Live, tab: Tab, text: str) -> dict[str, Any]:
    """Ask; the reply's done frame (it must complete)."""
    ack = await live.ask(tab, text)
    assert ack["reply_id"], ack
    reply = await tab.follow(ack["reply_id"])
    assert reply.done is not None and reply.done["status"] == "completed", reply.done
    return {"id": ack["reply_id"], "text": reply.text}


async def state_frame(tab: Tab, state: str) -> dict[str, Any]:
    """The tab's state frame for ``state``: one it got already (while a reply streamed), or
    the next."""
    for frame in tab.seen:
        if frame["type"] == "state" and frame["state"] == state and not frame.get("_used"):
            frame["_used"] = True
            return frame
    found = await tab.until(lambda f: f["type"] == "state" and f["state"] == state)
    found["_used"] = True
    return found


async def message_frame(tab: Tab, role: str) -> dict[str, Any]:
    frame = await tab.until(lambda f: f["type"] == "message" and f["message"]["role"] == role)
    return dict(frame["message"])


@asynccontextmanager
async def owner_socket(live: Live) -> AsyncIterator[ClientConnection]:
    token = live.headers["Authorization"].removeprefix("Bearer ")
    url = live.url.replace("http://", "ws://", 1) + "/api/v1/owner/stream"
    async with connect(url, open_timeout=WAIT, close_timeout=5) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        assert ready["type"] == "ready", ready
        yield ws


async def owner_frame(ws: ClientConnection, kind: str, **match: Any) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
            return frame


# -- the whole path ------------------------------------------------------------------------------


async def test_visitor_asks_an_agent_takes_over_writes_to_two_tabs_and_gives_back(
    live: Live,
) -> None:
    session = live.session()
    conversation_id = session.conversation_id
    member = owner_id(live)
    async with live.tab(session) as first, live.tab(session) as second:
        await replied(live, first, "Hello")
        await second.until(lambda f: f["type"] == "done")

        # The visitor asks for a person: both tabs hear that the conversation waits.
        await first.send({"type": "handoff", "reason": "I want to talk to someone"})
        for tab in (first, second):
            frame = await state_frame(tab, "waiting")
            assert frame["agent"] is None
        waiting = inbox(live, status="waiting")
        assert [c["id"] for c in waiting] == [conversation_id]
        assert waiting[0]["waiting_since"] is not None
        assert waiting[0]["state"] == "waiting" and waiting[0]["assignee"] is None
        assert inbox(live, status="human") == []

        # A member takes over: both tabs hear who answers now.
        taken = member_post(live, conversation_id, "takeover")
        assert taken["state"] == "human"
        assert taken["assignee"] == {"id": member, "name": "owner"}
        assert taken["waiting_since"] is None
        for tab in (first, second):
            frame = await state_frame(tab, "human")
            assert frame["agent"] == "owner"
        assert [c["id"] for c in inbox(live, assignee=member)] == [conversation_id]
        assert inbox(live, assignee="none") == []

        # The member's message reaches both open tabs, with the member's name.
        sent = member_post(live, conversation_id, "messages",
                           {"text": "Hi, I am Owner from the team.", "client_message_id": "a1"},
                           status=201)
        assert sent["role"] == "agent" and sent["author_name"] == "owner"
        for tab in (first, second):
            got = await message_frame(tab, "agent")
            assert (got["id"], got["text"], got["author_name"]) == (
                sent["id"], "Hi, I am Owner from the team.", "owner")
        again = member_post(live, conversation_id, "messages",
                            {"text": "Hi, I am Owner from the team.", "client_message_id": "a1"})
        assert again["id"] == sent["id"]  # a resend is answered with the first

        # The visitor writes while the member answers: kept, shown in the other tab, counted
        # unread in the inbox, and never sent to the provider.
        asked_before = len(live.provider.requests_to("responses"))
        ack = await live.ask(first, "My order 1234 has not arrived")
        assert ack["reply_id"] is None
        visitor_message = await message_frame(second, "user")
        assert visitor_message["id"] == ack["message_id"]
        entry = inbox(live)[0]
        assert (entry["id"], entry["unread"], entry["preview_role"]) == (
            conversation_id, 1, "user")
        marked = member_post(live, conversation_id, "read", {})
        assert marked["unread"] == 0
        assert inbox(live)[0]["unread"] == 0

    # Another tab opens later (a reload): it resumes after the first reply and gets every
    # message since, once each, then the state.
    history = live.http.get(f"/api/v1/widgets/{live.widget_id}/messages",
                            headers={"Authorization": f"Bearer {session.token}",
                                     "Origin": "http://localhost:3000"}).json()["data"]
    assert [m["role"] for m in history] == ["user", "assistant", "agent", "user"]
    assert history[2]["author_name"] == "owner"
    cursor = int(history[1]["cursor"])
    async with live.tab(session) as third:
        await third.send({"type": "resume", "after": cursor})
        state = await third.until(lambda f: f["type"] == "state")
        assert state["state"] == "human"
        caught_up = [f["message"]["id"] for f in third.seen if f["type"] == "message"]
        assert caught_up == [history[2]["id"], history[3]["id"]]

        # Given back: the assistant answers again, and reads what the member said.
        released = member_post(live, conversation_id, "release")
        assert released["state"] == "bot" and released["assignee"] is None
        await state_frame(third, "bot")
        reply = await replied(live, third, "echo:back to the assistant")
        assert reply["text"] == "back to the assistant"
    sent_now = live.provider.requests_to("responses")
    assert len(sent_now) == asked_before + 1  # only the message after the release
    texts = json.dumps(sent_now[-1].json["input"])
    assert "Hi, I am Owner from the team." in texts
    assert "My order 1234 has not arrived" in texts

    events = conversation_events(live, conversation_id)
    assert states(events) == [
        ("bot", "waiting", "visitor", "visitor_asked"),
        ("waiting", "human", f"member:{member}", "taken_over"),
        ("human", "bot", f"member:{member}", "released"),
    ]
    kinds = [k for k, _ in events]
    posted = kinds.index("agent.message_posted")
    # The visitor's message during the takeover has no reply started after it.
    visitor_at = max(i for i, k in enumerate(kinds) if k == "message.posted"
                     and i < kinds.index("conversation.state_changed", posted))
    assert kinds[visitor_at + 1] != "assistant.started"
    assert kinds.count("agent.message_posted") == 1


async def test_a_closed_conversation_reopens_to_the_assistant_on_the_visitors_message(
    live: Live,
) -> None:
    session = live.session()
    async with live.tab(session) as tab:
        await replied(live, tab, "Hello")
        closed = member_post(live, session.conversation_id, "close")
        assert closed["state"] == "closed"
        await state_frame(tab, "closed")
        assert [c["id"] for c in inbox(live, status="closed")] == [session.conversation_id]
        await replied(live, tab, "echo:still there?")
        # Reopened before the message was kept: the state came ahead of the reply.
        assert [f["state"] for f in tab.seen if f["type"] == "state"] == ["closed", "bot"]
    assert [(a, b, c) for a, b, c, _ in states(
        conversation_events(live, session.conversation_id))] == [
        ("bot", "closed", f"member:{owner_id(live)}"), ("closed", "bot", "visitor")]


# -- the HTTP path -------------------------------------------------------------------------------


def test_the_http_path_asks_for_a_person_and_keeps_messages_from_the_provider(
    live: Live,
) -> None:
    session = live.session()
    visitor = {"Authorization": f"Bearer {session.token}", "Origin": "http://localhost:3000"}
    base = f"/api/v1/widgets/{live.widget_id}"
    first = live.http.post(f"{base}/messages", headers=visitor, json={"text": "echo:hi"})
    assert first.status_code == 201 and first.json()["reply"]["text"] == "hi"
    asked = live.http.post(f"{base}/handoff", headers=visitor, json={"reason": "refund"})
    assert asked.status_code == 200, asked.text
    nobody = {"reason": "nobody", "next_opening": None, "timezone": None}  # no member online
    assert asked.json() == {"state": "waiting", "agent": None, "away": nobody}
    again = live.http.post(f"{base}/handoff", headers=visitor)
    assert again.json() == {"state": "waiting", "agent": None, "away": nobody}
    before = len(live.provider.requests)
    kept = live.http.post(f"{base}/messages", headers=visitor, json={"text": "hello?"})
    assert kept.status_code == 201, kept.text
    assert kept.json()["reply"] is None and kept.json()["message"]["text"] == "hello?"
    assert len(live.provider.requests) == before
    events = conversation_events(live, session.conversation_id)
    assert states(events) == [("bot", "waiting", "visitor", "visitor_asked")]
    assert [k for k, _ in events][-1] == "message.posted"
    # The reason is the visitor's words: sealed in the log like their messages.
    change = next(p for k, p in events if k == "conversation.state_changed")
    assert "refund" not in json.dumps(change) or change["reason"] == "refund"
    # Another owner's token is not a member of this conversation.
    refused = live.http.post(f"/api/v1/conversations/{session.conversation_id}/takeover",
                             headers={"Authorization": "Bearer nope"})
    assert refused.status_code == 401
    missing = live.http.post("/api/v1/conversations/nope/takeover", headers=live.headers)
    assert missing.status_code == 404
    unknown = live.http.post(f"/api/v1/conversations/{session.conversation_id}/assign",
                             headers=live.headers, json={"assignee_id": "someone-else"})
    assert (unknown.status_code, unknown.json()["code"]) == (422, "unknown_member")
    assigned = member_post(live, session.conversation_id, "assign",
                           {"assignee_id": owner_id(live)})
    assert assigned["assignee"]["name"] == "owner" and assigned["state"] == "waiting"


# -- the assistant asks --------------------------------------------------------------------------


@pytest.mark.parametrize("provider_name", ["openai", "chat_completions"])
async def test_the_model_asks_for_a_person_with_request_human(
    live: Live, provider_name: str,
) -> None:
    assistant = live.http.post("/api/v1/assistants", headers=live.headers, json={
        "name": "Helper", "provider": provider_name, "model": "gpt-fake-1", "handoff": True})
    assert assistant.status_code == 201, assistant.text
    assert assistant.json()["handoff"] is True and assistant.json()["tools"] == []
    widget = live.http.post("/api/v1/widgets", headers=live.headers, json={
        "name": "Site", "assistant_id": assistant.json()["id"],
        "allowed_origins": ["http://localhost:3000"]})
    assert widget.status_code == 201, widget.text
    widget_id = widget.json()["id"]
    endpoint: Literal["responses", "chat"] = "responses" if provider_name == "openai" \
        else "chat"
    live.provider.script(calls=[FunctionCall(
        name="request_human", arguments=json.dumps({"reason": "wants a refund"}),
        call_id="call_h")], endpoint=endpoint)
    live.provider.script("I have asked a colleague to join; they will answer here shortly.",
                         endpoint=endpoint)
    session = live.session(widget_id)
    original, live.widget_id = live.widget_id, widget_id
    try:
        async with live.tab(session) as tab:
            reply = await replied(live, tab, "I want my money back")
            assert reply["text"] == ("I have asked a colleague to join; they will answer "
                                     "here shortly.")
            await state_frame(tab, "waiting")
            before = len(live.provider.requests_to(endpoint))
            ack = await live.ask(tab, "Hello?")
            assert ack["reply_id"] is None
    finally:
        live.widget_id = original
    first, second = live.provider.requests_to(endpoint)[:2]
    assert len(live.provider.requests_to(endpoint)) == before
    if provider_name == "openai":
        offered = [t["name"] for t in first.json["tools"]]
        output = second.json["input"][-1]["output"]
    else:
        offered = [t["function"]["name"] for t in first.json["tools"]]
        output = second.json["messages"][-1]["content"]
    assert offered == ["request_human"]
    assert json.loads(output)["state"] == "waiting"
    events = conversation_events(live, session.conversation_id)
    assert states(events) == [("bot", "waiting", "assistant", "assistant_asked")]
    kinds = [k for k, _ in events]
    assert kinds.index("tool.called") < kinds.index("conversation.state_changed") < \
        kinds.index("tool.returned") < kinds.index("assistant.completed")
    assert inbox(live, status="waiting")[0]["id"] == session.conversation_id


# -- typing --------------------------------------------------------------------------------------


async def test_typing_is_passed_on_both_ways_and_rate_limited(live: Live) -> None:
    session = live.session()
    conversation_id = session.conversation_id
    member_post(live, conversation_id, "takeover")
    async with owner_socket(live) as owner, live.tab(session) as tab:
        for _ in range(3):
            await tab.send({"type": "typing", "typing": True})
        await tab.send({"type": "ping"})
        await tab.next_kind("pong")
        frame = await owner_frame(owner, "typing", conversation_id=conversation_id)
        assert (frame["from"], frame["typing"]) == ("visitor", True)

        member_post(live, conversation_id, "typing", {"typing": True}, status=204)
        limited = live.http.post(f"/api/v1/conversations/{conversation_id}/typing",
                                 headers=live.headers, json={"typing": True})
        assert (limited.status_code, limited.json()["code"]) == (429, "rate_limited")
        assert limited.headers.get("retry-after")
        member_post(live, conversation_id, "typing", {"typing": False}, status=204)
        shown = await tab.until(lambda f: f["type"] == "typing")
        assert shown == {"type": "typing", "typing": True, "name": "owner"}
        stopped = await tab.until(lambda f: f["type"] == "typing")
        assert stopped["typing"] is False

        # The visitor's later signals within the interval were dropped: the next frame the
        # owner gets about the conversation is the member's message, not another typing.
        member_post(live, conversation_id, "messages", {"text": "Here"}, status=201)
        frame = await owner_frame(owner, "message", conversation_id=conversation_id)
        assert frame["message"]["role"] == "agent"
        # Typing is never logged.
    assert not [k for k, _ in conversation_events(live, conversation_id) if "typing" in k]


async def test_the_owner_stream_carries_state_changes_and_agent_messages(live: Live) -> None:
    session = live.session()
    async with owner_socket(live) as owner, live.tab(session) as tab:
        await tab.send({"type": "handoff"})
        changed = await owner_frame(owner, "state", conversation_id=session.conversation_id)
        assert (changed["state"], changed["by"], changed["cause"]) == (
            "waiting", "visitor", "visitor_asked")
        entry = await owner_frame(owner, "conversation")
        assert entry["conversation"]["state"] == "waiting"
        member_post(live, session.conversation_id, "messages", {"text": "On my way"},
                    status=201)
        changed = await owner_frame(owner, "state", conversation_id=session.conversation_id)
        assert (changed["state"], changed["cause"]) == ("human", "agent_replied")
        message = await owner_frame(owner, "message", conversation_id=session.conversation_id)
        assert message["message"]["author_name"] == "owner"
