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


@dataclass(frozen=True, slots=True)
class Document:
    document_id: str
    status: str  # queued | ready | failed | deleted


@dataclass(frozen=True, slots=True)
class Knowledge:
    """What the decisions need: the assistant's documents."""

    documents: dict[str, Document]


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
    return state


def delete_document(state: Knowledge, document_id: str) -> list[Event]:
    found = state.documents.get(document_id)
    if found is None or found.status == "deleted":
        raise LoaclError("document_not_found", "no such document")
    return [DocumentDeleted(document_id=document_id)]
