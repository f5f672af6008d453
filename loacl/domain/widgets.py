"""Widgets: what a site embeds. Each names an assistant, the origins allowed to embed it, and
its look. Visitors get conversations through a widget."""

from __future__ import annotations

from dataclasses import dataclass, replace

from loacl.domain.errors import LoaclError
from loacl.domain.events import Event
from loacl.domain.hours import OfficeHours, checked_hours
from loacl.domain.origins import normalize_origin

MAX_ORIGINS = 50
MAX_RETENTION_DAYS = 36_500


@dataclass(frozen=True, slots=True, kw_only=True)
class WidgetSettings:
    title: str = "Chat with us"
    greeting: str = ""
    placeholder: str = "Type a message…"
    theme: str = "auto"  # light | dark | auto
    position: str = "bottom-right"  # bottom-right | bottom-left
    accent_color: str = "#2563eb"
    locale: str = "en"
    # v3: what the embed script does besides chatting (widget/README.md).
    feedback: bool = True  # thumbs up and down under each reply
    events_include_text: bool = False  # the page's loacl:message/loacl:reply carry the text
    title_blink: bool = False  # the page's title blinks while replies are unread
    proactive_greeting: str = ""  # a bubble next to the launcher; "" for none
    proactive_delay_seconds: int = 10
    prechat_fields: tuple[str, ...] = ()  # "name", "email": asked before the first message


@dataclass(frozen=True, slots=True, kw_only=True)
class WidgetBudget:
    """What a widget may spend per UTC day and month, in tokens (input and output) and in
    estimated US dollars. None: the server's default (``budget_*`` settings); 0: no limit."""

    daily_tokens: int | None = None
    monthly_tokens: int | None = None
    daily_cost: float | None = None
    monthly_cost: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WidgetDefinition:
    name: str
    assistant_id: str
    allowed_origins: tuple[str, ...] = ()
    settings: WidgetSettings = WidgetSettings()
    messages_per_minute: int = 10
    enabled: bool = True
    require_identity: bool = False
    budget: WidgetBudget = WidgetBudget()
    # Conversations idle for longer are erased (``services.retention``); None keeps them.
    retention_days: int | None = None
    # v4: when the widget's people answer (``domain.hours``); None: no hours are kept.
    office_hours: OfficeHours | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WidgetCreated(Event):
    """v2: the definition has a budget (v1 events get the server's defaults); v3: its settings
    have the embed script's options (feedback, proactive greeting, pre-chat form, ...); v4: it
    has office hours (none before)."""

    event_type = "widget.created"
    schema_version = 4
    widget_id: str
    owner_id: str
    definition: WidgetDefinition
    # What every visitor of the widget is shown: the owner's configuration, not a person's.
    not_personal = ("widget_id", "owner_id", "definition")


@dataclass(frozen=True, slots=True, kw_only=True)
class WidgetUpdated(Event):
    """v2, v3 and v4 as in ``widget.created``."""

    event_type = "widget.updated"
    schema_version = 4
    widget_id: str
    definition: WidgetDefinition
    not_personal = ("widget_id", "definition")


@dataclass(frozen=True, slots=True, kw_only=True)
class WidgetDeleted(Event):
    event_type = "widget.deleted"
    widget_id: str
    not_personal = ("widget_id",)


@dataclass(frozen=True, slots=True, kw_only=True)
class WidgetSecretRotated(Event):
    """The identity secret is derived from the server key and this generation number, so the
    secret itself never enters the log."""

    event_type = "widget.secret_rotated"
    widget_id: str
    generation: int
    not_personal = ("widget_id",)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationStarted(Event):
    event_type = "conversation.started"
    conversation_id: str
    widget_id: str
    visitor_id: str
    external_user_id: str | None = None
    # The site's own id for a signed-in user (often an e-mail address or a customer number).
    personal = ("external_user_id",)
    not_personal = ("conversation_id", "widget_id", "visitor_id")


@dataclass(frozen=True, slots=True)
class VisitorAccess:
    """Who is calling with a visitor token: one visitor of one widget, in one conversation."""

    widget_id: str
    visitor_id: str
    conversation_id: str
    user_id: str | None = None


def widget_stream(widget_id: str) -> str:
    return f"widget-{widget_id}"


def conversation_stream(conversation_id: str) -> str:
    return f"conversation-{conversation_id}"


@dataclass(frozen=True, slots=True)
class Widget:
    widget_id: str = ""
    owner_id: str = ""
    definition: WidgetDefinition | None = None
    secret_generation: int = 0
    exists: bool = False
    deleted: bool = False


def evolve_widget(state: Widget, event: Event) -> Widget:
    match event:
        case WidgetCreated():
            return Widget(event.widget_id, event.owner_id, event.definition, 1, True, False)
        case WidgetUpdated():
            return replace(state, definition=event.definition)
        case WidgetSecretRotated():
            return replace(state, secret_generation=event.generation)
        case WidgetDeleted():
            return replace(state, deleted=True)
    return state


def _owned(state: Widget, owner_id: str) -> None:
    if not state.exists or state.deleted or state.owner_id != owner_id:
        raise LoaclError("not_found", "no such widget")


def checked(definition: WidgetDefinition) -> WidgetDefinition:
    """The definition with its allowed origins in canonical form, each once, or a refusal
    naming the first bad one: whoever writes a widget (API, CLI, the demo) gets the same."""
    origins: list[str] = []
    for index, value in enumerate(definition.allowed_origins):
        try:
            origin = normalize_origin(value)
        except LoaclError as exc:
            raise LoaclError(
                "validation_error", f"allowed_origins.{index}: {exc.message}",
                errors=[{"field": f"allowed_origins.{index}", "message": exc.message}],
            ) from None
        if origin not in origins:
            origins.append(origin)
    if len(origins) > MAX_ORIGINS:
        raise LoaclError(
            "validation_error", f"allowed_origins: at most {MAX_ORIGINS} origins",
            errors=[{"field": "allowed_origins", "message": f"at most {MAX_ORIGINS}"}],
        )
    if definition.messages_per_minute < 1:
        raise LoaclError(
            "validation_error", "limits.messages_per_minute: at least 1",
            errors=[{"field": "limits.messages_per_minute", "message": "at least 1"}],
        )
    for name in ("daily_tokens", "monthly_tokens", "daily_cost", "monthly_cost"):
        value = getattr(definition.budget, name)
        if value is not None and value < 0:
            raise LoaclError(
                "validation_error", f"budget.{name}: 0 or more (0: no limit)",
                errors=[{"field": f"budget.{name}", "message": "at least 0"}],
            )
    if definition.retention_days is not None and not (
        1 <= definition.retention_days <= MAX_RETENTION_DAYS
    ):
        raise LoaclError(
            "validation_error", f"retention_days: 1 to {MAX_RETENTION_DAYS}, or null to keep",
            errors=[{"field": "retention_days", "message": f"1 to {MAX_RETENTION_DAYS}"}],
        )
    hours = definition.office_hours
    return replace(definition, allowed_origins=tuple(origins),
                   office_hours=None if hours is None else checked_hours(hours))


def create_widget(widget_id: str, owner_id: str, definition: WidgetDefinition) -> list[Event]:
    return [WidgetCreated(widget_id=widget_id, owner_id=owner_id, definition=checked(definition))]


def update_widget(state: Widget, owner_id: str, definition: WidgetDefinition) -> list[Event]:
    _owned(state, owner_id)
    definition = checked(definition)
    if definition == state.definition:
        return []
    return [WidgetUpdated(widget_id=state.widget_id, definition=definition)]


def rotate_secret(state: Widget, owner_id: str) -> list[Event]:
    _owned(state, owner_id)
    return [
        WidgetSecretRotated(widget_id=state.widget_id, generation=state.secret_generation + 1)
    ]


def delete_widget(state: Widget, owner_id: str) -> list[Event]:
    _owned(state, owner_id)
    return [WidgetDeleted(widget_id=state.widget_id)]
