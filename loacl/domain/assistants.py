"""Assistants: the model, instructions and tools that answer a widget's visitors.

LOACL keeps the definition itself (OpenAI's Assistants API and dashboard prompts are gone); every
turn sends it to the provider.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from loacl.domain.errors import LoaclError
from loacl.domain.events import Event

# The providers an assistant may name; ``loacl.providers`` has a factory for each (a test
# checks that the two agree).
PROVIDERS = ("openai", "chat_completions", "demo")

# Tool kinds: ``http`` calls the owner's endpoint (LOACL runs it, for every provider);
# ``web_search`` is OpenAI's own, passed through to the Responses API.
TOOL_TYPES = ("http", "web_search")
# LOACL's own: the model may ask for a person (domain.handoff); the assistant's ``handoff``
# setting, kept as a tool so that the definition's wire format stays as it is.
HANDOFF_TOOL = "request_human"
HANDOFF_DESCRIPTION = (
    "Ask for a person from the team to take over this conversation: when the visitor asks "
    "for a human, or when you cannot help. Give the reason in a few words. Afterwards, tell "
    "the visitor that a person will answer here."
)
HANDOFF_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"reason": {"type": "string", "description": "why a person is needed"}},
    "required": ["reason"],
}
BUILTIN_TOOLS = {"web_search": ("openai",)}  # the providers that run each built-in tool
MAX_TOOLS = 20
TOOL_TIMEOUT_MS = (100, 60_000)
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolDefinition:
    """One tool the model may call. For ``http``: the function the model sees (``name``,
    ``description``, ``parameters`` as JSON Schema) and where LOACL sends its calls (``url``;
    empty while the owner has not set one, and then ``enabled`` is false)."""

    type: str = "http"
    name: str = ""
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    url: str = ""
    timeout_ms: int = 10_000
    status_text: str = ""
    enabled: bool = True


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
    tools: tuple[ToolDefinition, ...] = ()

    @property
    def handoff(self) -> bool:
        """Whether the model may ask for a person (the ``request_human`` tool)."""
        return any(t.type == HANDOFF_TOOL for t in self.tools)

    def http_tools(self) -> tuple[ToolDefinition, ...]:
        """The tools LOACL calls for the model: enabled, with a URL."""
        return tuple(t for t in self.tools if t.type == "http" and t.enabled and t.url)


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantCreated(Event):
    """v2: the definition has tools."""

    event_type = "assistant.created"
    schema_version = 2
    assistant_id: str
    owner_id: str
    definition: AssistantDefinition
    # What the owner publishes to every visitor of its widgets: configuration, not a person's.
    not_personal = ("assistant_id", "owner_id", "definition")


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantUpdated(Event):
    """v2: the definition has tools."""

    event_type = "assistant.updated"
    schema_version = 2
    assistant_id: str
    definition: AssistantDefinition
    not_personal = ("assistant_id", "definition")


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantDeleted(Event):
    event_type = "assistant.deleted"
    assistant_id: str
    not_personal = ("assistant_id",)


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSecretRotated(Event):
    """The secret that signs the assistant's tool calls is derived from the server key and
    this generation number (as a widget's identity secret is): the secret never enters the
    log. Generation 1 comes with the first tool."""

    event_type = "assistant.tool_secret_rotated"
    assistant_id: str
    generation: int
    not_personal = ("assistant_id",)


def assistant_stream(assistant_id: str) -> str:
    return f"assistant-{assistant_id}"


@dataclass(frozen=True, slots=True)
class Assistant:
    assistant_id: str = ""
    owner_id: str = ""
    definition: AssistantDefinition | None = None
    exists: bool = False
    deleted: bool = False
    tool_secret_generation: int = 0


def evolve_assistant(state: Assistant, event: Event) -> Assistant:
    match event:
        case AssistantCreated():
            return Assistant(event.assistant_id, event.owner_id, event.definition, True, False)
        case AssistantUpdated():
            return replace(state, definition=event.definition)
        case AssistantDeleted():
            return replace(state, deleted=True)
        case ToolSecretRotated():
            return replace(state, tool_secret_generation=event.generation)
    return state


def _owned(state: Assistant, owner_id: str) -> None:
    # Another owner's assistant is indistinguishable from a missing one.
    if not state.exists or state.deleted or state.owner_id != owner_id:
        raise LoaclError("not_found", "no such assistant")


def _invalid_tool(index: int, name: str, message: str) -> LoaclError:
    return LoaclError("validation_error", f"tools[{index}].{name}: {message}",
                      errors=[{"field": f"tools[{index}].{name}", "message": message}])


def handoff_tool() -> ToolDefinition:
    return ToolDefinition(type=HANDOFF_TOOL, name=HANDOFF_TOOL,
                          description=HANDOFF_DESCRIPTION, parameters=HANDOFF_PARAMETERS)


def _checked_tool(index: int, tool: ToolDefinition, provider: str) -> ToolDefinition:
    if tool.type == HANDOFF_TOOL:
        return handoff_tool()
    if tool.type not in TOOL_TYPES:
        raise _invalid_tool(index, "type", f"one of {', '.join(TOOL_TYPES)}")
    runs = BUILTIN_TOOLS.get(tool.type)
    if runs is not None:
        if provider not in runs:
            raise LoaclError(
                "tool_not_supported",
                f"tools[{index}]: the {provider} provider cannot run the built-in "
                f"{tool.type} tool (only {', '.join(runs)} can)",
                errors=[{"field": f"tools[{index}].type", "message": "not for this provider"}],
            )
        return ToolDefinition(type=tool.type, name=tool.type)
    if not _TOOL_NAME.match(tool.name):
        raise _invalid_tool(index, "name", "1 to 64 letters, digits, _ or -")
    if tool.parameters.get("type", "object") != "object":
        raise _invalid_tool(index, "parameters", "a JSON Schema of type object")
    low, high = TOOL_TIMEOUT_MS
    if not low <= tool.timeout_ms <= high:
        raise _invalid_tool(index, "timeout_ms", f"{low} to {high}")
    if tool.url:
        parts = urlsplit(tool.url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise _invalid_tool(index, "url", "an absolute https URL")
        if parts.username or parts.password:
            raise _invalid_tool(index, "url", "no user or password in the URL")
        try:
            _ = parts.port
        except ValueError:
            raise _invalid_tool(index, "url", "the port is not a number from 0 to 65535") \
                from None
    elif tool.enabled:
        # An imported function tool arrives without one: kept, but off until the owner says
        # where its calls go.
        raise _invalid_tool(index, "url", "required while the tool is enabled")
    return tool


def checked(definition: AssistantDefinition) -> AssistantDefinition:
    if definition.provider not in PROVIDERS:
        raise LoaclError(
            "validation_error",
            f"provider: one of {', '.join(PROVIDERS)}, not {definition.provider!r}",
            errors=[{"field": "provider", "message": "unknown provider",
                     "accepted": list(PROVIDERS)}],
        )
    if len(definition.tools) > MAX_TOOLS:
        raise LoaclError("validation_error", f"tools: at most {MAX_TOOLS}",
                         errors=[{"field": "tools", "message": f"at most {MAX_TOOLS}"}])
    tools = tuple(
        _checked_tool(i, tool, definition.provider) for i, tool in enumerate(definition.tools)
    )
    names = [t.name for t in tools]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise _invalid_tool(i, "name", f"{name!r} is named twice")
    return replace(definition, tools=tools)


def _first_secret(state: Assistant, assistant_id: str,
                  definition: AssistantDefinition) -> list[Event]:
    """The tool secret's first generation, with the first http tool."""
    if state.tool_secret_generation or not any(t.type == "http" for t in definition.tools):
        return []
    return [ToolSecretRotated(assistant_id=assistant_id, generation=1)]


def create_assistant(
    assistant_id: str, owner_id: str, definition: AssistantDefinition
) -> list[Event]:
    definition = checked(definition)
    return [
        AssistantCreated(assistant_id=assistant_id, owner_id=owner_id, definition=definition),
        *_first_secret(Assistant(), assistant_id, definition),
    ]


def update_assistant(
    state: Assistant, owner_id: str, definition: AssistantDefinition
) -> list[Event]:
    _owned(state, owner_id)
    definition = checked(definition)
    if definition == state.definition:
        return []
    return [
        AssistantUpdated(assistant_id=state.assistant_id, definition=definition),
        *_first_secret(state, state.assistant_id, definition),
    ]


def rotate_tool_secret(state: Assistant, owner_id: str) -> list[Event]:
    _owned(state, owner_id)
    return [ToolSecretRotated(assistant_id=state.assistant_id,
                              generation=state.tool_secret_generation + 1)]


def delete_assistant(state: Assistant, owner_id: str) -> list[Event]:
    _owned(state, owner_id)
    return [AssistantDeleted(assistant_id=state.assistant_id)]
