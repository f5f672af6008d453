"""``loacl copy``: a log moved from a SQLite file to a real PostgreSQL server (tests/pg.py) and
back into a new SQLite file, through the real command, byte for byte, its chain checked on
arrival; sealed fields open with the same master key on both sides, an erased subject stays
erased, and the SQLite copy is a working database (audit, read tables, views)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from loacl.cli import main
from loacl.domain.accounts import EmailVerified
from loacl.domain.conversations import MessagePosted
from loacl.domain.privacy import is_erased
from loacl.domain.widgets import ConversationStarted
from loacl.settings import CONFIG_ENV, ENV_NAMES, Settings, write_master_keys
from loacl.store import copy
from loacl.store.eventstore import EventStore
from loacl.store.keys import Keyring, MasterKeys
from loacl.store.postgres import migrate
from loacl.store.postgres.eventstore import PgEventStore
from loacl.store.projections import default_projections
from loacl.store.replay import dump_tables
from loacl.store.sqlite import connect
from loacl.store.views import conversations as views
from tests.test_replay_catalog import MASTER, _live

Cli = Callable[..., tuple[int, str, str]]
EVENTS = "SELECT seq, stream, version, type, schema_version, payload, metadata, recorded_at, hash"
KEYS = "SELECT key_id, subject, wrapped, master_id, created_at, erased_at FROM data_keys"


def keyring() -> Keyring:
    return Keyring(MasterKeys(lambda: [MASTER]))


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def data_dir(chdir_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [CONFIG_ENV, *ENV_NAMES.values()]:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("LOACL_"):
            monkeypatch.delenv(name)
    folder = chdir_tmp / "data"
    write_master_keys(Settings(data_dir=folder), [MASTER])
    return folder


@pytest.fixture
def back_path(tmp_path: Path) -> Path:
    """The SQLite file a log is copied back into (and the CLI's configured database)."""
    return tmp_path / "back" / "loacl.db"


@pytest.fixture
def cli(
    data_dir: Path, back_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Cli]:
    config = data_dir.parent / "settings.toml"
    config.write_text(f'database_url = "sqlite:///{back_path}"\ndata_dir = "{data_dir}"\n')

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--config", str(config), *args])
        out, err = capsys.readouterr()
        return code, out, err

    yield run


@pytest.fixture
def source(db_path: Path, data_dir: Path) -> Path:
    """A sealed log of several streams: an assistant, a widget, two conversations with replies
    (the second erased), an append with an idempotency key, and two subscribers' checkpoints
    (one acting outside the database, one keeping a table of its own)."""
    asyncio.run(_live(db_path, [
        ("assistant", 0, 0), ("widget", 0, 0),
        ("conversation", 0, 0), ("ask", 0, 1), ("stream", 0, 1), ("stream", 0, 3),
        ("finish", 0, 0),
        ("conversation", 0, 0), ("ask", 1, 4), ("stream", 1, 4), ("finish", 1, 1),
        ("erase", 1, 0),
    ]))

    async def more() -> None:
        async with EventStore(db_path, default_projections(), keyring=keyring()) as store:
              await store.append("user-u9", [EmailVerified(user_id="u9")], idempotency_key="k1")
              await store.checkpoint("mailer")
              await store.advance_checkpoint("mailer", 0, 3)
              await store.checkpoint("usage")
              await store.advance_checkpoint("usage", 0, 5)

    asyncio.run(more())
    return db_path


NEW = {"new", "m-new", "v-new"}  # the conversation begun on PostgreSQL, and its message


def read_tables(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = connect(path)
    try:
        return dump_tables(conn, default_projections().tables)
    finally:
        conn.close()


def conversation_ids(path: Path) -> list[str]:
    return [cid for (cid,) in sqlite_rows(
        path, "SELECT conversation_id FROM conversations ORDER BY created_seq"
    )]


def test_a_log_goes_to_postgresql_and_back(
    source: Path, pg_url: str, back_path: Path, cli: Cli
) -> None:
    kept, erased = conversation_ids(source)
    events = sqlite_rows(source, f"{EVENTS} FROM events ORDER BY seq")
    (head,) = sqlite_rows(source, "SELECT seq, hash FROM event_log_head")
    assert len({stream for _, stream, *_ in events}) >= 5

    code, out, err = cli("copy", "--from", f"sqlite:///{source}", "--to", pg_url)
    assert code == 0, err
    assert f"copied {head[0]} events, last hash {head[1]}" in out
    assert "copy:" in err and f"{head[0]}/{head[0]} events (100%)" in err  # progress
    assert "usage" in out  # its checkpoint stayed behind: it rebuilds its table

    # Byte for byte: events, head, idempotency keys, data keys with their ids, key state.
    assert pg_rows(pg_url, f"{EVENTS} FROM events ORDER BY seq") == events
    assert pg_rows(pg_url, "SELECT seq, hash FROM event_log_head") == [head]
    assert pg_rows(pg_url, "SELECT * FROM append_keys") == sqlite_rows(
        source, "SELECT * FROM append_keys")
    keys = sqlite_rows(source, f"{KEYS} ORDER BY key_id")
    assert pg_rows(pg_url, f"{KEYS} ORDER BY key_id") == keys
    assert any(wrapped is None for _, _, wrapped, *_ in keys)  # the erased subject's
    assert pg_rows(
        pg_url, "SELECT master_id, erasures, sealed_after FROM key_state"
    ) == sqlite_rows(source, "SELECT master_id, erasures, sealed_after FROM key_state")
    assert pg_rows(pg_url, "SELECT name, position FROM subscriber_checkpoints") == [
        ("mailer", 3)
    ]

    (widget,) = sqlite_rows(source, "SELECT widget_id FROM widgets")

    async def through_stores() -> None:
        async with EventStore(source, default_projections(), keyring=keyring()) as original, \
                PgEventStore(pg_url, keyring=keyring()) as moved:
            assert (await moved.verify()).ok
            # Sealed fields open with the same master key; the erased subject reads as erased.
            for cid in (kept, erased):
                stream = f"conversation-{cid}"
                assert await moved.read_stream(stream) == await original.read_stream(stream)
            texts = [r.event.text for r in await moved.read_stream(f"conversation-{kept}")
                     if isinstance(r.event, MessagePosted)]
            assert texts and not any(is_erased(t) for t in texts)
            gone = [r.event.text for r in await moved.read_stream(f"conversation-{erased}")
                    if isinstance(r.event, MessagePosted)]
            assert gone and all(is_erased(t) for t in gone)
            # The idempotency key came along: a retry answers with the first append's event.
            (retried,) = await moved.append("user-u9", [EmailVerified(user_id="u9")],
                                            idempotency_key="k1")
            assert (retried.seq, await moved.head()) == (events[-1][0], head[0])
            # A conversation after the move.
            await moved.append("conversation-new", [
                ConversationStarted(conversation_id="new", widget_id=widget[0], visitor_id="v-new"),
                MessagePosted(conversation_id="new", message_id="m-new", text="after the move"),
            ])

    asyncio.run(through_stores())
    # The new subject's data key took an id after the copied ones: no id is used twice.
    assert pg_rows(pg_url, "SELECT max(key_id) FROM data_keys") == [(keys[-1][0] + 1,)]
    grown = pg_rows(pg_url, f"{EVENTS} FROM events ORDER BY seq")
    assert len(grown) == len(events) + 2

    # And back, into a new SQLite file, which the CLI's settings name.
    code, out, err = cli("copy", "--from", pg_url, "--to", f"sqlite:///{back_path}")
    assert code == 0, err
    assert f"copied {len(grown)} events" in out
    assert "replay:" in err and "verify:" in err
    assert sqlite_rows(back_path, f"{EVENTS} FROM events ORDER BY seq") == grown
    assert sqlite_rows(back_path, f"{KEYS} ORDER BY key_id") == pg_rows(
        pg_url, f"{KEYS} ORDER BY key_id")
    assert sqlite_rows(back_path, "SELECT name, position FROM subscriber_checkpoints") == [
        ("mailer", 3)
    ]
    assert not back_path.with_name(back_path.name + ".copy").exists()

    code, out, err = cli("audit", "verify")
    assert code == 0, out + err
    assert out.startswith(f"ok: {len(grown)} events, last hash {grown[-1][8]}")

    # The read tables are what the source's were, and the new conversation is in them.
    copied_back, original_tables = (
        {table: [row for row in rows if not NEW & set(row)] for table, rows in found.items()}
        for found in (read_tables(back_path), read_tables(source))
    )
    assert copied_back == original_tables
    assert sum(map(len, copied_back.values())) >= 8  # an assistant, a widget, two talks

    async def through_views() -> None:
        async with EventStore(source, default_projections(), keyring=keyring()) as original:
            before = await views.history(original, kept)
        async with EventStore(back_path, default_projections(), keyring=keyring()) as store:
            found = await views.conversation(store, kept)
            assert found is not None and not found.erased
            history = await views.history(store, kept)
            assert [(m.role, m.text) for m in history] == [(m.role, m.text) for m in before]
            assert [m.role for m in history] == ["user", "assistant"] and history[0].text
            gone = await views.conversation(store, erased)
            assert gone is not None and gone.erased
            assert [m.text for m in await views.history(store, "new")] == ["after the move"]
            assert (await store.verify()).ok

    asyncio.run(through_views())


def test_a_target_that_holds_events_is_refused_and_left_alone(
    source: Path, pg_url: str, back_path: Path, cli: Cli
) -> None:
    async def one_event() -> None:
        async with PgEventStore(pg_url) as store:
            await store.append("user-x", [EmailVerified(user_id="x")])

    asyncio.run(one_event())
    before = pg_rows(pg_url, f"{EVENTS} FROM events")
    code, _, err = cli("copy", "--from", f"sqlite:///{source}", "--to", pg_url)
    assert code == 1 and "[copy_target_not_empty]" in err
    assert pg_rows(pg_url, f"{EVENTS} FROM events") == before
    assert pg_rows(pg_url, "SELECT count(*) FROM data_keys") == [(0,)]

    # A SQLite file with events is not overwritten either.
    kept = digest(source)
    code, _, err = cli("copy", "--from", pg_url, "--to", f"sqlite:///{source}")
    assert code == 1 and "[copy_target_not_empty]" in err
    assert digest(source) == kept


def test_a_source_with_a_broken_chain_is_refused_on_arrival(
    source: Path, pg_url: str, back_path: Path, cli: Cli
) -> None:
    conn = sqlite3.connect(source)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET payload = replace(payload, 'u9', 'u8') WHERE seq = "
                 "(SELECT max(seq) FROM events)")
    conn.commit()
    (bad,) = conn.execute("SELECT max(seq) FROM events").fetchone()
    conn.close()

    code, _, err = cli("copy", "--from", f"sqlite:///{source}", "--to", pg_url)
    assert code == 1 and "[copy_not_verified]" in err and f"event {bad}" in err
    # Rolled back: the database is as empty as it was.
    assert pg_rows(pg_url, "SELECT count(*) FROM events") == [(0,)]
    assert pg_rows(pg_url, "SELECT seq FROM event_log_head") == [(0,)]
    assert pg_rows(pg_url, "SELECT count(*) FROM data_keys") == [(0,)]


def test_a_broken_postgresql_log_leaves_no_sqlite_file(
    pg_url: str, back_path: Path, cli: Cli
) -> None:
    async def three_events_one_edited() -> None:
        async with PgEventStore(pg_url) as store:
            for n in range(3):
                await store.append(f"user-{n}", [EmailVerified(user_id=f"u{n}")])
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("ALTER TABLE events DISABLE TRIGGER events_no_update")
            await conn.execute("UPDATE events SET payload = replace(payload, 'u1', 'u7') "
                               "WHERE seq = 2")
        finally:
            await conn.close()

    asyncio.run(three_events_one_edited())
    code, _, err = cli("copy", "--from", pg_url, "--to", f"sqlite:///{back_path}")
    assert code == 1 and "[copy_not_verified]" in err and "event 2" in err
    assert not back_path.exists()
    assert not back_path.with_name(back_path.name + ".copy").exists()


def test_both_ends_of_one_kind_are_refused(source: Path, tmp_path: Path, cli: Cli) -> None:
    target = tmp_path / "other.db"
    code, _, err = cli("copy", "--from", f"sqlite:///{source}", "--to", f"sqlite:///{target}")
    assert code == 1 and "[invalid_copy]" in err
    assert not target.exists()


def test_the_log_moves_in_chunks_and_what_postgresql_cannot_hold_is_named(
    source: Path, pg_empty_url: str, back_path: Path
) -> None:
    """Into a database without a table (migrated by the copy), in chunks smaller than the log,
    both ways; an uploaded file's bytes (SQLite's blobs table) have no place in PostgreSQL yet,
    and the copy says so."""
    pg_url = pg_empty_url
    conn = sqlite3.connect(source)
    conn.execute("INSERT INTO blobs (sha256, data) VALUES ('ab', x'00ff')")
    # What the effects did and have to do moves with the log (PostgreSQL keeps it for the
    # instances): a pending delivery, an endpoint's failures, a mail sent.
    conn.execute(
        "INSERT INTO webhook_deliveries (delivery_id, message_id, webhook_id, event_type, "
        "source_seq, ordering_key, status, attempts, created_at, retry_until, "
        "next_attempt_at, last_error) VALUES (7, 'msg_3_wh_1', 'wh_1', 'message.posted', 3, "
        "'c1', 'pending', 2, '2026-01-01T00:00:00.000000+00:00', "
        "'2026-01-02T00:00:00.000000+00:00', '2026-01-01T00:01:00.000000+00:00', 'down')")
    conn.execute("INSERT INTO webhook_health (webhook_id, failures_in_row) VALUES ('wh_1', 2)")
    conn.execute("INSERT INTO handoff_mails (kind, key, conversation_id, sent_at) VALUES "
                 "('waiting', '4', 'c1', '2026-01-01T00:00:00.000000+00:00')")
    conn.commit()
    conn.close()
    effects = {table: sqlite_rows(source, f"SELECT * FROM {table}") for table in (
        "webhook_deliveries", "webhook_health", "handoff_mails")}
    events = sqlite_rows(source, f"{EVENTS} FROM events ORDER BY seq")
    seen: list[tuple[str, int, int]] = []

    def reporter(stage: str) -> Callable[[int, int], None]:
        return lambda done, total: seen.append((stage, done, total))

    there = asyncio.run(copy.copy(f"sqlite:///{source}", pg_url, chunk=4, progress=reporter))
    assert (there.events, there.left_behind, there.restarted) == (
        len(events), {"blobs": 1}, ["usage"])
    assert (there.data_keys, there.erased_keys, there.append_keys, there.checkpoints) == (
        len(sqlite_rows(source, KEYS)), 1, 1, 1)
    assert [done for stage, done, _ in seen if stage == "copy"] == [4, 8, 12, 15]
    assert pg_rows(pg_url, f"{EVENTS} FROM events ORDER BY seq") == events
    assert pg_rows(pg_url, "SELECT max(version) FROM schema_migrations") == [
        (migrate.LATEST,)]
    assert pg_rows(pg_url, "SELECT * FROM webhook_deliveries") == [
        (*effects["webhook_deliveries"][0], None, None)]  # and no claim
    for table in ("webhook_health", "handoff_mails"):
        assert pg_rows(pg_url, f"SELECT * FROM {table}") == effects[table]
    # The next delivery enqueued there comes after the copied one.
    assert pg_rows(pg_url, "SELECT nextval(pg_get_serial_sequence('webhook_deliveries', "
                   "'delivery_id'))") == [(8,)]

    seen.clear()
    back = asyncio.run(copy.copy(pg_url, f"sqlite:///{back_path}", keys=keyring(), chunk=3,
                                 progress=reporter))
    assert (back.events, back.replayed, back.safety_copy) == (len(events), len(events), None)
    assert [done for stage, done, _ in seen if stage == "copy"] == [3, 6, 9, 12, 15]
    assert {stage for stage, _, _ in seen} == {"copy", "verify", "replay"}
    assert sqlite_rows(back_path, f"{EVENTS} FROM events ORDER BY seq") == events
    assert sqlite_rows(back_path, "SELECT count(*) FROM blobs") == [(0,)]
    for table, rows in effects.items():
        assert sqlite_rows(back_path, f"SELECT * FROM {table}") == rows
    assert read_tables(back_path) == read_tables(source)


def test_a_sealed_log_without_its_master_key_leaves_no_sqlite_file(
    source: Path, pg_url: str, back_path: Path, cli: Cli, data_dir: Path
) -> None:
    asyncio.run(copy.copy(f"sqlite:///{source}", pg_url))
    (data_dir / "master_key").unlink()
    code, _, err = cli("copy", "--from", pg_url, "--to", f"sqlite:///{back_path}")
    assert code == 1 and "[keys_unavailable]" in err
    assert not back_path.exists()
