"""The API's JSON for each typed view: built here, and only here."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from loacl.domain.accounts import display_name
from loacl.domain.assistants import HANDOFF_TOOL, ToolDefinition
from loacl.domain.handoff import STATES as HANDOFF_STATES
from loacl.domain.hours import DAYS, Away, OfficeHours, is_open, next_opening
from loacl.services.accounts import TokenPair
from loacl.services.privacy import Export
from loacl.store.views.accounts import SessionView, UserView
from loacl.store.views.assistants import AssistantView
from loacl.store.views.conversations import ConversationView, MessagePage, MessageView
from loacl.store.views.files import FileView
from loacl.store.views.inbox import InboxItem
from loacl.store.views.webhooks import Delivery, WebhookView
from loacl.store.views.widgets import WidgetView
from loacl.store.views.workspaces import InviteView, MemberView, WorkspaceView


def assistant_json(view: AssistantView) -> dict[str, Any]:
    d = view.definition
    body = {
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
        "tools": [tool_json(t) for t in d.tools if t.type != HANDOFF_TOOL],
        "handoff": d.handoff,
        "version": view.version,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
    }
    if view.tool_secret is not None:
        body["tool_secret"] = view.tool_secret
    return body


def tool_json(tool: ToolDefinition) -> dict[str, Any]:
    return {
        "type": tool.type, "name": tool.name, "description": tool.description,
        "parameters": tool.parameters, "url": tool.url or None, "timeout_ms": tool.timeout_ms,
        "status_text": tool.status_text, "enabled": tool.enabled,
    }


def widget_settings_json(view: WidgetView) -> dict[str, Any]:
    s = view.definition.settings
    return {
        "title": s.title, "greeting": s.greeting, "placeholder": s.placeholder,
        "theme": s.theme, "position": s.position, "accent_color": s.accent_color,
        "locale": s.locale, "feedback": s.feedback,
        "events_include_text": s.events_include_text, "title_blink": s.title_blink,
        "proactive_greeting": s.proactive_greeting,
        "proactive_delay_seconds": s.proactive_delay_seconds,
        "prechat_fields": list(s.prechat_fields),
    }


def office_hours_json(hours: OfficeHours | None) -> dict[str, Any] | None:
    if hours is None:
        return None
    return {
        "timezone": hours.timezone,
        "windows": [{"day": w.day, "opens": w.opens, "closes": w.closes} for w in hours.windows],
        "closed_dates": list(hours.closed_dates),
    }


def availability_json(hours: OfficeHours | None, at: datetime) -> dict[str, Any]:
    """What a visitor's widget is told of the hours: open now, or when it next opens."""
    if hours is None:
        return {"office_hours": False, "open": True, "next_opening": None, "timezone": None}
    opening = next_opening(hours, at)
    return {
        "office_hours": True, "open": is_open(hours, at),
        "next_opening": None if opening is None else opening.isoformat().replace("+00:00", "Z"),
        "timezone": hours.timezone,
    }


def away_json(found: Away | None) -> dict[str, Any] | None:
    """What the visitor is told when nobody answers a handoff at once (None: someone will)."""
    if found is None:
        return None
    opening = found.next_opening
    return {"reason": found.reason, "timezone": found.timezone,
            "next_opening": None if opening is None
            else opening.isoformat().replace("+00:00", "Z")}


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
        "office_hours": office_hours_json(d.office_hours),
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
        "author_name": view.author_name,
        "feedback": None if view.feedback_rating is None else {
            "rating": view.feedback_rating, "comment": view.feedback_comment or "",
            "at": view.feedback_at,
        },
    }
    if view.role == "assistant" and view.input_tokens is not None:
        body["usage"] = usage_json(view)
    if view.role == "assistant":
        body["citations"] = citations_json(view)
    return body


def citations_json(view: MessageView) -> list[dict[str, Any]]:
    """The sources a reply cites: ``[n]`` in its text is ``number`` n."""
    return [{"number": c.number, "document_id": c.document_id, "document": c.document,
             "page": c.page, "passage": c.passage} for c in view.citations]


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
        "visitor_name": view.visitor_name,
        "visitor_email": view.visitor_email,
        "reply_email": view.reply_email,
        "state": view.state,
    }


def inbox_item_json(item: InboxItem) -> dict[str, Any]:
    return {
        "id": item.conversation_id,
        "widget_id": item.widget_id,
        "widget_name": item.widget_name,
        "widget_title": item.widget_title,
        "visitor_id": item.visitor_id,
        "user_id": item.external_user_id,
        "created_at": item.created_at,
        "last_activity_at": item.last_activity_at,
        "message_count": item.message_count,
        "status": item.status,
        "erased_at": item.erased_at,
        "preview": item.preview_text,
        "preview_role": item.preview_role,
        "state": item.state,
        "assignee": None if item.assignee_id is None else {
            "id": item.assignee_id, "name": item.assignee_name},
        "waiting_since": item.waiting_since,
        "unread": item.unread,
        "reply_email": item.reply_email,
        "cursor": str(item.last_activity_seq),
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
        "display_name": display_name(user.name, user.email),
        "email_verified": user.email_verified,
        "email_verified_at": user.email_verified_at,
        "created_at": user.created_at,
    }


def session_json(view: SessionView, current_session: str) -> dict[str, Any]:
    return {
        "id": view.session_id, "created_at": view.created_at,
        "last_used_at": view.last_used_at, "expires_at": view.expires_at,
        "ip": view.client_ip, "current": view.session_id == current_session,
    }


def tokens_json(pair: TokenPair) -> dict[str, Any]:
    return {
        "access_token": pair.access_token,
        "token_type": "bearer",
        "expires_in": pair.expires_in,
        "refresh_token": pair.refresh_token,
        "workspace_id": pair.workspace_id,
    }


def workspace_json(view: WorkspaceView) -> dict[str, Any]:
    owner = display_name(view.owner_name, view.owner_email) if view.owner_email else None
    return {
        "id": view.workspace_id,
        "name": view.name or (f"{owner}'s workspace" if owner else "Personal workspace"),
        "personal": view.personal, "role": view.role, "created_at": view.created_at,
    }


def member_json(view: MemberView) -> dict[str, Any]:
    return {"account_id": view.user_id, "email": view.email, "name": view.name,
            "display_name": display_name(view.name, view.email), "role": view.role,
            "joined_at": view.joined_at}


def invite_json(view: InviteView) -> dict[str, Any]:
    return {"id": view.invite_id, "workspace_id": view.workspace_id, "email": view.email,
            "role": view.role, "invited_by": view.invited_by, "created_at": view.created_at,
            "expires_at": view.expires_at}


# -- the same shapes as JSON Schema, for the API document ------------------------------------------
# Each endpoint names the schema of its success body (``Endpoint.returns``); Schemathesis checks
# every response against it (tests/test_schemathesis.py), so a field added above without being
# described here fails the tests.

_STR: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_BOOL: dict[str, Any] = {"type": "boolean"}
_TIME: dict[str, Any] = {"type": "string", "format": "date-time"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


def _object(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object with exactly these properties, each required unless named in ``optional``."""
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": [name for name in properties if name not in optional]}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


def _page(name: str) -> dict[str, Any]:
    return _object({"data": _list(_ref(name)), "next_cursor": _nullable(_STR)})


_ROLE = {"type": "string", "enum": ["owner", "admin", "agent"]}
_WORKSPACE = {"id": _STR, "name": _STR, "personal": _BOOL, "role": _ROLE, "created_at": _TIME}
_MEMBER = {"account_id": _STR, "email": _STR, "name": _nullable(_STR), "display_name": _STR,
           "role": _ROLE, "joined_at": _TIME}
_INVITE = {"id": _STR, "workspace_id": _STR, "email": _STR, "role": _ROLE, "invited_by": _STR,
           "created_at": _TIME, "expires_at": _TIME}


_ASSISTANT = {
    "id": _STR, "name": _STR, "provider": _STR, "model": _STR, "instructions": _STR,
    "temperature": _nullable({"type": "number"}), "top_p": _nullable({"type": "number"}),
    "max_output_tokens": _nullable(_INT),
    "file_search": {"oneOf": [{"type": "null"},
                              _object({"vector_store_ids": _list(_STR)})]},
    "tools": _list(_object({
        "type": {"type": "string", "enum": ["http", "web_search"]}, "name": _STR,
        "description": _STR, "parameters": {"type": "object"}, "url": _nullable(_STR),
        "timeout_ms": _INT, "status_text": _STR, "enabled": _BOOL})),
    "handoff": _BOOL,
    "version": _INT, "created_at": _TIME, "updated_at": _TIME,
    # Only in the answer to the change that made a new tool secret (Standard Webhooks'
    # whsec_ form): shown once.
    "tool_secret": _STR,
}
_WIDGET = {
    "id": _STR, "name": _STR, "assistant_id": _STR, "allowed_origins": _list(_STR),
    "settings": _ref("WidgetSettings"),
    "limits": _object({"messages_per_minute": _INT}),
    "budget": _object({"daily_tokens": _nullable(_INT), "monthly_tokens": _nullable(_INT),
                       "daily_cost": _nullable({"type": "number"}),
                       "monthly_cost": _nullable({"type": "number"})}),
    "enabled": _BOOL, "require_identity": _BOOL, "retention_days": _nullable(_INT),
    "office_hours": {"oneOf": [_ref("OfficeHours"), {"type": "null"}]},
    "version": _INT, "created_at": _TIME, "updated_at": _TIME,
}
_USAGE_COUNTS = {
    "replies_completed": _INT, "replies_failed": _INT, "input_tokens": _INT,
    "output_tokens": _INT, "total_tokens": _INT, "estimated_cost": {"type": "number"},
    "unpriced_tokens": _INT, "models": _list(_STR), "feedback_up": _INT, "feedback_down": _INT,
}
_USAGE_LINE = _object({"day": {"type": "string", "format": "date"}, "widget_id": _STR,
                       "assistant_id": _STR, "name": _nullable(_STR), **_USAGE_COUNTS},
                      optional=("day", "widget_id", "assistant_id", "name"))

def webhook_json(view: WebhookView) -> dict[str, Any]:
    d = view.definition
    return {
        "id": view.webhook_id,
        "url": d.url,
        "event_types": list(d.event_types),
        "personal_data": d.personal_data,
        "enabled": d.enabled,
        "description": d.description,
        "disabled_reason": view.disabled_reason,
        "version": view.version,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
    }


def delivery_json(found: Delivery) -> dict[str, Any]:
    return {
        "id": str(found.delivery_id),
        "message_id": found.message_id,
        "event_type": found.event_type,
        "status": found.status,
        "attempts": found.attempts,
        "response_status": found.response_status,
        "latency_ms": found.latency_ms,
        "last_error": found.last_error,
        "created_at": found.created_at,
        "last_attempt_at": found.last_attempt_at,
        "next_attempt_at": found.next_attempt_at if found.status == "pending" else None,
        "retry_until": found.retry_until,
        "delivered_at": found.delivered_at,
    }


_WEBHOOK = {
    "id": _STR, "url": _STR, "event_types": _list(_STR), "personal_data": _BOOL,
    "enabled": _BOOL, "description": _STR, "disabled_reason": _nullable(_STR), "version": _INT,
    "created_at": _TIME, "updated_at": _TIME,
}

_STATE = {"type": "string", "enum": list(HANDOFF_STATES)}

SCHEMAS: dict[str, dict[str, Any]] = {
    # GET /api/v1/conversations/{id}/export (format=json); the ZIP holds the same document.
    "ConversationExport": {
        "type": "object",
        "required": ["format", "exported_at", "conversation", "messages", "files"],
        "properties": {
            "format": {"type": "string"}, "exported_at": {"type": "string"},
            "conversation": {"type": "object"},
            "messages": {"type": "array", "items": {"$ref": "#/components/schemas/Message"}},
            "files": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Assistant": _object(_ASSISTANT, optional=("tool_secret",)),
    "AssistantPage": _page("Assistant"),
    "WidgetSettings": _object({
        "title": _STR, "greeting": _STR, "placeholder": _STR,
        "theme": {"type": "string", "enum": ["light", "dark", "auto"]},
        "position": {"type": "string", "enum": ["bottom-right", "bottom-left"]},
        "accent_color": _STR, "locale": _STR, "feedback": _BOOL,
        "events_include_text": _BOOL, "title_blink": _BOOL, "proactive_greeting": _STR,
        "proactive_delay_seconds": _INT,
        "prechat_fields": _list({"type": "string", "enum": ["name", "email"]})}),
    "OfficeHours": _object({
        "timezone": _STR,
        "windows": _list(_object({
            "day": {"type": "string", "enum": list(DAYS)}, "opens": _STR, "closes": _STR})),
        "closed_dates": _list({"type": "string", "format": "date"})}),
    "Availability": _object({
        "office_hours": _BOOL, "open": _BOOL, "next_opening": _nullable(_TIME),
        "timezone": _nullable(_STR)}),
    "Widget": _object(_WIDGET),
    "WidgetWithSecret": _object({**_WIDGET, "identity_secret": _STR}),
    "WidgetPage": _page("Widget"),
    "EmbedCode": _object({"html": _STR, "script_url": _STR, "widget_id": _STR,
                          "versioned_script_url": _STR, "integrity": _STR}),
    "WidgetConfig": _object({
        "widget_id": _STR, "handoff": _BOOL, "settings": _ref("WidgetSettings"),
        "require_identity": _BOOL,
        "uploads": _object({"max_size": _INT, "allowed_types": _list(_STR)}),
        "limits": _object({"messages_per_minute": _INT, "max_message_chars": _INT}),
        "availability": _ref("Availability")}),
    "VisitorSession": _object({
        "visitor_token": _STR, "token_type": {"type": "string", "enum": ["bearer"]},
        "expires_in": _INT, "visitor_id": _STR, "conversation_id": _STR,
        "user_id": _nullable(_STR)}),
    "Message": _object({
        "id": _STR, "conversation_id": _STR,
        "role": {"type": "string", "enum": ["user", "assistant", "agent"]}, "text": _STR,
        "status": _STR, "error_code": _nullable(_STR), "reply_to": _nullable(_STR),
        "file_ids": _list(_STR), "client_message_id": _nullable(_STR), "cursor": _STR,
        "created_at": _TIME, "finished_at": _nullable(_TIME),
        "author_name": _nullable(_STR),
        "feedback": {"oneOf": [{"type": "null"}, _object({
            "rating": {"type": "string", "enum": ["up", "down"]}, "comment": _STR,
            "at": _TIME})]},
        "usage": {"oneOf": [{"type": "null"},
                            _object({"input_tokens": _INT, "output_tokens": _INT})]},
        "citations": _list(_ref("Citation")),
    }, optional=("usage", "citations")),
    "Citation": _object({"number": _INT, "document_id": _STR, "document": _STR,
                         "page": _INT, "passage": _STR}),
    "KnowledgeDocument": _object({
        "id": _STR, "assistant_id": _STR, "filename": _STR,
        "kind": {"type": "string", "enum": ["pdf", "docx", "md", "html", "txt"]},
        "content_type": _STR, "size": _INT, "sha256": _STR,
        "status": {"type": "string", "enum": ["queued", "processing", "ready", "failed"]},
        "pages": _nullable(_INT), "chunks": _nullable(_INT),
        "error": {"oneOf": [{"type": "null"}, _object({"code": _STR, "message": _STR})]},
        "openai": {"oneOf": [{"type": "null"}, _object({
            "status": {"type": "string",
                       "enum": ["pending", "in_progress", "completed", "failed"]},
            "file_id": _nullable(_STR), "vector_store_id": _nullable(_STR),
            "last_error": {"oneOf": [{"type": "null"},
                                     _object({"code": _STR, "message": _STR})]}})]},
        "created_at": _TIME, "updated_at": _TIME}),
    "KnowledgeStore": _object({"store": {"type": "string", "enum": ["local", "openai"]},
                               "vector_store_id": _nullable(_STR)}),
    "KnowledgeDocumentPage": _page("KnowledgeDocument"),
    "MessagePage": _object({"data": _list(_ref("Message")), "conversation_id": _STR,
                            "prev_cursor": _nullable(_STR), "next_cursor": _nullable(_STR)}),
    "Exchange": _object({"message": _ref("Message"),
                         "reply": {"oneOf": [{"type": "null"}, _ref("Message")]}}),
    "Conversation": _object({"id": _STR, "visitor_id": _STR, "user_id": _nullable(_STR),
                             "created_at": _TIME, "last_activity_at": _TIME,
                             "message_count": _INT, "erased_at": _nullable(_TIME),
                             "visitor_name": _nullable(_STR),
                             "visitor_email": _nullable(_STR),
                             "reply_email": _nullable(_STR), "state": _STATE}),
    "VisitorProfile": _object({"name": _nullable(_STR), "email": _nullable(_STR)}),
    "ConversationPage": _page("Conversation"),
    "InboxConversation": _object({
        "id": _STR, "widget_id": _STR, "widget_name": _nullable(_STR),
        "widget_title": _nullable(_STR), "visitor_id": _STR, "user_id": _nullable(_STR),
        "created_at": _TIME, "last_activity_at": _TIME, "message_count": _INT,
        "status": {"type": "string", "enum": ["open", "erased"]},
        "erased_at": _nullable(_TIME), "preview": _nullable(_STR),
        "preview_role": {"type": ["string", "null"],
                         "enum": ["user", "assistant", "agent", None]},
        "state": _STATE,
        "assignee": {"oneOf": [{"type": "null"}, _object({"id": _STR, "name": _nullable(_STR)})]},
        "waiting_since": _nullable(_TIME), "unread": _INT, "reply_email": _nullable(_STR),
        "cursor": _STR}),
    "HandoffState": _object({"state": _STATE, "agent": _nullable(_STR),
                             "away": {"oneOf": [{"type": "null"}, _ref("Away")]}}),
    "Away": _object({"reason": {"type": "string", "enum": ["closed", "nobody"]},
                     "next_opening": _nullable(_TIME), "timezone": _nullable(_STR)}),
    "ReplyAddress": _object({"email": _STR}),
    "ReadMark": _object({"conversation_id": _STR, "cursor": _STR, "unread": _INT}),
    "InboxPage": _page("InboxConversation"),
    "Models": _object({
        "data": _list(_object({"id": _STR, "provider": _STR})),
        "providers": _list(_object({"name": _STR, "ok": _BOOL, "error": _nullable(_STR)}))}),
    "OwnerMessagePage": _object({
        "data": _list(_ref("Message")), "conversation_id": _STR,
        "prev_cursor": _nullable(_STR), "next_cursor": _nullable(_STR),
        "files": _list(_ref("File"))}),
    "File": _object({"id": _STR, "conversation_id": _STR, "filename": _STR, "kind": _STR,
                     "content_type": _STR, "size": _INT, "sha256": _STR, "created_at": _TIME}),
    "User": _object({"id": _STR, "email": _STR, "name": _nullable(_STR),
                     "display_name": _STR, "email_verified": _BOOL,
                     "email_verified_at": _nullable(_TIME), "created_at": _TIME}),
    "Tokens": _object({"access_token": _STR, "token_type": {"type": "string", "enum": ["bearer"]},
                       "expires_in": _INT, "refresh_token": _STR, "workspace_id": _STR},
                      optional=("refresh_token",)),
    "Workspace": _object(_WORKSPACE),
    "Workspaces": _object({"data": _list(_ref("Workspace"))}),
    "Member": _object(_MEMBER),
    "Members": _object({"data": _list(_ref("Member"))}),
    "Invite": _object(_INVITE),
    "Invites": _object({"data": _list(_ref("Invite"))}),
    "Accepted": _object({"workspace_id": _STR, "access_token": _STR,
                         "token_type": {"type": "string", "enum": ["bearer"]},
                         "expires_in": _INT, "refresh_token": _STR},
                        optional=("access_token", "token_type", "expires_in", "refresh_token")),
    "Sessions": _object({"data": _list(_object({
        "id": _STR, "created_at": _TIME, "last_used_at": _TIME, "expires_at": _TIME,
        "ip": _nullable(_STR), "current": _BOOL}))}),
    "Registration": _object({"email": _STR,
                             "status": {"type": "string", "enum": ["mail_sent"]}}),
    "Webhook": _object(_WEBHOOK),
    "WebhookWithSecret": _object({**_WEBHOOK, "secret": _STR}),
    "WebhookPage": _page("Webhook"),
    "Delivery": _object({
        "id": _STR, "message_id": _STR, "event_type": _STR,
        "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
        "attempts": _INT, "response_status": _nullable(_INT),
        "latency_ms": _nullable({"type": "number"}), "last_error": _nullable(_STR),
        "created_at": _TIME, "last_attempt_at": _nullable(_TIME),
        "next_attempt_at": _nullable(_TIME), "retry_until": _TIME,
        "delivered_at": _nullable(_TIME)}),
    "DeliveryPage": _page("Delivery"),
    "Usage": _object({
        "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
        "group_by": {"type": "string", "enum": ["day", "widget", "assistant"]},
        "currency": _STR, "data": _list(_USAGE_LINE), "total": _USAGE_LINE}),
}
