"""The ``demo`` provider: a clearly labelled canned answer, streamed, so that a new install shows
the whole path working before any key is set."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from loacl.domain.assistants import HANDOFF_TOOL
from loacl.providers.base import ReplyRequest, ReplyResult

ANSWER = (
    "**Demo answer.** This is LOACL's built-in demo assistant, not an AI model. You wrote: "
    "“{question}”.\n\n"
    "Everything else is real: your message and this reply are in LOACL's event log, and this "
    "text reached you streamed, piece by piece.\n\n"
    "To get real answers, set `OPENAI_API_KEY` (or `OPENAI_BASE_URL` for an OpenAI-compatible "
    "server), restart `loacl serve`, and give this widget an assistant with the `openai` or "
    "`chat_completions` provider."
)

TOOLS = (
    "\n\nThis assistant has tools ({tools}). The demo provider does not call them: with a "
    "real model, the model decides when a question needs one, LOACL checks its arguments, "
    "POSTs them signed to the tool's URL and gives the answer back to the model, and you see "
    "each call in the event log."
)

HANDOFF = (
    "\n\nThis assistant may hand the conversation to a person. The demo provider never does: "
    "with a real model, it asks for one when you ask for a human or it cannot help, and "
    "\"Talk to a person\" does the same at any time."
)


class DemoProvider:
    name = "demo"

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay

    async def aclose(self) -> None:
        return None

    async def stream(self, request: ReplyRequest, result: ReplyResult) -> AsyncIterator[str]:
        question = request.turns[-1].text.strip().replace("\n", " ")
        if len(question) > 200:
            question = question[:200] + "…"
        text = ANSWER.format(question=question)
        called = [t for t in request.tools if t.name != HANDOFF_TOOL]
        if called:
            text += TOOLS.format(tools=", ".join(f"`{t.name}`" for t in called))
        if len(called) < len(request.tools):
            text += HANDOFF
        pieces = re.findall(r"\S+\s*|\s+", text)
        result.input_tokens = sum(len(t.text.split()) for t in request.turns)
        result.output_tokens = len(pieces)
        result.request_id = "demo"
        for piece in pieces:
            if self.delay:
                await asyncio.sleep(self.delay)
            yield piece
