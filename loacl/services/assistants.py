"""Assistants: owners define them; widgets point at them."""

from __future__ import annotations

import json
from typing import Any

from loacl.domain import assistants as domain
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.providers import check_model
from loacl.services.tokens import new_id
from loacl.settings import Settings
from loacl.store.eventstore import NO_STREAM, EventStore

_COLUMNS = "assistant_id, owner_id, definition, version, created_seq, created_at, updated_at"


def assistant_json(row: Any) -> dict[str, Any]:
    assistant_id, _owner_id, definition, version, _seq, created_at, updated_at = row
    d = json.loads(definition)
    return {
        "id": assistant_id,
        "name": d["name"],
        "provider": d["provider"],
        "model": d["model"],
        "instructions": d["instructions"],
        "temperature": d["temperature"],
        "top_p": d["top_p"],
        "max_output_tokens": d["max_output_tokens"],
        "file_search": {"vector_store_ids": d["vector_store_ids"]}
        if d["vector_store_ids"] else None,
        "version": version,
        "created_at": created_at,
        "updated_at": updated_at,
    }


class Assistants:
    def __init__(self, store: EventStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    async def _load(self, assistant_id: str) -> tuple[domain.Assistant, int]:
        return await self.store.load(
            domain.assistant_stream(assistant_id), domain.Assistant(), domain.evolve_assistant
        )

    async def get(self, owner_id: str, assistant_id: str) -> dict[str, Any]:
        rows = await self.store.query(
            f"SELECT {_COLUMNS} FROM assistants WHERE assistant_id = ? AND owner_id = ?",
            (assistant_id, owner_id),
        )
        if not rows:
            raise LoaclError("not_found", "no such assistant")
        return assistant_json(rows[0])

    async def list(
        self, owner_id: str, after: int, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        rows = await self.store.query(
            f"SELECT {_COLUMNS} FROM assistants WHERE owner_id = ? AND created_seq > ? "
            "ORDER BY created_seq LIMIT ?",
            (owner_id, after, limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [assistant_json(r) for r in rows], (rows[-1][4] if more else None)

    async def create(
        self, owner_id: str, definition: domain.AssistantDefinition, meta: Metadata
    ) -> dict[str, Any]:
        await check_model(self.settings, definition.provider, definition.model)
        assistant_id = new_id()
        await self.store.append(
            domain.assistant_stream(assistant_id),
            domain.create_assistant(assistant_id, owner_id, definition),
            expected_version=NO_STREAM, metadata=meta,
        )
        return await self.get(owner_id, assistant_id)

    async def update(
        self, owner_id: str, assistant_id: str, definition: domain.AssistantDefinition,
        if_match: int | None, meta: Metadata,
    ) -> dict[str, Any]:
        state, version = await self._load(assistant_id)
        events = domain.update_assistant(state, owner_id, definition)
        if if_match is not None and if_match != version:
            raise LoaclError(
                "version_conflict", "the assistant changed since you read it; GET it again",
                current_version=version,
            )
        old = state.definition
        if events and (old is None or (old.provider, old.model) != (
            definition.provider, definition.model
        )):
            await check_model(self.settings, definition.provider, definition.model)
        await self.store.append(
            domain.assistant_stream(assistant_id), events,
            expected_version=version, metadata=meta,
        )
        return await self.get(owner_id, assistant_id)

    async def delete(
        self, owner_id: str, assistant_id: str, if_match: int | None, meta: Metadata
    ) -> None:
        state, version = await self._load(assistant_id)
        events = domain.delete_assistant(state, owner_id)
        if if_match is not None and if_match != version:
            raise LoaclError(
                "version_conflict", "the assistant changed since you read it; GET it again",
                current_version=version,
            )
        used = await self.store.query(
            "SELECT count(*) FROM widgets WHERE assistant_id = ?", (assistant_id,)
        )
        if used[0][0]:
            raise LoaclError(
                "assistant_in_use",
                f"{used[0][0]} widget(s) use this assistant; point them elsewhere first",
            )
        await self.store.append(
            domain.assistant_stream(assistant_id), events,
            expected_version=version, metadata=meta,
        )
