"""The ``openai`` provider: OpenAI's Responses API, streamed, with LOACL's log as the history.

Each turn sends the assistant's instructions and the conversation as LOACL holds it, with
``store=false``: nothing needs to live at OpenAI between turns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import openai

from loacl.providers.base import (
    Attachment,
    FileCitation,
    ProviderError,
    ReplyRequest,
    ReplyResult,
    ToolCall,
    Turn,
    function_tools,
    parameters_of,
    sampling_options,
)
from loacl.providers.errors import translate


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0


class _Error(msgspec.Struct):
    message: str | None = None
    code: str | None = None


class _Incomplete(msgspec.Struct):
    reason: str | None = None


class _Response(msgspec.Struct):
    id: str = ""
    usage: _Usage | None = None
    error: _Error | None = None
    incomplete_details: _Incomplete | None = None


class _Annotation(msgspec.Struct):
    type: str = ""
    file_id: str = ""
    filename: str = ""


class _Content(msgspec.Struct):
    type: str = ""
    annotations: list[_Annotation] = []


class _Result(msgspec.Struct):
    file_id: str | None = None
    filename: str | None = None
    text: str | None = None


class _Item(msgspec.Struct):
    type: str = ""
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    content: list[_Content] = []
    results: list[_Result] | None = None


class _Event(msgspec.Struct):
    """The fields LOACL reads of a Responses stream event; the rest is skipped unparsed."""

    type: str = ""
    delta: str = ""
    response: _Response | None = None
    code: str | None = None
    message: str | None = None
    error: _Error | None = None
    item: _Item | None = None


_event_decoder = msgspec.json.Decoder(_Event)


def _decode_event(data: str) -> _Event:
    try:
        return _event_decoder.decode(data)
    except msgspec.DecodeError:
        raise ProviderError("provider_error", "the AI provider sent a malformed stream") from None


def _cite(item: _Item, passages: dict[str, str], result: ReplyResult) -> None:
    """The files an answer's text cites, each once, in the order first cited."""
    known = {c.file_id for c in result.file_citations}
    for content in item.content:
        for note in content.annotations:
            if note.type == "file_citation" and note.file_id and note.file_id not in known:
                known.add(note.file_id)
                result.file_citations.append(FileCitation(
                    note.file_id, note.filename, passages.get(note.file_id, "")))


def _cut_at_the_limit(event: _Event) -> bool:
    details = event.response.incomplete_details if event.response else None
    return (event.type == "response.incomplete" and details is not None
            and details.reason == "max_output_tokens")


class ResponsesProvider:
    name = "openai"

    def __init__(self, client: openai.AsyncOpenAI, *, store: bool = False) -> None:
        self.client = client  # file uploads: the SDK retries them itself
        # The reply's request is sent once: LOACL retries it itself, telling the visitor.
        self.once = client.with_options(max_retries=0)
        self.store = store

    async def _file_id(self, attachment: Attachment, result: ReplyResult) -> str:
        """Upload a file once; the caller records the id so that later turns reuse it."""
        if attachment.provider_file_id:
            return attachment.provider_file_id
        if attachment.file_id in result.uploaded:
            return result.uploaded[attachment.file_id]
        uploaded = await self.client.files.create(
            file=(attachment.filename, attachment.data, attachment.content_type),
            purpose="user_data",
        )
        result.uploaded[attachment.file_id] = uploaded.id
        return uploaded.id

    async def _input(self, turns: list[Turn], result: ReplyResult) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for turn in turns:
            if turn.role == "assistant":
                items.append({
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": turn.text}],
                })
                continue
            content: list[dict[str, Any]] = [
                {"type": "input_file", "file_id": await self._file_id(a, result)}
                for a in turn.attachments
            ]
            content.append({"type": "input_text", "text": turn.text})
            items.append({"role": "user", "content": content})
        return items

    @staticmethod
    def _rounds(request: ReplyRequest) -> list[dict[str, Any]]:
        """This reply's earlier rounds: what the model wrote, its calls and their outputs."""
        items: list[dict[str, Any]] = []
        for done in request.rounds:
            if done.text:
                items.append({"role": "assistant",
                              "content": [{"type": "output_text", "text": done.text}]})
            items += [{"type": "function_call", "call_id": c.call_id, "name": c.name,
                       "arguments": c.arguments} for c in done.calls]
            items += [{"type": "function_call_output", "call_id": c.call_id, "output": out}
                      for c, out in zip(done.calls, done.outputs, strict=True)]
        return items

    @staticmethod
    def _tools(request: ReplyRequest) -> list[dict[str, Any]]:
        functions = function_tools(request)
        # An assistant whose documents LOACL holds searches them through its own file_search
        # function: OpenAI's tool of the same name over the (imported) vector stores then
        # stands aside.
        ours = any(t.name == "file_search" for t in functions)
        tools: list[dict[str, Any]] = [
            {"type": "file_search", "vector_store_ids": list(request.assistant.vector_store_ids)}
        ] if request.assistant.vector_store_ids and not ours else []
        tools += [{"type": "function", "name": t.name, "description": t.description,
                   "parameters": parameters_of(t), "strict": False}
                  for t in functions]
        tools += [{"type": t.type} for t in request.tools if t.type == "web_search"]
        return tools

    async def aclose(self) -> None:
        await self.client.close()

    async def stream(self, request: ReplyRequest, result: ReplyResult) -> AsyncIterator[str]:
        a = request.assistant
        options = sampling_options(a, "max_output_tokens")
        if a.instructions:
            options["instructions"] = a.instructions
        tools = self._tools(request)
        if tools:
            options["tools"] = tools
            if not request.may_call:
                options["tool_choice"] = "none"
        if any(t.get("type") == "file_search" for t in tools):
            # The passages found, so that the citations can show them.
            options["include"] = ["file_search_call.results"]
        turns = await self._input(request.turns, result)
        completed = False
        passages: dict[str, str] = {}
        try:
            # The SDK sends the request (auth, status errors; LOACL retries); LOACL reads the
            # server-sent events itself. Building the SDK's typed model for every streamed
            # event cost about 200 µs each, a core at 5,000 tokens a second. The body goes as
            # ``extra_body``, plain JSON as LOACL built it: the SDK walks the typed parameters
            # it is given against their declared types (aliases, dates, files, none of which
            # LOACL sends), which took 5 to 7 ms a request, before every tool round's answer
            # too.
            create: Any = self.once.responses.with_streaming_response.create
            async with create(stream=True, extra_body={
                "model": a.model, "input": turns + self._rounds(request), "store": self.store,
                **options,
            }) as response:
                async for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if not data or data == "[DONE]":
                        continue
                    event = _decode_event(data)
                    kind = event.type
                    if kind == "response.output_text.delta":
                        yield event.delta
                    elif kind == "response.output_item.done" and event.item is not None:
                        item = event.item
                        if item.type == "function_call":
                            result.calls.append(ToolCall(item.call_id, item.name, item.arguments))
                        elif item.type == "file_search_call":
                            for found in item.results or ():
                                if found.file_id and found.text:
                                    passages.setdefault(found.file_id, found.text)
                        elif item.type == "message":
                            _cite(item, passages, result)
                    elif kind == "response.created" and event.response is not None:
                        result.request_id = event.response.id
                    elif kind == "response.completed" or _cut_at_the_limit(event):
                        # Cut at the assistant's output limit is an answer all the same: kept
                        # and completed, as a truncated one (the server log says why).
                        usage = event.response.usage if event.response else None
                        if usage is not None:  # summed over the reply's rounds
                            result.input_tokens += usage.input_tokens
                            result.output_tokens += usage.output_tokens
                        if kind == "response.incomplete":
                            result.stop_reason = "max_output_tokens"
                        completed = True
                    elif kind in ("response.failed", "response.incomplete"):
                        failed = event.response
                        why = (
                            failed.error.message if failed and failed.error
                            else "the answer is incomplete"
                        )
                        raise ProviderError("provider_error", f"the AI provider failed: {why}")
                    elif kind == "error" or event.error is not None:
                        # Documented flat, seen nested in production: handle both.
                        inner = event.error
                        code = (inner.code if inner else event.code) or ""
                        message = (inner.message if inner else event.message) or "stream error"
                        raise ProviderError(
                            "provider_rate_limited" if "rate_limit" in code else "provider_error",
                            f"the AI provider failed: {message}",
                        )
        except ProviderError:
            raise
        except Exception as exc:
            raise translate(exc) from exc
        if not completed:
            raise ProviderError("provider_unavailable", "the AI provider's answer was cut short")
