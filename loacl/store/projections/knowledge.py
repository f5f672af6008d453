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
    RemoteFileAdded,
    RemoteFileCompleted,
    RemoteFileDeleted,
    RemoteFileFailed,
    RemoteFileUploaded,
    StoreChosen,
    VectorStoreCreated,
    VectorStoreDeleted,
)
from loacl.store.codec import format_time
from loacl.store.projections import Projections

projections = Projections(
    tables=["knowledge_documents", "knowledge_chunks", "knowledge_stores",
            "knowledge_remote_deletions"]
)

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
    if _store(conn, row[0]) == "openai":  # to be sent to the assistant's vector store
        conn.execute("UPDATE knowledge_documents SET remote_status = 'pending' "
                     "WHERE document_id = ?", (event.document_id,))
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
    # Its file at OpenAI, if it has one, is to be deleted there (the knowledge worker's job).
    conn.execute(
        "INSERT OR REPLACE INTO knowledge_remote_deletions (document_id, assistant_id, file_id, "
        "vector_store_id, deleted_seq) SELECT document_id, assistant_id, remote_file_id, "
        "vector_store_id, ? FROM knowledge_documents WHERE document_id = ? "
        "AND remote_file_id IS NOT NULL", (recorded.seq, event.document_id))
    conn.execute("DELETE FROM knowledge_chunks WHERE document_id = ?", (event.document_id,))
    conn.execute("DELETE FROM knowledge_documents WHERE document_id = ?", (event.document_id,))


# -- knowledge kept in OpenAI vector stores ---------------------------------------------------


def _store(conn: sqlite3.Connection, assistant_id: str) -> str:
    row = conn.execute(
        "SELECT store FROM knowledge_stores WHERE assistant_id = ?", (assistant_id,)
    ).fetchone()
    return str(row[0]) if row is not None else "local"


def _keep_store(conn: sqlite3.Connection, assistant_id: str, at: str) -> None:
    conn.execute(
        "INSERT INTO knowledge_stores (assistant_id, updated_at) VALUES (?, ?) "
        "ON CONFLICT (assistant_id) DO UPDATE SET updated_at = excluded.updated_at",
        (assistant_id, at),
    )


@projections.on
def store_chosen(conn: sqlite3.Connection, event: StoreChosen, recorded: RecordedEvent) -> None:
    _keep_store(conn, event.assistant_id, format_time(recorded.recorded_at))
    conn.execute("UPDATE knowledge_stores SET store = ? WHERE assistant_id = ?",
                 (event.store, event.assistant_id))
    if event.store == "openai":
        conn.execute(
            "UPDATE knowledge_documents SET remote_status = 'pending' WHERE assistant_id = ? "
            "AND status = 'ready' AND remote_status IS NULL", (event.assistant_id,))
    else:
        # Searched locally from now on; the ids stay until the files are deleted at OpenAI.
        conn.execute(
            "UPDATE knowledge_documents SET remote_status = NULL, remote_error_code = NULL, "
            "remote_error = NULL WHERE assistant_id = ?", (event.assistant_id,))


@projections.on
def vector_store_created(
    conn: sqlite3.Connection, event: VectorStoreCreated, recorded: RecordedEvent
) -> None:
    _keep_store(conn, event.assistant_id, format_time(recorded.recorded_at))
    conn.execute(
        "UPDATE knowledge_stores SET vector_store_id = ?, name = ? WHERE assistant_id = ?",
        (event.vector_store_id, event.name, event.assistant_id),
    )


@projections.on
def vector_store_deleted(
    conn: sqlite3.Connection, event: VectorStoreDeleted, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE knowledge_stores SET vector_store_id = NULL, name = NULL, updated_at = ? "
        "WHERE assistant_id = ?", (format_time(recorded.recorded_at), event.assistant_id))
    # The documents' remote state goes with the store; chosen again, they are sent again.
    pending = "'pending'" if _store(conn, event.assistant_id) == "openai" else "NULL"
    conn.execute(
        "UPDATE knowledge_documents SET remote_file_id = NULL, vector_store_id = NULL, "
        f"remote_status = CASE WHEN status = 'ready' THEN {pending} END, "
        "remote_error_code = NULL, remote_error = NULL WHERE assistant_id = ?",
        (event.assistant_id,),
    )


def _remote(conn: sqlite3.Connection, recorded: RecordedEvent, document_id: str,
            sets: str, params: tuple[object, ...]) -> None:
    conn.execute(
        f"UPDATE knowledge_documents SET {sets}, updated_at = ? WHERE document_id = ?",
        (*params, format_time(recorded.recorded_at), document_id),
    )


@projections.on
def remote_uploaded(
    conn: sqlite3.Connection, event: RemoteFileUploaded, recorded: RecordedEvent
) -> None:
    _remote(conn, recorded, event.document_id, "remote_file_id = ?", (event.file_id,))


@projections.on
def remote_added(
    conn: sqlite3.Connection, event: RemoteFileAdded, recorded: RecordedEvent
) -> None:
    _remote(conn, recorded, event.document_id, "vector_store_id = ?, remote_status = ?",
            (event.vector_store_id, event.status))


@projections.on
def remote_completed(
    conn: sqlite3.Connection, event: RemoteFileCompleted, recorded: RecordedEvent
) -> None:
    _remote(conn, recorded, event.document_id,
            "remote_status = 'completed', remote_error_code = NULL, remote_error = NULL", ())


@projections.on
def remote_failed(
    conn: sqlite3.Connection, event: RemoteFileFailed, recorded: RecordedEvent
) -> None:
    _remote(conn, recorded, event.document_id,
            "remote_status = 'failed', remote_error_code = ?, remote_error = ?",
            (event.code, event.reason))


@projections.on
def remote_deleted(
    conn: sqlite3.Connection, event: RemoteFileDeleted, recorded: RecordedEvent
) -> None:
    _remote(conn, recorded, event.document_id,
            "remote_file_id = NULL, vector_store_id = NULL, remote_status = NULL", ())
    conn.execute("DELETE FROM knowledge_remote_deletions WHERE document_id = ? AND file_id = ?",
                 (event.document_id, event.file_id))
