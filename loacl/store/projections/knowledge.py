"""The knowledge read tables: documents as their ``knowledge.*`` events leave them, and each
indexed document's passages (the full-text index follows them by triggers)."""

from __future__ import annotations

import hashlib
import sqlite3

from loacl.domain.events import RecordedEvent
from loacl.domain.knowledge import (
    DocumentDeleted,
    DocumentFailed,
    DocumentIndexed,
    DocumentUploaded,
)
from loacl.store.codec import format_time
from loacl.store.projections import Projections

projections = Projections(tables=["knowledge_documents", "knowledge_chunks"])

# A passage's id: the indexed event's position, then its number within the event.
PASSAGES_PER_EVENT = 10_000


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@projections.on
def document_uploaded(
    conn: sqlite3.Connection, event: DocumentUploaded, recorded: RecordedEvent
) -> None:
    at = format_time(recorded.recorded_at)
    conn.execute(
        "INSERT INTO knowledge_documents (document_id, assistant_id, filename, kind, "
        "content_type, size, sha256, status, created_seq, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
        (event.document_id, event.assistant_id, event.filename, event.kind, event.content_type,
         event.size, event.sha256, recorded.seq, at, at),
    )


@projections.on
def document_indexed(
    conn: sqlite3.Connection, event: DocumentIndexed, recorded: RecordedEvent
) -> None:
    row = conn.execute(
        "SELECT assistant_id FROM knowledge_documents WHERE document_id = ?",
        (event.document_id,),
    ).fetchone()
    if row is None:
        return
    conn.execute(
        "UPDATE knowledge_documents SET status = 'ready', pages = ?, chunks = ?, "
        "error_code = NULL, error = NULL, updated_at = ? WHERE document_id = ?",
        (event.pages, len(event.passages), format_time(recorded.recorded_at),
         event.document_id),
    )
    base = recorded.seq * PASSAGES_PER_EVENT
    conn.executemany(
        "INSERT INTO knowledge_chunks (chunk_id, document_id, assistant_id, ordinal, page, "
        "text, text_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(base + i, event.document_id, row[0], i, p.page, p.text, text_digest(p.text))
         for i, p in enumerate(event.passages[:PASSAGES_PER_EVENT])],
    )


@projections.on
def document_failed(
    conn: sqlite3.Connection, event: DocumentFailed, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE knowledge_documents SET status = 'failed', error_code = ?, error = ?, "
        "updated_at = ? WHERE document_id = ?",
        (event.code, event.reason, format_time(recorded.recorded_at), event.document_id),
    )


@projections.on
def document_deleted(
    conn: sqlite3.Connection, event: DocumentDeleted, recorded: RecordedEvent
) -> None:
    conn.execute("DELETE FROM knowledge_chunks WHERE document_id = ?", (event.document_id,))
    conn.execute("DELETE FROM knowledge_documents WHERE document_id = ?", (event.document_id,))
