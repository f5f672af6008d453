"""The ``chat_completions`` provider: any OpenAI-compatible server, such as a local model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai

from loacl.providers.base import ProviderError, ReplyRequest, ReplyResult, sampling_options
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
        return messages

    async def aclose(self) -> None:
        await self.client.close()

    async def stream(self, request: ReplyRequest, result: ReplyResult) -> AsyncIterator[str]:
        a = request.assistant
        options = sampling_options(a, "max_tokens")
        messages = self._messages(request)
        finished = False
        try:
            # The SDK's overloads cannot follow **options; the wire format is what matters here.
            create: Any = self.once.chat.completions.create
            stream = await create(
                model=a.model, messages=messages, stream=True,
                stream_options={"include_usage": True}, **options,
            )
            async with stream:
                async for chunk in stream:
                    result.request_id = result.request_id or chunk.id
                    if chunk.usage is not None:
                        result.input_tokens = chunk.usage.prompt_tokens
                        result.output_tokens = chunk.usage.completion_tokens
                    for choice in chunk.choices:
                        if choice.delta.content:
                            yield choice.delta.content
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
