"""Conversations: a visitor's message, the assistant's reply streamed from a provider into the
log (see :mod:`loacl.services.replies`), and the runs in flight that sockets follow."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

import structlog

from loacl import tracing
from loacl.domain import conversations as domain
from loacl.domain.assistants import AssistantDefinition
from loacl.domain.errors import LoaclError
from loacl.domain.events import Event, Metadata, RecordedEvent
from loacl.domain.widgets import VisitorAccess, conversation_stream
from loacl.providers import check_model, provider_for, spec
from loacl.providers.base import (
    Attachment,
    Provider,
    ProviderError,
    ReplyRequest,
    ReplyResult,
    ToolRound,
    Turn,
    trim_history,
)
from loacl.services.budgets import Budgets
from loacl.services.handoff import Handoffs
from loacl.services.knowledge import FILE_SEARCH, FILE_SEARCH_TOOL, Knowledge
from loacl.services.limits import Lease, VisitorLimits
from loacl.services.observer import NO_OBSERVER, ReplyObserver
from loacl.services.replies import (
    Notice,
    ReplyStream,
    Run,
    Starts,
    reply_error_text,
    retry_delay,
)
from loacl.services.tokens import new_id
from loacl.services.toolrounds import Sources, ToolRounds, ToolScope
from loacl.services.tools import Tools
from loacl.settings import Settings
from loacl.store.broker import Subscription
from loacl.store.eventstore import EventStore
from loacl.store.views import Page
from loacl.store.views import conversations as views
from loacl.store.views import files as file_views
from loacl.store.views import knowledge as knowledge_views
from loacl.store.views import widgets as widget_views
from loacl.store.views.conversations import ConversationView, MessagePage, MessageView

log = structlog.get_logger(__name__)

ProviderFactory = Callable[[Settings, str], Provider]


async def _settled(*pending: asyncio.Future[Any] | None) -> None:
    """Work a reply started and no longer needs: ended, its outcome taken (an append under
    way is waited for, so that it lands before the reply's end)."""
    for future in pending:
        if future is None:
            continue
        if not future.done():
            await asyncio.wait([future])
        if not future.cancelled():
            future.exception()


def _not_a_delta(recorded: RecordedEvent) -> bool:
    return not isinstance(recorded.event, domain.AssistantDelta)


_KIND_NAMES = {"txt": "text", "pdf": "PDF", "doc": "Word", "docx": "Word"}


def _described(kinds: frozenset[str]) -> str:
    return " and ".join(dict.fromkeys(_KIND_NAMES.get(k, k) for k in sorted(kinds, key=len)))


@dataclass(frozen=True, slots=True)
class _Started:
    """A reply started: its run, and the visitor's message it answers as the read table has it."""

    run: Run
    message: MessageView


class Chat:
    def __init__(
        self, store: EventStore, settings: Settings,
        providers: ProviderFactory = provider_for, *, limits: VisitorLimits | None = None,
        budgets: Budgets | None = None, tools: Tools | None = None, server_key: str = "",
        observer: ReplyObserver = NO_OBSERVER, knowledge: Knowledge | None = None,
    ) -> None:
        self.store = store
        self.knowledge = knowledge
        self.observer = observer
        self.settings = settings
        self.providers = providers
        self.tools = tools or Tools(settings)
        self.rounds = ToolRounds(store, self.tools, server_key, self._ask_for_person)
        self.limits = limits or VisitorLimits(settings)
        self.budgets = budgets or Budgets(store, settings)
        self.runs: dict[str, Run] = {}  # by conversation id
        # With a log shared by several instances (services.remote_replies): a reply started
        # here is announced to the others once its start is committed (``announce``), and one
        # another instance started is told to the tabs here (``started_elsewhere``).
        self.announce: Callable[[Run, MessageView], None] | None = None
        self.started_elsewhere = Starts()
        self._tasks: set[asyncio.Task[None]] = set()
        # One provider per name for the app's life: building an SDK client costs ~100 ms (its
        # TLS context), far more than a reply's first token, and each kept a connection open.
        self._providers: dict[str, Provider] = {}
        self.closing = False
        self.handoffs: Handoffs | None = None  # wired by create_app (the request_human tool)

    async def _ask_for_person(self, conversation_id: str, reason: str, meta: Metadata) -> None:
        if self.handoffs is None:
            raise LoaclError("conflict", "handing over is not wired")
        await self.handoffs.assistant_asks(conversation_id, reason, meta)

    async def interrupt_replies(self) -> None:
        """Shutting down: take no new message, and end every reply in flight as interrupted
        (each writes its end event; sockets and HTTP posts following it are told)."""
        self.closing = True
        replies = [t for t in self._tasks if t.get_name().startswith("reply-")]
        for task in replies:
            task.cancel()
        await asyncio.gather(*replies, return_exceptions=True)

    async def stop(self, conversation_id: str) -> None:
        """End the conversation's reply in flight, if any, as interrupted, and wait until its
        end event is written (before the conversation is erased)."""
        run = self.runs.get(conversation_id)
        if run is None:
            return
        tasks = [t for t in self._tasks if t.get_name() == f"reply-{run.message_id}"]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def running(self, conversation_id: str) -> Run | None:
        """The reply streaming in the conversation now, if any."""
        return self.runs.get(conversation_id)

    async def running_now(self, conversation_id: str) -> Run | None:
        """The reply streaming in the conversation, including one whose start was committed a
        moment ago and whose run is being set up: the read tables show the start at once, and
        by the time they have answered, the run is registered."""
        run = self.running(conversation_id)
        if run is None and await views.running_reply(self.store, conversation_id) is not None:
            run = self.running(conversation_id)
        return run

    def news(self, conversation_id: str, maxsize: int = 100) -> Subscription:
        """What is committed to the conversation from now on, but the deltas (a reply's text
        reaches sockets through its run, at once): messages posted, replies started and
        ended. Another tab's message, an agent's reply, the owner's view: one source."""
        return self.store.broker.subscribe(
            _not_a_delta, maxsize, stream=conversation_stream(conversation_id)
        )

    # -- reading ----------------------------------------------------------------------------

    async def messages(
        self, conversation_id: str, *, before: int | None, after: int | None, limit: int
    ) -> MessagePage:
        return await views.messages(
            self.store, conversation_id, before=before, after=after, limit=limit
        )

    async def give_feedback(
        self, access: VisitorAccess, message_id: str, rating: str, comment: str, meta: Metadata
    ) -> MessageView:
        """The visitor's rating of a completed reply of their conversation."""
        state, version = await self._load(access.conversation_id)
        if await views.answered(self.store, access.conversation_id, message_id):
            state = replace(state, answered=frozenset({message_id}))
        events = domain.give_feedback(state, message_id=message_id, rating=rating,
                                      comment=comment)
        await self._append_visitor(access, events, version, meta)
        return await self.message(message_id)

    async def introduce(
        self, access: VisitorAccess, name: str, email: str, meta: Metadata
    ) -> ConversationView:
        """The visitor's name and e-mail address (a pre-chat form), kept with the conversation."""
        state, version = await self._load(access.conversation_id)
        events = domain.introduce(state, name=name, email=email)
        await self._append_visitor(access, events, version, meta)
        found = await views.conversation(self.store, access.conversation_id)
        assert found is not None
        return found

    async def _append_visitor(
        self, access: VisitorAccess, events: list[Event], version: int, meta: Metadata
    ) -> None:
        # A reply appending meanwhile moves the version on: the visitor's fact does not depend
        # on it, so read the version again and append once more.
        stream = conversation_stream(access.conversation_id)
        for _ in range(5):
            try:
                await self.store.append(stream, events, expected_version=version, metadata=meta)
                return
            except LoaclError as exc:
                if exc.code != "version_conflict":
                    raise
                version = await self.store.stream_version(stream)
        raise LoaclError("version_conflict", "the conversation kept changing; try again")

    async def message(self, message_id: str) -> MessageView:
        found = await views.message(self.store, message_id)
        if found is None:
            raise LoaclError("not_found", "no such message")
        return found

    async def has_reply(self, message_id: str) -> bool:
        return await views.reply_id(self.store, message_id) is not None

    async def outcome(self, reply_id: str, run: Run | None = None) -> MessageView:
        """The reply as the visitor is to be told it: as the log holds it, or, when its run has
        ended but the store has not taken the end yet, as the run ended (with the text the end
        event will carry): never ``streaming`` for a reply that stopped."""
        reply = await self.message(reply_id)
        if reply.status == "streaming" and run is not None and run.finished.is_set():
            code = run.error.code if run.error is not None else "interrupted"
            return replace(reply, status=run.status, error_code=code, text=run.text)
        return reply

    async def conversations(
        self, widget_id: str, after: int, limit: int
    ) -> Page[ConversationView]:
        return await views.conversations_of(self.store, widget_id, after, limit)

    async def conversation_of_widget(
        self, widget_id: str, conversation_id: str
    ) -> ConversationView:
        found = await views.conversation(self.store, conversation_id)
        if found is None or found.widget_id != widget_id:
            raise LoaclError("not_found", "no such conversation")
        return found

    # -- posting ----------------------------------------------------------------------------

    async def _load(self, conversation_id: str) -> tuple[domain.Conversation, int]:
        """What posting needs to decide, from the read tables and the stream's version.

        Folding the stream would decode every delta of every earlier reply on each message;
        the read tables are written in the same transaction as the events, and the stream
        version guards the append against anything that changed since.
        """
        version = await self.store.stream_version(conversation_stream(conversation_id))
        return await views.decision_state(self.store, conversation_id), version

    async def _replayed(
        self, access: VisitorAccess, client_message_id: str
    ) -> tuple[MessageView, Run | str | None] | None:
        """The first message with this id, and its reply's run (while it streams) or id (None:
        it was kept for a person, with no reply)."""
        first = await views.message_by_client_id(
            self.store, access.conversation_id, client_message_id
        )
        if first is None:
            return None
        # Only this message's own run: the conversation's may be a later message's reply.
        run = self.runs.get(access.conversation_id)
        if run is not None and run.reply_to == first.message_id:
            return first, run
        # Appended with the message, in one transaction; none while a person answers.
        return first, await views.reply_id(self.store, first.message_id)

    async def post(
        self, access: VisitorAccess, text: str, file_ids: tuple[str, ...],
        client_message_id: str | None, meta: Metadata,
    ) -> tuple[MessageView, Run | str | None, bool]:
        """Record the visitor's message and start the reply.

        Returns the message, the run (or, for a resend, the reply's id; None when a person
        is asked for or answers: the message is kept for them and the assistant is not asked)
        and whether this call recorded it. A resend with the same ``client_message_id``
        writes nothing.
        """
        text = domain.checked_message(
            text, file_ids, client_message_id, self.settings.max_message_chars
        )
        if self.closing:
            raise LoaclError("store_closed", "the server is restarting; ask again in a moment",
                             retry_after=5)
        if client_message_id is not None:
            found = await self._replayed(access, client_message_id)
            if found is not None:
                return found[0], found[1], False
        setup = await widget_views.reply_setup(self.store, access.widget_id)
        if setup is None:
            raise LoaclError("widget_not_found", "no such widget")
        # The reply's slot is taken with the rate checks, before any await: counted only once
        # the reply started, a burst of visitors all passed the checks together.
        slot = self._check_rates(access, setup.messages_per_minute, meta.client_ip)
        try:
            # Before anything is written: a used-up budget refuses the message whole.
            await self.budgets.check(access.widget_id, setup.budget)
            await self._check_files(access.conversation_id, setup.assistant.provider, file_ids)
            started = await self._start(
                access, text, file_ids, client_message_id, meta, setup.assistant_id,
                setup.assistant, slot,
            )
        except BaseException:
            slot.release()
            raise
        if isinstance(started, MessageView):  # kept for a person: no reply
            slot.release()
            return started, None, True
        if not isinstance(started, _Started):  # an idempotent replay won the race
            slot.release()
            return started[0], started[1], False
        if self.announce is not None:
            self.announce(started.run, started.message)
        return started.message, started.run, True

    def _check_rates(self, access: VisitorAccess, per_minute: int, ip: str | None) -> Lease:
        """Count the message against the visitor's and the address's rates, and take a reply
        slot of the widget (one address holds only a few of them); or refuse, counting
        nothing."""
        limits = self.limits
        slot = limits.reply(access.widget_id, ip)
        try:
            limits.message(access.visitor_id, ip, per_minute)
        except LoaclError:
            slot.release()
            raise
        return slot

    async def _check_files(
        self, conversation_id: str, provider: str, file_ids: tuple[str, ...]
    ) -> None:
        """Refuse, before anything is written, files the provider cannot read: once in the
        history, such a file would fail every later turn of the conversation."""
        kinds = spec(provider).file_kinds
        for found in await file_views.files(self.store, file_ids):
            if found.conversation_id == conversation_id and found.kind not in kinds:
                raise LoaclError(
                    "unsupported_file_for_provider",
                    f"{found.filename}: this assistant's server takes "
                    f"{_described(kinds)} files only "
                    f"({', '.join('.' + kind for kind in sorted(kinds))})",
                    errors=[{"field": "file_ids", "message": "file kind not accepted"}],
                )

    async def _start(
        self, access: VisitorAccess, text: str, file_ids: tuple[str, ...],
        client_message_id: str | None, meta: Metadata, assistant_id: str,
        assistant: AssistantDefinition, slot: Lease,
    ) -> _Started | MessageView | tuple[MessageView, Run | str | None]:
        """Append the message and the reply's start, and start streaming the reply, for which
        the caller has taken the widget's ``slot`` (``_run`` gives it back); or only the
        message, while a person is asked for or answers; or, when a resend won the race, the
        first message and its reply."""
        message_id, reply_id = new_id(), new_id()
        key = (
            f"message:{access.conversation_id}:{client_message_id}"
            if client_message_id is not None else None
        )
        # With a log shared by several instances, the reply is this one's before its start is
        # in the log: another's recovery leaves it alone (store.postgres.upstream).
        upstream = self.store.upstream
        if upstream is not None:
            await upstream.lease(reply_id)
        try:
            # Something else appended to the conversation between reading and appending (the
            # visitor's name from identify(), a rating, a member's note, or a reply another
            # tab started): decide again on what is there now. A reply streaming by then is
            # refused by post_message (reply_in_progress); anything else does not stand in
            # the way.
            for _ in range(5):
                state, version = await self._load(access.conversation_id)
                events = domain.post_message(
                    state, message_id=message_id, reply_id=reply_id, text=text,
                    file_ids=file_ids, client_message_id=client_message_id,
                    assistant_id=assistant_id, provider=assistant.provider,
                    model=assistant.model,
                )
                try:
                    recorded = await self.store.append(
                        conversation_stream(access.conversation_id), events,
                        expected_version=version, metadata=meta, idempotency_key=key,
                    )
                    break
                except LoaclError as exc:
                    if exc.code != "version_conflict":
                        raise
            else:
                raise LoaclError("version_conflict", "the conversation kept changing; try again")
        except BaseException:
            if upstream is not None:
                await upstream.release(reply_id)
            raise
        starts = any(isinstance(e, domain.AssistantStarted) for e in events)
        if upstream is not None and not starts:
            await upstream.release(reply_id)
        first = next(r.event for r in recorded
                     if isinstance(r.event, domain.MessagePosted))
        if first.message_id != message_id:  # an idempotent replay won the race
            if upstream is not None and starts:
                await upstream.release(reply_id)
            found = await self._replayed(access, client_message_id or "")
            assert found is not None
            return found
        if not starts:
            return await self.message(message_id)
        start_seq = next(r.seq for r in recorded if isinstance(r.event, domain.AssistantStarted))
        run = Run(access.conversation_id, reply_id, message_id, widget_id=access.widget_id,
                  start_seq=start_seq)
        self.runs[access.conversation_id] = run
        scope = ToolScope(assistant_id, access.user_id)
        self._spawn(self._run(slot, run, assistant, meta, scope), f"reply-{reply_id}")
        posted = next(r for r in recorded if isinstance(r.event, domain.MessagePosted))
        assert isinstance(posted.event, domain.MessagePosted)
        return _Started(run, views.posted_message(posted.event, posted))

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` in the background, cancelled at shutdown; an exception it ends with is
        logged, never left unread."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("chat.task_failed", task=task.get_name(), error=repr(error))

    # -- streaming a reply -----------------------------------------------------------------

    async def _history(self, conversation_id: str) -> list[Turn]:
        messages = await views.history(self.store, conversation_id)
        files = await self._attachments({f for m in messages for f in m.file_ids})
        # A member's messages are the answering side's, as the assistant's are: after a
        # release the model reads what the person told the visitor.
        turns = [
            Turn("assistant" if m.role == "agent" else m.role, m.text,
                 tuple(files[f] for f in m.file_ids))
            for m in messages
            if not (m.role == "assistant" and (m.status == "streaming" or not m.text))
        ]
        return trim_history(turns, self.settings.context_chars)

    async def _attachments(self, file_ids: set[str]) -> dict[str, Attachment]:
        found = await file_views.files(self.store, file_ids)
        data = await file_views.blobs(self.store, (f.sha256 for f in found))
        return {
            f.file_id: Attachment(f.file_id, f.filename, f.kind, f.content_type, data[f.sha256],
                                  f.provider_file_id)
            for f in found
        }

    async def _run(
        self, slot: Lease, run: Run, assistant: AssistantDefinition, meta: Metadata,
        scope: ToolScope,
    ) -> None:
        """Stream one reply: provider → listeners and log, then its end event, whatever
        happens (a cancellation included), then the widget's slot back."""
        with tracing.span("reply", **{
            "loacl.message_id": run.message_id, "loacl.widget_id": run.widget_id,
            "loacl.provider": assistant.provider, "loacl.model": assistant.model,
        }):
            result = ReplyResult()
            self.observer.started(assistant.provider)
            try:
                await self._reply(slot, run, assistant, meta, result, scope)
            finally:
                self.observer.ended(
                    assistant.provider, run.widget_id, assistant.model, run.status,
                    run.error.code if run.error is not None and run.status == "failed" else "",
                    result.input_tokens, result.output_tokens,
                )

    async def _reply(
        self, slot: Lease, run: Run, assistant: AssistantDefinition, meta: Metadata,
        result: ReplyResult, scope: ToolScope,
    ) -> None:
        reply = ReplyStream(self.store, run, meta, self.settings.flush_interval_ms / 1000)
        try:
            try:
                await self._stream(run, assistant, reply, result, scope)
                await reply.drain()
                await self._record_uploads(run.conversation_id, assistant.provider, result, meta)
                await self._cite_files(run, scope, result, meta)
                reply.completed(result)
            except LoaclError as exc:  # ProviderError included
                # The provider's own words stay in the server log: they may name accounts or
                # keys. The visitor and the event log get the text for the code.
                log.warning("chat.reply_failed", message_id=run.message_id, code=exc.code,
                            error=exc.message)
                reply.failed(exc)
                with contextlib.suppress(LoaclError):
                    await reply.settle()  # the failure may be the log's own; the end says it
                await reply.flush()
                # A file uploaded before the failure is at the provider all the same: recorded,
                # the next turn reuses it instead of uploading it again.
                await self._record_uploads(run.conversation_id, assistant.provider, result, meta)
            except asyncio.CancelledError:
                # Shutting down mid-reply: keep what arrived, marked as interrupted.
                reply.interrupted()
                raise
            except Exception:
                log.exception("chat.reply_crashed", message_id=run.message_id)
                reply.failed(LoaclError("provider_error", "the reply crashed"))
        finally:
            unsaved = None
            try:
                unsaved = await reply.end()
            finally:
                run._finish()
                if self.runs.get(run.conversation_id) is run:
                    del self.runs[run.conversation_id]
                slot.release()
                if self.store.upstream is not None:
                    await self.store.upstream.release(run.message_id)
                if unsaved is not None:
                    # Told to the visitor already; the log gets it once the store takes writes
                    # again, without a restart (after one, start-up recovery closes it).
                    self._spawn(reply.land(unsaved), f"land-{run.message_id}")

    async def _stream(
        self, run: Run, assistant: AssistantDefinition, reply: ReplyStream, result: ReplyResult,
        scope: ToolScope,
    ) -> None:
        """The provider's answer into the reply, within the reply's deadline, round after
        round while the model calls tools (see :class:`ToolRounds`). A visitor kept waiting
        for the first piece hears so (a ``waiting`` notice) instead of nothing."""
        settings = self.settings
        provider = self._provider(assistant.provider)
        turns = await self._history(run.conversation_id)
        loop = asyncio.get_running_loop()
        waiting = loop.call_later(settings.waiting_notice_seconds, run.notice, Notice("waiting"))
        begun = loop.time()
        deadline = begun + settings.reply_deadline_seconds
        sources = await self._sources(assistant, scope)
        assistant = await self._with_vector_store(assistant, scope)
        offered = tuple(t for t in assistant.tools if t.type != "http") + assistant.http_tools() \
            + ((FILE_SEARCH_TOOL,) if sources is not None else ())
        rounds: list[ToolRound] = []
        # Read while the model thinks, so that a call is not kept waiting for it.
        secret = asyncio.ensure_future(self.rounds.secret(scope.assistant_id)) \
            if assistant.http_tools() else None
        logged: asyncio.Future[Any] | None = None  # a round's results, being appended
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    may_call = len(rounds) < settings.tool_rounds
                    request = ReplyRequest(assistant, turns, offered, tuple(rounds), may_call)
                    text_at = len(run.text)
                    await self._attempts(provider, request, run, reply, result, waiting,
                                         deadline, begun)
                    if logged is not None:
                        await logged
                        logged = None
                    if not result.calls or (secret is None and sources is None
                                             and not assistant.handoff):
                        return
                    waiting.cancel()  # the visitor hears of the tools instead
                    made = await self.rounds.make(
                        run, assistant, reply, result, scope, len(rounds) + 1,
                        run.text[text_at:], may_call, deadline - loop.time(), secret,
                        sources,
                    )
                    if made is None:
                        return
                    done, logged = made
                    rounds.append(done)
        except TimeoutError:
            raise ProviderError(
                "provider_unavailable",
                f"no whole answer within {settings.reply_deadline_seconds:g} s",
            ) from None
        finally:
            waiting.cancel()
            if secret is not None:
                secret.cancel()  # no-op once read
            await _settled(secret, logged)

    async def _with_vector_store(
        self, assistant: AssistantDefinition, scope: ToolScope
    ) -> AssistantDefinition:
        """Knowledge kept at OpenAI: its vector store searched by OpenAI's own file_search
        (before the stores an import brought, which stay searched too)."""
        if assistant.provider != "openai":
            return assistant
        kept = await knowledge_views.store_of(self.store, scope.assistant_id)
        if kept.store != "openai" or kept.vector_store_id is None:
            return assistant
        if not await knowledge_views.remote_ready(self.store, scope.assistant_id):
            return assistant
        ids = (kept.vector_store_id, *(
            i for i in assistant.vector_store_ids if i != kept.vector_store_id))
        return replace(assistant, vector_store_ids=ids)

    async def _cite_files(
        self, run: Run, scope: ToolScope, result: ReplyResult, meta: Metadata
    ) -> None:
        """The files OpenAI's file_search let the answer cite, as the reply's citations: the
        document each file is, and the passage found in it."""
        if not result.file_citations:
            return
        found = await knowledge_views.by_remote_file(
            self.store, scope.assistant_id, (c.file_id for c in result.file_citations))
        cited = await views.message(self.store, run.message_id)
        first = len(cited.citations) + 1 if cited is not None else 1
        citations = tuple(
            domain.Citation(
                number=first + i,
                document_id=found[c.file_id].document_id if c.file_id in found else "",
                document=found[c.file_id].filename if c.file_id in found
                else (c.filename or c.file_id),
                page=1, passage=c.passage[:4000],
            )
            for i, c in enumerate(result.file_citations)
        )
        await self.store.append(conversation_stream(run.conversation_id), [
            domain.ReplyCited(message_id=run.message_id, citations=citations)], metadata=meta)

    async def _sources(
        self, assistant: AssistantDefinition, scope: ToolScope
    ) -> Sources | None:
        """The assistant's knowledge, when it has documents to search (and no tool of the
        owner's takes the search tool's name), and LOACL keeps it."""
        if self.knowledge is None or any(t.name == FILE_SEARCH for t in assistant.http_tools()):
            return None
        if (await knowledge_views.store_of(self.store, scope.assistant_id)).store == "openai":
            return None
        if not await knowledge_views.has_knowledge(self.store, scope.assistant_id):
            return None
        return Sources(self.knowledge, scope.assistant_id, assistant.provider)

    async def _attempts(
        self, provider: Provider, request: ReplyRequest, run: Run, reply: ReplyStream,
        result: ReplyResult, waiting: asyncio.TimerHandle, deadline: float, begun: float,
    ) -> None:
        """One request's answer into the reply. An attempt that fails before any text of
        this request (a 429, a 5xx, a timeout) is retried, the visitor told each time
        (``retrying``, with the delay). The reply's first text, in whichever round, is its
        time to first token (``begun``: when the reply started)."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        started, attempt = False, 0
        while True:
            attempt += 1
            result.calls.clear()  # a failed attempt's calls are not made
            try:
                with tracing.span("provider.stream", **{
                    "loacl.provider": request.assistant.provider, "loacl.attempt": attempt,
                    "loacl.round": len(request.rounds) + 1,
                }):
                    async for delta in provider.stream(request, result):
                        if delta:
                            if not started and request.rounds and run.text \
                                    and not run.text[-1].isspace():
                                reply.on_delta("\n\n")  # the text after a tool round
                            if not run.text:
                                self.observer.first_token(
                                    request.assistant.provider, loop.time() - begun
                                )
                            started = True
                            waiting.cancel()
                            reply.on_delta(delta)
                return
            except ProviderError as exc:
                # Once text has been shown, asking again would show another answer.
                delay = None if started else retry_delay(
                    exc, attempt, retries=settings.provider_max_retries,
                    time_left=deadline - loop.time(), jitter=random.random(),
                )
                if delay is None:
                    raise
                log.info("chat.provider_retry", message_id=run.message_id,
                         attempt=attempt, code=exc.code, retry_in=round(delay, 3))
                run.notice(Notice("retrying", round(delay, 3), attempt, exc.code))
                await asyncio.sleep(delay)

    # -- the console's preview of an assistant not saved yet ------------------------------------

    async def preview(
        self, owner_id: str, assistant: AssistantDefinition, turns: list[Turn], ip: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        """A reply to ``turns`` (the last is the owner's new message) from ``assistant`` as the
        owner is editing it, streamed as ``delta`` pieces then one ``done`` or ``error``.

        Nothing is written: a preview is no visitor's conversation, so it has no place in the
        log, the inbox, usage or webhooks. It is bounded like a visitor's message all the same,
        before anything reaches the provider: the owner's rate (``preview_messages_per_minute``)
        and the server's per address and per day, and a reply slot of its own (at most
        ``provider_concurrency`` at once, ``replies_per_ip`` from one address). HTTP tools are
        not offered: a preview calls nobody's endpoint."""
        key = f"preview-{owner_id}"
        self.limits.message(key, ip, self.settings.preview_messages_per_minute)
        slot = self.limits.reply(key, ip)
        try:
            await check_model(self.settings, assistant.provider, assistant.model)
        except BaseException:
            slot.release()
            raise
        return self._preview(slot, owner_id, assistant, turns)

    async def _preview(
        self, slot: Lease, owner_id: str, assistant: AssistantDefinition, turns: list[Turn]
    ) -> AsyncIterator[dict[str, Any]]:
        settings = self.settings
        result = ReplyResult()
        offered = tuple(t for t in assistant.tools if t.type != "http")
        request = ReplyRequest(replace(assistant, tools=offered),
                               trim_history(turns, settings.context_chars), offered)
        offset = 0
        try:
            with tracing.span("reply.preview", **{"loacl.provider": assistant.provider,
                                                  "loacl.model": assistant.model}):
                async with asyncio.timeout(settings.reply_deadline_seconds):
                    async for delta in self._provider(assistant.provider).stream(request,
                                                                                 result):
                        if delta:
                            yield {"type": "delta", "offset": offset, "text": delta}
                            offset += len(delta)
            yield {"type": "done", "status": "completed", "length": offset,
                   "usage": {"input_tokens": result.input_tokens,
                             "output_tokens": result.output_tokens}}
        except TimeoutError:
            yield {"type": "error", "code": "provider_unavailable",
                   "text": reply_error_text("provider_unavailable")}
        except LoaclError as exc:
            log.warning("chat.preview_failed", owner_id=owner_id, code=exc.code,
                        error=exc.message)
            yield {"type": "error", "code": exc.code, "text": reply_error_text(exc.code)}
        finally:
            slot.release()
            log.info("chat.preview", owner_id=owner_id, provider=assistant.provider,
                     model=assistant.model, input_tokens=result.input_tokens,
                     output_tokens=result.output_tokens)

    def _provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            provider = self._providers[name] = self.providers(self.settings, name)
        return provider

    async def _record_uploads(
        self, conversation_id: str, provider: str, result: ReplyResult, meta: Metadata
    ) -> None:
        if result.uploaded:
            await self.store.append(
                conversation_stream(conversation_id),
                [domain.FileSentToProvider(file_id=f, provider=provider, provider_file_id=p)
                 for f, p in result.uploaded.items()],
                metadata=meta,
            )

    async def wait(self, run: Run) -> None:
        await run.finished.wait()

    async def shutdown(self) -> None:
        """Cancel runs in flight (each records itself as interrupted), then close providers
        and the tools' connections (their pools belong to this event loop)."""
        # A reply cancelled here may leave an end to land behind it: cancelled in turn.
        while tasks := list(self._tasks):
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            try:
                await provider.aclose()
            except Exception:
                log.warning("chat.provider_close_failed", provider=provider.name, exc_info=True)
        await self.tools.aclose()
