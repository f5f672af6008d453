"""Owners' privacy endpoints: erase a conversation, export one, delete the account.

``DELETE /api/v1/conversations/{id}`` erases a conversation of one of the owner's widgets (its
reply in flight stopped, its text and files gone, its key destroyed; the fact is an event).
``GET /api/v1/conversations/{id}/export`` gives it as JSON (files in base64), or with
``?format=zip`` as a ZIP holding ``conversation.json`` and the files. ``DELETE /api/v1/auth/me``
deletes the account, with its password, and everything that was its
(``services.privacy``).
"""

from __future__ import annotations

import io
import json
import zipfile
from typing import TYPE_CHECKING, cast

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loacl.domain.errors import LoaclError
from loacl.domain.privacy import REQUESTED
from loacl.domain.workspaces import ADMIN, AGENT
from loacl.http.auth import current_member, current_owner
from loacl.http.common import accounts, client_ip, metadata
from loacl.http.routing import Endpoint, Param
from loacl.http.shapes import export_json, export_path
from loacl.http.validation import parse_body
from loacl.store.codec import format_time

if TYPE_CHECKING:
    from loacl.services.privacy import Privacy


def privacy(request: Request) -> Privacy:
    return cast("Privacy", request.app.state.privacy)


class DeleteAccountBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(max_length=1024)


async def erase_conversation(request: Request) -> Response:
    owner = await current_member(request, ADMIN)
    service = privacy(request)
    found = await service.owned_conversation(owner.workspace_id, request.path_params["id"])
    if not found.erased:  # erasing twice is erasing once
        await service.erase_conversation(
            found.conversation_id, reason=REQUESTED, requested_by=owner.user_id,
            meta=metadata(request, owner.user_id), owner_id=owner.user_id,
        )
    return Response(status_code=204)


async def export_conversation(request: Request) -> Response:
    owner = await current_member(request, AGENT)
    service = privacy(request)
    found = await service.owned_conversation(owner.workspace_id, request.path_params["id"])
    kind = request.query_params.get("format", "json")
    if kind not in ("json", "zip"):
        raise LoaclError(
            "validation_error", "format: json or zip",
            errors=[{"field": "format", "message": "json or zip"}],
        )
    export = await service.export(found.conversation_id)
    now = format_time(request.app.state.clock())
    headers = {"Cache-Control": "private, no-store"}
    name = f"conversation-{found.conversation_id}"
    if kind == "json":
        headers["Content-Disposition"] = f'attachment; filename="{name}.json"'
        return JSONResponse(export_json(export, now, with_content=True), headers=headers)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        body = export_json(export, now, with_content=False)
        archive.writestr("conversation.json", json.dumps(body, ensure_ascii=False, indent=2))
        for item in export.files:
            if item.data is not None:
                archive.writestr(export_path(item.view), item.data)
    headers["Content-Disposition"] = f'attachment; filename="{name}.zip"'
    return Response(buffer.getvalue(), media_type="application/zip", headers=headers)


async def delete_account(request: Request) -> Response:
    """The account and its personal workspace (whose id is the account's) go; its
    memberships elsewhere end."""
    owner = await current_owner(request)
    body = await parse_body(request, DeleteAccountBody)
    await accounts(request).check_password(owner.user_id, body.password, client_ip(request))
    await privacy(request).erase_owner(
        owner.user_id, requested_by=owner.user_id, meta=metadata(request, owner.user_id)
    )
    return Response(status_code=204)


endpoints = [
    Endpoint("delete", "/api/v1/conversations/{id}", erase_conversation,
             "Erase a conversation of your widgets: its text, files and key", "conversations",
             auth="owner", ok=204, role=ADMIN),
    Endpoint("get", "/api/v1/conversations/{id}/export", export_conversation,
             "A conversation and its files, as JSON or (format=zip) a ZIP", "conversations",
             auth="owner", role=AGENT,
             query=(Param("format", "json (default) or zip", {"enum": ["json", "zip"]}),),
             codes=("subject_erased",), returns="ConversationExport",
             content={
                 "application/json": {
                     "schema": {"$ref": "#/components/schemas/ConversationExport"}},
                 "application/zip": {"schema": {"type": "string", "format": "binary"}},
             }),
    Endpoint("delete", "/api/v1/auth/me", delete_account,
             "Delete your account: its widgets, assistants and conversations are erased",
             "auth", auth="owner", body=DeleteAccountBody, ok=204,
             codes=("invalid_credentials",)),
]
