"""Knowledge kept in OpenAI vector stores: the OpenAI side of an assistant's documents.

Run by the knowledge worker, one job at a time. :meth:`Remote.settle` brings an assistant's
OpenAI side in line with its knowledge: with ``openai`` chosen, each read document is uploaded
(OpenAI Files, purpose ``assistants``), added to the vector store LOACL creates for the
assistant on its first document, and followed until OpenAI has read it (the vector store
file's ``completed`` or ``failed``, with its ``last_error``); with ``local`` chosen, the
assistant deleted or its last document gone, the store is deleted with the documents' files.
Each remote id and state change is an event. OpenAI failing (a 5xx, a 429, a timeout, a lost
connection) is retried with a growing pause; after the last try the document is marked failed
with the reason, and a store that could not be deleted is tried again at the next start. A
deleted document's file that could not be deleted stays to do (``knowledge_remote_deletions``):
the knowledge worker tries it again after a growing pause, and at each start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import openai
import structlog

from loacl.domain import knowledge as domain
from loacl.domain.events import Event, Metadata
from loacl.providers import client_for, missing_configuration
from loacl.providers.errors import translate
from loacl.settings import Settings
from loacl.store.eventstore import EventStore
from loacl.store.views import assistants as assistant_views
from loacl.store.views import files as file_views
from loacl.store.views import knowledge as views
from loacl.store.views.knowledge import DocumentView

log = structlog.get_logger(__name__)

SYSTEM = Metadata(actor="system:knowledge")
T = TypeVar("T")


class Unavailable(Exception):
    """OpenAI kept failing after every try; ``reason`` says how, for the owner."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Remote:
    def __init__(self, store: EventStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._client: openai.AsyncOpenAI | None = None

    def client(self) -> openai.AsyncOpenAI:
        if missing_configuration(self.settings, "openai") is not None:
            raise Unavailable("provider_not_configured",
                              "the openai provider needs OPENAI_API_KEY to be set")
        if self._client is None:
            # LOACL retries itself (``_try``), so that the pauses and the last reason are its.
            self._client = client_for(self.settings, "openai", max_retries=0, timeout=60.0)
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _try(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call``, tried again while OpenAI fails in a way that may pass."""
        pause = self.settings.knowledge_remote_retry_seconds
        attempts = self.settings.knowledge_remote_attempts
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except openai.APIError as exc:
                error = translate(exc)
                if not error.retryable:
                    raise Unavailable("provider_refused",
                                      f"OpenAI refused to {what}: {error.message}") from exc
                log.warning("knowledge.remote_retry", what=what, attempt=attempt,
                            error=repr(exc))
                if attempt == attempts:
                    raise Unavailable(
                        "provider_unavailable",
                        f"OpenAI failed to {what} {attempts} times; the last time: "
                        f"{error.message}",
                    ) from exc
                await asyncio.sleep(error.retry_after or pause)
                pause *= 2
        raise AssertionError("unreachable")

    async def _append(self, assistant_id: str, events: list[Event]) -> None:
        await self.store.append(domain.knowledge_stream(assistant_id), events, metadata=SYSTEM)

    # -- an assistant's store ---------------------------------------------------------------

    async def settle(self, assistant_id: str) -> None:
        found = await assistant_views.assistant(self.store, assistant_id)
        kept = await views.store_of(self.store, assistant_id)
        documents = await views.documents_of(self.store, assistant_id, 0, 1)
        wanted = found is not None and kept.store == "openai" and bool(documents.items)
        if not wanted:
            if kept.vector_store_id is not None:
                await self._drop_store(assistant_id, kept.vector_store_id)
            return
        assert found is not None
        for document in await views.remote_work(self.store, assistant_id):
            try:
                await self._send(document, found.definition.name)
            except Unavailable as exc:
                log.warning("knowledge.remote_failed", document_id=document.document_id,
                            code=exc.code, error=exc.reason)
                await self._failed(document, exc.code, exc.reason)

    async def _vector_store(self, assistant_id: str, name: str) -> str:
        kept = await views.store_of(self.store, assistant_id)
        if kept.vector_store_id is not None:
            return kept.vector_store_id
        client = self.client()
        title = f"LOACL: {name}"[:256]
        created = await self._try("create a vector store", lambda: client.vector_stores.create(
            name=title, metadata={"loacl_assistant_id": assistant_id}))
        await self._append(assistant_id, [domain.VectorStoreCreated(
            assistant_id=assistant_id, vector_store_id=created.id, name=title)])
        log.info("knowledge.vector_store_created", assistant_id=assistant_id,
                 vector_store_id=created.id)
        return created.id

    async def _drop_store(self, assistant_id: str, vector_store_id: str) -> None:
        """Delete the store and the documents' files; a failure leaves it for the next start
        (the server log says why)."""
        try:
            client = self.client()
            for document in await views.remote_files(self.store, assistant_id):
                if document.remote_file_id is not None:
                    await self._delete_remote_file(client, document.document_id,
                                                   document.remote_file_id, None)
                    await self._append(assistant_id, [domain.RemoteFileDeleted(
                        document_id=document.document_id, file_id=document.remote_file_id)])
            try:
                await self._try("delete the vector store",
                                lambda: client.vector_stores.delete(vector_store_id))
            except Unavailable as exc:
                if not _gone(exc):
                    raise
        except Unavailable as exc:
            log.warning("knowledge.vector_store_not_deleted", assistant_id=assistant_id,
                        vector_store_id=vector_store_id, error=exc.reason)
            return
        await self._append(assistant_id, [domain.VectorStoreDeleted(
            assistant_id=assistant_id, vector_store_id=vector_store_id)])
        log.info("knowledge.vector_store_deleted", assistant_id=assistant_id,
                 vector_store_id=vector_store_id)

    # -- a document -------------------------------------------------------------------------

    async def _send(self, document: DocumentView, name: str) -> None:
        """Upload the document and add it to the store (unless done before a restart), then
        follow it until OpenAI has read it."""
        client = self.client()
        file_id = document.remote_file_id
        if file_id is None:
            data = await file_views.blob(self.store, document.sha256)
            if data is None:
                raise Unavailable("missing_content", "the document's bytes are missing")
            uploaded = await self._try("upload the document", lambda: client.files.create(
                file=(document.filename, data, document.content_type), purpose="assistants"))
            file_id = uploaded.id
            if not await self._still_there(document, [domain.RemoteFileUploaded(
                    document_id=document.document_id, file_id=file_id)]):
                await self._delete_remote_file(client, document.document_id, file_id, None)
                return
        vector_store_id = document.vector_store_id
        if vector_store_id is None or document.remote_status == "pending":
            vector_store_id = await self._vector_store(document.assistant_id, name)
            added = await self._try("add the document to the vector store",
                                    lambda: client.vector_stores.files.create(
                                        vector_store_id, file_id=file_id,
                                        attributes={"loacl_document_id": document.document_id}))
            if not await self._still_there(document, [domain.RemoteFileAdded(
                    document_id=document.document_id, vector_store_id=vector_store_id,
                    status=added.status)]):
                # Deleted meanwhile: its file goes with the deletion's own job.
                await self._delete_remote_file(client, document.document_id, file_id,
                                               vector_store_id, keep_file=True)
                return
        await self._follow(document, vector_store_id, file_id)

    async def _follow(self, document: DocumentView, vector_store_id: str, file_id: str) -> None:
        settings = self.settings
        client = self.client()
        deadline = time.monotonic() + settings.knowledge_remote_timeout_seconds
        while True:
            found = await self._try("say how the document is read",
                                    lambda: client.vector_stores.files.retrieve(
                                        file_id, vector_store_id=vector_store_id))
            if found.status == "completed":
                await self._still_there(document, [domain.RemoteFileCompleted(
                    document_id=document.document_id)])
                log.info("knowledge.remote_completed", document_id=document.document_id)
                return
            if found.status in ("failed", "cancelled"):
                error = found.last_error
                await self._failed(
                    document, error.code if error is not None else found.status,
                    error.message if error is not None else f"OpenAI {found.status} it")
                return
            if time.monotonic() > deadline:
                limit = settings.knowledge_remote_timeout_seconds
                await self._failed(document, "remote_timeout",
                                   f"OpenAI was still reading the document after {limit:g} s")
                return
            await asyncio.sleep(settings.knowledge_remote_poll_seconds)

    async def _failed(self, document: DocumentView, code: str, reason: str) -> None:
        await self._still_there(document, [domain.RemoteFileFailed(
            document_id=document.document_id, code=code[:64], reason=reason[:500])])

    async def _still_there(self, document: DocumentView, events: list[Event]) -> bool:
        """Append unless the document was deleted meanwhile."""
        now = await views.document(self.store, document.document_id)
        if now is None:
            return False
        await self._append(document.assistant_id, events)
        return True

    async def delete_file(
        self, assistant_id: str, document_id: str, file_id: str, vector_store_id: str
    ) -> bool:
        """A deleted document's vector store entry and OpenAI file; False when OpenAI kept
        failing (the deletion stays to do: the caller tries again later)."""
        try:
            await self._delete_remote_file(self.client(), document_id, file_id,
                                           vector_store_id or None)
        except Unavailable as exc:
            log.warning("knowledge.remote_file_not_deleted", document_id=document_id,
                        file_id=file_id, error=exc.reason)
            return False
        await self._append(assistant_id, [domain.RemoteFileDeleted(
            document_id=document_id, file_id=file_id)])
        return True

    async def _delete_remote_file(
        self, client: openai.AsyncOpenAI, document_id: str, file_id: str,
        vector_store_id: str | None, *, keep_file: bool = False,
    ) -> None:
        """Remove the file from the store (when named), then delete it (unless
        ``keep_file``); one already gone is fine."""
        calls: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if vector_store_id:
            calls.append(("remove the document from the vector store",
                          lambda: client.vector_stores.files.delete(
                              file_id, vector_store_id=vector_store_id)))
        if not keep_file:
            calls.append(("delete the document's file", lambda: client.files.delete(file_id)))
        for what, call in calls:
            try:
                await self._try(what, call)
            except Unavailable as exc:
                if not _gone(exc):
                    raise
        log.info("knowledge.remote_file_deleted", document_id=document_id, file_id=file_id)


def _gone(exc: Unavailable) -> bool:
    cause = exc.__cause__
    return isinstance(cause, openai.NotFoundError)

