"""An assistant's knowledge: documents the owner uploads, cut into passages that the model
searches through a ``file_search`` tool LOACL answers itself.

One stream per assistant (``knowledge-<assistant id>``), so that uploading a document does not
move the assistant's own version (its ETag). A document is ``uploaded`` (its bytes kept in the
blob table), then ``indexed`` (the passages are in the event: replay builds the search index from
the log alone) or ``failed`` (with the reason), and at last ``deleted``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from loacl.domain.errors import LoaclError
from loacl.domain.events import Event

# The kinds of document LOACL reads, by their extension.
KINDS = ("pdf", "docx", "md", "html", "txt")


def knowledge_stream(assistant_id: str) -> str:
    return f"knowledge-{assistant_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Passage:
    """One chunk of a document's text, and the page it starts on (1 for documents without
    pages)."""

    text: str
    page: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentUploaded(Event):
    event_type = "knowledge.uploaded"
    document_id: str
    assistant_id: str
    filename: str
    kind: str
    content_type: str
    size: int
    sha256: str
    # The owner's documents, published to the assistant's visitors: configuration, not a
    # person's data.
    not_personal = ("document_id", "assistant_id", "filename", "kind", "content_type", "sha256")


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentIndexed(Event):
    """The document's text, extracted and cut into overlapping passages (``chunker`` names
    how, so that a later way of cutting does not change what an old event meant)."""

    event_type = "knowledge.indexed"
    document_id: str
    pages: int
    passages: tuple[Passage, ...]
    chunker: str = ""
    not_personal = ("document_id", "passages", "chunker")


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentFailed(Event):
    """The document could not be read; ``reason`` says why, for the owner."""

    event_type = "knowledge.failed"
    document_id: str
    code: str
    reason: str
    not_personal = ("document_id", "code", "reason")


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentDeleted(Event):
    event_type = "knowledge.deleted"
    document_id: str
    not_personal = ("document_id",)


# Where an assistant's knowledge is searched: by LOACL (``local``, for every provider) or by
# OpenAI's ``file_search`` over a vector store LOACL keeps for the assistant (``openai``).
STORES = ("local", "openai")


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreChosen(Event):
    """The owner chose where the assistant's knowledge is searched."""

    event_type = "knowledge.store_chosen"
    assistant_id: str
    store: str
    not_personal = ("assistant_id", "store")


@dataclass(frozen=True, slots=True, kw_only=True)
class VectorStoreCreated(Event):
    """LOACL created an OpenAI vector store for the assistant's documents."""

    event_type = "knowledge.vector_store_created"
    assistant_id: str
    vector_store_id: str
    name: str
    not_personal = ("assistant_id", "vector_store_id", "name")


@dataclass(frozen=True, slots=True, kw_only=True)
class VectorStoreDeleted(Event):
    event_type = "knowledge.vector_store_deleted"
    assistant_id: str
    vector_store_id: str
    not_personal = ("assistant_id", "vector_store_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteFileUploaded(Event):
    """The document's bytes are an OpenAI file (purpose ``assistants``)."""

    event_type = "knowledge.remote_uploaded"
    document_id: str
    file_id: str
    not_personal = ("document_id", "file_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteFileAdded(Event):
    """The file was added to the assistant's vector store; OpenAI reads it (``status``, as
    OpenAI said: in_progress, or already completed)."""

    event_type = "knowledge.remote_added"
    document_id: str
    vector_store_id: str
    status: str
    not_personal = ("document_id", "vector_store_id", "status")


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteFileCompleted(Event):
    event_type = "knowledge.remote_completed"
    document_id: str
    not_personal = ("document_id",)


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteFileFailed(Event):
    """OpenAI could not take the document (its vector store file's ``last_error``), or the
    provider kept failing (``provider_unavailable``) after the retries."""

    event_type = "knowledge.remote_failed"
    document_id: str
    code: str
    reason: str
    not_personal = ("document_id", "code", "reason")


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteFileDeleted(Event):
    """The document's OpenAI file (and its vector store entry) is gone."""

    event_type = "knowledge.remote_deleted"
    document_id: str
    file_id: str
    not_personal = ("document_id", "file_id")


@dataclass(frozen=True, slots=True)
class Document:
    document_id: str
    status: str  # queued | ready | failed | deleted


@dataclass(frozen=True, slots=True)
class Knowledge:
    """What the decisions need: the assistant's documents."""

    documents: dict[str, Document]
    store: str = "local"
    vector_store_id: str | None = None


def choose_store(state: Knowledge, assistant_id: str, provider: str, store: str) -> list[Event]:
    if store not in STORES:
        raise LoaclError("validation_error", f"store: one of {', '.join(STORES)}",
                         errors=[{"field": "store", "message": "unknown store",
                                  "accepted": list(STORES)}])
    if store == "openai" and provider != "openai":
        raise LoaclError(
            "knowledge_store_not_supported",
            f"the {provider} provider cannot search OpenAI vector stores: knowledge kept at "
            "OpenAI needs the openai provider",
            errors=[{"field": "store", "message": "needs the openai provider"}],
        )
    if store == state.store:
        return []
    return [StoreChosen(assistant_id=assistant_id, store=store)]


def evolve_knowledge(state: Knowledge, event: Event) -> Knowledge:
    docs = state.documents
    match event:
        case DocumentUploaded():
            return replace(state, documents={**docs, event.document_id: Document(
                event.document_id, "queued")})
        case DocumentIndexed():
            return replace(state, documents={**docs, event.document_id: Document(
                event.document_id, "ready")})
        case DocumentFailed():
            return replace(state, documents={**docs, event.document_id: Document(
                event.document_id, "failed")})
        case DocumentDeleted():
            return replace(state, documents={**docs, event.document_id: Document(
                event.document_id, "deleted")})
        case StoreChosen():
            return replace(state, store=event.store)
        case VectorStoreCreated():
            return replace(state, vector_store_id=event.vector_store_id)
        case VectorStoreDeleted():
            return replace(state, vector_store_id=None)
    return state


def delete_document(state: Knowledge, document_id: str) -> list[Event]:
    found = state.documents.get(document_id)
    if found is None or found.status == "deleted":
        raise LoaclError("document_not_found", "no such document")
    return [DocumentDeleted(document_id=document_id)]
