"""``WS /api/v1/owner/stream`` on a real uvicorn with a real WebSocket client, while a visitor
chats through the real widget API: the owner sees the conversation start, the messages, the
reply's text as it streams and its end; another owner's conversations never show; a bad token,
an ended session or another site's page closes or refuses the socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from tests.test_chat import Site, chat_settings, live

pytestmark = pytest.mark.e2e

WAIT = 30.0  # a bound on each wait, not a measurement


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    # The demo streams its answer in small pieces, with a pause between: several deltas.
    with live(chat_settings(tmp_path, None, demo_delay=0.01, flush_interval_ms=20)) as built:
        yield built


def ws_url(site: Site) -> str:
    return site.url.replace("http://", "ws://") + "/api/v1/owner/stream"


def token(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


async def opened(site: Site, headers: dict[str, str]) -> ClientConnection:
    ws = await connect(ws_url(site), origin=Origin(site.url))
    await ws.send(json.dumps({"type": "auth", "token": token(headers)}))
    ready = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert ready["type"] == "ready" and 0 < ready["expires_in"] <= 3600
    return ws


async def frames_until(ws: ClientConnection, done: Any) -> list[dict[str, Any]]:
    """Frames (pings left out) until ``done(frame)`` is true of one."""
    seen: list[dict[str, Any]] = []
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
        if frame["type"] == "ping":
            continue
        seen.append(frame)
        if done(frame):
            return seen


async def test_the_owner_sees_a_visitor_chat_live(site: Site) -> None:
    other = site.register("other@example.com")
    their_widget = site.widget("demo", "demo")
    owner = site.register("owner@example.com")
    widget = site.widget("demo", "demo")
    ws = await opened(site, owner)
    try:
        # Another owner's visitor chats first: nothing of it reaches this socket.
        site.owner = other
        stranger = await asyncio.to_thread(site.visitor, their_widget)
        assert (await asyncio.to_thread(site.post, stranger, "not for you")).status_code == 201
        site.owner = owner

        visitor = await asyncio.to_thread(site.visitor, widget)
        started = await frames_until(ws, lambda f: f["type"] == "conversation")
        assert started == [{"type": "conversation", "conversation": started[0]["conversation"]}]
        entry = started[0]["conversation"]
        assert entry["id"] == visitor.conversation_id and entry["message_count"] == 0
        assert entry["widget_id"] == widget and entry["status"] == "open"

        posting = asyncio.create_task(asyncio.to_thread(site.post, visitor, "Hello there"))
        seen = await frames_until(ws, lambda f: f["type"] == "done")
        reply = (await posting).json()["reply"]
        seen += await frames_until(ws, lambda f: f["type"] == "conversation")
    finally:
        await ws.close()

    ids = {f.get("conversation_id") or f["conversation"]["id"] for f in seen}
    assert ids == {visitor.conversation_id}
    kinds = [f["type"] for f in seen]
    assert kinds[:4] == ["message", "conversation", "message", "conversation"]
    asked, answer = seen[0]["message"], seen[2]["message"]
    assert asked["role"] == "user" and asked["text"] == "Hello there"
    assert answer["role"] == "assistant" and answer["status"] == "streaming"
    assert answer["id"] == reply["id"] and answer["reply_to"] == asked["id"]
    deltas = [f for f in seen if f["type"] == "delta"]
    assert len(deltas) >= 2, kinds  # streamed, not in one piece
    text = ""
    for delta in deltas:
        assert delta["message_id"] == reply["id"] and delta["offset"] == len(text)
        text += delta["text"]
    done = next(f for f in seen if f["type"] == "done")
    assert text == reply["text"] == done["message"]["text"]
    assert done["status"] == "completed" and done["length"] == len(text)
    assert done["message"]["usage"] is not None
    last = seen[-1]["conversation"]
    assert last["message_count"] == 2 and last["preview_role"] == "assistant"
    assert reply["text"].startswith(last["preview"].rstrip("…"))


async def test_an_erasure_shows_and_the_socket_stays(site: Site) -> None:
    owner = site.register()
    widget = site.widget("demo", "demo")
    visitor = await asyncio.to_thread(site.visitor, widget)
    ws = await opened(site, owner)
    try:
        erased = await asyncio.to_thread(
            site.http.delete, f"/api/v1/conversations/{visitor.conversation_id}", headers=owner)
        assert erased.status_code == 204
        [frame] = await frames_until(ws, lambda f: f["type"] == "conversation")
        assert frame["conversation"]["status"] == "erased"
        await ws.send(json.dumps({"type": "ping"}))
        assert await frames_until(ws, lambda f: f["type"] == "pong") == [{"type": "pong"}]
    finally:
        await ws.close()


async def closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), WAIT)
    return closed.value.rcvd.code if closed.value.rcvd else None


@pytest.mark.parametrize("first", [
    {"type": "auth", "token": "not-a-token"},
    {"type": "auth"},
    {"type": "ping"},
    "not json",
])
async def test_a_bad_first_frame_closes_with_4401(site: Site, first: Any) -> None:
    site.register()
    async with connect(ws_url(site)) as ws:
        await ws.send(first if isinstance(first, str) else json.dumps(first))
        assert await closed_with(ws) == 4401


async def test_a_visitor_token_is_no_owner_token(site: Site) -> None:
    site.register()
    widget = site.widget("demo", "demo")
    visitor = await asyncio.to_thread(site.visitor, widget)
    async with connect(ws_url(site)) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token(visitor.headers)}))
        assert await closed_with(ws) == 4401


async def test_logout_closes_the_socket(site: Site) -> None:
    owner = site.register()
    ws = await opened(site, owner)
    out = await asyncio.to_thread(site.http.post, "/api/v1/auth/logout", headers=owner)
    assert out.status_code == 204
    assert await closed_with(ws) == 4401


async def test_a_fresh_token_of_another_account_closes_it(site: Site) -> None:
    owner = site.register()
    other = site.register("other@example.com")
    ws = await opened(site, owner)
    fresh = site.login("owner@example.com")
    await ws.send(json.dumps({"type": "auth", "token": token(fresh)}))
    await ws.send(json.dumps({"type": "ping"}))
    assert await frames_until(ws, lambda f: f["type"] == "pong") == [{"type": "pong"}]
    await ws.send(json.dumps({"type": "auth", "token": token(other)}))
    assert await closed_with(ws) == 4401


async def test_another_sites_page_is_refused_before_the_handshake(site: Site) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(ws_url(site), origin=Origin("https://evil.example"))
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body or b"{}")["code"] == "cross_site_request"


def test_a_plain_get_is_told_to_upgrade(site: Site) -> None:
    owner = site.register()
    assert site.http.get("/api/v1/owner/stream").status_code == 401
    plain = site.http.get("/api/v1/owner/stream", headers=owner)
    assert plain.status_code == 426 and plain.json()["code"] == "upgrade_required"
    assert site.http.request("TRACE", "/api/v1/owner/stream").status_code == 405
