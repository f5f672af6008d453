"""Assistants: owners define them; widgets point at them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import jsonschema

from loacl.domain import assistants as domain
from loacl.domain.errors import LoaclError
from loacl.domain.events import Event, Metadata
from loacl.domain.privacy import OWNER, subject
from loacl.providers import check_model as model_known
from loacl.services.egress import OutboundError, Policy, check_url
from loacl.services.tokens import new_id
from loacl.services.tools import tool_secret
from loacl.services.versions import expect_version
from loacl.settings import Settings
from loacl.store.eventstore import NO_STREAM, EventStore
from loacl.store.views import Page
from loacl.store.views import assistants as views
from loacl.store.views import knowledge as knowledge_views
from loacl.store.views.assistants import AssistantView


class Assistants:
    def __init__(self, store: EventStore, settings: Settings, server_key: str = "") -> None:
        self.store = store
        self.settings = settings
        self._server_key = server_key.encode()
        # Told of a deleted assistant (its knowledge at OpenAI is deleted in the background).
        self.deleted: Callable[[str], None] | None = None

    def check_tools(self, definition: domain.AssistantDefinition) -> None:
        """What the domain cannot check alone: each schema is a JSON Schema, and each URL one
        this server may call (its scheme, and its host when that is an address)."""
        for i, tool in enumerate(definition.tools):
            if tool.type != "http":
                continue
            try:
                cls = jsonschema.validators.validator_for(
                    tool.parameters, jsonschema.Draft202012Validator
                )
                cls.check_schema(tool.parameters)
            except jsonschema.exceptions.SchemaError as exc:
                raise _invalid(i, "parameters", f"not a JSON Schema: {exc.message}") from None
            if tool.url:
                try:
                    private = self.settings.tools_allow_private_networks
                    check_url(tool.url, Policy(allow_private=private, allow_http=private))
                except OutboundError as exc:
                    raise _invalid(i, "url", exc.message) from None

    def _with_secret(
        self, view: AssistantView, events: list[Event]
    ) -> AssistantView:
        """The view with the tool secret when this change made a new one: shown once."""
        for event in events:
            if isinstance(event, domain.ToolSecretRotated):
                return replace(view, tool_secret=tool_secret(
                    self._server_key, event.assistant_id, event.generation
                ))
        return view

    async def _load(self, assistant_id: str) -> tuple[domain.Assistant, int]:
        return await self.store.load(
            domain.assistant_stream(assistant_id), domain.Assistant(), domain.evolve_assistant
        )

    async def get(self, owner_id: str, assistant_id: str) -> AssistantView:
        found = await views.assistant(self.store, assistant_id)
        if found is None or found.owner_id != owner_id:
            raise LoaclError("not_found", "no such assistant")
        return found

    async def list(self, owner_id: str, after: int, limit: int) -> Page[AssistantView]:
        return await views.assistants_of(self.store, owner_id, after, limit)

    async def create(
        self, owner_id: str, definition: domain.AssistantDefinition, meta: Metadata,
        *, check_model: bool = True,
    ) -> AssistantView:
        assistant_id = new_id()
        events = domain.create_assistant(assistant_id, owner_id, definition)
        self.check_tools(definition)
        if check_model:
            await model_known(self.settings, definition.provider, definition.model)
        await self.store.append(
            domain.assistant_stream(assistant_id), events,
            expected_version=NO_STREAM, metadata=meta, subject=subject(OWNER, owner_id),
        )
        return self._with_secret(await self.get(owner_id, assistant_id), events)

    async def update(
        self, owner_id: str, assistant_id: str, definition: domain.AssistantDefinition,
        if_match: int | None, meta: Metadata, *, check_model: bool = True,
    ) -> AssistantView:
        state, version = await self._load(assistant_id)
        events = domain.update_assistant(state, owner_id, definition)
        expect_version("assistant", version, if_match)
        self.check_tools(definition)
        old = state.definition
        if definition.provider != "openai":
            kept = await knowledge_views.store_of(self.store, assistant_id)
            if kept.store == "openai":
                raise LoaclError(
                    "knowledge_store_not_supported",
                    f"the assistant's knowledge is kept at OpenAI, which the "
                    f"{definition.provider} provider cannot search: choose local knowledge "
                    "first (PUT /api/v1/assistants/{id}/knowledge-store)",
                    errors=[{"field": "provider", "message": "knowledge is kept at OpenAI"}],
                )
        if check_model and events and (old is None or (old.provider, old.model) != (
            definition.provider, definition.model
        )):
            await model_known(self.settings, definition.provider, definition.model)
        await self.store.append(
            domain.assistant_stream(assistant_id), events,
            expected_version=version, metadata=meta, subject=subject(OWNER, owner_id),
        )
        return self._with_secret(await self.get(owner_id, assistant_id), events)

    async def rotate_tool_secret(
        self, owner_id: str, assistant_id: str, if_match: int | None, meta: Metadata
    ) -> AssistantView:
        """A new secret for the assistant's tool calls, shown once; the old one stops."""
        state, version = await self._load(assistant_id)
        events = domain.rotate_tool_secret(state, owner_id)
        expect_version("assistant", version, if_match)
        await self.store.append(
            domain.assistant_stream(assistant_id), events,
            expected_version=version, metadata=meta, subject=subject(OWNER, owner_id),
        )
        return self._with_secret(await self.get(owner_id, assistant_id), events)

    async def delete(
        self, owner_id: str, assistant_id: str, if_match: int | None, meta: Metadata
    ) -> None:
        state, version = await self._load(assistant_id)
        events = domain.delete_assistant(state, owner_id)
        expect_version("assistant", version, if_match)
        # The projection refuses too, inside the write; asking first gives the count at once.
        used = await views.widgets_using(self.store, assistant_id)
        if used:
            raise LoaclError(
                "assistant_in_use",
                f"{used} widget(s) use this assistant; point them elsewhere first",
            )
        await self.store.append(
            domain.assistant_stream(assistant_id), events,
            expected_version=version, metadata=meta, subject=subject(OWNER, owner_id),
        )
        if self.deleted is not None:
            self.deleted(assistant_id)


def _invalid(index: int, name: str, message: str) -> LoaclError:
    return LoaclError("validation_error", f"tools[{index}].{name}: {message}",
                      errors=[{"field": f"tools[{index}].{name}", "message": message}])
