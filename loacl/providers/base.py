"""What every provider takes and gives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from loacl.domain.assistants import HANDOFF_TOOL, AssistantDefinition, ToolDefinition
from loacl.domain.errors import LoaclError


@dataclass(frozen=True)
class Attachment:
    file_id: str
    filename: str
    kind: str  # pdf | docx | doc | txt
    content_type: str
    data: bytes
    provider_file_id: str | None = None


@dataclass(frozen=True)
class Turn:
    role: str  # user | assistant
    text: str
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class ToolCall:
    """A function the model called: its id (the provider's), name and JSON arguments."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolRound:
    """One round of the reply: the text the model wrote, the calls it made, their outputs."""

    text: str
    calls: tuple[ToolCall, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class ReplyRequest:
    assistant: AssistantDefinition
    turns: list[Turn]  # oldest first; the last one is the visitor's new message
    # The tools offered (LOACL's http tools, enabled, and built-in ones the provider runs).
    tools: tuple[ToolDefinition, ...] = ()
    # This reply's tool rounds so far, sent after the turns.
    rounds: tuple[ToolRound, ...] = ()
    # False: the model must answer in text now (the round limit is reached).
    may_call: bool = True


@dataclass
class ReplyResult:
    """Filled in by the provider as the stream ends."""

    input_tokens: int = 0
    output_tokens: int = 0
    request_id: str | None = None
    uploaded: dict[str, str] = field(default_factory=dict)  # LOACL file id -> provider file id
    # Why the provider stopped, when not at the answer's natural end: "max_output_tokens".
    stop_reason: str | None = None
    # The functions the model called in this request (its answer then continues after them).
    calls: list[ToolCall] = field(default_factory=list)
    # OpenAI's file_search: the files the answer cites (its ``file_citation`` annotations),
    # in order, across the reply's requests.
    file_citations: list[FileCitation] = field(default_factory=list)


@dataclass(frozen=True)
class FileCitation:
    """A file the answer cites: its OpenAI id and name, and the passage OpenAI's search gave
    for it (empty when the search results were not included)."""

    file_id: str
    filename: str
    passage: str = ""


class ProviderError(LoaclError):
    """A provider's failure. ``code`` is what the visitor is told: provider_rate_limited,
    provider_unavailable, provider_error; ``retry_after`` (seconds) when the provider said;
    ``retryable`` when asking again may work (a 429, a 5xx, a timeout, a dropped connection),
    which LOACL does only while the visitor has seen no text of the answer."""

    def __init__(
        self, code: str, message: str, retry_after: float | None = None, *,
        retryable: bool = False,
    ) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after
        self.retryable = retryable


class Provider(Protocol):
    name: str

    def stream(self, request: ReplyRequest, result: ReplyResult) -> AsyncIterator[str]:
        """Yield text deltas; fill ``result``; raise ``ProviderError`` on failure."""
        ...

    async def aclose(self) -> None:
        """Let go of connections; the provider is not used again."""
        ...


def sampling_options(assistant: AssistantDefinition, max_tokens: str) -> dict[str, Any]:
    """The assistant's sampling settings that are set, under the API's names; the two APIs
    differ only in what they call the output cap (``max_tokens`` or ``max_output_tokens``)."""
    options: dict[str, Any] = {}
    if assistant.temperature is not None:
        options["temperature"] = assistant.temperature
    if assistant.top_p is not None:
        options["top_p"] = assistant.top_p
    if assistant.max_output_tokens is not None:
        options[max_tokens] = assistant.max_output_tokens
    return options


def function_tools(request: ReplyRequest) -> list[ToolDefinition]:
    """The tools the model sees as functions: the owner's HTTP tools and LOACL's own
    ``request_human``."""
    return [t for t in request.tools if t.type in ("http", HANDOFF_TOOL)]


def parameters_of(tool: ToolDefinition) -> dict[str, Any]:
    return tool.parameters or {"type": "object", "properties": {}}


def trim_history(turns: list[Turn], budget_chars: int) -> list[Turn]:
    """Drop the oldest turns until the rest fit the context budget; keep the newest always."""
    kept: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        size = len(turn.text) + sum(len(a.data) for a in turn.attachments if a.kind == "txt")
        if kept and used + size > budget_chars:
            break
        kept.append(turn)
        used += size
    kept.reverse()
    # Providers want the history to open with the visitor, not with a dangling answer.
    while len(kept) > 1 and kept[0].role != "user":
        kept.pop(0)
    return kept
