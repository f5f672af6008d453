"""A round of tool calls within a reply: logged, made at once, and handed back as what the
next request to the provider carries (see :meth:`loacl.services.chat.Chat._stream`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from loacl.domain import conversations as domain
from loacl.domain.assistants import (
    HANDOFF_TOOL,
    Assistant,
    AssistantDefinition,
    ToolDefinition,
    assistant_stream,
    evolve_assistant,
)
from loacl.domain.events import Metadata
from loacl.domain.widgets import conversation_stream
from loacl.providers.base import ReplyResult, ToolCall, ToolRound
from loacl.services.knowledge import FILE_SEARCH, Knowledge
from loacl.services.replies import Notice, ReplyStream, Run, all_of
from loacl.services.tools import CallContext, Outcome, Tools, bounded, tool_secret
from loacl.store.eventstore import EventStore

log = structlog.get_logger(__name__)

SEARCHING = "Searching the documents…"


@dataclass(frozen=True)
class ToolScope:
    """Whom a reply's tool calls are made for."""

    assistant_id: str
    user_id: str | None


@dataclass
class Sources:
    """The assistant's knowledge as one reply searches it: each passage found is numbered
    once, in the order found, across the reply's rounds; those are its citations."""

    knowledge: Knowledge
    assistant_id: str
    provider: str
    cited: dict[int, domain.Citation] = field(default_factory=dict)  # by passage id

    async def answer(self, call: ToolCall) -> tuple[Outcome, list[domain.Citation]]:
        """The search's passages as the model is given them, and the citations it adds."""
        started = time.perf_counter()
        try:
            query = json.loads(call.arguments or "{}").get("query")
        except (ValueError, AttributeError):
            query = None
        if not isinstance(query, str) or not query.strip():
            return Outcome("invalid_arguments", json.dumps({"error": {
                "code": "invalid_arguments", "message": "query: a string is required"}})), []
        found = await self.knowledge.search(self.assistant_id, self.provider, query[:1000])
        new: list[domain.Citation] = []
        results = []
        for hit in found.hits:
            citation = self.cited.get(hit.chunk_id)
            if citation is None:
                citation = self.cited[hit.chunk_id] = domain.Citation(
                    number=len(self.cited) + 1, document_id=hit.document_id,
                    document=hit.document, page=hit.page, passage=hit.text,
                )
                new.append(citation)
            results.append({"source": citation.number, "document": hit.document,
                            "page": hit.page, "text": hit.text})
        output = json.dumps({"results": results}, ensure_ascii=False)
        duration = round((time.perf_counter() - started) * 1000)
        return Outcome("ok", output, None, duration), new


# The model asked for a person (conversation id, reason, metadata): the conversation waits.
AskForPerson = Callable[[str, str, Metadata], Awaitable[object]]
HANDED_OVER = json.dumps({
    "status": "ok", "state": "waiting",
    "note": "A person from the team has been asked to join. Tell the visitor, in your own "
            "words, that a person will answer here soon; do not call request_human again.",
})


def _reason(arguments: str) -> str:
    try:
        found = json.loads(arguments)
    except ValueError:
        return ""
    reason = found.get("reason") if isinstance(found, dict) else None
    return reason if isinstance(reason, str) else ""


class ToolRounds:
    def __init__(self, store: EventStore, tools: Tools, server_key: str,
                 ask_for_person: AskForPerson | None = None) -> None:
        self.store = store
        self.tools = tools
        self._server_key = server_key.encode()
        self.ask_for_person = ask_for_person

    async def make(
        self, run: Run, assistant: AssistantDefinition, reply: ReplyStream,
        result: ReplyResult, scope: ToolScope, number: int, text: str, may_call: bool,
        time_left: float, secret: Awaitable[str] | None, sources: Sources | None = None,
    ) -> tuple[ToolRound, asyncio.Future[Any]] | None:
        """Make the calls of round ``number`` at once and log each call and its result; the
        round to send back and the append of its results, under way (the next request need
        not wait for it; the caller awaits it before the reply's next event), or None when
        the round limit was reached (the calls are logged as not made, and the reply ends with
        the text it has).

        Each call is queued for the log (after the text before it) before it is made, and the
        HTTP calls go out while that append commits: the owner's endpoint is not kept waiting
        on the log. This is safe because nothing the calls return is used (given to the model,
        logged, shown) until the append has committed; when the store refuses it, the calls
        are abandoned (cancelled, or their answers dropped) and the reply fails as any reply
        whose log write fails (``store_unavailable``). An endpoint may thus see a call the log
        does not have when the store is failing; each call's ``webhook-id`` is new, and is the
        key a receiver deduplicates on. File searches and the request for a person change or
        read LOACL's own state and start only once the calls are in the log."""
        calls = list(result.calls)
        tools = {t.name: t for t in assistant.http_tools()}
        stream = conversation_stream(run.conversation_id)
        text_before = reply.queue_rest()  # the text before the calls, in the log before them
        called = self.store.enqueue(stream, [
            domain.ToolCalled(message_id=run.message_id, call_id=c.call_id, name=c.name,
                              round=number, arguments=bounded(c.arguments))
            for c in calls
        ], metadata=reply.meta)
        logged_calls = [f for f in (text_before, called) if f is not None]
        if not may_call:
            await all_of(logged_calls)
            await self.store.append(stream, [
                domain.ToolReturned(message_id=run.message_id, call_id=c.call_id, name=c.name,
                                    status="round_limit")
                for c in calls
            ], metadata=reply.meta)
            log.info("chat.tool_round_limit", message_id=run.message_id, calls=len(calls))
            return None
        searches = [c for c in calls if sources is not None and c.name == FILE_SEARCH
                    and c.name not in tools]
        person = [c for c in calls if c.name == HANDOFF_TOOL and assistant.handoff]
        others = [c for c in calls if c not in searches and c not in person]
        outcomes: dict[str, Outcome] = {}
        cited: list[domain.Citation] = []
        making = asyncio.ensure_future(
            self._make_http(run, tools, others, scope, secret, time_left)) if others else None
        try:
            await all_of(logged_calls)
        except BaseException:
            if making is not None:
                making.cancel()
                await asyncio.gather(making, return_exceptions=True)
            raise
        for call in calls:
            tool = tools.get(call.name)
            shown = tool.status_text if tool is not None else (
                SEARCHING if sources is not None and call.name == FILE_SEARCH else "")
            run.notice(Notice("tool", tool=call.name, text=shown))
        if making is not None:
            made = await making
            outcomes.update((c.call_id, o) for c, o in zip(others, made, strict=True))
        for call in searches:  # one after another: each numbers its new passages on
            assert sources is not None
            outcome, new = await sources.answer(call)
            outcomes[call.call_id] = outcome
            cited += new
        for call in person:
            outcomes[call.call_id] = await self._ask_for_person(run, call, reply)
        run.state = None  # the tools are done; a tab joining now waits for text
        ordered = [outcomes[c.call_id] for c in calls]
        events: list[Any] = [
            domain.ToolReturned(message_id=run.message_id, call_id=c.call_id, name=c.name,
                                status=o.status, http_status=o.http_status,
                                duration_ms=o.duration_ms, output=bounded(o.output))
            for c, o in zip(calls, ordered, strict=True)
        ]
        if cited:
            events.append(domain.ReplyCited(message_id=run.message_id, citations=tuple(cited)))
        # Queued now, before the next request: it lands before anything the reply appends
        # later (the next round's text), and the next request need not wait for its commit.
        logged = self.store.enqueue(stream, events, metadata=reply.meta)
        return ToolRound(text, tuple(calls), tuple(o.output for o in ordered)), logged

    async def _make_http(
        self, run: Run, tools: dict[str, ToolDefinition], calls: list[ToolCall],
        scope: ToolScope, secret: Awaitable[str] | None, time_left: float,
    ) -> list[Outcome]:
        context = CallContext(
            scope.assistant_id, run.conversation_id, run.message_id, scope.user_id,
            await secret if secret is not None else "",
        )
        return await self.tools.run(tools, calls, context, time_left)

    async def _ask_for_person(self, run: Run, call: ToolCall, reply: ReplyStream) -> Outcome:
        """The model's ``request_human``: the conversation waits for a person (from the next
        message on, the assistant does not answer); the model is told to say so."""
        if self.ask_for_person is None:
            return Outcome("refused", json.dumps({"error": "no one can be asked here"}))
        begun = time.monotonic()
        await self.ask_for_person(run.conversation_id, _reason(call.arguments), reply.meta)
        log.info("chat.person_asked_for", message_id=run.message_id)
        return Outcome("ok", HANDED_OVER,
                       duration_ms=round((time.monotonic() - begun) * 1000))

    async def secret(self, assistant_id: str) -> str:
        """The secret that signs the assistant's calls now (read once per reply, while the
        model thinks)."""
        state, _ = await self.store.load(
            assistant_stream(assistant_id), Assistant(), evolve_assistant
        )
        return tool_secret(self._server_key, assistant_id, state.tool_secret_generation)

