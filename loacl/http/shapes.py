"""The API's JSON for each typed view: built here, and only here."""

from __future__ import annotations

import base64
from typing import Any

from loacl.services.accounts import TokenPair
from loacl.services.privacy import Export
from loacl.store.views.accounts import UserView
from loacl.store.views.assistants import AssistantView
from loacl.store.views.conversations import ConversationView, MessagePage, MessageView
from loacl.store.views.files import FileView
from loacl.store.views.widgets import WidgetView


def assistant_json(view: AssistantView) -> dict[str, Any]:
    d = view.definition
    return {
        "id": view.assistant_id,
        "name": d.name,
        "provider": d.provider,
        "model": d.model,
        "instructions": d.instructions,
        "temperature": d.temperature,
        "top_p": d.top_p,
        "max_output_tokens": d.max_output_tokens,
        "file_search": {"vector_store_ids": list(d.vector_store_ids)}
        if d.vector_store_ids else None,
        "version": view.version,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
    }


def widget_settings_json(view: WidgetView) -> dict[str, Any]:
    s = view.definition.settings
    return {
        "title": s.title, "greeting": s.greeting, "placeholder": s.placeholder,
        "theme": s.theme, "position": s.position, "accent_color": s.accent_color,
        "locale": s.locale,
    }


def widget_json(view: WidgetView) -> dict[str, Any]:
    d = view.definition
    return {
        "id": view.widget_id,
        "name": d.name,
        "assistant_id": d.assistant_id,
        "allowed_origins": list(d.allowed_origins),
        "settings": widget_settings_json(view),
        "limits": {"messages_per_minute": d.messages_per_minute},
        "budget": {"daily_tokens": d.budget.daily_tokens,
                   "monthly_tokens": d.budget.monthly_tokens,
                   "daily_cost": d.budget.daily_cost, "monthly_cost": d.budget.monthly_cost},
        "enabled": d.enabled,
        "require_identity": d.require_identity,
        "retention_days": d.retention_days,
        "version": view.version,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
    }


def message_json(view: MessageView) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": view.message_id,
        "conversation_id": view.conversation_id,
        "role": view.role,
        "text": view.text,
        "status": view.status,
        "error_code": view.error_code,
        "reply_to": view.reply_to,
        "file_ids": list(view.file_ids),
        "client_message_id": view.client_message_id,
        "cursor": str(view.created_seq),
        "created_at": view.created_at,
        "finished_at": view.finished_at,
    }
    if view.role == "assistant" and view.input_tokens is not None:
        body["usage"] = usage_json(view)
    return body


def usage_json(view: MessageView) -> dict[str, int] | None:
    if view.input_tokens is None:
        return None
    return {"input_tokens": view.input_tokens, "output_tokens": view.output_tokens or 0}


def message_page_json(conversation_id: str, page: MessagePage) -> dict[str, Any]:
    items = [message_json(m) for m in page.items]
    return {
        "data": items,
        "conversation_id": conversation_id,
        "prev_cursor": items[0]["cursor"] if items and page.more_before else None,
        "next_cursor": items[-1]["cursor"] if items and page.more_after else None,
    }


def conversation_json(view: ConversationView) -> dict[str, Any]:
    return {
        "id": view.conversation_id,
        "visitor_id": view.visitor_id,
        "user_id": view.external_user_id,
        "created_at": view.created_at,
        "last_activity_at": view.last_activity_at,
        "message_count": view.message_count,
        "erased_at": view.erased_at,
    }


def file_json(view: FileView) -> dict[str, Any]:
    return {
        "id": view.file_id, "conversation_id": view.conversation_id,
        "filename": view.filename, "kind": view.kind, "content_type": view.content_type,
        "size": view.size, "sha256": view.sha256, "created_at": view.created_at,
    }


EXPORT_FORMAT = "loacl.conversation-export.v1"


def export_json(export: Export, exported_at: str, *, with_content: bool) -> dict[str, Any]:
    """A conversation as its visitor may take it away: every message and file, the files'
    bytes in base64 (``with_content``) or named by their path in the ZIP beside it."""
    files = []
    for item in export.files:
        body = file_json(item.view)
        if with_content:
            body["content_base64"] = (
                base64.b64encode(item.data).decode() if item.data is not None else None
            )
        else:
            body["path"] = export_path(item.view) if item.data is not None else None
        files.append(body)
    conversation = conversation_json(export.conversation)
    conversation["widget_id"] = export.conversation.widget_id
    return {
        "format": EXPORT_FORMAT,
        "exported_at": exported_at,
        "conversation": conversation,
        "messages": [message_json(m) for m in export.messages],
        "files": files,
    }


def export_path(view: FileView) -> str:
    """Where a file's bytes are in an export's ZIP: its id keeps two equal names apart."""
    return f"files/{view.file_id}-{view.filename}"


def user_json(user: UserView) -> dict[str, Any]:
    return {
        "id": user.user_id,
        "email": user.email,
        "name": user.name,
        "email_verified": user.email_verified,
        "email_verified_at": user.email_verified_at,
        "created_at": user.created_at,
    }


def tokens_json(pair: TokenPair) -> dict[str, Any]:
    return {
        "access_token": pair.access_token,
        "token_type": "bearer",
        "expires_in": pair.expires_in,
        "refresh_token": pair.refresh_token,
    }
