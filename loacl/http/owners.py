"""Owner endpoints: ``/api/v1/assistants`` and ``/api/v1/widgets`` (CRUD, embed code)."""

from __future__ import annotations

import html
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from loacl.domain.assistants import (
    MAX_TOOLS,
    PROVIDERS,
    TOOL_TIMEOUT_MS,
    TOOL_TYPES,
    AssistantDefinition,
    ToolDefinition,
    handoff_tool,
)
from loacl.domain.errors import LoaclError
from loacl.domain.hours import MAX_CLOSED_DATES, MAX_WINDOWS, OfficeHours, Window
from loacl.domain.widgets import (
    MAX_ORIGINS,
    MAX_RETENTION_DAYS,
    WidgetBudget,
    WidgetDefinition,
    WidgetSettings,
)
from loacl.domain.workspaces import ADMIN
from loacl.http.auth import current_member
from loacl.http.common import (
    assistants,
    chat,
    client_ip,
    public_base,
    widgets,
)
from loacl.http.resources import PATCH_TYPES, OwnedResource, rotated
from loacl.http.routing import IF_MATCH, PAGE, Endpoint, Param
from loacl.http.shapes import assistant_json, widget_json
from loacl.http.static import widget_script
from loacl.http.validation import parse_body
from loacl.providers import default_provider, spec
from loacl.providers.base import Turn
from loacl.store.views.widgets import WidgetView


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileSearch(Body):
    vector_store_ids: list[
        Annotated[str, Field(pattern=r"^vs_[A-Za-z0-9_-]{1,64}$")]
    ] = Field(min_length=1, max_length=10)


class ToolBody(Body):
    """A tool the model may call. ``http``: LOACL POSTs the call's arguments to ``url``
    (signed with the assistant's tool secret) and gives the JSON answer back to the model;
    without a URL the tool must be disabled. ``web_search``: OpenAI's own, for the ``openai``
    provider only (its other fields are ignored)."""

    type: Literal["http", "web_search"] = Field("http", json_schema_extra={
        "enum": list(TOOL_TYPES)})
    name: str = Field("", max_length=64, pattern=r"^([A-Za-z0-9_-]{1,64})?$")
    description: str = Field("", max_length=1024)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema of the arguments (an object); calls are checked against it",
    )
    url: str | None = Field(None, max_length=2048)
    timeout_ms: int = Field(10_000, ge=TOOL_TIMEOUT_MS[0], le=TOOL_TIMEOUT_MS[1])
    status_text: str = Field("", max_length=200, description="What the widget shows while "
                             "the call runs, such as \"Looking up your order…\"")
    enabled: bool = True


class AssistantBody(Body):
    name: str = Field(min_length=1, max_length=200)
    provider: str | None = Field(None, json_schema_extra={"enum": list(PROVIDERS)})
    model: str | None = Field(None, min_length=1, max_length=200)
    instructions: str = Field("", max_length=32_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_output_tokens: int | None = Field(None, ge=16, le=200_000)
    file_search: FileSearch | None = None
    tools: list[ToolBody] = Field(default_factory=list, max_length=MAX_TOOLS)
    handoff: bool = Field(False, description="the model may ask for a person from the team "
                          "(a request_human function tool); the conversation then waits for "
                          "one and the assistant tells the visitor so")


class SettingsBody(Body):
    title: str = Field("Chat with us", min_length=1, max_length=100)
    greeting: str = Field("", max_length=2000)
    placeholder: str = Field("Type a message…", max_length=200)
    theme: Literal["light", "dark", "auto"] = "auto"
    position: Literal["bottom-right", "bottom-left"] = "bottom-right"
    accent_color: str = Field("#2563eb", pattern=r"^#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
    locale: str = Field("en", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
    # What the embed script does besides chatting (docs/embed.md).
    feedback: bool = True
    events_include_text: bool = False
    title_blink: bool = False
    proactive_greeting: str = Field("", max_length=300)
    proactive_delay_seconds: int = Field(10, ge=0, le=3600)
    prechat_fields: list[Literal["name", "email"]] = Field(default_factory=list, max_length=2)


class LimitsBody(Body):
    messages_per_minute: int = Field(10, ge=1, le=600)


class BudgetBody(Body):
    """Per UTC day and month; null (or absent): the server's default; 0: no limit."""

    daily_tokens: int | None = Field(None, ge=0, le=10**12)
    monthly_tokens: int | None = Field(None, ge=0, le=10**12)
    daily_cost: float | None = Field(None, ge=0, le=10**9, description="US dollars")
    monthly_cost: float | None = Field(None, ge=0, le=10**9, description="US dollars")


_CLOCK = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"


class WindowBody(Body):
    day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    opens: str = Field(pattern=_CLOCK, description="HH:MM, local time")
    closes: str = Field(pattern=_CLOCK, description="HH:MM after opens, or 24:00; an "
                        "overnight shift is two windows")


class OfficeHoursBody(Body):
    """When the widget's people answer; a handoff outside them tells the visitor when."""

    timezone: str = Field(min_length=1, max_length=64, description="An IANA time zone, "
                          "such as Europe/Paris")
    windows: list[WindowBody] = Field(default_factory=list, max_length=MAX_WINDOWS)
    closed_dates: list[Annotated[str, Field(max_length=10)]] = Field(
        default_factory=list, max_length=MAX_CLOSED_DATES,
        description="Local dates (YYYY-MM-DD) with no opening, such as holidays")


class WidgetBody(Body):
    name: str = Field(min_length=1, max_length=200)
    assistant_id: str = Field(min_length=1, max_length=64)
    # Checked and put in canonical form by the domain (``widgets.checked``), for every writer.
    allowed_origins: list[Annotated[str, Field(max_length=300)]] = Field(
        default_factory=list, max_length=MAX_ORIGINS
    )
    settings: SettingsBody = Field(default_factory=lambda: SettingsBody())
    limits: LimitsBody = Field(default_factory=lambda: LimitsBody())
    budget: BudgetBody = Field(default_factory=lambda: BudgetBody())
    enabled: bool = True
    require_identity: bool = False
    # Conversations idle this many days are erased; null (the default) keeps them.
    retention_days: int | None = Field(None, ge=1, le=MAX_RETENTION_DAYS)
    # Checked by the domain (``hours.checked_hours``): known zone, windows that do not overlap.
    office_hours: OfficeHoursBody | None = None


def _definition(request: Request, body: AssistantBody) -> AssistantDefinition:
    provider = body.provider or default_provider(request.app.state.settings)
    model = body.model or spec(provider).default_model
    if model is None:
        raise LoaclError(
            "validation_error", "model: required for this provider",
            errors=[{"field": "model", "message": "Field required"}],
        )
    return AssistantDefinition(
        name=body.name, provider=provider, model=model, instructions=body.instructions,
        temperature=body.temperature, top_p=body.top_p,
        max_output_tokens=body.max_output_tokens,
        vector_store_ids=tuple(body.file_search.vector_store_ids) if body.file_search else (),
        tools=tuple(
            ToolDefinition(type=t.type, name=t.name, description=t.description,
                           parameters=t.parameters, url=t.url or "", timeout_ms=t.timeout_ms,
                           status_text=t.status_text, enabled=t.enabled)
            for t in body.tools
        ) + ((handoff_tool(),) if body.handoff else ()),
    )


def _widget_definition(_request: Request, body: WidgetBody) -> WidgetDefinition:
    return WidgetDefinition(
        name=body.name, assistant_id=body.assistant_id,
        allowed_origins=tuple(body.allowed_origins),
        settings=WidgetSettings(**{
            **body.settings.model_dump(),
            "prechat_fields": tuple(dict.fromkeys(body.settings.prechat_fields)),
        }),
        messages_per_minute=body.limits.messages_per_minute,
        enabled=body.enabled, require_identity=body.require_identity,
        budget=WidgetBudget(**body.budget.model_dump()),
        retention_days=body.retention_days,
        office_hours=None if body.office_hours is None else OfficeHours(
            timezone=body.office_hours.timezone,
            windows=tuple(Window(**w.model_dump()) for w in body.office_hours.windows),
            closed_dates=tuple(body.office_hours.closed_dates),
        ),
    )


async def rotate_secret(request: Request) -> Response:
    return await rotated(request, widgets(request).rotate_secret,
                         lambda made: _with_secret(request, made))


async def rotate_tool_secret(request: Request) -> Response:
    return await rotated(request, assistants(request).rotate_tool_secret, assistant_json)


ASSISTANTS = OwnedResource(assistants, AssistantBody, _definition, assistant_json)

MAX_PREVIEW_TURNS = 40


class PreviewTurn(Body):
    role: Literal["user", "assistant"]
    text: str = Field(min_length=1, max_length=32_000)


class PreviewBody(Body):
    """An assistant as the owner is editing it (saved or not), and the preview's conversation
    so far: the last turn is the owner's new message."""

    assistant: AssistantBody
    messages: list[PreviewTurn] = Field(min_length=1, max_length=MAX_PREVIEW_TURNS)


PREVIEW_ABOUT = (
    "The console's preview chat: a reply from the assistant as given in the body, which need "
    "not be saved (its model, instructions, provider, temperature and the rest), to the "
    "conversation in `messages`. The answer streams as newline-delimited JSON, one object a "
    "line: `{\"type\": \"delta\", \"offset\", \"text\"}` pieces, then `{\"type\": "
    "\"done\", \"status\": \"completed\", \"length\", \"usage\"}` or `{\"type\": "
    "\"error\", \"code\", \"text\"}` (the codes of a visitor's failed reply).\n\n"
    "Nothing is stored: a preview is no visitor's conversation, so it never shows in the inbox, "
    "usage, webhooks or the event log, and its tokens count against no widget's budget. It is "
    "limited like a visitor's message instead, before the provider is asked: "
    "`preview_messages_per_minute` per owner, the server's per-address and per-day message "
    "limits, and a reply slot of its own (`provider_concurrency`, `replies_per_ip`). HTTP "
    "tools are not called from a preview."
)


async def preview_reply(request: Request) -> Response:
    owner = await current_member(request, ADMIN, verified=True)
    body = await parse_body(request, PreviewBody)
    if body.messages[-1].role != "user":
        raise LoaclError("validation_error", "messages: the last one must be the user's",
                         errors=[{"field": "messages", "message": "the last role must be user"}])
    limit = request.app.state.settings.max_message_chars
    if len(body.messages[-1].text) > limit:
        raise LoaclError("message_too_long", f"a message may have at most {limit} characters")
    definition = _definition(request, body.assistant)
    assistants(request).check_tools(definition)
    turns = [Turn(m.role, m.text) for m in body.messages]
    pieces = await chat(request).preview(owner.user_id, definition, turns, client_ip(request))

    async def lines() -> AsyncIterator[bytes]:
        async for piece in pieces:
            yield json.dumps(piece, ensure_ascii=False).encode() + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store"})


def _with_secret(request: Request, view: WidgetView) -> dict[str, Any]:
    """The widget with its identity secret: shown when it is made, never again."""
    body = widget_json(view)
    body["identity_secret"] = widgets(request).identity_secret(
        view.widget_id, view.secret_generation
    )
    return body


WIDGETS = OwnedResource(widgets, WidgetBody, _widget_definition, widget_json, _with_secret)



async def embed_code(request: Request) -> Response:
    owner = await current_member(request, ADMIN, verified=True)
    widget = await widgets(request).get(owner.workspace_id, request.path_params["id"])
    script_url = f"{public_base(request)}/widget.js"
    config = {
        "widgetId": widget.widget_id,
        "position": widget.definition.settings.position,
        "theme": widget.definition.settings.theme,
    }
    # JSON inside a <script>: escape "<" so no value can close the element.
    literal = json.dumps(config, indent=2).replace("<", "\\u003c")
    snippet = (
        "<script>\n"
        f"  window.LOACL_WIDGET = {literal.replace(chr(10), chr(10) + '  ')};\n"
        "</script>\n"
        f'<script src="{html.escape(script_url)}" async></script>\n'
    )
    if _wants_html(request):
        # The snippet itself, to copy and paste. Opened in a browser it runs nothing.
        return HTMLResponse(snippet, headers={
            "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; sandbox",
            "Vary": "Accept",
        })
    item = widget_script()
    return JSONResponse({
        "html": snippet,
        "script_url": script_url,
        "widget_id": widget.widget_id,
        # To pin one build: <script src=versioned_script_url integrity=... crossorigin=anonymous>
        "versioned_script_url": f"{public_base(request)}/widget/{item.version}.js",
        "integrity": item.integrity,
    }, headers={"Vary": "Accept"})


EMBED_FORMATS = ("json", "html")


def _wants_html(request: Request) -> bool:
    """``?format=html``, or (with no ``format``) an ``Accept`` that ranks ``text/html`` above
    ``application/json``; JSON otherwise, and on a tie (``*/*``)."""
    chosen = request.query_params.get("format")
    if chosen is not None:
        if chosen not in EMBED_FORMATS:
            raise LoaclError(
                "validation_error", f"format must be one of: {', '.join(EMBED_FORMATS)}",
                errors=[{"field": "format", "message": "not an accepted value",
                         "accepted": list(EMBED_FORMATS)}],
            )
        return chosen == "html"
    return _quality(request, "text/html") > _quality(request, "application/json")


def _quality(request: Request, media: str) -> float:
    """How much the request's ``Accept`` wants ``media`` (RFC 9110 12.5.1): the most specific
    range that matches decides; none matching is 0."""
    best, specificity = 0.0, -1
    kind = media.split("/")[0]
    for part in request.headers.get("accept", "").split(","):
        fields = [f.strip() for f in part.split(";")]
        name = fields[0].lower()
        level = 2 if name == media else 1 if name == f"{kind}/*" else 0 if name == "*/*" else -1
        if level < 0 or level < specificity:
            continue
        q = 1.0
        for field in fields[1:]:
            key, _, value = field.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        if level > specificity:
            best, specificity = q, level
        else:
            best = max(best, q)
    return best


REPLACE = (
    "A full replacement: the body names every field (null where null is allowed, for the "
    "default); a field left out is refused with 422, so that nothing is blanked by mistake. "
    "To change some fields, PATCH."
)
PATCH = (
    "A JSON Merge Patch (RFC 7396), as `application/merge-patch+json` or `application/json`: "
    "the fields given replace those of the current version, an object is merged field by "
    "field, and null puts a field back to its default. The result is checked as a PUT body is. "
    "Without If-Match the patch applies to the current version."
)


endpoints = [
    Endpoint("get", "/api/v1/assistants", ASSISTANTS.list, "List your assistants",
             "assistants", auth="owner", role=ADMIN, query=PAGE, returns="AssistantPage"),
    Endpoint("post", "/api/v1/assistants", ASSISTANTS.create, "Create an assistant",
             "assistants", auth="owner", role=ADMIN, body=AssistantBody, ok=201,
             codes=("email_not_verified", "unknown_model", "provider_not_configured",
                    "provider_unavailable", "tool_not_supported"),
             returns="Assistant"),
    Endpoint("post", "/api/v1/assistant-preview", preview_reply,
             "A reply from an assistant not saved yet (the console's preview; nothing stored)",
             "assistants", auth="owner", role=ADMIN, body=PreviewBody,
             codes=("email_not_verified", "rate_limited", "message_too_long", "unknown_model",
                    "provider_not_configured", "provider_unavailable", "tool_not_supported"),
             description=PREVIEW_ABOUT,
             content={"application/x-ndjson": {"schema": {
                 "type": "string", "description": "JSON objects, one a line"}}}),
    Endpoint("get", "/api/v1/assistants/{id}", ASSISTANTS.get, "An assistant (ETag)",
             "assistants", auth="owner", role=ADMIN, returns="Assistant"),
    Endpoint("put", "/api/v1/assistants/{id}", ASSISTANTS.put, "Replace an assistant (If-Match)",
             "assistants", auth="owner", role=ADMIN, body=ASSISTANTS.replacement, headers=IF_MATCH,
             codes=("version_conflict", "precondition_required", "unknown_model",
                    "provider_not_configured", "provider_unavailable", "tool_not_supported"),
             description=REPLACE, returns="Assistant"),
    Endpoint("patch", "/api/v1/assistants/{id}", ASSISTANTS.patch,
             "Change some of an assistant (JSON Merge Patch, If-Match)", "assistants",
             auth="owner", body=ASSISTANTS.patch_body, body_types=PATCH_TYPES, headers=IF_MATCH,
             role=ADMIN, codes=("version_conflict", "precondition_required", "unknown_model",
                    "provider_not_configured", "provider_unavailable", "unsupported_media_type",
                    "tool_not_supported"),
             description=PATCH, returns="Assistant"),
    Endpoint("delete", "/api/v1/assistants/{id}", ASSISTANTS.delete,
             "Delete an assistant (If-Match)", "assistants", auth="owner", role=ADMIN, ok=204,
             headers=IF_MATCH,
             codes=("version_conflict", "precondition_required", "assistant_in_use")),
    Endpoint("post", "/api/v1/assistants/{id}/rotate-tool-secret", rotate_tool_secret,
             "A new secret for signing the assistant's tool calls, shown once", "assistants",
             auth="owner", role=ADMIN, headers=IF_MATCH,
             codes=("version_conflict", "precondition_required"), returns="Assistant"),
    Endpoint("get", "/api/v1/widgets", WIDGETS.list, "List your widgets", "widgets",
             auth="owner", role=ADMIN, query=PAGE, returns="WidgetPage"),
    Endpoint("post", "/api/v1/widgets", WIDGETS.create,
             "Create a widget; the identity secret is shown once", "widgets", auth="owner",
             role=ADMIN, body=WidgetBody, ok=201, codes=("email_not_verified", "unknown_assistant"),
             returns="WidgetWithSecret"),
    Endpoint("get", "/api/v1/widgets/{id}", WIDGETS.get, "A widget (ETag)", "widgets",
             auth="owner", role=ADMIN, returns="Widget"),
    Endpoint("put", "/api/v1/widgets/{id}", WIDGETS.put, "Replace a widget (If-Match)",
             "widgets", auth="owner", role=ADMIN, body=WIDGETS.replacement, headers=IF_MATCH,
             codes=("version_conflict", "precondition_required", "unknown_assistant"),
             description=REPLACE, returns="Widget"),
    Endpoint("patch", "/api/v1/widgets/{id}", WIDGETS.patch,
             "Change some of a widget (JSON Merge Patch, If-Match)", "widgets", auth="owner",
             role=ADMIN, body=WIDGETS.patch_body, body_types=PATCH_TYPES, headers=IF_MATCH,
             codes=("version_conflict", "precondition_required", "unknown_assistant",
                    "unsupported_media_type"), description=PATCH, returns="Widget"),
    Endpoint("delete", "/api/v1/widgets/{id}", WIDGETS.delete, "Delete a widget (If-Match)",
             "widgets", auth="owner", role=ADMIN, ok=204, headers=IF_MATCH,
             codes=("version_conflict", "precondition_required")),
    Endpoint("get", "/api/v1/widgets/{id}/embed-code", embed_code,
             "The HTML to paste into a site", "widgets", auth="owner", role=ADMIN,
             query=(Param("format", "json (default): the snippet and the script's URLs; html: "
                    "the snippet itself, to copy and paste. Without it, `Accept: text/html` "
                    "asks for html", {"type": "string", "enum": list(EMBED_FORMATS)}),),
             content={
                 "application/json": {"schema": {"$ref": "#/components/schemas/EmbedCode"}},
                 "text/html": {"schema": {"type": "string"}},
             }),
    Endpoint("post", "/api/v1/widgets/{id}/rotate-secret", rotate_secret,
             "A new identity secret, shown once", "widgets", auth="owner", headers=IF_MATCH,
             role=ADMIN, codes=("version_conflict", "precondition_required"),
             returns="WidgetWithSecret"),
]
