"""The ``chat_completions`` provider: any OpenAI-compatible server, such as a local model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai

from loacl.providers.base import (
    ProviderError,
    ReplyRequest,
    ReplyResult,
    ToolCall,
    function_tools,
    parameters_of,
    sampling_options,
)
from loacl.providers.errors import translate


class ChatCompletionsProvider:
    name = "chat_completions"

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client
        # The reply's request is sent once: LOACL retries it itself, telling the visitor.
        self.once = client.with_options(max_retries=0)

    def _messages(self, request: ReplyRequest) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if request.assistant.instructions:
            messages.append({"role": "system", "content": request.assistant.instructions})
        for turn in request.turns:
            text = turn.text
            for attachment in turn.attachments:
                if attachment.kind != "txt":
                    raise ProviderError(
                        "unsupported_file_for_provider",
                        f"{attachment.filename}: this assistant's server takes text files only",
                    )
                # Text files are inlined: OpenAI-compatible servers have no file inputs.
                body = attachment.data.decode("utf-8")
                text = f"{text}\n\n--- {attachment.filename} ---\n{body}"
            messages.append({"role": turn.role, "content": text})
        for done in request.rounds:
            messages.append({
                "role": "assistant", "content": done.text or None,
                "tool_calls": [{"id": c.call_id, "type": "function",
                                "function": {"name": c.name, "arguments": c.arguments}}
                               for c in done.calls],
            })
            messages += [{"role": "tool", "tool_call_id": c.call_id, "content": out}
                         for c, out in zip(done.calls, done.outputs, strict=True)]
        return messages

    @staticmethod
    def _tools(request: ReplyRequest) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": parameters_of(t),
        }} for t in function_tools(request)]

    async def aclose(self) -> None:
        await self.client.close()

    async def stream(self, request: ReplyRequest, result: ReplyResult) -> AsyncIterator[str]:
        a = request.assistant
        options = sampling_options(a, "max_tokens")
        messages = self._messages(request)
        tools = self._tools(request)
        if tools:
            options["tools"] = tools
            if not request.may_call:
                options["tool_choice"] = "none"
        # Streamed calls arrive in pieces, by index: the id and name first, then arguments.
        calls: dict[int, list[str]] = {}
        finished = False
        try:
            # The SDK's overloads cannot follow **options; the wire format is what matters here.
            # The body goes as ``extra_body``, plain JSON as LOACL built it (``messages`` and
            # ``model`` are required by the signature and replaced by it): the SDK's walk of
            # typed parameters against their declared types took milliseconds a request.
            create: Any = self.once.chat.completions.create
            stream = await create(model=a.model, messages=(), stream=True, extra_body={
                "model": a.model, "messages": messages,
                "stream_options": {"include_usage": True}, **options,
            })
            async with stream:
                async for chunk in stream:
                    result.request_id = result.request_id or chunk.id
                    if chunk.usage is not None:  # summed over the reply's rounds
                        result.input_tokens += chunk.usage.prompt_tokens
                        result.output_tokens += chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        if choice.delta.content:
                            yield choice.delta.content
                        for piece in choice.delta.tool_calls or ():
                            call = calls.setdefault(piece.index, ["", "", ""])
                            call[0] = piece.id or call[0]
                            if piece.function is not None:
                                call[1] = piece.function.name or call[1]
                                call[2] += piece.function.arguments or ""
                        if choice.finish_reason == "length":
                            # Cut at the output limit, as the Responses API's incomplete
                            # ``max_output_tokens``: a truncated answer, kept and completed.
                            result.stop_reason = "max_output_tokens"
                        elif choice.finish_reason == "content_filter":
                            raise ProviderError(
                                "provider_error",
                                f"the AI provider stopped early ({choice.finish_reason})",
                            )
                        if choice.finish_reason is not None:
                            finished = True
        except ProviderError:
            raise
        except Exception as exc:
            raise translate(exc) from exc
        if not finished:
            raise ProviderError("provider_unavailable", "the AI provider's answer was cut short")
        result.calls += [ToolCall(*calls[i]) for i in sorted(calls)]
