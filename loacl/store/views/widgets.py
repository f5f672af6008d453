"""Widgets, decoded from the ``widgets`` read table into their one definition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from loacl.domain.assistants import AssistantDefinition
from loacl.domain.widgets import WidgetBudget, WidgetDefinition
from loacl.store.eventstore import EventStore
from loacl.store.views import Page, first, page_by_creation

_SELECT = (
    "SELECT widget_id, owner_id, definition, secret_generation, version, created_seq, "
    "created_at, updated_at FROM widgets"
)
_decode = msgspec.json.Decoder(WidgetDefinition).decode
_decode_assistant = msgspec.json.Decoder(AssistantDefinition).decode


@dataclass(frozen=True, slots=True)
class WidgetView:
    widget_id: str
    owner_id: str
    definition: WidgetDefinition
    secret_generation: int
    version: int
    created_seq: int
    created_at: str
    updated_at: str


@dataclass(frozen=True, slots=True)
class ReplySetup:
    """What answering a visitor of a widget needs: its assistant, message rate and budget."""

    assistant_id: str
    assistant: AssistantDefinition
    messages_per_minute: int
    budget: WidgetBudget


def _view(row: Any) -> WidgetView:
    widget_id, owner_id, definition, generation, version, seq, created_at, updated_at = row
    return WidgetView(
        widget_id, owner_id, _decode(definition), generation, version, seq, created_at,
        updated_at,
    )


async def widget(store: EventStore, widget_id: str) -> WidgetView | None:
    return await first(store, f"{_SELECT} WHERE widget_id = ?", (widget_id,), _view)


async def widgets_of(
    store: EventStore, owner_id: str, after: int, limit: int
) -> Page[WidgetView]:
    return await page_by_creation(
        store, _SELECT, "owner_id = ?", (owner_id,), after, limit, _view
    )


async def reply_setup(store: EventStore, widget_id: str) -> ReplySetup | None:
    rows = await store.query(
        "SELECT a.assistant_id, a.definition, w.definition FROM widgets w "
        "JOIN assistants a ON a.assistant_id = w.assistant_id WHERE w.widget_id = ?",
        (widget_id,),
    )
    if not rows:
        return None
    assistant_id, assistant, widget_definition = rows[0]
    definition = _decode(widget_definition)
    return ReplySetup(
        assistant_id, _decode_assistant(assistant), definition.messages_per_minute,
        definition.budget,
    )
