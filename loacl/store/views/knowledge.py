"""An assistant's knowledge: its documents, and the passages a search finds (BM25 over the
full-text index; nearest embeddings with sqlite-vec)."""

from __future__ import annotations

import asyncio
import math
import re
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from loacl.store.eventstore import EventStore
from loacl.store.views import Page, first, page_by_creation

_DOCUMENT = (
    "SELECT document_id, assistant_id, filename, kind, content_type, size, sha256, status, "
    "pages, chunks, error_code, error, created_seq, created_at, updated_at, "
    "remote_file_id, vector_store_id, remote_status, remote_error_code, remote_error "
    "FROM knowledge_documents"
)
_WORD = re.compile(r"\w+", re.UNICODE)
MAX_WORDS = 32


@dataclass(frozen=True, slots=True)
class DocumentView:
    document_id: str
    assistant_id: str
    filename: str
    kind: str
    content_type: str
    size: int
    sha256: str
    status: str  # queued | ready | failed
    pages: int | None
    chunks: int | None
    error_code: str | None
    error: str | None
    created_seq: int
    created_at: str
    updated_at: str
    # At OpenAI, when the assistant's knowledge is kept there (see the migration 0018).
    remote_file_id: str | None = None
    vector_store_id: str | None = None
    remote_status: str | None = None  # pending | in_progress | completed | failed
    remote_error_code: str | None = None
    remote_error: str | None = None


@dataclass(frozen=True, slots=True)
class StoreView:
    """Where the assistant's knowledge is searched, and the vector store LOACL keeps for it."""

    assistant_id: str
    store: str  # local | openai
    vector_store_id: str | None


async def store_of(store: EventStore, assistant_id: str) -> StoreView:
    found = await first(
        store, "SELECT assistant_id, store, vector_store_id FROM knowledge_stores "
        "WHERE assistant_id = ?", (assistant_id,), lambda r: StoreView(*r),
    )
    return found or StoreView(assistant_id, "local", None)


async def stores_to_settle(store: EventStore) -> list[StoreView]:
    """Assistants whose OpenAI side may have work left: a vector store, or documents to
    send."""
    rows = await store.query(
        "SELECT assistant_id, store, vector_store_id FROM knowledge_stores "
        "WHERE vector_store_id IS NOT NULL OR store = 'openai' ORDER BY assistant_id"
    )
    return [StoreView(*r) for r in rows]


async def remote_work(store: EventStore, assistant_id: str) -> list[DocumentView]:
    """The assistant's documents still to be sent to its vector store, or read there."""
    rows = await store.query(
        f"{_DOCUMENT} WHERE assistant_id = ? AND remote_status IN ('pending', 'in_progress') "
        "ORDER BY created_seq", (assistant_id,))
    return [_document(r) for r in rows]


async def remote_files(store: EventStore, assistant_id: str) -> list[DocumentView]:
    """The assistant's documents that have an OpenAI file."""
    rows = await store.query(
        f"{_DOCUMENT} WHERE assistant_id = ? AND remote_file_id IS NOT NULL "
        "ORDER BY created_seq", (assistant_id,))
    return [_document(r) for r in rows]


async def remote_ready(store: EventStore, assistant_id: str) -> bool:
    rows = await store.query(
        "SELECT 1 FROM knowledge_documents WHERE assistant_id = ? "
        "AND remote_status = 'completed' LIMIT 1", (assistant_id,))
    return bool(rows)


async def by_remote_file(
    store: EventStore, assistant_id: str, file_ids: Iterable[str]
) -> dict[str, DocumentView]:
    wanted = tuple(dict.fromkeys(file_ids))
    if not wanted:
        return {}
    marks = ",".join("?" * len(wanted))
    rows = await store.query(
        f"{_DOCUMENT} WHERE assistant_id = ? AND remote_file_id IN ({marks})",
        (assistant_id, *wanted))
    found = [_document(r) for r in rows]
    return {d.remote_file_id: d for d in found if d.remote_file_id is not None}


@dataclass(frozen=True, slots=True)
class Hit:
    chunk_id: int
    document_id: str
    document: str
    page: int
    text: str


def _document(row: Any) -> DocumentView:
    return DocumentView(*row)


async def document(store: EventStore, document_id: str) -> DocumentView | None:
    return await first(store, f"{_DOCUMENT} WHERE document_id = ?", (document_id,), _document)


async def documents_of(
    store: EventStore, assistant_id: str, after: int, limit: int
) -> Page[DocumentView]:
    return await page_by_creation(
        store, _DOCUMENT, "assistant_id = ?", (assistant_id,), after, limit, _document
    )


async def unfinished(store: EventStore) -> list[DocumentView]:
    """Documents uploaded and not yet indexed or failed: the work a restart takes up again."""
    rows = await store.query(f"{_DOCUMENT} WHERE status = 'queued' ORDER BY created_seq")
    return [_document(r) for r in rows]


@dataclass(frozen=True, slots=True)
class RemoteDeletion:
    """A deleted document's file at OpenAI, still to be deleted there."""

    assistant_id: str
    document_id: str
    file_id: str
    vector_store_id: str


async def remote_deletions(store: EventStore) -> list[RemoteDeletion]:
    rows = await store.query(
        "SELECT assistant_id, document_id, file_id, coalesce(vector_store_id, '') "
        "FROM knowledge_remote_deletions ORDER BY deleted_seq")
    return [RemoteDeletion(*r) for r in rows]


async def has_knowledge(store: EventStore, assistant_id: str) -> bool:
    rows = await store.query(
        "SELECT 1 FROM knowledge_documents WHERE assistant_id = ? AND status = 'ready' LIMIT 1",
        (assistant_id,),
    )
    return bool(rows)


def match_query(text: str) -> str | None:
    """A question as an FTS5 query: any of its words (BM25 ranks passages with more of them,
    and rarer ones, first). Quoted, so that no FTS5 operator comes in with them."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))[:MAX_WORDS]
    return " OR ".join(f'"{w}"' for w in words) if words else None


_HIT_COLUMNS = "c.chunk_id, c.document_id, d.filename, c.page, c.text"
_HIT_FROM = "knowledge_chunks c JOIN knowledge_documents d ON d.document_id = c.document_id"
_HIT = f"SELECT {_HIT_COLUMNS} FROM {_HIT_FROM}"


# How the assistant's passages stand among all: whether it has any, whether another assistant
# has any, and their shares of the passages of ready documents (an estimate, for how wide to
# look: the exact tests are the first two).
_SHARE = (
    "SELECT EXISTS (SELECT 1 FROM knowledge_chunks WHERE assistant_id = ?1), "
    "EXISTS (SELECT 1 FROM knowledge_chunks WHERE assistant_id < ?1 OR assistant_id > ?1), "
    "(SELECT total(chunks) FROM knowledge_documents WHERE assistant_id = ?1 AND status = 'ready'), "
    "(SELECT total(chunks) FROM knowledge_documents WHERE status = 'ready')"
)
# The best ``wide`` passages of the whole index, the assistant's among them, best first; and how
# many the whole index gave (fewer than ``wide``: there were no more).
_TOP = (
    "WITH top AS MATERIALIZED (SELECT rowid AS id, bm25(knowledge_fts) AS score "
    "FROM knowledge_fts WHERE knowledge_fts MATCH ? ORDER BY bm25(knowledge_fts), rowid "
    "LIMIT ?) "
    f"SELECT {_HIT_COLUMNS}, seen FROM {_HIT_FROM} JOIN top ON top.id = c.chunk_id "
    "CROSS JOIN (SELECT count(*) AS seen FROM top) "
    "WHERE c.assistant_id = ? ORDER BY top.score, c.chunk_id LIMIT ?"
)
WIDEST = 100  # a wider global top costs more than ranking the assistant's passages alone


async def search_text(
    store: EventStore, assistant_id: str, query: str, limit: int
) -> list[Hit]:
    """The assistant's passages that best match ``query`` by BM25, best first.

    BM25 over an OR of words scores every passage holding any of them (about 2,800 of 10,000
    for six words), and the ranking is what a search costs. SQLite ranks by ``bm25()`` keeping
    only a LIMIT's worth of the best, while FTS5's ``rank``, or ``bm25()`` behind a join to the
    assistant's passages, sorts every match: 6-7 ms against 9-10 over 10,000 passages. So the
    whole index is ranked to a small top, and the assistant's passages are kept from it. That
    is exact: the scores are the index's either way (BM25's statistics are over the whole
    index), and any passage of the assistant's ranking above the ``limit``-th one kept would
    be in the top too. When the top holds fewer than ``limit`` of the assistant's and the index
    had more matches, or the assistant's share is too small for a narrow top, its passages are
    ranked alone, as before."""
    match = match_query(query)
    if match is None or limit <= 0:
        return []
    [(mine, others, share, every)] = await store.query(_SHARE, (assistant_id,))
    if not mine:
        return []
    wide = limit if not others else math.ceil(2 * limit * every / share) if share else WIDEST + 1
    if wide <= WIDEST:
        rows = await store.query(_TOP, (match, wide, assistant_id, limit))
        if len(rows) == limit or (rows and rows[0][-1] < wide) or not others:
            return [Hit(*r[:5]) for r in rows]
    rows = await store.query(
        f"{_HIT} JOIN (SELECT rowid AS id, rank FROM knowledge_fts WHERE knowledge_fts MATCH ?) "
        "f ON f.id = c.chunk_id WHERE c.assistant_id = ? ORDER BY f.rank, c.chunk_id LIMIT ?",
        (match, assistant_id, limit),
    )
    return [Hit(*r) for r in rows]


async def hits(store: EventStore, chunk_ids: Iterable[int]) -> dict[int, Hit]:
    wanted = tuple(dict.fromkeys(chunk_ids))
    if not wanted:
        return {}
    marks = ",".join("?" * len(wanted))
    rows = await store.query(f"{_HIT} WHERE c.chunk_id IN ({marks})", wanted)
    return {r[0]: Hit(*r) for r in rows}


async def unembedded(
    store: EventStore, document_id: str, model: str
) -> list[tuple[str, str]]:
    """The document's passages (digest, text) that have no embedding by ``model`` yet."""
    rows = await store.query(
        "SELECT DISTINCT c.text_sha256, c.text FROM knowledge_chunks c WHERE c.document_id = ? "
        "AND NOT EXISTS (SELECT 1 FROM knowledge_vectors v WHERE v.text_sha256 = c.text_sha256 "
        "AND v.model = ?)",
        (document_id, model),
    )
    return [(str(d), str(t)) for d, t in rows]


async def keep_vectors(
    store: EventStore, model: str, vectors: list[tuple[str, bytes]]
) -> None:
    """Embeddings on the writer, between appends (not a read table: replay keeps them)."""

    def keep(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR REPLACE INTO knowledge_vectors (text_sha256, model, embedding) "
            "VALUES (?, ?, ?)", [(d, model, v) for d, v in vectors],
        )
        conn.execute("COMMIT")

    await store.run_on_writer(keep)


KNN_AT_MOST = 4096  # sqlite-vec's largest k
MERGE_PAGES = 64  # the full-text index's pages one merge step writes, at most about


async def merge_text_index(store: EventStore) -> int:
    """Merge the full-text index's segments into one, a step at a time on the writer (each
    its own short transaction, between appends); how many steps merged something.

    Each document's passages come in as a new segment of the FTS5 index, and a search reads
    every segment of each of its words: after a hundred documents, seven segments took BM25
    search over 10,000 passages about a third longer than one. The order of the results
    does not change (BM25 over the same passages)."""

    def step(conn: sqlite3.Connection) -> bool:
        before = conn.total_changes
        conn.execute("BEGIN IMMEDIATE")
        # A negative page count merges whatever segments there are, not only full levels.
        conn.execute("INSERT INTO knowledge_fts (knowledge_fts, rank) VALUES ('merge', ?)",
                     (-MERGE_PAGES,))
        conn.execute("COMMIT")
        return conn.total_changes - before >= 2  # fewer: nothing was left to merge

    steps = 0
    while await store.run_on_writer(step):
        steps += 1
    return steps


async def drop_orphans(store: EventStore, sha256: str) -> None:
    """After a document's deletion: the embeddings no passage has any more, and the
    document's bytes unless another document or a visitor's file names them."""

    def drop(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "DELETE FROM knowledge_vectors WHERE text_sha256 NOT IN "
            "(SELECT text_sha256 FROM knowledge_chunks)"
        )
        conn.execute(
            "DELETE FROM blobs WHERE sha256 = ? "
            "AND NOT EXISTS (SELECT 1 FROM files f WHERE f.sha256 = blobs.sha256) "
            "AND NOT EXISTS (SELECT 1 FROM knowledge_documents d WHERE d.sha256 = blobs.sha256)",
            (sha256,),
        )
        conn.execute("COMMIT")

    await store.run_on_writer(drop)


class VectorIndex:
    """Nearest passages by cosine distance, found by sqlite-vec (a ``vec0`` table's k nearest).

    Python's own ``sqlite3`` here cannot load extensions, and ``apsw`` (which can) must not open
    the database file: two copies of SQLite in one process do not share their POSIX locks, so
    an apsw connection ending a read would drop the writer's locks on the same file
    (https://www.sqlite.org/howtocorrupt.html, section 2.3). So apsw runs on an in-memory
    database of its own, a copy of each searched assistant's embeddings read through the
    store's readers. A signature tells when to copy again: the assistant's passages (count and
    sum of ids, from their index), the embeddings (count and highest rowid), and a count of the
    changes this process made (``changed``), which catches a rowid used again. The join that
    would name exactly the assistant's embeddings costs 45 ms over 10,000 passages; these 2 ms."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._conn: Any = None
        self._lock = threading.Lock()
        self._signatures: dict[tuple[str, str, int], tuple[Any, ...]] = {}
        self._tables: dict[tuple[str, str, int], str] = {}
        self._made = 0
        self._changes = 0

    def changed(self) -> None:
        """Embeddings were added or dropped (by this process): copy again at the next search."""
        self._changes += 1

    def _open(self) -> Any:
        import apsw
        import sqlite_vec

        conn = apsw.Connection(":memory:")
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        return conn

    async def nearest(
        self, assistant_id: str, model: str, vector: bytes, limit: int
    ) -> list[int]:
        """The ids of the assistant's passages nearest to ``vector``, nearest first."""
        if not vector or len(vector) % 4:
            return []  # not float32: no embedding of this model could be compared with it
        key = (assistant_id, model, len(vector))
        where = (
            "FROM knowledge_chunks c JOIN knowledge_vectors v ON v.text_sha256 = c.text_sha256 "
            "AND v.model = ? WHERE c.assistant_id = ? AND length(v.embedding) = ?"
        )
        args = (model, assistant_id, len(vector))
        changes = self._changes
        [found] = await self.store.query(
            "SELECT (SELECT count(*) FROM knowledge_chunks WHERE assistant_id = ?), "
            "(SELECT total(chunk_id) FROM knowledge_chunks WHERE assistant_id = ?), "
            "(SELECT count(*) FROM knowledge_vectors), (SELECT max(rowid) FROM knowledge_vectors)",
            (assistant_id, assistant_id),
        )
        signature = (*found, changes)
        if self._signatures.get(key) != signature:
            rows = await self.store.query(f"SELECT c.chunk_id, v.embedding {where}", args)
            await asyncio.to_thread(self._copy, key, rows)
            self._signatures[key] = signature
        return await asyncio.to_thread(self._nearest, key, vector, limit)

    def _copy(self, key: tuple[str, str, int], rows: list[Any]) -> None:
        with self._lock:
            if self._conn is None:
                self._conn = self._open()
            table = self._tables.get(key)
            with self._conn:
                if table is not None:
                    self._conn.execute(f"DROP TABLE {table}")
                # One vec0 table per assistant, model and size: its scan for the k nearest
                # is sqlite-vec's own, about half the time of vec_distance_cosine() per row
                # and an ORDER BY over the same 10,000 embeddings.
                self._made += 1
                table = self._tables[key] = f"v{self._made}"
                self._conn.execute(
                    f"CREATE VIRTUAL TABLE {table} USING vec0(embedding float[{key[2] // 4}] "
                    "distance_metric=cosine)"
                )
                self._conn.executemany(
                    f"INSERT INTO {table} (rowid, embedding) VALUES (?, ?)", rows
                )

    def _nearest(self, key: tuple[str, str, int], vector: bytes, limit: int) -> list[int]:
        with self._lock:
            table = self._tables.get(key)
            if self._conn is None or table is None or limit <= 0:
                return []
            rows = self._conn.execute(
                f"SELECT rowid FROM {table} WHERE embedding MATCH ? AND k = ? ORDER BY distance",
                (vector, min(limit, KNN_AT_MOST)),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._signatures.clear()
            self._tables.clear()
