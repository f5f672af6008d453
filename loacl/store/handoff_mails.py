"""The record of the handoff mails sent (``handoff_mails``): written by the ``handoff-mail``
subscriber after each mail, read before each, so that a batch handed over again after a crash or
a restart sends nothing twice. Not rebuilt from the log (a cut and a repair copy it whole). In the
store's SQLite file on one machine; with the log in PostgreSQL, there
(``store.postgres.operational``)."""

from __future__ import annotations

import sqlite3

from loacl.store.eventstore import EventStore


async def was_sent(store: EventStore, kind: str, key: str) -> bool:
    rows = await store.query("SELECT 1 FROM handoff_mails WHERE kind = ? AND key = ?",
                             (kind, key))
    return bool(rows)


async def last_sent(store: EventStore, conversation_id: str, kind: str) -> str | None:
    """When the last mail of ``kind`` about the conversation went out (codec.format_time)."""
    rows = await store.query(
        "SELECT max(sent_at) FROM handoff_mails WHERE conversation_id = ? AND kind = ?",
        (conversation_id, kind),
    )
    return str(rows[0][0]) if rows and rows[0][0] is not None else None


async def record(store: EventStore, kind: str, key: str, conversation_id: str,
                 sent_at: str) -> None:
    def write(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO handoff_mails (kind, key, conversation_id, sent_at) "
            "VALUES (?, ?, ?, ?)",
            (kind, key, conversation_id, sent_at),
        )

    await store.run_on_writer(write)


class SqliteHandoffMails:
    """The record in the store's own file (``operational.MailRecord``); with the log in
    PostgreSQL it is there instead (``store.postgres.operational``)."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def was_sent(self, kind: str, key: str) -> bool:
        return await was_sent(self.store, kind, key)

    async def last_sent(self, conversation_id: str, kind: str) -> str | None:
        return await last_sent(self.store, conversation_id, kind)

    async def record(self, kind: str, key: str, conversation_id: str, sent_at: str) -> None:
        await record(self.store, kind, key, conversation_id, sent_at)
