"""A server killed mid-reply: ``loacl serve`` runs as a child process, is SIGKILLed while a reply
streams over a WebSocket, and is started again on the same database.

After the restart the log's hash chain holds, the reply is closed as interrupted with the text
the log held, the visitor sees that text and can ask again, and a replay of the log gives the
same read tables as the live projections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Origin

from loacl.openai_testserver import OpenAITestServer, Stall, running
from loacl.services.keys import keyring_for
from loacl.settings import Settings
from loacl.store import audit, replay
from loacl.store.projections import default_projections
from tests.sealed import opened_rows
from tests.test_stream import MODEL, ORIGIN, PASSWORD, WAIT, Tab, contiguous, reply_text

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``python -m loacl serve`` in a child process, configured by environment variables."""

    def __init__(self, folder: Path, provider_url: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database = folder / "loacl.db"
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{self.database}",
            "LOACL_DATA_DIR": str(folder / "data"),
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": f"{provider_url}/v1",
            "LOACL_REQUIRE_VERIFIED_EMAIL": "false",
            "LOACL_ARGON2_TIME_COST": "1",
            "LOACL_ARGON2_MEMORY_KIB": "64",
            "LOACL_ARGON2_PARALLELISM": "1",
            "LOACL_LOG_FORMAT": "console",
            # Every provider delta is written at once: the kill finds text in the log.
            "LOACL_FLUSH_INTERVAL_MS": "0",
        }
        self.env.pop("LOACL_CONFIG", None)
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def output(self) -> str:
        return "".join(
            path.read_text(errors="replace") for path in sorted(self.folder.glob("server-*.log"))
        )

    def start(self) -> None:
        self.runs += 1
        log = (self.folder / f"server-{self.runs}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "loacl", "serve", "--port", str(self.port)],
            cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + WAIT
        while True:
            assert self.process.poll() is None, f"the server exited:\n{self.output()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"the server did not start:\n{self.output()}"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=WAIT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"the server did not stop:\n{self.output()}") from None


@pytest.fixture
def provider() -> Iterator[tuple[OpenAITestServer, str]]:
    server = OpenAITestServer(token_delay=0.02)
    with running(server) as url:
        yield server, url


@pytest.fixture
def server(tmp_path: Path, provider: tuple[OpenAITestServer, str]) -> Iterator[Server]:
    child = Server(tmp_path, provider[1])
    try:
        yield child
    finally:
        child.stop()


def rows(database: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    conn = sqlite3.connect(database, timeout=WAIT)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def reply_events(database: Path, message_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The reply's events, sealed fields opened with the server's master key."""
    settings = Settings(database_url=f"sqlite:///{database}", data_dir=database.parent / "data")
    out = []
    for kind, _, payload, _ in opened_rows(
        settings, "SELECT type, schema_version, payload, metadata FROM events ORDER BY seq"
    ):
        body = json.loads(payload)
        if body.get("message_id") == message_id:
            out.append((str(kind), body))
    return out


def setup_visitor(url: str) -> tuple[str, str, str]:
    """An owner, an assistant and a widget; returns (widget id, visitor token, conversation)."""
    with httpx.Client(base_url=url, timeout=WAIT) as http:
        email = "owner@example.com"
        assert http.post("/api/v1/auth/register",
                         json={"email": email, "password": PASSWORD}).status_code == 202
        login = http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        assistant = http.post("/api/v1/assistants", headers=headers,
                              json={"name": "Helper", "provider": "openai", "model": MODEL})
        assert assistant.status_code == 201, assistant.text
        widget = http.post("/api/v1/widgets", headers=headers, json={
            "name": "Site", "assistant_id": assistant.json()["id"], "allowed_origins": [ORIGIN],
        })
        assert widget.status_code == 201, widget.text
        widget_id = widget.json()["id"]
        session = http.post(f"/api/v1/widgets/{widget_id}/sessions", json={},
                            headers={"Origin": ORIGIN})
        assert session.status_code == 201, session.text
        return widget_id, session.json()["visitor_token"], session.json()["conversation_id"]


def list_messages(url: str, widget_id: str, token: str) -> list[dict[str, Any]]:
    listed = httpx.get(f"{url}/api/v1/widgets/{widget_id}/messages", timeout=WAIT,
                       headers={"Origin": ORIGIN, "Authorization": f"Bearer {token}"})
    assert listed.status_code == 200, listed.text
    items: list[dict[str, Any]] = listed.json()["data"]
    return items


async def test_a_reply_cut_by_a_crash_is_closed_as_interrupted(
    server: Server, provider: tuple[OpenAITestServer, str]
) -> None:
    text = reply_text(150)
    provider[0].script(text)
    server.start()
    widget_id, token, conversation_id = setup_visitor(server.url)
    stream_url = f"ws://127.0.0.1:{server.port}/api/v1/widgets/{widget_id}/stream?token={token}"

    async with connect(stream_url, origin=Origin(ORIGIN), open_timeout=WAIT) as ws:
        tab = Tab(ws)
        assert (await tab.recv())["type"] == "ready"
        await tab.send({"type": "message", "text": "Tell me a long story",
                        "client_message_id": "story"})
        ack = await tab.next_kind("ack")
        reply_id = ack["reply_id"]
        seen = await tab.follow(reply_id, stop_after=40)
        # Some text is in the log before the kill, so that there is something to keep.
        deadline = time.monotonic() + WAIT
        while not any(k == "assistant.delta" for k, _ in reply_events(server.database,
                                                                     reply_id)):
            assert time.monotonic() < deadline, "no delta was written"
            await asyncio.sleep(0.02)
        server.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.wait_closed(), WAIT)
    streamed = seen.text
    assert text.startswith(streamed) and len(streamed) < len(text), "killed mid-stream"

    # Before the restart the log holds an open run: deltas, no end event.
    events = reply_events(server.database, reply_id)
    assert events[0][0] == "assistant.started"
    assert {k for k, _ in events[1:]} == {"assistant.delta"}
    held = contiguous([(p["offset"], p["text"]) for k, p in events if k == "assistant.delta"])
    assert held and text.startswith(held)

    server.start()
    events = reply_events(server.database, reply_id)
    assert events[-1] == ("assistant.interrupted", {"message_id": reply_id, "text": held})
    assert [k for k, _ in events].count("assistant.interrupted") == 1
    row = rows(server.database,
               "SELECT text, status, error_code FROM messages WHERE message_id = ?", (reply_id,))
    assert row == [(held, "interrupted", "interrupted")]

    # The visitor comes back: its resume ends with what was saved; it asks again.
    async with connect(stream_url, origin=Origin(ORIGIN), open_timeout=WAIT) as ws:
        tab = Tab(ws)
        await tab.send({"type": "resume", "message_id": reply_id, "offset": len(streamed)})
        assert (await tab.recv())["type"] == "ready"
        resumed = await tab.follow(reply_id, start=len(streamed))
        assert resumed.done is not None
        assert resumed.done["status"] == "interrupted"
        assert resumed.done["length"] == len(held)  # the client trims to what was saved
        assert [e["code"] for e in resumed.errors] == ["interrupted"]
    async with connect(stream_url, origin=Origin(ORIGIN), open_timeout=WAIT) as ws:
        tab = Tab(ws)  # a new page: from the start it gets exactly what was saved
        await tab.send({"type": "resume", "message_id": reply_id, "offset": 0})
        again = await tab.follow(reply_id)
        assert again.text == held and again.done is not None
        provider[0].script("Sorry, here it is again.")
        await tab.send({"type": "message", "text": "Please go on"})
        ack2 = await tab.next_kind("ack")
        answer = await tab.follow(ack2["reply_id"])
        assert answer.text == "Sorry, here it is again."
        assert answer.done is not None and answer.done["status"] == "completed"
    # The interrupted part went back to the provider as history, the way the log holds it.
    history = provider[0].requests_to("responses")[-1].json["input"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[1]["content"][0]["text"] == held

    items = list_messages(server.url, widget_id, token)
    assert [(m["role"], m["status"]) for m in items] == [
        ("user", "completed"), ("assistant", "interrupted"),
        ("user", "completed"), ("assistant", "completed"),
    ]
    assert items[1]["text"] == held
    assert all(m["conversation_id"] == conversation_id for m in items)

    server.stop()
    assert "recovery.reply_interrupted" in server.output()
    conn = sqlite3.connect(server.database)
    try:
        checked = audit.verify(conn)
        assert checked.ok, checked
        projections = default_projections()
        live = replay.dump_tables(conn, projections.tables)
        keys = keyring_for(Settings(
            database_url=f"sqlite:///{server.database}", data_dir=server.folder / "data"
        ))
        replay.replay(conn, projections, keys=keys.attach(conn))
        assert replay.dump_tables(conn, projections.tables) == live
    finally:
        conn.close()


async def test_sigterm_ends_replies_in_flight_tells_every_visitor_and_exits_in_time(
    server: Server, provider: tuple[OpenAITestServer, str]
) -> None:
    # The provider never sends a byte: without the bound, a waiting post held the exit ~90 s.
    provider[0].script("never", [Stall(seconds=120)])
    provider[0].script("never", [Stall(seconds=120)])
    server.env |= {"LOACL_SHUTDOWN_SECONDS": "3", "LOACL_PROVIDER_READ_TIMEOUT": "600"}
    server.start()
    widget_id, token, _ = setup_visitor(server.url)
    stream_url = f"ws://127.0.0.1:{server.port}/api/v1/widgets/{widget_id}/stream?token={token}"
    _, other_token, _ = setup_second_visitor(server.url, widget_id)
    async with connect(stream_url, origin=Origin(ORIGIN), open_timeout=WAIT) as ws, \
            httpx.AsyncClient(base_url=server.url, timeout=WAIT) as http:
        tab = Tab(ws)
        assert (await tab.recv())["type"] == "ready"
        await tab.send({"type": "message", "text": "Hello?"})
        ack = await tab.next_kind("ack")
        posting = asyncio.create_task(http.post(
            f"/api/v1/widgets/{widget_id}/messages", json={"text": "Anyone?"},
            headers={"Origin": ORIGIN, "Authorization": f"Bearer {other_token}"},
        ))
        deadline = time.monotonic() + WAIT
        while len(provider[0].requests_to("responses")) < 2:
            assert time.monotonic() < deadline, "the replies never reached the provider"
            await asyncio.sleep(0.02)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        reply = await tab.follow(ack["reply_id"])
        posted = await posting
        # A guard against a hang, the bound itself being 3 s: the server exits on its own.
        assert server.process.wait(timeout=WAIT) is not None
    assert reply.done is not None and reply.done["status"] == "interrupted"
    assert reply.done["length"] == 0
    assert posted.status_code == 201, posted.text
    assert posted.json()["reply"]["status"] == "interrupted"
    for reply_id in (ack["reply_id"], posted.json()["reply"]["id"]):
        assert reply_events(server.database, reply_id)[-1] == (
            "assistant.interrupted", {"message_id": reply_id, "text": ""})
    assert "loacl.stopped" in server.output()


def setup_second_visitor(url: str, widget_id: str) -> tuple[str, str, str]:
    session = httpx.post(f"{url}/api/v1/widgets/{widget_id}/sessions", json={},
                         headers={"Origin": ORIGIN}, timeout=WAIT)
    assert session.status_code == 201, session.text
    return widget_id, session.json()["visitor_token"], session.json()["conversation_id"]
