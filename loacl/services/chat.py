"""Conversations: a visitor's message, the assistant's reply streamed from a provider into the
log, and the runs in flight that sockets follow.

A run keeps the reply's text in memory while it streams, so that a socket joining late gets what
it missed and then the rest live; the log gets the same text as ``assistant.delta`` events, one
per flush window, then one end event. Both count characters the same way, so offsets agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from loacl.domain import conversations as domain
from loacl.domain.assistants import AssistantDefinition
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.domain.widgets import conversation_stream
from loacl.providers import provider_for
from loacl.providers.base import (
    Attachment,
    Provider,
    ProviderError,
    ReplyRequest,
    ReplyResult,
    Turn,
    trim_history,
)
from loacl.services.ratelimit import RateLimiter
from loacl.services.tokens import new_id
from loacl.settings import Settings
from loacl.store.eventstore import EventStore

log = structlog.get_logger(__name__)

ProviderFactory = Callable[[Settings, str], Provider]
Watcher = Callable[["Run", dict[str, Any]], None]
MESSAGE_COLUMNS = (
    "message_id, conversation_id, role, text, status, error_code, reply_to, file_ids, "
    "client_message_id, input_tokens, output_tokens, created_seq, created_at, finished_at"
)


def message_json(row: Any) -> dict[str, Any]:
    (message_id, conversation_id, role, text, status, error_code, reply_to, file_ids,
     client_message_id, input_tokens, output_tokens, seq, created_at, finished_at) = row
    body: dict[str, Any] = {
        "id": message_id,
        "conversation_id": conversation_id,
        "role": role,
        "text": text,
        "status": status,
        "error_code": error_code,
        "reply_to": reply_to,
        "file_ids": json.loads(file_ids),
        "client_message_id": client_message_id,
        "cursor": str(seq),
        "created_at": created_at,
        "finished_at": finished_at,
    }
    if role == "assistant" and input_tokens is not None:
        body["usage"] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    return body


@dataclass(frozen=True)
class VisitorAccess:
    widget_id: str
    visitor_id: str
    conversation_id: str
    user_id: str | None = None


@dataclass
class Run:
    """A reply being streamed. ``text`` grows as deltas arrive; listeners get each delta."""

    conversation_id: str
    message_id: str
    reply_to: str
    text: str = ""
    status: str = "streaming"
    error: ProviderError | None = None
    # Each listener's queue and its bound (0: none). The queues themselves are unbounded and
    # the bound is checked by hand, so that the end marker always fits without dropping a
    # delta: what a dropped listener holds is still a gapless prefix it can resume after.
    listeners: dict[asyncio.Queue[tuple[int, str] | None], int] = field(default_factory=dict)
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def listen(self, maxsize: int = 0) -> asyncio.Queue[tuple[int, str] | None]:
        queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
        if self.finished.is_set():
            queue.put_nowait(None)
        else:
            self.listeners[queue] = maxsize
        return queue

    def unlisten(self, queue: asyncio.Queue[tuple[int, str] | None]) -> None:
        self.listeners.pop(queue, None)

    def _emit(self, offset: int, delta: str) -> None:
        for queue, bound in list(self.listeners.items()):
            if bound and queue.qsize() >= bound:
                # A slow socket is dropped, not waited for; it can resume from its offset.
                del self.listeners[queue]
                queue.put_nowait(None)
            else:
                queue.put_nowait((offset, delta))

    def _finish(self) -> None:
        self.finished.set()
        for queue in self.listeners:
            queue.put_nowait(None)
        self.listeners.clear()


REPLY_ERRORS = {
    "provider_rate_limited": "The assistant is busy right now; try again shortly.",
    "provider_unavailable": "The assistant could not be reached; try again.",
    "unsupported_file_for_provider": "This assistant cannot read that kind of file.",
    "interrupted": "The answer was interrupted; ask again.",
}


def reply_error_text(code: str | None) -> str:
    """What a visitor (and the event log) is told for a failed reply."""
    return REPLY_ERRORS.get(code or "", "The assistant could not answer; try again.")


class Chat:
    def __init__(
        self, store: EventStore, settings: Settings,
        providers: ProviderFactory = provider_for,
    ) -> None:
        self.store = store
        self.settings = settings
        self.providers = providers
        self.runs: dict[str, Run] = {}  # by conversation id
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_widget: dict[str, int] = {}
        self._visitor_limits: dict[int, RateLimiter] = {}
        self._watchers: dict[str, set[Watcher]] = {}
        # One provider per name for the app's life: building an SDK client costs ~100 ms (its
        # TLS context), far more than a reply's first token, and each kept a connection open.
        self._providers: dict[str, Provider] = {}

    def watch(self, conversation_id: str, watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher(run, message)`` whenever a reply starts in the conversation (another
        tab's included); returns the function that stops watching."""
        self._watchers.setdefault(conversation_id, set()).add(watcher)

        def stop() -> None:
            watchers = self._watchers.get(conversation_id)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[conversation_id]

        return stop

    # -- reading ----------------------------------------------------------------------------

    async def messages(
        self, conversation_id: str, *, before: int | None, after: int | None, limit: int
    ) -> dict[str, Any]:
        if after is not None:
            rows = await self.store.query(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? "
                "AND created_seq > ? ORDER BY created_seq LIMIT ?",
                (conversation_id, after, limit + 1),
            )
            more_after, rows = len(rows) > limit, rows[:limit]
            more_before = after > 0 and await self._exists(conversation_id, "<=", after)
        else:
            bound = before if before is not None else 2**62
            rows = await self.store.query(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? "
                "AND created_seq < ? ORDER BY created_seq DESC LIMIT ?",
                (conversation_id, bound, limit + 1),
            )
            more_before, rows = len(rows) > limit, rows[:limit][::-1]
            more_after = before is not None and await self._exists(conversation_id, ">=", before)
        items = [message_json(r) for r in rows]
        return {
            "data": items,
            "conversation_id": conversation_id,
            "prev_cursor": items[0]["cursor"] if items and more_before else None,
            "next_cursor": items[-1]["cursor"] if items and more_after else None,
        }

    async def _exists(self, conversation_id: str, op: str, seq: int) -> bool:
        rows = await self.store.query(
            f"SELECT 1 FROM messages WHERE conversation_id = ? AND created_seq {op} ? LIMIT 1",
            (conversation_id, seq),
        )
        return bool(rows)

    async def message(self, message_id: str) -> dict[str, Any]:
        rows = await self.store.query(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = ?", (message_id,)
        )
        if not rows:
            raise LoaclError("not_found", "no such message")
        return message_json(rows[0])

    async def conversations(
        self, widget_id: str, after: int, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        rows = await self.store.query(
            "SELECT conversation_id, visitor_id, external_user_id, created_seq, created_at, "
            "last_activity_at, message_count FROM conversations WHERE widget_id = ? "
            "AND created_seq > ? ORDER BY created_seq LIMIT ?",
            (widget_id, after, limit + 1),
        )
        more, rows = len(rows) > limit, rows[:limit]
        items = [
            {"id": r[0], "visitor_id": r[1], "user_id": r[2], "created_at": r[4],
             "last_activity_at": r[5], "message_count": r[6]}
            for r in rows
        ]
        return items, (rows[-1][3] if more else None)

    # -- posting ----------------------------------------------------------------------------

    async def _assistant(self, widget_id: str) -> tuple[str, AssistantDefinition, int]:
        rows = await self.store.query(
            "SELECT a.assistant_id, a.definition, w.definition FROM widgets w "
            "JOIN assistants a ON a.assistant_id = w.assistant_id WHERE w.widget_id = ?",
            (widget_id,),
        )
        if not rows:
            raise LoaclError("widget_not_found", "no such widget")
        d = json.loads(rows[0][1])
        d["vector_store_ids"] = tuple(d["vector_store_ids"])
        per_minute = int(json.loads(rows[0][2])["messages_per_minute"])
        return rows[0][0], AssistantDefinition(**d), per_minute

    async def _load(self, conversation_id: str) -> tuple[domain.Conversation, int]:
        """What posting needs to decide, from the read tables and the stream's version.

        Folding the stream would decode every delta of every earlier reply on each message;
        the read tables are written in the same transaction as the events, and the stream
        version guards the append against anything that changed since.
        """
        version = await self.store.stream_version(conversation_stream(conversation_id))
        rows = await self.store.query(
            "SELECT widget_id, visitor_id FROM conversations WHERE conversation_id = ?",
            (conversation_id,),
        )
        if not rows:
            return domain.Conversation(), version
        running = await self.store.query(
            "SELECT message_id, reply_to, text FROM messages WHERE conversation_id = ? "
            "AND status = 'streaming' ORDER BY created_seq DESC LIMIT 1",
            (conversation_id,),
        )
        files = await self.store.query(
            "SELECT file_id FROM files WHERE conversation_id = ?", (conversation_id,)
        )
        return domain.Conversation(
            conversation_id, rows[0][0], rows[0][1], True,
            running=domain.Reply(running[0][0], running[0][1], running[0][2])
            if running else None,
            file_ids=frozenset(f for (f,) in files),
        ), version

    async def _replayed(
        self, access: VisitorAccess, client_message_id: str
    ) -> tuple[dict[str, Any], Run | str] | None:
        """The first message with this id, and its reply's run (while it streams) or id."""
        rows = await self.store.query(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? "
            "AND client_message_id = ?",
            (access.conversation_id, client_message_id),
        )
        if not rows:
            return None
        reply = await self.store.query(
            "SELECT message_id FROM messages WHERE reply_to = ?", (rows[0][0],)
        )
        # Only this message's own run: the conversation's may be a later message's reply.
        run = self.runs.get(access.conversation_id)
        if run is not None and run.reply_to == rows[0][0]:
            return message_json(rows[0]), run
        return message_json(rows[0]), reply[0][0]

    async def post(
        self, access: VisitorAccess, text: str, file_ids: tuple[str, ...],
        client_message_id: str | None, meta: Metadata,
    ) -> tuple[dict[str, Any], Run | str, bool]:
        """Record the visitor's message and start the reply.

        Returns the message, the run (or, for a resend, the reply's id) and whether this call
        started it. A resend with the same ``client_message_id`` writes nothing.
        """
        text = text.strip()
        if not text:
            raise LoaclError(
                "validation_error", "text: a message needs some text",
                errors=[{"field": "text", "message": "empty"}],
            )
        if len(text) > self.settings.max_message_chars:
            raise LoaclError(
                "message_too_long",
                f"a message may have at most {self.settings.max_message_chars} characters",
                errors=[{"field": "text", "message": "too long"}],
            )
        if client_message_id is not None:
            found = await self._replayed(access, client_message_id)
            if found is not None:
                return found[0], found[1], False
        assistant_id, assistant, per_minute = await self._assistant(access.widget_id)
        limiter = self._visitor_limits.setdefault(per_minute, RateLimiter(per_minute, 60))
        limiter.check(
            f"{access.widget_id}:{access.visitor_id}",
            "you are sending messages too fast; wait a moment",
        )
        if self._per_widget.get(access.widget_id, 0) >= self.settings.provider_concurrency:
            raise LoaclError(
                "rate_limited", "this assistant is answering many visitors; try again shortly",
                retry_after=2,
            )
        # Take the widget's slot before any await: counted only once the reply started, a
        # burst of visitors all passed the check above together.
        self._per_widget[access.widget_id] = self._per_widget.get(access.widget_id, 0) + 1
        try:
            if assistant.provider == "chat_completions" and file_ids:
                await self._check_text_files(access.conversation_id, file_ids)
            started = await self._start(
                access, text, file_ids, client_message_id, meta, assistant_id, assistant
            )
        except BaseException:
            self._per_widget[access.widget_id] -= 1
            raise
        if not isinstance(started, Run):  # an idempotent replay won the race
            self._per_widget[access.widget_id] -= 1
            return started[0], started[1], False
        message = await self.message(started.reply_to)
        for watcher in list(self._watchers.get(access.conversation_id, ())):
            watcher(started, message)
        return message, started, True

    async def _check_text_files(self, conversation_id: str, file_ids: tuple[str, ...]) -> None:
        """Refuse, before anything is written, files an OpenAI-compatible server cannot take:
        once in the history, such a file would fail every later turn of the conversation."""
        marks = ",".join("?" * len(file_ids))
        rows = await self.store.query(
            f"SELECT filename FROM files WHERE conversation_id = ? AND file_id IN ({marks}) "
            "AND kind != 'txt'",
            (conversation_id, *file_ids),
        )
        if rows:
            raise LoaclError(
                "unsupported_file_for_provider",
                f"{rows[0][0]}: this assistant's server takes text files only (.txt)",
                errors=[{"field": "file_ids", "message": "text files only"}],
            )

    async def _start(
        self, access: VisitorAccess, text: str, file_ids: tuple[str, ...],
        client_message_id: str | None, meta: Metadata, assistant_id: str,
        assistant: AssistantDefinition,
    ) -> Run | tuple[dict[str, Any], Run | str]:
        """Append the message and the reply's start, and start streaming the reply, for which
        the caller has taken the widget's slot (``_run`` gives it back); or, when a resend won
        the race, the first message and its reply."""
        state, version = await self._load(access.conversation_id)
        message_id, reply_id = new_id(), new_id()
        events = domain.post_message(
            state, message_id=message_id, reply_id=reply_id, text=text, file_ids=file_ids,
            client_message_id=client_message_id, assistant_id=assistant_id,
            provider=assistant.provider, model=assistant.model,
        )
        key = (
            f"message:{access.conversation_id}:{client_message_id}"
            if client_message_id is not None else None
        )
        try:
            recorded = await self.store.append(
                conversation_stream(access.conversation_id), events,
                expected_version=version, metadata=meta, idempotency_key=key,
            )
        except LoaclError as exc:
            if exc.code == "version_conflict":
                raise LoaclError(
                    "reply_in_progress",
                    "wait for the current answer to finish before asking again",
                ) from None
            raise
        first = recorded[0].event
        assert isinstance(first, domain.MessagePosted)
        if first.message_id != message_id:  # an idempotent replay won the race
            found = await self._replayed(access, client_message_id or "")
            assert found is not None
            return found
        run = Run(access.conversation_id, reply_id, message_id)
        self.runs[access.conversation_id] = run
        task = asyncio.create_task(
            self._run(access.widget_id, run, assistant, meta), name=f"reply-{reply_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return run

    # -- streaming a reply -----------------------------------------------------------------

    async def _history(self, conversation_id: str) -> list[Turn]:
        rows = await self.store.query(
            "SELECT role, text, file_ids, status FROM messages WHERE conversation_id = ? "
            "ORDER BY created_seq",
            (conversation_id,),
        )
        wanted = {f for r in rows for f in json.loads(r[2])}
        files = await self._attachments(wanted)
        turns = []
        for role, text, file_ids, status in rows:
            if role == "assistant" and (status == "streaming" or not text):
                continue
            turns.append(Turn(role, text, tuple(files[f] for f in json.loads(file_ids))))
        return trim_history(turns, self.settings.context_chars)

    async def _attachments(self, file_ids: set[str]) -> dict[str, Attachment]:
        if not file_ids:
            return {}
        marks = ",".join("?" * len(file_ids))
        rows = await self.store.query(
            "SELECT f.file_id, f.filename, f.kind, f.content_type, b.data, f.provider_file_id "
            f"FROM files f JOIN blobs b ON b.sha256 = f.sha256 WHERE f.file_id IN ({marks})",
            tuple(file_ids),
        )
        return {r[0]: Attachment(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows}

    async def _run(
        self, widget_id: str, run: Run, assistant: AssistantDefinition, meta: Metadata
    ) -> None:
        stream = conversation_stream(run.conversation_id)
        result = ReplyResult()
        flushed = 0  # characters written to the log so far
        interval = self.settings.flush_interval_ms / 1000
        last_flush = time.monotonic()
        # At most one delta append in flight, in the background: the next token is read while
        # the last ones commit, so a busy log slows the log, not the visitor. Appends stay in
        # offset order because a flush starts only after the previous one ended.
        pending: asyncio.Task[None] | None = None

        async def flush() -> None:
            nonlocal flushed
            if len(run.text) > flushed:
                text = run.text[flushed:]
                offset, flushed = flushed, len(run.text)
                await self.store.append(
                    stream, [domain.AssistantDelta(message_id=run.message_id, offset=offset,
                                                   text=text)],
                    metadata=meta,
                )

        async def settle() -> None:
            """Wait for the flush in flight; one that failed raises here."""
            nonlocal pending
            if pending is not None:
                # Shielded: a reply cancelled here leaves its flush running, and the end event
                # (in the finally below) waits for it.
                await asyncio.shield(pending)
                pending = None

        end: domain.AssistantCompleted | domain.AssistantFailed | domain.AssistantInterrupted
        # Until a handler below decides otherwise, a reply that ends is an interrupted one: a
        # cancellation anywhere (even inside a handler) still writes its end event.
        end = domain.AssistantInterrupted(message_id=run.message_id, text=run.text)
        try:
            try:
                provider = self._provider(assistant.provider)
                turns = await self._history(run.conversation_id)
                async for delta in provider.stream(ReplyRequest(assistant, turns), result):
                    if not delta:
                        continue
                    offset = len(run.text)
                    run.text += delta
                    run._emit(offset, delta)
                    if (time.monotonic() - last_flush >= interval
                            and (pending is None or pending.done())):
                        await settle()
                        pending = asyncio.create_task(flush())
                        last_flush = time.monotonic()
                await settle()
                await flush()
                await self._record_uploads(run.conversation_id, assistant.provider, result, meta)
                end = domain.AssistantCompleted(
                    message_id=run.message_id, text=run.text,
                    usage=domain.Usage(input_tokens=result.input_tokens,
                                       output_tokens=result.output_tokens),
                    provider_request_id=result.request_id,
                )
                run.status = "completed"
            except (ProviderError, LoaclError) as exc:
                error = exc if isinstance(exc, ProviderError) else ProviderError(
                    exc.code if exc.code.startswith("provider_") else "provider_error",
                    exc.message,
                )
                # The provider's own words stay in the server log: they may name accounts or
                # keys. The visitor and the event log get the text for the code.
                log.warning("chat.reply_failed", message_id=run.message_id, code=error.code,
                            error=error.message)
                error = ProviderError(error.code, reply_error_text(error.code),
                                      error.retry_after)
                run.error, run.status = error, "failed"
                end = domain.AssistantFailed(
                    message_id=run.message_id, code=error.code, error=error.message,
                    text=run.text,
                )
                with contextlib.suppress(LoaclError):
                    await settle()  # the failure may be the log's own; the end event says it
                await flush()
                # A file uploaded before the failure is at the provider all the same: recorded,
                # the next turn reuses it instead of uploading it again.
                await self._record_uploads(run.conversation_id, assistant.provider, result, meta)
            except asyncio.CancelledError:
                # Shutting down mid-reply: keep what arrived, marked as interrupted.
                run.status = "interrupted"
                end = domain.AssistantInterrupted(message_id=run.message_id, text=run.text)
                raise
            except Exception:
                log.exception("chat.reply_crashed", message_id=run.message_id)
                run.error = ProviderError("provider_error", reply_error_text("provider_error"))
                run.status = "failed"
                end = domain.AssistantFailed(
                    message_id=run.message_id, code="provider_error",
                    error=reply_error_text("provider_error"), text=run.text,
                )
        finally:
            try:
                if pending is not None:
                    # The end event goes after every delta: wait for the one in flight, and
                    # take its outcome so that a failure is not left unread.
                    await asyncio.wait([pending])
                    if not pending.cancelled():
                        pending.exception()
                if isinstance(end, domain.AssistantInterrupted):
                    end = domain.AssistantInterrupted(message_id=run.message_id, text=run.text)
                await self.store.append(stream, [end], metadata=meta)
            finally:
                run._finish()
                if self.runs.get(run.conversation_id) is run:
                    del self.runs[run.conversation_id]
                self._per_widget[widget_id] -= 1

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
        """Cancel runs in flight; each records itself as interrupted."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        # Close the SDK clients (their pooled connections belong to this event loop).
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            client = getattr(provider, "client", None)
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
