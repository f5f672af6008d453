"""Two LOACL servers on one log in PostgreSQL (``DATABASE_URL=postgresql://...``), each with its
own SQLite copy: a visitor's tabs on different instances both see every reply live, whichever
instance runs it, with nothing lost or repeated (the tabs check each delta starts where the last
ended); the log in PostgreSQL and both copies hold the same chain. Real uvicorn servers, real
WebSocket clients, the real openai SDK against the test server, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from loacl.http.app import create_app
from loacl.openai_testserver import OpenAITestServer, Stall, split_deltas
from loacl.services.keys import keyring_for
from loacl.settings import Settings
from loacl.store import audit
from loacl.store.keys import Keyring, MasterKeys
from loacl.store.postgres.eventstore import PgEventStore
from loacl.store.sqlite import connect
from tests.live import serve
from tests.test_stream import ORIGIN, WAIT, Live, Log, provider_server, reply_text, start

pytestmark = pytest.mark.e2e


@pytest.fixture
def provider() -> Iterator[tuple[OpenAITestServer, str]]:
    with provider_server() as running_server:
        yield running_server


def chain(path: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute("SELECT seq, hash FROM events ORDER BY seq").fetchall())
    finally:
        conn.close()


async def level(*paths: Path) -> list[tuple[int, str]]:
    """Wait until every copy holds the same events (NOTIFY, or the poll, brings them level)."""
    for _ in range(int(WAIT / 0.05)):
        if len({tuple(chain(p)) for p in paths}) == 1:
            return chain(paths[0])
        await asyncio.sleep(0.05)
    raise AssertionError("the copies never came level")


@contextlib.contextmanager
def two_instances(
    settings: Settings, provider: tuple[OpenAITestServer, str], pg_url: str, tmp_path: Path,
    shared: dict[str, Any] | None = None, first: dict[str, Any] | None = None,
) -> Iterator[tuple[Live, Live]]:
    """Instance A (an owner, a widget, the test server) and instance B on one log in
    PostgreSQL, each with its own copy, both with the same data folder (the same signing secret
    and master key). B starts after A has its owner and widget: it copies the log on start."""
    common = settings.model_copy(update={"database_url": pg_url, **(shared or {})})
    one = common.model_copy(update={"instance_database": tmp_path / "one.db", **(first or {})})
    two = common.model_copy(update={
        "instance_database": tmp_path / "two.db",
        "openai_api_key": "sk-test", "openai_base_url": f"{provider[1]}/v1",
        "require_verified_email": False, "provider_max_retries": 0,
    })
    with start(one, provider) as a, serve(create_app(two)) as url_b, httpx.Client(
        base_url=url_b, timeout=WAIT
    ) as http_b:
        yield a, Live(url_b, two, a.provider, http_b, a.headers, a.widget_id, Log(two))


async def postgres_chain(pg_url: str, settings: Settings) -> list[tuple[int, str]]:
    """The log in PostgreSQL, verified: its positions and hashes."""
    keys = keyring_for(settings) or Keyring(MasterKeys(lambda: []))
    async with PgEventStore(pg_url, keyring=keys) as pg:
        result = await pg.verify()
        assert result.ok, result
        return [(r.seq, r.hash) for r in await pg.read_all()]


async def test_tabs_on_two_instances_see_every_reply_live(
    settings: Settings, provider: tuple[OpenAITestServer, str], pg_url: str, tmp_path: Path
) -> None:
    with two_instances(settings, provider, pg_url, tmp_path) as (a, b):
        # The owner's token from instance A works on B (one secret, one log).
        listed = await asyncio.to_thread(b.http.get, "/api/v1/widgets", headers=a.headers)
        assert listed.status_code == 200, listed.text
        assert [w["id"] for w in listed.json()["data"]] == [a.widget_id]

        session = a.session()
        await level(a.settings.database_path, b.settings.database_path)
        text_a, text_b = reply_text(40, "from A"), reply_text(40, "from B")
        async with a.tab(session) as on_a, b.tab(session) as on_b:
            # Asked on A: A's provider call, B's tab follows through the copy.
            a.provider.script(text_a, [Stall(seconds=0.3, after_deltas=8)])
            ack = await a.ask(on_a, "Asked on A")
            started = await on_b.next_kind("started")
            assert started["reply_id"] == ack["reply_id"]
            assert started["message"]["text"] == "Asked on A"
            seen_a = await on_a.follow(ack["reply_id"])
            seen_b = await on_b.follow(ack["reply_id"])
            assert seen_a.text == seen_b.text == text_a
            assert seen_b.done is not None and seen_b.done["status"] == "completed"
            # Asked on B: B runs the reply, A's tab follows.
            a.provider.script(text_b)
            ack_b = await b.ask(on_b, "Asked on B")
            again_a = await on_a.follow(ack_b["reply_id"])
            again_b = await on_b.follow(ack_b["reply_id"])
            assert again_a.text == again_b.text == text_b
            assert again_a.done is not None and again_a.done["status"] == "completed"
        # A resume on the other instance gets exactly what the tab missed (here: nothing
        # but the finished conversation, read from B's copy).
        history = await asyncio.to_thread(
            b.http.get, f"/api/v1/widgets/{a.widget_id}/messages",
            headers={"Authorization": f"Bearer {session.token}", "Origin": ORIGIN},
        )
        assert history.status_code == 200, history.text
        texts = [m["text"] for m in history.json()["data"]]
        assert texts == ["Asked on A", text_a, "Asked on B", text_b]
        copies = await level(a.settings.database_path, b.settings.database_path)
    # The log in PostgreSQL is the copies' chain, and each verifies.
    assert await postgres_chain(pg_url, a.settings) == copies
    for path in (a.settings.database_path, b.settings.database_path):
        conn = connect(path)
        try:
            assert audit.verify(conn).ok
        finally:
            conn.close()


async def test_a_tab_on_another_instance_gets_the_text_before_the_log_has_it(
    settings: Settings, provider: tuple[OpenAITestServer, str], pg_url: str, tmp_path: Path
) -> None:
    """The instance running a reply sends its text live to an instance whose tab follows it
    (services.remote_replies), before the log has it: with a flush window longer than the
    reply, the other tab has the first pieces while the provider stalls and PostgreSQL holds
    no delta yet. Then the log brings the rest and the end: nothing twice, nothing missing."""
    with two_instances(settings, provider, pg_url, tmp_path,
                       shared={"flush_interval_ms": 5000},
                       first={"provider_read_timeout": 5.0}) as (a, b):
        session = a.session()
        await level(a.settings.database_path, b.settings.database_path)
        text = reply_text(40, "live ")
        before_stall = "".join(split_deltas(text)[:8])
        async with a.tab(session) as on_a, b.tab(session) as on_b:
            # Eight pieces, then nothing until A gives up on the provider (read timeout).
            a.provider.script(text, [Stall(seconds=WAIT, after_deltas=8)])
            ack = await a.ask(on_a, "Asked on A")
            reply_id = ack["reply_id"]
            started = await on_b.next_kind("started")
            assert started["reply_id"] == reply_id
            seen = await on_b.follow(reply_id, stop_after=len(before_stall))
            assert seen.text == before_stall  # deltas checked gapless as they came
            conn = await asyncpg.connect(pg_url)
            try:
                in_log = await conn.fetchval(
                    "SELECT count(*) FROM events WHERE type IN ('assistant.delta', "
                    "'assistant.completed', 'assistant.failed', 'assistant.interrupted')")
            finally:
                await conn.close()
            assert in_log == 0, "the text reached the other tab before the log had any of it"
            # The reply fails at the stall; the end in the log carries the same text.
            end_a = await on_a.follow(reply_id)
            end_b = await on_b.follow(reply_id)
            assert end_a.text == end_b.text == before_stall
            assert end_b.done is not None and end_b.done["status"] == "failed"
        copies = await level(a.settings.database_path, b.settings.database_path)
    assert await postgres_chain(pg_url, a.settings) == copies


async def test_a_tab_on_another_instance_hears_a_reply_start_before_its_copy_has_it(
    settings: Settings, provider: tuple[OpenAITestServer, str], pg_url: str, tmp_path: Path
) -> None:
    """The instance starting a reply says so live (``STARTED``, services.remote_replies), so a
    tab on another instance hears ``started`` and the first pieces while that instance's copy
    cannot take the start (its file held by another writer here). Once the copy takes it, the
    log's start is no news to the tab: one ``started``, the text once, one ``done``."""
    with two_instances(settings, provider, pg_url, tmp_path) as (a, b):
        session = a.session()
        await level(a.settings.database_path, b.settings.database_path)
        text = reply_text(40, "early ")
        before_stall = "".join(split_deltas(text)[:8])
        async with a.tab(session) as on_a, b.tab(session) as on_b:
            held = sqlite3.connect(b.settings.database_path, isolation_level=None)
            try:
                held.execute("BEGIN IMMEDIATE")  # B's copy waits for this writer
                a.provider.script(text, [Stall(seconds=0.5, after_deltas=8)])
                ack = await a.ask(on_a, "Asked on A")
                reply_id = ack["reply_id"]
                started = await on_b.next_kind("started")
                assert started["reply_id"] == reply_id
                assert started["message"]["text"] == "Asked on A"
                seen = await on_b.follow(reply_id, stop_after=len(before_stall))
                assert seen.text == before_stall
                # The reply ends on A; B's tab has all its text, its end waits for the copy.
                end_a = await on_a.follow(reply_id)
                seen = await on_b.follow(reply_id, stop_after=len(text))
                assert end_a.text == seen.text == text
                assert seen.done is None
                in_copy = held.execute(
                    "SELECT count(*) FROM events WHERE type = 'assistant.started'").fetchone()[0]
                assert in_copy == 0, "the tab heard the start before its instance's copy had it"
            finally:
                held.execute("ROLLBACK")
                held.close()
            # The copy takes the start and the end at once; the end is news, the start not.
            end_b = await on_b.follow(reply_id)
            assert end_b.text == text
            assert end_b.done is not None and end_b.done["status"] == "completed"
            copies = await level(a.settings.database_path, b.settings.database_path)
            a.provider.script(reply_text(5, "again "))
            await a.ask(on_a, "Again")
            await on_b.next_kind("started")
            starts = [f for f in on_b.seen if f["type"] == "started"
                      and f["reply_id"] == reply_id]
            assert len(starts) == 1, starts
    assert (await postgres_chain(pg_url, a.settings))[:len(copies)] == copies
