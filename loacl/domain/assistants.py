"""Assistants: the model, instructions and tools that answer a widget's visitors.

LOACL keeps the definition itself (OpenAI's Assistants API and dashboard prompts are gone); every
turn sends it to the provider.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from loacl.domain.errors import LoaclError
from loacl.domain.events import Event

# The providers an assistant may name; ``loacl.providers`` has a factory for each (a test
# checks that the two agree).
PROVIDERS = ("openai", "chat_completions", "demo")


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantDefinition:
    name: str
    provider: str
    model: str
    instructions: str = ""
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    vector_store_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantCreated(Event):
    event_type = "assistant.created"
    assistant_id: str
    owner_id: str
    definition: AssistantDefinition


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantUpdated(Event):
    event_type = "assistant.updated"
    assistant_id: str
    definition: AssistantDefinition


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantDeleted(Event):
    event_type = "assistant.deleted"
    assistant_id: str


def assistant_stream(assistant_id: str) -> str:
    return f"assistant-{assistant_id}"


@dataclass(frozen=True, slots=True)
class Assistant:
    assistant_id: str = ""
    owner_id: str = ""
    definition: AssistantDefinition | None = None
    exists: bool = False
    deleted: bool = False


def evolve_assistant(state: Assistant, event: Event) -> Assistant:
    match event:
        case AssistantCreated():
            return Assistant(event.assistant_id, event.owner_id, event.definition, True, False)
        case AssistantUpdated():
            return replace(state, definition=event.definition)
        case AssistantDeleted():
            return replace(state, deleted=True)
    return state


def _owned(state: Assistant, owner_id: str) -> None:
    # Another owner's assistant is indistinguishable from a missing one.
    if not state.exists or state.deleted or state.owner_id != owner_id:
        raise LoaclError("not_found", "no such assistant")


def checked(definition: AssistantDefinition) -> AssistantDefinition:
    if definition.provider not in PROVIDERS:
        raise LoaclError(
            "validation_error",
            f"provider: one of {', '.join(PROVIDERS)}, not {definition.provider!r}",
            errors=[{"field": "provider", "message": "unknown provider",
                     "accepted": list(PROVIDERS)}],
        )
    return definition


def create_assistant(
    assistant_id: str, owner_id: str, definition: AssistantDefinition
) -> list[Event]:
    return [
        AssistantCreated(
            assistant_id=assistant_id, owner_id=owner_id, definition=checked(definition)
        )
    ]


def update_assistant(
    state: Assistant, owner_id: str, definition: AssistantDefinition
) -> list[Event]:
    _owned(state, owner_id)
    definition = checked(definition)
    if definition == state.definition:
        return []
    return [AssistantUpdated(assistant_id=state.assistant_id, definition=definition)]


def delete_assistant(state: Assistant, owner_id: str) -> list[Event]:
    _owned(state, owner_id)
    return [AssistantDeleted(assistant_id=state.assistant_id)]
