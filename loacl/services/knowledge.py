"""An assistant's knowledge: documents uploaded by its owner, read and indexed in the
background, and searched when the model calls ``file_search``.

Upload keeps the bytes (content-addressed, as visitor files are) and logs the document as
``queued``; a worker reads it (in a thread: PDF parsing is slow Python), logs its passages or
why it failed, and, when an embedding model is set, asks the provider for the passages'
embeddings. A search ranks passages by BM25 and, with embeddings, by meaning too, fused by
reciprocal rank (RRF).

For the ``openai`` provider the owner may keep the knowledge at OpenAI instead
(:meth:`Knowledge.choose_store`): LOACL still reads each document (so that going back to local
knowledge needs no new reading), then uploads it to OpenAI Files and adds it to a vector store
it creates for the assistant, following the vector store file until OpenAI has read it. Replies
then pass OpenAI's own ``file_search`` over that store. Every remote id and state is an event.
A switch back to local, the last document's deletion or the assistant's deletes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
from dataclasses import dataclass

import openai
import structlog

from loacl.domain import knowledge as domain
from loacl.domain.assistants import ToolDefinition
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.providers import client_for, missing_configuration
from loacl.services.extract import CHUNKER, CONTENT_TYPES, ExtractionError, extract, kind_of
from loacl.services.files import clean_filename
from loacl.services.tokens import new_id
from loacl.services.vectorstores import Remote
from loacl.settings import Settings
from loacl.store.eventstore import EventStore
from loacl.store.views import Page
from loacl.store.views import assistants as assistant_views
from loacl.store.views import files as file_views
from loacl.store.views import knowledge as views
from loacl.store.views.knowledge import DocumentView, Hit, VectorIndex

log = structlog.get_logger(__name__)

# Reciprocal rank fusion's constant (Cormack et al.): a passage's score is the sum over the
# rankings of 1 / (K + its rank there).
RRF_K = 60
EMBED_BATCH = 64
# Providers that answer ``/v1/embeddings``.
EMBEDDING_PROVIDERS = ("openai", "chat_completions")

FILE_SEARCH = "file_search"
# The tool as the model sees it (a function, so that Chat Completions servers can call it).
FILE_SEARCH_TOOL = ToolDefinition(
    type="http", name=FILE_SEARCH,
    description="Search the documents this assistant was given (its knowledge) for passages "
    "that answer a question. Each result is numbered as a source; cite the sources you use "
    "as [n] after the sentence they support.",
    parameters={"type": "object", "properties": {"query": {
        "type": "string", "description": "what to look for, in a few words"}},
        "required": ["query"]},
    url="loacl:knowledge",
)


@dataclass(frozen=True)
class Found:
    """A search's passages, best first, and how they were ranked."""

    hits: list[Hit]
    ranking: str  # bm25 | hybrid


def fuse(*rankings: list[int], k: int = RRF_K) -> list[int]:
    """Reciprocal rank fusion of rankings of ids (best first): best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores, key=lambda item: (-scores[item], item))


def as_vector(values: list[float]) -> bytes:
    """sqlite-vec's vector format: float32, little-endian."""
    return struct.pack(f"<{len(values)}f", *values)


class Knowledge:
    def __init__(self, store: EventStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.vectors = VectorIndex(store)
        self.processing: set[str] = set()
        # Jobs: ("document", id), ("assistant", id): settle its OpenAI side, ("file",
        # assistant id, document id, file id, vector store id): delete a deleted document's,
        # or ("index",): merge the full-text index's segments (after deletions).
        self._queue: asyncio.Queue[tuple[str, ...]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._clients: dict[str, openai.AsyncOpenAI] = {}
        self.remote = Remote(store, settings)
        # Deletions at OpenAI that failed: how many times each (by document), and the timers
        # that queue them again.
        self._delete_failures: dict[str, int] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}

    # -- the owner's side -------------------------------------------------------------------

    async def _assistant(self, owner_id: str, assistant_id: str) -> str:
        """The assistant's provider, when the owner has the assistant."""
        found = await assistant_views.assistant(self.store, assistant_id)
        if found is None or found.owner_id != owner_id:
            raise LoaclError("not_found", "no such assistant")
        return found.definition.provider

    async def store_of(self, owner_id: str, assistant_id: str) -> views.StoreView:
        await self._assistant(owner_id, assistant_id)
        return await views.store_of(self.store, assistant_id)

    async def choose_store(
        self, owner_id: str, assistant_id: str, store: str, meta: Metadata
    ) -> views.StoreView:
        """Where the assistant's knowledge is searched: ``local`` or ``openai`` (the openai
        provider only). The documents follow in the background: sent to a new vector store,
        or the store deleted."""
        provider = await self._assistant(owner_id, assistant_id)
        stream = domain.knowledge_stream(assistant_id)
        state, version = await self.store.load(
            stream, domain.Knowledge({}), domain.evolve_knowledge
        )
        events = domain.choose_store(state, assistant_id, provider, store)
        if events:
            await self.store.append(stream, events, expected_version=version, metadata=meta)
        self.settle(assistant_id)
        return await views.store_of(self.store, assistant_id)

    def settle(self, assistant_id: str) -> None:
        """Bring the assistant's OpenAI side in line with its knowledge (in the background):
        after a change of store, of the assistant, or its deletion."""
        self._queue.put_nowait(("assistant", assistant_id))

    async def delete_all(self, owner_id: str, assistant_id: str, meta: Metadata) -> int:
        """Delete every document of the assistant (and, in the background, its vector store
        and OpenAI files); how many there were."""
        await self._assistant(owner_id, assistant_id)
        stream = domain.knowledge_stream(assistant_id)
        state, version = await self.store.load(
            stream, domain.Knowledge({}), domain.evolve_knowledge
        )
        alive = [d for d in state.documents.values() if d.status != "deleted"]
        shas = []
        for document in alive:
            found = await views.document(self.store, document.document_id)
            if found is not None:
                shas.append(found.sha256)
                self._forget_remote(found)
        if alive:
            await self.store.append(
                stream, [domain.DocumentDeleted(document_id=d.document_id) for d in alive],
                expected_version=version, metadata=meta)
        for sha in dict.fromkeys(shas):
            await views.drop_orphans(self.store, sha)
        self.vectors.changed()
        self.settle(assistant_id)
        if alive:
            self._queue.put_nowait(("index",))
        return len(alive)

    def _forget_remote(self, document: DocumentView) -> None:
        if document.remote_file_id is not None:
            self._queue.put_nowait(("file", document.assistant_id, document.document_id,
                                    document.remote_file_id, document.vector_store_id or ""))

    async def upload(
        self, owner_id: str, assistant_id: str, filename: str, data: bytes, meta: Metadata
    ) -> DocumentView:
        await self._assistant(owner_id, assistant_id)
        limit = self.settings.knowledge_max_upload_size
        if len(data) > limit:
            raise LoaclError("file_too_large", f"documents may be at most {limit} bytes")
        filename = clean_filename(filename)
        kind = kind_of(filename, data)
        digest = hashlib.sha256(data).hexdigest()
        await file_views.keep_blob(self.store, digest, data)
        document_id = new_id()
        await self.store.append(domain.knowledge_stream(assistant_id), [domain.DocumentUploaded(
            document_id=document_id, assistant_id=assistant_id, filename=filename, kind=kind,
            content_type=CONTENT_TYPES[kind], size=len(data), sha256=digest,
        )], metadata=meta)
        self._queue.put_nowait(("document", document_id))
        found = await views.document(self.store, document_id)
        assert found is not None  # the projection wrote it in the append's transaction
        return found

    async def documents(
        self, owner_id: str, assistant_id: str, after: int, limit: int
    ) -> Page[DocumentView]:
        await self._assistant(owner_id, assistant_id)
        return await views.documents_of(self.store, assistant_id, after, limit)

    async def document(self, owner_id: str, assistant_id: str, document_id: str) -> DocumentView:
        await self._assistant(owner_id, assistant_id)
        found = await views.document(self.store, document_id)
        if found is None or found.assistant_id != assistant_id:
            raise LoaclError("document_not_found", "no such document")
        return found

    def status(self, document: DocumentView) -> str:
        """queued | processing | ready | failed: the log's status, and the worker's; for
        knowledge kept at OpenAI, ready once OpenAI has read the document too."""
        if document.status == "queued" and document.document_id in self.processing:
            return "processing"
        if document.status == "ready" and document.remote_status is not None:
            return {"completed": "ready", "failed": "failed"}.get(
                document.remote_status, "processing")
        return document.status

    async def delete(
        self, owner_id: str, assistant_id: str, document_id: str, meta: Metadata
    ) -> None:
        found = await self.document(owner_id, assistant_id, document_id)
        stream = domain.knowledge_stream(assistant_id)
        state, version = await self.store.load(
            stream, domain.Knowledge({}), domain.evolve_knowledge
        )
        events = domain.delete_document(state, document_id)
        await self.store.append(stream, events, expected_version=version, metadata=meta)
        await views.drop_orphans(self.store, found.sha256)
        self.vectors.changed()
        self._forget_remote(found)
        self._queue.put_nowait(("index",))
        if state.vector_store_id is not None:
            self.settle(assistant_id)  # the last document takes the store with it

    # -- the worker -------------------------------------------------------------------------

    async def start(self) -> None:
        """Take up the documents a stop left unread, then read each as it comes."""
        for document in await views.unfinished(self.store):
            self._queue.put_nowait(("document", document.document_id))
        for found in await views.stores_to_settle(self.store):
            self.settle(found.assistant_id)
        for deletion in await views.remote_deletions(self.store):
            self._queue.put_nowait(("file", deletion.assistant_id, deletion.document_id,
                                    deletion.file_id, deletion.vector_store_id))
        self._worker = asyncio.create_task(self._work(), name="knowledge-worker")

    async def stop(self) -> None:
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
        await self.remote.close()
        await asyncio.to_thread(self.vectors.close)

    async def idle(self) -> None:
        """Wait until every document queued so far is read (for tests and the CLI)."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                if job[0] == "document":
                    await self.ingest(job[1])
                    if self._queue.empty():  # the last document of a batch: merge once
                        await views.merge_text_index(self.store)
                elif job[0] == "index":
                    await views.merge_text_index(self.store)
                elif job[0] == "assistant":
                    await self.remote.settle(job[1])
                elif await self.remote.delete_file(*job[1:]):
                    self._delete_failures.pop(job[2], None)
                else:
                    self._delete_later(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("knowledge.job_crashed", job=job[:2])
            finally:
                self._queue.task_done()

    def _delete_later(self, job: tuple[str, ...]) -> None:
        """Queue a deletion OpenAI failed again, after a pause that doubles with each failure
        up to the longest the settings allow (the row in ``knowledge_remote_deletions`` keeps
        it across a restart meanwhile)."""
        document_id = job[2]
        failures = self._delete_failures[document_id] = \
            self._delete_failures.get(document_id, 0) + 1
        settings = self.settings
        pause = min(settings.knowledge_remote_delete_retry_seconds * 2 ** (failures - 1),
                    settings.knowledge_remote_delete_retry_max_seconds)
        log.info("knowledge.remote_delete_later", document_id=document_id, failures=failures,
                 retry_in=pause)

        def again() -> None:
            self._retries.pop(document_id, None)
            self._queue.put_nowait(job)

        previous = self._retries.pop(document_id, None)
        if previous is not None:
            previous.cancel()
        self._retries[document_id] = asyncio.get_running_loop().call_later(pause, again)

    async def ingest(self, document_id: str) -> None:
        """Read one queued document and log its passages, or why it cannot be read."""
        document = await views.document(self.store, document_id)
        if document is None or document.status != "queued":
            return  # deleted meanwhile, or read already
        self.processing.add(document_id)
        try:
            data = await file_views.blob(self.store, document.sha256)
            settings = self.settings
            event: domain.DocumentIndexed | domain.DocumentFailed
            if data is None:
                event = domain.DocumentFailed(document_id=document_id, code="missing_content",
                                              reason="the document's bytes are missing")
            else:
                try:
                    pages, passages = await asyncio.to_thread(
                        extract, document.kind, data, settings.knowledge_chunk_chars,
                        settings.knowledge_chunk_overlap,
                    )
                    event = domain.DocumentIndexed(
                        document_id=document_id, pages=pages, passages=tuple(passages),
                        chunker=CHUNKER,
                    )
                except ExtractionError as exc:
                    event = domain.DocumentFailed(document_id=document_id, code=exc.code,
                                                  reason=exc.reason[:500])
            await self._append_unless_deleted(document, event)
            log.info("knowledge.ingested", document_id=document_id, result=event.event_type)
        finally:
            self.processing.discard(document_id)
        if isinstance(event, domain.DocumentIndexed):
            await self.embed_document(document)
            await self.remote.settle(document.assistant_id)

    async def _append_unless_deleted(
        self, document: DocumentView, event: domain.DocumentIndexed | domain.DocumentFailed
    ) -> None:
        stream = domain.knowledge_stream(document.assistant_id)
        for _ in range(5):
            state, version = await self.store.load(
                stream, domain.Knowledge({}), domain.evolve_knowledge
            )
            found = state.documents.get(document.document_id)
            if found is None or found.status != "queued":
                return
            try:
                await self.store.append(stream, [event], expected_version=version,
                                        metadata=Metadata(actor="system:knowledge"))
                return
            except LoaclError as exc:
                if exc.code != "version_conflict":
                    raise

    # -- embeddings -------------------------------------------------------------------------

    def _client(self, provider: str) -> openai.AsyncOpenAI | None:
        if self.settings.embedding_model is None or provider not in EMBEDDING_PROVIDERS:
            return None
        if missing_configuration(self.settings, provider) is not None:
            return None
        client = self._clients.get(provider)
        if client is None:
            client = self._clients[provider] = client_for(
                self.settings, provider, max_retries=2, timeout=30.0
            )
        return client

    async def _embed(self, client: openai.AsyncOpenAI, texts: list[str]) -> list[bytes]:
        model = self.settings.embedding_model
        assert model is not None
        answer = await client.embeddings.create(model=model, input=texts)
        ordered = sorted(answer.data, key=lambda d: d.index)
        return [as_vector(list(d.embedding)) for d in ordered]

    async def embed_document(self, document: DocumentView) -> None:
        """The embeddings of the document's passages that have none yet. A provider that fails
        leaves the document searchable by its words alone (and the server log says why)."""
        found = await assistant_views.assistant(self.store, document.assistant_id)
        client = self._client(found.definition.provider) if found is not None else None
        model = self.settings.embedding_model
        if client is None or model is None:
            return
        missing = await views.unembedded(self.store, document.document_id, model)
        try:
            for start in range(0, len(missing), EMBED_BATCH):
                batch = missing[start:start + EMBED_BATCH]
                vectors = await self._embed(client, [text for _, text in batch])
                await views.keep_vectors(
                    self.store, model, [(d, v) for (d, _), v in zip(batch, vectors, strict=True)]
                )
                self.vectors.changed()
        except (openai.APIError, ValueError) as exc:
            log.warning("knowledge.embedding_failed", document_id=document.document_id,
                        error=repr(exc))

    # -- searching --------------------------------------------------------------------------

    async def search(self, assistant_id: str, provider: str, query: str) -> Found:
        limit = self.settings.knowledge_results
        wide = limit * 4
        by_text = await views.search_text(self.store, assistant_id, query, wide)
        client = self._client(provider)
        model = self.settings.embedding_model
        if client is None or model is None or not query.strip():
            return Found(by_text[:limit], "bm25")
        try:
            (vector,) = await self._embed(client, [query])
        except (openai.APIError, ValueError) as exc:
            log.warning("knowledge.query_embedding_failed", error=repr(exc))
            return Found(by_text[:limit], "bm25")
        nearest = await self.vectors.nearest(assistant_id, model, vector, wide)
        order = fuse([h.chunk_id for h in by_text], nearest)[:limit]
        found = await views.hits(self.store, order)
        return Found([found[i] for i in order if i in found], "hybrid")
