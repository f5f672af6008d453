"""Uploaded files: their metadata from the ``files`` read table, their bytes from ``blobs``."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from loacl.store.eventstore import EventStore
from loacl.store.views import first

_FILE = (
    "SELECT file_id, conversation_id, widget_id, visitor_id, filename, kind, content_type, "
    "size, sha256, created_at, provider, provider_file_id FROM files"
)


@dataclass(frozen=True, slots=True)
class FileView:
    file_id: str
    conversation_id: str
    widget_id: str
    visitor_id: str
    filename: str
    kind: str  # pdf | docx | doc | txt
    content_type: str
    size: int
    sha256: str
    created_at: str
    provider: str | None
    provider_file_id: str | None


def _view(row: Any) -> FileView:
    return FileView(*row)


async def file(store: EventStore, file_id: str) -> FileView | None:
    return await first(store, f"{_FILE} WHERE file_id = ?", (file_id,), _view)


async def files(store: EventStore, file_ids: Iterable[str]) -> list[FileView]:
    wanted = tuple(dict.fromkeys(file_ids))
    if not wanted:
        return []
    marks = ",".join("?" * len(wanted))
    rows = await store.query(f"{_FILE} WHERE file_id IN ({marks})", wanted)
    return [_view(r) for r in rows]


async def files_of(store: EventStore, conversation_id: str) -> list[FileView]:
    rows = await store.query(
        f"{_FILE} WHERE conversation_id = ? ORDER BY created_at, file_id", (conversation_id,)
    )
    return [_view(r) for r in rows]


async def blob(store: EventStore, sha256: str) -> bytes | None:
    rows = await store.query("SELECT data FROM blobs WHERE sha256 = ?", (sha256,))
    return bytes(rows[0][0]) if rows else None


async def blobs(store: EventStore, digests: Iterable[str]) -> dict[str, bytes]:
    wanted = tuple(dict.fromkeys(digests))
    if not wanted:
        return {}
    marks = ",".join("?" * len(wanted))
    rows = await store.query(f"SELECT sha256, data FROM blobs WHERE sha256 IN ({marks})", wanted)
    return {digest: bytes(data) for digest, data in rows}


async def keep_blob(store: EventStore, sha256: str, data: bytes) -> None:
    """Store uploaded bytes on the writer, before the event that names them: an event never
    names a blob that is not there. The blob table is not a projection; replay keeps it."""

    def keep(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT OR IGNORE INTO blobs (sha256, data) VALUES (?, ?)", (sha256, data))

    await store.run_on_writer(keep)


async def drop_unnamed_blob(store: EventStore, sha256: str) -> None:
    """Delete the bytes when no file names them (an upload whose event was refused)."""

    def drop(conn: sqlite3.Connection) -> None:
        conn.execute(
            "DELETE FROM blobs WHERE sha256 = ? AND NOT EXISTS "
            "(SELECT 1 FROM files WHERE files.sha256 = blobs.sha256)",
            (sha256,),
        )

    await store.run_on_writer(drop)
