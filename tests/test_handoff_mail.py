"""Nobody there and mail around a handoff, end to end: a real server (restarted on the same
file), aiosmtpd catching the mail, real WebSocket clients; the log, the erasure and replay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from aiosmtpd.controller import Controller

from loacl.http.app import create_app
from loacl.openai_testserver import FunctionCall, OpenAITestServer
from loacl.services.handoff import Presence
from loacl.services.keys import keyring_for
from loacl.settings import Settings
from loacl.store.projections import default_projections
from loacl.store.replay import replay
from loacl.store.sqlite import connect
from tests.conftest import RunCli
from tests.live import serve
from tests.test_handoff import owner_socket
from tests.test_mail import Collector, unused_port
from tests.test_stream import ORIGIN, PASSWORD, WAIT, Live, Log, Session, provider_server
from tests.test_workspaces import invite_token

pytestmark = pytest.mark.e2e

OWNER = "owner@example.com"


@dataclass
class Clock:
    """The server's clock: the real time moved on by ``offset`` (a test jumps over minutes)."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.fixture
def smtp() -> Iterator[tuple[Collector, int]]:
    collector = Collector()
    port = unused_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield collector, port
    finally:
        controller.stop()


@pytest.fixture
def provider() -> Iterator[tuple[OpenAITestServer, str]]:
    with provider_server(token_delay=0.0) as running_server:
        yield running_server


@pytest.fixture
def configured(settings: Settings, smtp: tuple[Collector, int],
               provider: tuple[OpenAITestServer, str]) -> Settings:
    _, url = provider
    return settings.model_copy(update={
        "openai_api_key": "sk-test", "openai_base_url": f"{url}/v1",
        "require_verified_email": False, "provider_max_retries": 0,
        "smtp_host": "127.0.0.1", "smtp_port": smtp[1], "smtp_security": "none",
        "public_url": "https://chat.example.com", "access_token_expire_minutes": 600,
        "typing_interval_seconds": 60.0,
    })


@contextlib.contextmanager
def running(settings: Settings, provider: OpenAITestServer, clock: Clock,
            widget_id: str | None = None, **widget: Any) -> Iterator[Live]:
    """LOACL on a loopback port with the owner logged in (registered on the first start) and
    a widget (made on the first start)."""
    with serve(create_app(settings, clock=clock)) as base, \
            httpx.Client(base_url=base, timeout=WAIT) as http:
        login = http.post("/api/v1/auth/login", json={"email": OWNER, "password": PASSWORD})
        if login.status_code != 200:
            registered = http.post("/api/v1/auth/register",
                                   json={"email": OWNER, "password": PASSWORD})
            assert registered.status_code == 202, registered.text
            login = http.post("/api/v1/auth/login", json={"email": OWNER, "password": PASSWORD})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        live = Live(base, settings, provider, http, headers, "", Log(settings))
        live.widget_id = widget_id or live.widget(**widget)
        yield live


@pytest.fixture
def clock() -> Clock:
    return Clock()


def rows(settings: Settings, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    conn = sqlite3.connect(settings.database_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def caught_up(settings: Settings) -> None:
    """Until the handoff-mail subscriber has handled every event in the log."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        [(head,)] = rows(settings, "SELECT coalesce(max(seq), 0) FROM events")
        found = rows(settings, "SELECT position FROM subscriber_checkpoints "
                     "WHERE name = 'handoff-mail'")
        if found and found[0][0] >= head:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the handoff-mail subscriber did not catch up")


def sent(collector: Collector) -> list[EmailMessage]:
    """The handoff mails caught (not the account's own, such as the address confirmation)."""
    return [m for m in collector.messages if str(m["Message-ID"]).startswith("<handoff.")]


async def mails(collector: Collector, count: int) -> list[EmailMessage]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if len(sent(collector)) >= count:
            return sent(collector)
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} handoff mails: {collector.messages}")


def visitor_post(live: Live, session: Session, path: str, body: Any,
                 status: int = 200) -> dict[str, Any]:
    response = live.http.post(f"/api/v1/widgets/{live.widget_id}{path}", json=body, headers={
        "Origin": ORIGIN, "Authorization": f"Bearer {session.token}"})
    assert response.status_code == status, response.text
    return dict(response.json())


def member_post(live: Live, conversation_id: str, action: str, body: Any = None) -> None:
    response = live.http.post(f"/api/v1/conversations/{conversation_id}/{action}",
                              headers=live.headers, json=body)
    assert response.status_code in (200, 201), response.text


def conversation_rows(settings: Settings) -> list[Any]:
    return rows(settings, "SELECT conversation_id, state, reply_email, reply_email_seq, "
                "visitor_email, erased_at FROM conversations ORDER BY conversation_id")


def add_member(live: Live, collector: Collector, email: str, role: str) -> None:
    """Register ``email``, invite it into the owner's workspace as ``role`` and accept."""
    registered = live.http.post("/api/v1/auth/register",
                                json={"email": email, "password": PASSWORD})
    assert registered.status_code == 202, registered.text
    me = live.http.get("/api/v1/auth/me", headers=live.headers)
    workspace = me.json()["id"]  # the owner's personal workspace
    made = live.http.post(f"/api/v1/workspaces/{workspace}/invites",
                          json={"email": email, "role": role}, headers=live.headers)
    assert made.status_code == 201, made.text
    token = invite_token(collector, email)
    login = live.http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    accepted = live.http.post("/api/v1/invites/accept", json={"token": token}, headers={
        "Authorization": f"Bearer {login.json()['access_token']}"})
    assert accepted.status_code == 200, accepted.text


# -- the team's mail -----------------------------------------------------------------------------


async def test_the_team_is_mailed_once_per_window_not_for_each_repeat(
    configured: Settings, smtp: tuple[Collector, int], provider: tuple[OpenAITestServer, str],
    clock: Clock,
) -> None:
    collector, _ = smtp
    with running(configured, provider[0], clock) as live:
        add_member(live, collector, "agent@example.com", "agent")
        session = live.session()
        answer = visitor_post(live, session, "/handoff", {"reason": "refund for order 42"})
        assert answer["state"] == "waiting"
        to_owner, to_agent = await mails(collector, 2)
        assert {to_owner["To"], to_agent["To"]} == {OWNER, "agent@example.com"}
        mail = to_owner
        assert "Site" in mail["Subject"]
        body = mail.get_content()
        assert (f"https://chat.example.com/console/conversations/{session.conversation_id}"
                in body)
        assert "A visitor asked for a person" in body
        assert "refund" not in body  # personal data stays out of mail by default

        # Given back and asked for again, twice, within the window: no more mail.
        for _ in range(2):
            member_post(live, session.conversation_id, "release")
            visitor_post(live, session, "/handoff", {})
        await caught_up(configured)
        assert len(sent(collector)) == 2
        waits = rows(configured, "SELECT count(*) FROM events WHERE type = "
                     "'conversation.state_changed' AND payload LIKE '%\"state\":\"waiting\"%'")
        assert waits == [(3,)]

        # After the window: mailed again, once.
        clock.offset += timedelta(minutes=configured.handoff_mail_minutes + 1)
        member_post(live, session.conversation_id, "release")
        visitor_post(live, session, "/handoff", {})
        await mails(collector, 4)
        await caught_up(configured)
        assert len(sent(collector)) == 4
        assert sent(collector)[0]["Message-ID"] != sent(collector)[2]["Message-ID"]


async def test_with_personal_data_allowed_the_mail_quotes_the_visitor(
    configured: Settings, smtp: tuple[Collector, int], provider: tuple[OpenAITestServer, str],
    clock: Clock,
) -> None:
    collector, _ = smtp
    with running(configured.model_copy(update={"handoff_mail_personal": True}), provider[0],
                 clock) as live:
        live.provider.script("Let me get someone.")
        session = live.session()
        async with live.tab(session) as tab:
            ack = await live.ask(tab, "Where is my parcel Nº 7?")
            await tab.follow(ack["reply_id"])
        visitor_post(live, session, "/handoff", {"reason": "wants a human"})
        [mail] = await mails(collector, 1)
        body = mail.get_content()
        assert "Where is my parcel Nº 7?" in body and "wants a human" in body


# -- nobody there ------------------------------------------------------------------------------


def next_weekday_hours(days_ahead: int) -> tuple[dict[str, Any], datetime]:
    """Office hours open only on the weekday ``days_ahead`` days from now (Berlin), 9:00 to
    17:00, and that opening in UTC: closed now, whatever the time of day."""
    zone = ZoneInfo("Europe/Berlin")
    day = datetime.now(zone).date() + timedelta(days=days_ahead)
    name = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[day.weekday()]
    opening = datetime(day.year, day.month, day.day, 9, 0, tzinfo=zone).astimezone(UTC)
    hours = {"timezone": "Europe/Berlin",
             "windows": [{"day": name, "opens": "09:00", "closes": "17:00"}]}
    return hours, opening


async def test_outside_hours_the_visitor_hears_the_next_opening(
    configured: Settings, provider: tuple[OpenAITestServer, str], clock: Clock,
) -> None:
    hours, opening = next_weekday_hours(3)
    expected = opening.isoformat().replace("+00:00", "Z")
    with running(configured, provider[0], clock, office_hours=hours) as live:
        async with owner_socket(live):  # a member online changes nothing outside the hours
            answer = visitor_post(live, live.session(), "/handoff", {})
            assert answer["away"] == {"reason": "closed", "next_opening": expected,
                                      "timezone": "Europe/Berlin"}
            session = live.session()
            async with live.tab(session) as tab:
                await tab.send({"type": "handoff"})
                away = await tab.next_kind("away")
        assert away == {"type": "away", "reason": "closed", "next_opening": expected,
                        "timezone": "Europe/Berlin"}


async def test_within_hours_nobody_online_is_told_and_a_member_online_is_not(
    configured: Settings, provider: tuple[OpenAITestServer, str], clock: Clock,
) -> None:
    with running(configured, provider[0], clock) as live:
        answer = visitor_post(live, live.session(), "/handoff", {})
        assert answer["away"] == {"reason": "nobody", "next_opening": None, "timezone": None}
        async with owner_socket(live):
            answer = visitor_post(live, live.session(), "/handoff", {})
            assert answer["away"] is None
            async with live.tab(live.session()) as tab:
                await tab.send({"type": "handoff"})
                state = await tab.until(lambda f: f["type"] in ("state", "away"))
                assert state["type"] == "state" and state["state"] == "waiting"
                await tab.send({"type": "ping"})
                assert (await tab.next_kind("pong", "away"))["type"] == "pong"
        # The socket closed: nobody again.
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            answer = visitor_post(live, live.session(), "/handoff", {})
            if answer["away"] is not None:
                break
            await asyncio.sleep(0.05)
        assert answer["away"] == {"reason": "nobody", "next_opening": None, "timezone": None}


# -- the visitor's address -----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "ada", "ada@", "@example.com", "ada@exa mple.com",
                                 "a" * 330 + "@example.com"])
async def test_a_bad_address_is_refused_with_a_stable_code(
    configured: Settings, provider: tuple[OpenAITestServer, str], clock: Clock, bad: str,
) -> None:
    with running(configured, provider[0], clock) as live:
        session = live.session()
        response = live.http.post(
            f"/api/v1/widgets/{live.widget_id}/reply-address", json={"email": bad},
            headers={"Origin": ORIGIN, "Authorization": f"Bearer {session.token}"})
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["code"] in ("invalid_email", "validation_error")
        if len(bad) <= 320:
            assert problem["code"] == "invalid_email"
            assert problem["errors"][0]["field"] == "email"
        async with live.tab(session) as tab:
            await tab.send({"type": "reply_address", "email": bad})
            error = await tab.next_kind("error", "reply_address")
        assert error["type"] == "error" and error["code"] == "invalid_email"
        assert rows(configured, "SELECT count(*) FROM events WHERE type = "
                    "'visitor.reply_address_left'") == [(0,)]


async def test_the_address_is_sealed_exported_and_erased_with_the_conversation(
    configured: Settings, provider: tuple[OpenAITestServer, str], clock: Clock,
) -> None:
    with running(configured, provider[0], clock) as live:
        session = live.session()
        async with live.tab(session) as tab:
            await tab.send({"type": "reply_address", "email": "  Ada.Lovelace@Example.COM "})
            saved = await tab.next_kind("reply_address", "error")
        assert saved == {"type": "reply_address", "email": "Ada.Lovelace@example.com"}
        again = visitor_post(live, session, "/reply-address",
                             {"email": "Ada.Lovelace@example.com"})
        assert again == {"email": "Ada.Lovelace@example.com"}  # the same again: no new event
        [(payload,)] = rows(configured, "SELECT payload FROM events WHERE type = "
                            "'visitor.reply_address_left'")
        assert "Lovelace" not in payload  # sealed in the log
        export = live.http.get(f"/api/v1/conversations/{session.conversation_id}/export",
                               headers=live.headers)
        assert export.status_code == 200, export.text
        assert export.json()["conversation"]["reply_email"] == "Ada.Lovelace@example.com"
        # The team sees it in the inbox's entry, which the console shows.
        entry = live.http.get(f"/api/v1/conversations/{session.conversation_id}",
                              headers=live.headers)
        assert entry.json()["reply_email"] == "Ada.Lovelace@example.com", entry.text

        erased = live.http.delete(f"/api/v1/conversations/{session.conversation_id}",
                                  headers=live.headers)
        assert erased.status_code == 204, erased.text
        [(address,)] = rows(configured, "SELECT reply_email FROM conversations "
                            "WHERE conversation_id = ?", (session.conversation_id,))
        assert address == "[erased]"
        entry = live.http.get(f"/api/v1/conversations/{session.conversation_id}",
                              headers=live.headers)
        assert entry.json()["reply_email"] is None, entry.text
        refused = live.http.post(
            f"/api/v1/widgets/{live.widget_id}/reply-address", json={"email": "b@example.com"},
            headers={"Origin": ORIGIN, "Authorization": f"Bearer {session.token}"})
        assert refused.status_code in (401, 410), refused.text
    before = conversation_rows(configured)
    conn = connect(configured.database_path)
    try:
        replay(conn, default_projections(), keys=keyring_for(configured).attach(conn))
    finally:
        conn.close()
    assert conversation_rows(configured) == before
    assert b"Lovelace" not in b"".join(
        p.read_bytes() for p in configured.database_path.parent.glob("loacl.db*"))


async def test_an_agent_reply_is_mailed_to_the_visitor_once_across_a_restart(
    configured: Settings, smtp: tuple[Collector, int], provider: tuple[OpenAITestServer, str],
    clock: Clock, run_cli: RunCli,
) -> None:
    collector, _ = smtp
    live_settings = configured.model_copy(update={"handoff_mail_minutes": 0})
    with running(live_settings, provider[0], clock) as live:
        widget_id = live.widget_id
        session = live.session()
        answer = visitor_post(live, session, "/handoff", {})
        assert answer["away"]["reason"] == "nobody"
        visitor_post(live, session, "/reply-address", {"email": "ada@example.com"})
        # While the visitor's tab is open, the reply is read there, not mailed.
        async with live.tab(session) as tab:
            member_post(live, session.conversation_id, "messages", {"text": "Seen live"})
            frame = await tab.until(lambda f: f["type"] == "message")
            assert frame["message"]["text"] == "Seen live"
            await caught_up(live_settings)
        assert sent(collector) == []
        member_post(live, session.conversation_id, "messages",
                    {"text": "Your refund is on its way."})
        [mail] = await mails(collector, 1)
        assert mail["To"] == "ada@example.com"
        assert "Your refund is on its way." in mail.get_content()
        await caught_up(live_settings)
    before = conversation_rows(live_settings)

    # Restarted with the subscriber wound back to the start of the log: the mail that went
    # out is known and not sent again; a new reply is mailed once.
    conn = sqlite3.connect(live_settings.database_path)
    with conn:
        conn.execute("UPDATE subscriber_checkpoints SET position = 0 WHERE name = 'handoff-mail'")
    conn.close()
    with running(live_settings, provider[0], clock, widget_id=widget_id) as live:
        await caught_up(live_settings)
        assert len(sent(collector)) == 1
        member_post(live, session.conversation_id, "messages", {"text": "Anything else?"})
        await mails(collector, 2)
        await caught_up(live_settings)
        assert [m.get_content().count("Anything else?") for m in sent(collector)] == [0, 1]
        # The visitor coming back sees every reply in the widget's history.
        history = live.http.get(f"/api/v1/widgets/{widget_id}/messages", headers={
            "Origin": ORIGIN, "Authorization": f"Bearer {session.token}"})
        assert history.status_code == 200, history.text
        texts = [m["text"] for m in history.json()["data"] if m["role"] == "agent"]
        assert texts == ["Seen live", "Your refund is on its way.", "Anything else?"]
        assert conversation_rows(live_settings)[0][:4] == (
            before[0][0], "human", "ada@example.com", before[0][3])
    live_rows = conversation_rows(live_settings)
    conn = connect(live_settings.database_path)
    try:
        replay(conn, default_projections(), keys=keyring_for(live_settings).attach(conn))
    finally:
        conn.close()
    assert conversation_rows(live_settings) == live_rows
    assert rows(live_settings, "SELECT kind, count(*) FROM handoff_mails GROUP BY kind "
                "ORDER BY kind") == [("reply", 2), ("reply_read_live", 1)]
    code, out, _ = run_cli(live_settings.database_path, "audit", "verify")
    assert code == 0 and out.startswith("ok: "), out


async def test_when_the_assistant_asks_for_a_person_every_tab_hears_nobody_is_there(
    configured: Settings, smtp: tuple[Collector, int], provider: tuple[OpenAITestServer, str],
    clock: Clock,
) -> None:
    collector, _ = smtp
    with running(configured, provider[0], clock) as live:
        assistant = live.http.post("/api/v1/assistants", headers=live.headers, json={
            "name": "Helper", "provider": "openai", "model": "gpt-fake-1", "handoff": True})
        assert assistant.status_code == 201, assistant.text
        live.widget_id = live.widget(assistant_id=assistant.json()["id"])
        live.provider.script(calls=[FunctionCall(
            name="request_human", arguments=json.dumps({"reason": "wants a refund"}),
            call_id="call_h")])
        live.provider.script("A colleague will answer here.")
        session = live.session()
        async with live.tab(session) as tab, live.tab(session) as other:
            ack = await live.ask(tab, "I want my money back")
            await tab.follow(ack["reply_id"])
            for each in (tab, other):
                seen = [f for f in each.seen if f["type"] == "away"]
                away = seen[0] if seen else await each.until(lambda f: f["type"] == "away")
                assert away["reason"] == "nobody"
        [mail] = await mails(collector, 1)
        assert "The assistant asked for a person" in mail.get_content()
        assert "wants a refund" not in mail.get_content()


def test_presence_counts_each_socket_once() -> None:
    presence = Presence()
    first, second = presence.join("ws1"), presence.join("ws1")
    assert presence.online("ws1") and not presence.online("ws2")
    first()
    first()  # leaving twice is leaving once
    assert presence.online("ws1")
    second()
    assert not presence.online("ws1")
