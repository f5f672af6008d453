"""Assistants as owners see them, decoded from the ``assistants`` read table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from loacl.domain.assistants import AssistantDefinition
from loacl.store.eventstore import EventStore
from loacl.store.views import Page, first, page_by_creation

_SELECT = (
    "SELECT assistant_id, owner_id, definition, version, created_seq, created_at, updated_at "
    "FROM assistants"
)
_decode = msgspec.json.Decoder(AssistantDefinition).decode


@dataclass(frozen=True, slots=True)
class AssistantView:
    assistant_id: str
    owner_id: str
    definition: AssistantDefinition
    version: int
    created_seq: int
    created_at: str
    updated_at: str
    # Set only in the answer to the change that made a new tool secret: shown once.
    tool_secret: str | None = None


def _view(row: Any) -> AssistantView:
    assistant_id, owner_id, definition, version, seq, created_at, updated_at = row
    return AssistantView(
        assistant_id, owner_id, _decode(definition), version, seq, created_at, updated_at
    )


async def assistant(store: EventStore, assistant_id: str) -> AssistantView | None:
    return await first(store, f"{_SELECT} WHERE assistant_id = ?", (assistant_id,), _view)


async def assistants_of(
    store: EventStore, owner_id: str, after: int, limit: int
) -> Page[AssistantView]:
    return await page_by_creation(
        store, _SELECT, "owner_id = ?", (owner_id,), after, limit, _view
    )


async def widgets_using(store: EventStore, assistant_id: str) -> int:
    rows = await store.query(
        "SELECT count(*) FROM widgets WHERE assistant_id = ?", (assistant_id,)
    )
    return int(rows[0][0])
