"""The text search index over messages (``messages_fts``, SQLite FTS5, migration 0010).

It is derived from the ``messages`` read table by triggers, so whatever fills that table
(appends, replay, rebuild, cut) fills the index too; the tools that copy a file's other tables
leave the index's tables to the triggers (``is_search_table``). Contentless: it holds no copy of
a message's text, only the words pointing at its position.
"""

from __future__ import annotations

import re
import sqlite3

INDEX = "messages_fts"
# The knowledge passages' index (migration 0017), kept by triggers the same way.
INDEXES = (INDEX, "knowledge_fts")

_WORD = re.compile(r"\w+", re.UNICODE)
MAX_WORDS = 16


def is_search_table(name: str) -> bool:
    """The index and its shadow tables (``messages_fts_data`` ...): built by the triggers,
    never copied."""
    return any(name == index or name.startswith(f"{index}_") for index in INDEXES)


def match_query(text: str) -> str | None:
    """What a person typed, as an FTS5 query: every word must occur, the last one as a prefix
    (the inbox searches as one types). None when nothing in it is a word. The words are quoted,
    so that no FTS5 operator or column filter can come in with them."""
    words = _WORD.findall(text)[:MAX_WORDS]
    if not words:
        return None
    quoted = [f'"{w}"' for w in words]
    quoted[-1] += "*"
    return " ".join(quoted)


def purge(conn: sqlite3.Connection) -> None:
    """Rewrite the index into one segment: a deleted message's words stay in the older
    segments (marked deleted) until they are merged, and an erasure must leave none of them in
    the file. ``secure_delete`` (store.sqlite) zeroes the freed pages."""
    conn.execute(f"INSERT INTO {INDEX} ({INDEX}) VALUES ('optimize')")
