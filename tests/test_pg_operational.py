"""Webhook deliveries and handoff mails' record in PostgreSQL (store.postgres.operational), for
several instances on one log: every instance lists the same deliveries; any instance's
dispatcher sends what is due, claiming it first, so that none is sent twice at once and one
left by a stopped instance is sent by another; the mails' record holds across instances.
Against a real PostgreSQL (tests/pg.py), real SQLite copies and a real HTTP receiver."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from loacl.domain.events import Metadata
from loacl.domain.webhooks import WebhookDefinition
from loacl.openai_testserver import OpenAITestServer
from loacl.services.mail import Mailer
from loacl.services.webhooks import Dispatcher, Webhooks
from loacl.settings import Settings
from loacl.store.codec import format_time
from loacl.store.eventstore import EventStore, utc_now
from loacl.store.postgres.operational import WAKE, PgDeliveries, PgHandoffMails, adopt
from loacl.store.postgres.upstream import PgUpstream
from loacl.store.projections import default_projections
from loacl.store.views import webhooks as views
from loacl.store.views.webhooks import NewDelivery, Outcome
from tests.test_handoff_mail import (
    Clock,
    member_post,
    sent,
    smtp,  # noqa: F401 (a fixture)
    visitor_post,
)
from tests.test_handoff_mail import running as handoff_running
from tests.test_mail import Collector
from tests.test_stream import provider_server
from tests.test_upstream import keyring, migrated
from tests.test_webhooks import Receiver, Site, configured, running, verified

WAIT = 30.0
OWNER = "ws_owner"
SERVER_KEY = "a server key the instances share"


@dataclass
class Instance:
    store: EventStore
    hooks: Webhooks
    table: PgDeliveries
    dispatcher: Dispatcher
    mails: PgHandoffMails


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    found.start()
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture
def provider() -> Iterator[tuple[OpenAITestServer, str]]:
    with provider_server(token_delay=0.0) as running_server:
        yield running_server


@pytest.fixture
async def instances(
    tmp_path: Path, pg_url: str, settings: Settings
) -> AsyncIterator[Callable[[str], Awaitable[Instance]]]:
    """``await instances(name)``: a LOACL instance's store and webhooks on the shared
    PostgreSQL, wired as http.app wires them (its dispatcher not started)."""
    config = settings.model_copy(update={
        "outbound_allow_private": True, "outbound_allow_http": True,
        "webhook_retry_base_seconds": 0.05, "webhook_disable_after": 10_000})
    opened: list[Instance] = []

    async def start(name: str) -> Instance:
        keys = keyring()
        upstream = PgUpstream(pg_url, keys, poll_seconds=0.2)
        store = EventStore(migrated(tmp_path / f"{name}.db"), default_projections(),
                           keyring=keys, upstream=upstream)
        table = PgDeliveries(store, upstream, lease_seconds=60)
        hooks = Webhooks(store, config, SERVER_KEY, Mailer.from_settings(config),
                         table=table)
        upstream.listen(WAKE, hooks.wake.set)
        await store.open()
        found = Instance(store, hooks, table, Dispatcher(hooks), PgHandoffMails(upstream))
        opened.append(found)
        return found

    yield start
    for instance in opened:
        await instance.dispatcher.stop()
        await instance.hooks.aclose()
        await instance.store.close()


async def until(condition: Callable[[], Awaitable[bool]], patience: float = WAIT) -> None:
    for _ in range(int(patience / 0.02)):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never held")


async def hooked(a: Instance, b: Instance, url: str) -> str:
    """An endpoint registered on ``a``, once ``b``'s copy has it too."""
    view = await a.hooks.create(OWNER, WebhookDefinition(url=url, event_types=(
        "budget.reached",)), Metadata(actor="test"))

    async def copied() -> bool:
        return await views.webhook(b.store, view.webhook_id) is not None

    await until(copied)
    return view.webhook_id


def messages(webhook_id: str, count: int, keys: int) -> list[NewDelivery]:
    """``count`` messages with their own payloads, spread over ``keys`` ordering keys."""
    return [NewDelivery(f"msg_n{n}_{webhook_id}", webhook_id, "budget.reached", 0,
                        f"key:{n % keys}", f'{{"type":"budget.reached","n":{n}}}')
            for n in range(count)]


async def pg_rows(pg_url: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(pg_url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def test_a_claimed_delivery_is_no_other_dispatchers_until_its_lease_runs_out(
    instances: Callable[[str], Awaitable[Instance]], receiver: Receiver
) -> None:
    a, b = await instances("a"), await instances("b")
    webhook_id = await hooked(a, b, receiver.url)
    assert await a.hooks.enqueue(messages(webhook_id, 12, keys=6)) == 12
    # The same messages again (a batch handed over again): nothing new.
    assert await b.hooks.enqueue(messages(webhook_id, 12, keys=6)) == 0
    now = utc_now()
    at = format_time(now)
    # Two dispatchers ask at once: each due delivery goes to one of them, and of each key
    # only the oldest (the next waits until it is delivered).
    got_a, got_b = await asyncio.gather(a.table.due(at, [], 100), b.table.due(at, [], 100))
    ids_a, ids_b = {d.delivery_id for d in got_a}, {d.delivery_id for d in got_b}
    assert not ids_a & ids_b
    assert sorted(d.ordering_key for d in [*got_a, *got_b]) == [f"key:{k}" for k in range(6)]
    # Claimed: due to nobody, not even the claimant, until the lease runs out.
    assert await a.table.due(at, [], 100) == []
    assert await b.table.due(at, [], 100) == []
    upcoming = await b.table.next_due(at)
    assert upcoming is not None and upcoming > at
    later = format_time(now + timedelta(seconds=61))
    lapsed = await b.table.due(later, [], 100)  # their instances died with the claims
    assert {d.delivery_id for d in lapsed} == ids_a | ids_b
    # Delivered: the next of its key is due.
    first = min(lapsed, key=lambda d: d.delivery_id)
    assert await b.table.record_attempt(first.delivery_id, webhook_id, Outcome(
        "delivered", 204, 1.0, None, later), later) == 0
    following = await a.table.due(later, [], 100)
    assert [d.ordering_key for d in following] == [first.ordering_key]
    assert following[0].delivery_id > first.delivery_id
    # Given back: due again at once, to anyone.
    await a.table.release([following[0].delivery_id])
    assert [d.delivery_id for d in await b.table.due(later, [], 100)] == [
        following[0].delivery_id]
    # Both instances read the same log of deliveries.
    page_a = await a.hooks.deliveries(OWNER, webhook_id, 0, 100)
    page_b = await b.hooks.deliveries(OWNER, webhook_id, 0, 100)
    assert page_a == page_b and len(page_a.items) == 12
    assert [d.status for d in page_a.items].count("delivered") == 1


async def test_dispatchers_on_two_instances_send_each_delivery_once(
    instances: Callable[[str], Awaitable[Instance]], receiver: Receiver, pg_url: str
) -> None:
    """Both dispatchers run at once over 60 deliveries of 20 keys, the receiver slow enough
    that their sends overlap: each message arrives once, and in order within its key."""
    a, b = await instances("a"), await instances("b")
    receiver.delay = 0.02
    webhook_id = await hooked(a, b, receiver.url)
    view = await views.webhook(a.store, webhook_id)
    assert view is not None
    sent = messages(webhook_id, 60, keys=20)
    await a.hooks.enqueue(sent)
    a.dispatcher.start()
    b.dispatcher.start()
    seen = await asyncio.to_thread(receiver.wait_for, lambda r: len(r) >= 60)
    await asyncio.sleep(0.3)  # nothing more comes
    seen = list(receiver.received)
    assert collections.Counter(r.id for r in seen) == {m.message_id: 1 for m in sent}
    secret = a.hooks.secret(webhook_id, view.secret_generation)
    by_key: dict[int, list[int]] = {}
    for r in seen:
        n = int(verified(r, secret)["n"])
        by_key.setdefault(n % 20, []).append(n)
    assert all(ns == sorted(ns) for ns in by_key.values()), by_key

    async def settled() -> bool:
        rows = await pg_rows(pg_url, "SELECT count(*) FROM webhook_deliveries "
                             "WHERE status = 'delivered' AND attempts = 1 "
                             "AND claimed_by IS NULL")
        return rows == [(60,)]

    await until(settled)
    # The instances' own files hold none: the deliveries live in PostgreSQL.
    for instance in (a, b):
        assert await instance.store.query("SELECT count(*) FROM webhook_deliveries") == [(0,)]


async def test_a_delivery_one_instance_enqueued_is_sent_by_another(
    instances: Callable[[str], Awaitable[Instance]], receiver: Receiver
) -> None:
    """A's dispatcher is not running (A stopped sending, or is gone): B, woken by the
    notification, sends what A enqueued; a redelivery asked for on B is sent once more,
    under the same id."""
    a, b = await instances("a"), await instances("b")
    webhook_id = await hooked(a, b, receiver.url)
    b.dispatcher.start()
    test = await a.hooks.send_test(OWNER, webhook_id)
    seen = await asyncio.to_thread(receiver.wait_for, lambda r: len(r) >= 1)
    assert [r.id for r in seen] == [test.message_id]

    async def delivered() -> bool:
        found = await a.hooks.delivery(OWNER, webhook_id, test.delivery_id)
        return found.status == "delivered"

    await until(delivered)
    again = await b.hooks.redeliver(OWNER, webhook_id, test.delivery_id)
    assert again.message_id == test.message_id  # pending, or sent already
    seen = await asyncio.to_thread(receiver.wait_for, lambda r: len(r) >= 2)
    await until(delivered)
    await asyncio.sleep(0.3)
    assert [r.id for r in receiver.received] == [test.message_id] * 2
    shown = await a.hooks.delivery(OWNER, webhook_id, test.delivery_id)
    assert shown == await b.hooks.delivery(OWNER, webhook_id, test.delivery_id)
    assert shown.attempts == 2 and shown.response_status == 204


async def test_a_dispatcher_that_stops_gives_its_claims_back(
    instances: Callable[[str], Awaitable[Instance]], receiver: Receiver
) -> None:
    """A stops while its sends wait for a slow receiver: what it had claimed is given back
    and sent by B at once, not after the lease."""
    a, b = await instances("a"), await instances("b")
    receiver.delay = 1.0
    webhook_id = await hooked(a, b, receiver.url)
    a.dispatcher.start()
    sent = messages(webhook_id, 3, keys=3)
    await a.hooks.enqueue(sent)
    await asyncio.to_thread(receiver.wait_for, lambda r: len(r) >= 3)
    await a.dispatcher.stop()  # its three sends cut short, unrecorded
    receiver.delay = 0.0
    b.dispatcher.start()
    seen = await asyncio.to_thread(receiver.wait_for, lambda r: len(r) >= 6, 10.0)
    # Sent again with the same ids (at least once): B took them over well before 60 s.
    assert collections.Counter(r.id for r in seen) == {m.message_id: 2 for m in sent}

    async def delivered() -> bool:
        page = await a.hooks.deliveries(OWNER, webhook_id, 0, 10)
        return {d.status for d in page.items} == {"delivered"}

    await until(delivered, 10.0)
    await asyncio.sleep(0.3)
    assert len(receiver.received) == 6


async def test_handoff_mails_sent_on_one_instance_are_known_on_another(
    instances: Callable[[str], Awaitable[Instance]],
) -> None:
    a, b = await instances("a"), await instances("b")
    assert not await b.mails.was_sent("waiting", "7")
    await a.mails.record("waiting", "7", "conv-1", "2026-01-01T10:00:00.000000+00:00")
    await a.mails.record("waiting", "9", "conv-1", "2026-01-01T10:05:00.000000+00:00")
    await b.mails.record("waiting", "7", "conv-1", "2026-01-01T11:00:00.000000+00:00")
    assert await b.mails.was_sent("waiting", "7")
    assert not await b.mails.was_sent("reply", "7")
    assert await b.mails.last_sent("conv-1", "waiting") == "2026-01-01T10:05:00.000000+00:00"
    assert await a.mails.last_sent("conv-2", "waiting") is None
    for instance in (a, b):
        assert await instance.store.query("SELECT count(*) FROM handoff_mails") == [(0,)]


def settled(site: Site, webhook_id: str, count: int) -> list[dict[str, Any]]:
    """The endpoint's delivery log through ``site``'s owner API, once it holds ``count``
    deliveries, none of them pending."""
    deadline = time.monotonic() + WAIT
    while True:
        listed = site.http.get(f"/api/v1/webhooks/{webhook_id}/deliveries?limit=100",
                               headers=site.headers)
        assert listed.status_code == 200, listed.text
        entries: list[dict[str, Any]] = listed.json()["data"]
        if len(entries) == count and all(e["status"] == "delivered" for e in entries):
            return entries
        assert time.monotonic() < deadline, entries
        time.sleep(0.05)


@pytest.mark.e2e
def test_two_servers_share_one_delivery_log_and_either_sends(
    settings: Settings, provider: tuple[OpenAITestServer, str], receiver: Receiver,
    pg_url: str, tmp_path: Path,
) -> None:
    """Two LOACL servers on one PostgreSQL: what a visitor does on A reaches the endpoint once
    per event; both servers' owner APIs list the same deliveries; a redelivery and a test asked
    on B are sent once each; deliveries A enqueued while the receiver was down are sent by B
    once A is gone."""
    shared = configured(settings, provider, webhook_disable_after=10_000).model_copy(
        update={"database_url": pg_url})
    one = shared.model_copy(update={"instance_database": tmp_path / "one.db"})
    two = shared.model_copy(update={"instance_database": tmp_path / "two.db"})
    with contextlib.ExitStack() as stop_b, contextlib.ExitStack() as stop_a:
        # A first: it holds the webhook subscriber's lock, and enqueues what happens.
        a = stop_a.enter_context(running(one))
        hook = a.hook(receiver.url)
        b = stop_b.enter_context(running(two, first=False))
        provider[0].script("The answer is 42.")
        a.ask(a.visitor(), "What is the answer?")
        seen = receiver.wait_for(lambda r: len(r) >= 3)
        entries = settled(a, hook["id"], 3)
        time.sleep(0.3)  # nothing more comes
        assert collections.Counter(r.id for r in receiver.received) == {
            r.id: 1 for r in seen}
        assert [verified(r, hook["secret"])["type"] for r in seen] == [
            "conversation.started", "message.posted", "reply.completed"]
        assert settled(b, hook["id"], 3) == entries
        # A redelivery and a test, asked on B: each sent once more.
        first = entries[-1]["id"]
        again = b.http.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{first}/redeliver",
                            headers=b.headers)
        assert again.status_code == 202, again.text
        test = b.http.post(f"/api/v1/webhooks/{hook['id']}/test", headers=b.headers)
        assert test.status_code == 202, test.text
        receiver.wait_for(lambda r: len(r) >= 5)
        entries = settled(b, hook["id"], 4)
        time.sleep(0.3)
        counted = collections.Counter(r.id for r in receiver.received)
        assert counted[seen[0].id] == 2 and sum(counted.values()) == 5
        assert settled(a, hook["id"], 4) == entries
        # The receiver goes down; a visitor asks on A, whose outbox enqueues and whose
        # attempts fail; then A stops, and the receiver comes back.
        receiver.stop()
        receiver.received.clear()
        provider[0].script("Again.")
        a.ask(a.visitor(), "Once more?")
        deadline = time.monotonic() + WAIT
        while True:
            listed = a.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries?limit=100",
                                headers=a.headers).json()["data"]
            # The first of the conversation tried (the others wait for it, in order).
            if len(listed) == 7 and int(listed[2]["attempts"]) > 0:
                break
            assert time.monotonic() < deadline, listed
            time.sleep(0.05)
        stop_a.close()
        receiver.start()
        later = receiver.wait_for(lambda r: len(r) >= 3)
        entries = settled(b, hook["id"], 7)
        time.sleep(0.3)
        assert collections.Counter(r.id for r in receiver.received) == {
            r.id: 1 for r in later}
        assert [verified(r, hook["secret"])["type"] for r in later] == [
            "conversation.started", "message.posted", "reply.completed"]
        assert int(entries[2]["attempts"]) > 1  # retried: the first try was A's


def old_rows(n: int) -> Callable[[sqlite3.Connection], None]:
    """What a copy that ran the subscribers kept before PostgreSQL held these tables: a
    delivered and a pending delivery, an endpoint's failures, a mail sent."""
    def write(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for message_id, status in ((f"msg_{n}_old", "delivered"), (f"msg_{n + 1}_old",
                                                                   "pending")):
            conn.execute(
                "INSERT INTO webhook_deliveries (message_id, webhook_id, event_type, "
                "source_seq, ordering_key, payload, status, attempts, created_at, "
                "retry_until, next_attempt_at) VALUES (?, 'wh_old', 'budget.reached', 0, "
                "'k', '{}', ?, 1, '2026-01-01T00:00:00.000000+00:00', "
                "'2026-01-02T00:00:00.000000+00:00', '2026-01-01T00:00:00.000000+00:00')",
                (message_id, status))
        conn.execute("INSERT INTO webhook_health (webhook_id, failures_in_row) "
                     "VALUES ('wh_old', 1)")
        conn.execute("INSERT INTO handoff_mails VALUES ('waiting', ?, 'c1', "
                     "'2026-01-01T00:00:00.000000+00:00')", (str(n),))
        conn.execute("COMMIT")

    return write


async def test_deliveries_and_mails_a_copy_kept_before_move_into_postgresql(
    instances: Callable[[str], Awaitable[Instance]], pg_url: str
) -> None:
    """An instance whose copy ran the subscribers before these tables were in PostgreSQL
    hands its rows over when it starts (http.app): the pending delivery is sent from there,
    the mail is known sent; a row PostgreSQL has already stays as it is there."""
    a, b = await instances("a"), await instances("b")
    await a.store.run_on_writer(old_rows(1))
    await b.store.run_on_writer(old_rows(2))  # msg_2_old: in both copies
    assert a.store.upstream is not None and b.store.upstream is not None
    assert await adopt(a.store, a.store.upstream) == {
        "webhook_deliveries": 2, "webhook_health": 1, "handoff_mails": 1}
    assert await adopt(a.store, a.store.upstream) == {}
    await adopt(b.store, b.store.upstream)
    assert await pg_rows(pg_url, "SELECT message_id, status FROM webhook_deliveries "
                         "ORDER BY delivery_id") == [
        ("msg_1_old", "delivered"), ("msg_2_old", "pending"), ("msg_3_old", "pending")]
    assert await pg_rows(pg_url, "SELECT * FROM webhook_health") == [("wh_old", 1, None, None)]
    assert await b.mails.was_sent("waiting", "1") and await a.mails.was_sent("waiting", "2")
    for instance in (a, b):
        for table in ("webhook_deliveries", "webhook_health", "handoff_mails"):
            assert await instance.store.query(f"SELECT count(*) FROM {table}") == [(0,)]


async def effect_caught_up(pg_url: str, name: str) -> None:
    """Until the effect ``name`` (its checkpoint in PostgreSQL) has handled the whole log."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = await pg_rows(pg_url, "SELECT (SELECT seq FROM event_log_head WHERE id = 1) <= "
                              f"coalesce((SELECT position FROM subscriber_checkpoints "
                              f"WHERE name = '{name}'), -1)")
        if found == [(True,)]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} did not catch up")


async def mailed(collector: Collector, count: int) -> list[EmailMessage]:
    deadline = time.monotonic() + WAIT
    while len(sent(collector)) < count:
        assert time.monotonic() < deadline, collector.messages
        await asyncio.sleep(0.05)
    return list(sent(collector))


@pytest.mark.e2e
async def test_handoff_mails_sent_by_one_server_are_not_sent_again_by_another(
    settings: Settings, smtp: tuple[Collector, int],  # noqa: F811
    provider: tuple[OpenAITestServer, str], pg_url: str, tmp_path: Path,
) -> None:
    """A sends the team's mail and a member's reply to the visitor, then stops; B takes the
    handoff-mail subscriber over from a checkpoint wound back to the log's start: the mails'
    record is PostgreSQL's, so B sends neither again, and mails the next reply once."""
    collector, port = smtp
    shared = settings.model_copy(update={
        "database_url": pg_url, "openai_api_key": "sk-test",
        "openai_base_url": f"{provider[1]}/v1", "require_verified_email": False,
        "provider_max_retries": 0, "smtp_host": "127.0.0.1", "smtp_port": port,
        "smtp_security": "none", "public_url": "https://chat.example.com",
        "access_token_expire_minutes": 600, "typing_interval_seconds": 60.0})
    one = shared.model_copy(update={"instance_database": tmp_path / "one.db"})
    two = shared.model_copy(update={"instance_database": tmp_path / "two.db"})
    clock = Clock()
    with handoff_running(one, provider[0], clock) as a:
        widget_id = a.widget_id
        session = a.session()
        visitor_post(a, session, "/handoff", {})
        visitor_post(a, session, "/reply-address", {"email": "ada@example.com"})
        member_post(a, session.conversation_id, "messages", {"text": "Your refund is sent."})
        first = await mailed(collector, 2)
        await effect_caught_up(pg_url, "handoff-mail")
    assert sorted(str(m["To"]) for m in first) == [
        "ada@example.com", "owner@example.com"]
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "UPDATE subscriber_checkpoints SET position = 0 WHERE name = 'handoff-mail'")
    finally:
        await conn.close()
    with handoff_running(two, provider[0], clock, widget_id=widget_id) as b:
        await effect_caught_up(pg_url, "handoff-mail")
        assert len(sent(collector)) == 2
        member_post(b, session.conversation_id, "messages", {"text": "Anything else?"})
        await mailed(collector, 3)
        await effect_caught_up(pg_url, "handoff-mail")
        await asyncio.sleep(0.3)
        assert [m.get_content().count("Anything else?") for m in sent(collector)] == [0, 0, 1]
    assert await pg_rows(pg_url, "SELECT kind, count(*) FROM handoff_mails GROUP BY kind "
                         "ORDER BY kind") == [("reply", 2), ("waiting", 1)]
    for path in (one.database_path, two.database_path):
        local = sqlite3.connect(path)
        try:
            assert local.execute("SELECT count(*) FROM handoff_mails").fetchone() == (0,)
        finally:
            local.close()
