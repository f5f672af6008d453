"""The ``openai`` provider: OpenAI's Responses API, streamed, with LOACL's log as the history.

Each turn sends the assistant's instructions and the conversation as LOACL holds it, with
``store=false``: nothing needs to live at OpenAI between turns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai

from loacl.providers.base import Attachment, ProviderError, ReplyRequest, ReplyResult, Turn
from loacl.providers.errors import translate


class ResponsesProvider:
    name = "openai"

    def __init__(self, client: openai.AsyncOpenAI, *, store: bool = False) -> None:
        self.client = client
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

    async def stream(self, request: ReplyRequest, result: ReplyResult) -> AsyncIterator[str]:
        a = request.assistant
        options: dict[str, Any] = {}
        if a.instructions:
            options["instructions"] = a.instructions
        if a.temperature is not None:
            options["temperature"] = a.temperature
        if a.top_p is not None:
            options["top_p"] = a.top_p
        if a.max_output_tokens is not None:
            options["max_output_tokens"] = a.max_output_tokens
        if a.vector_store_ids:
            options["tools"] = [
                {"type": "file_search", "vector_store_ids": list(a.vector_store_ids)}
            ]
        completed = False
        try:
            create: Any = self.client.responses.create
            stream = await create(
                model=a.model, input=await self._input(request.turns, result), stream=True,
                store=self.store, **options,
            )
            async with stream:
                async for event in stream:
                    kind = event.type
                    if kind == "response.output_text.delta":
                        yield event.delta
                    elif kind == "response.created":
                        result.request_id = event.response.id
                    elif kind == "response.completed":
                        usage = event.response.usage
                        if usage is not None:
                            result.input_tokens = usage.input_tokens
                            result.output_tokens = usage.output_tokens
                        completed = True
                    elif kind in ("response.failed", "response.incomplete"):
                        response = event.response
                        why = (
                            response.error.message if response.error
                            else str(response.incomplete_details or "incomplete")
                        )
                        raise ProviderError("provider_error", f"the AI provider failed: {why}")
                    elif kind == "error":
                        code = getattr(event, "code", None) or ""
                        message = getattr(event, "message", None) or "stream error"
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
