"""``/api/v1/assistants/{id}/knowledge``: the documents an assistant searches to answer."""

from __future__ import annotations

from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loacl.domain.knowledge import STORES
from loacl.domain.workspaces import ADMIN
from loacl.http.auth import current_member
from loacl.http.common import metadata, page, page_response
from loacl.http.routing import PAGE, Endpoint
from loacl.http.validation import parse_body, read_upload
from loacl.services.knowledge import Knowledge
from loacl.store.views.knowledge import DocumentView, StoreView


def knowledge(request: Request) -> Knowledge:
    return cast("Knowledge", request.app.state.knowledge)


def document_json(service: Knowledge, view: DocumentView) -> dict[str, Any]:
    return {
        "id": view.document_id,
        "assistant_id": view.assistant_id,
        "filename": view.filename,
        "kind": view.kind,
        "content_type": view.content_type,
        "size": view.size,
        "sha256": view.sha256,
        "status": service.status(view),
        "pages": view.pages,
        "chunks": view.chunks,
        "error": {"code": view.error_code, "message": view.error or ""}
        if view.error_code is not None else
        {"code": view.remote_error_code, "message": view.remote_error or ""}
        if view.remote_error_code is not None and view.remote_status == "failed" else None,
        "openai": None if view.remote_status is None else {
            "status": view.remote_status, "file_id": view.remote_file_id,
            "vector_store_id": view.vector_store_id,
            "last_error": None if view.remote_error_code is None else {
                "code": view.remote_error_code, "message": view.remote_error or ""},
        },
        "created_at": view.created_at,
        "updated_at": view.updated_at,
    }


async def upload(request: Request) -> Response:
    owner = await current_member(request, ADMIN, verified=True)
    service = knowledge(request)
    filename, data = await read_upload(
        request, request.app.state.settings.knowledge_max_upload_size
    )
    found = await service.upload(
        owner.workspace_id, request.path_params["id"], filename, data,
        metadata(request, owner.user_id),
    )
    return JSONResponse(document_json(service, found), status_code=202)


async def list_documents(request: Request) -> Response:
    owner = await current_member(request, ADMIN, verified=True)
    service = knowledge(request)
    after, limit = page(request)
    found = await service.documents(owner.workspace_id, request.path_params["id"], after, limit)
    return page_response([document_json(service, d) for d in found.items], found.next_cursor)


async def get_document(request: Request) -> Response:
    owner = await current_member(request, ADMIN, verified=True)
    service = knowledge(request)
    found = await service.document(
        owner.workspace_id, request.path_params["id"], request.path_params["doc_id"]
    )
    return JSONResponse(document_json(service, found))


async def delete_document(request: Request) -> Response:
    owner = await current_member(request, ADMIN, verified=True)
    await knowledge(request).delete(
        owner.workspace_id, request.path_params["id"], request.path_params["doc_id"],
        metadata(request, owner.user_id),
    )
    return Response(status_code=204)


class StoreBody(BaseModel):
    """Where the assistant's knowledge is searched."""

    model_config = ConfigDict(extra="forbid")

    store: Literal["local", "openai"] = Field(json_schema_extra={"enum": list(STORES)})


def store_json(view: StoreView) -> dict[str, Any]:
    return {"store": view.store, "vector_store_id": view.vector_store_id}


async def get_store(request: Request) -> Response:
    owner = await current_member(request, ADMIN, verified=True)
    found = await knowledge(request).store_of(owner.workspace_id, request.path_params["id"])
    return JSONResponse(store_json(found))


async def put_store(request: Request) -> Response:
    owner = await current_member(request, ADMIN, verified=True)
    body = await parse_body(request, StoreBody)
    found = await knowledge(request).choose_store(
        owner.workspace_id, request.path_params["id"], body.store, metadata(request, owner.user_id)
    )
    return JSONResponse(store_json(found))


async def delete_all(request: Request) -> Response:
    owner = await current_member(request, ADMIN, verified=True)
    await knowledge(request).delete_all(
        owner.workspace_id, request.path_params["id"], metadata(request, owner.user_id)
    )
    return Response(status_code=204)


STORE = (
    "Where the assistant's knowledge is searched. `local` (the default, every provider): LOACL "
    "indexes the documents in its own database and answers the model's `file_search` calls. "
    "`openai` (the `openai` provider only; otherwise 422 `knowledge_store_not_supported`): "
    "LOACL also uploads each document to OpenAI Files and adds it to a vector store it "
    "creates for the assistant (`vector_store_id`), and replies use OpenAI's own "
    "`file_search` over it; a document is `ready` once OpenAI has read it (its `openai` "
    "field follows the vector store file). Choosing `local` again deletes the vector store "
    "and the files, in the background."
)

UPLOAD = (
    "A PDF, Word (.docx), Markdown, HTML or text document, as multipart field `file` (at most "
    "`knowledge_max_upload_size` bytes). It is read in the background: the answer (202) says "
    "`queued`; `GET` the document to follow it through `processing` to `ready` (with its "
    "pages and passages) or `failed` (with the reason). Once an assistant has a ready "
    "document, the model is offered a `file_search` tool over them, and replies carry the "
    "passages they cite as `citations`. With the knowledge kept at OpenAI (`PUT "
    ".../knowledge-store`), the document is also sent to the assistant's vector store and stays "
    "`processing` until OpenAI has read it (its `openai` field)."
)

endpoints = [
    Endpoint("get", "/api/v1/assistants/{id}/knowledge-store", get_store,
             "Where the assistant's knowledge is searched", "knowledge", auth="owner", role=ADMIN,
             description=STORE, returns="KnowledgeStore"),
    Endpoint("put", "/api/v1/assistants/{id}/knowledge-store", put_store,
             "Choose where the assistant's knowledge is searched: local or openai",
             "knowledge", auth="owner", role=ADMIN, body=StoreBody, description=STORE,
             codes=("knowledge_store_not_supported",), returns="KnowledgeStore"),
    Endpoint("delete", "/api/v1/assistants/{id}/knowledge", delete_all,
             "Delete all the assistant's knowledge (at OpenAI too: its vector store and files)",
             "knowledge", auth="owner", role=ADMIN, ok=204),
    Endpoint("post", "/api/v1/assistants/{id}/knowledge", upload,
             "Upload a knowledge document (multipart field `file`)", "knowledge",
             auth="owner", role=ADMIN, ok=202, multipart=True, description=UPLOAD,
             codes=("email_not_verified", "file_too_large", "unsupported_document_type",
                    "empty_file"),
             returns="KnowledgeDocument"),
    Endpoint("get", "/api/v1/assistants/{id}/knowledge", list_documents,
             "An assistant's knowledge documents", "knowledge", auth="owner", role=ADMIN,
             query=PAGE,
             returns="KnowledgeDocumentPage"),
    Endpoint("get", "/api/v1/assistants/{id}/knowledge/{doc_id}", get_document,
             "A knowledge document and how its reading went", "knowledge", auth="owner", role=ADMIN,
             codes=("document_not_found",), returns="KnowledgeDocument"),
    Endpoint("delete", "/api/v1/assistants/{id}/knowledge/{doc_id}", delete_document,
             "Delete a knowledge document: its passages leave the index at once", "knowledge",
             auth="owner", role=ADMIN, ok=204, codes=("document_not_found",)),
]
