"""A reply on its way from a provider to the visitor and the log.

A :class:`Run` keeps the reply's text in memory while it streams, so that a socket joining late
gets what it missed and then the rest live. A :class:`ReplyStream` writes the same text to the
log as ``assistant.delta`` events, one per flush window, then one end event. Both count
characters the same way, so offsets agree.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from loacl.domain import conversations as domain
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.domain.widgets import conversation_stream
from loacl.providers.base import ProviderError, ReplyResult
from loacl.services.listeners import Listeners
from loacl.store.eventstore import EventStore
from loacl.store.views.conversations import MessageView

log = structlog.get_logger(__name__)

REPLY_ERRORS = {
    "provider_rate_limited": "The assistant is busy right now; try again shortly.",
    "provider_unavailable": "The assistant could not be reached; try again.",
    "unsupported_file_for_provider": "This assistant cannot read that kind of file.",
    "interrupted": "The answer was interrupted; ask again.",
    "store_unavailable": "The answer could not be saved just now; try again shortly.",
    "database_unavailable": "The answer could not be saved just now; try again shortly.",
    "subject_erased": "This conversation was erased.",
}
# The event store's own failures: named as such to visitors and in the log, never as the
# provider's. A visitor may ask again after a few seconds.
STORE_CODES = frozenset({"store_unavailable", "store_error", "database_unavailable",
                         "store_closed"})
STORE_RETRY_AFTER = 5.0



@dataclass(frozen=True)
class Notice:
    """How a reply is doing while no text comes: ``waiting`` (the provider has not answered
    yet), ``retrying`` (attempt ``attempt`` failed with ``code``; the next in ``retry_in``
    seconds) or ``tool`` (the tool ``tool`` is being called; ``text`` is its status text)."""

    state: str
    retry_in: float | None = None
    attempt: int | None = None
    code: str | None = None
    tool: str | None = None
    text: str | None = None


Piece = tuple[int, str] | Notice | None
EndEvent = domain.AssistantCompleted | domain.AssistantFailed | domain.AssistantInterrupted


# Backoff without a provider's retry-after: the SDK's own (0.5 s doubling to 8 s, less up to a
# quarter at random, so that replies refused together do not come back together).
RETRY_BASE, RETRY_CAP = 0.5, 8.0


def retry_delay(
    error: ProviderError, attempt: int, *, retries: int, time_left: float, jitter: float
) -> float | None:
    """Seconds to wait before asking the provider again after ``attempt`` failed attempts
    (1 for the first), or None to give up: the error is final, the retries are spent, or the
    wait (a retry-after included) would not leave the reply's deadline room to answer.
    ``jitter`` is a number in [0, 1)."""
    if not error.retryable or attempt > retries:
        return None
    if error.retry_after is not None and error.retry_after > 0:
        delay = error.retry_after
    else:
        delay = min(RETRY_BASE * 2 ** (attempt - 1), RETRY_CAP) * (1 - 0.25 * jitter)
    return delay if delay < time_left / 2 else None


def reply_error_text(code: str | None) -> str:
    """What a visitor (and the event log) is told for a failed reply."""
    return REPLY_ERRORS.get(code or "", "The assistant could not answer; try again.")


@dataclass
class Run:
    """A reply being streamed. ``text`` grows as deltas arrive; listeners get each delta."""

    conversation_id: str
    message_id: str
    reply_to: str
    widget_id: str = ""
    start_seq: int = 0  # the position of its start in the log (0: not known)
    text: str = ""
    status: str = "streaming"
    error: ProviderError | None = None
    # Each listener's queue and its bound (0: none). The queues themselves are unbounded and
    # the bound is checked by hand, so that the end marker always fits without dropping a
    # delta: what a dropped listener holds is still a gapless prefix it can resume after.
    # A listener's queue holds (offset, text) pieces, notices and None at the end.
    listeners: dict[asyncio.Queue[Piece], int] = field(default_factory=dict)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    state: Notice | None = None  # the last notice, for a listener joining before any text
    # Told of each new piece and of the end (services.remote_replies: the text forwarded to
    # other instances whose tabs follow this reply).
    watch: Callable[[Run], None] | None = None
    # Told when a listener joins (services.remote_replies: a tab here follows a reply that
    # another instance runs, which then forwards its text live).
    joined: Callable[[Run], None] | None = None

    def listen(self, maxsize: int = 0) -> asyncio.Queue[Piece]:
        queue: asyncio.Queue[Piece] = asyncio.Queue()
        if self.finished.is_set():
            queue.put_nowait(None)
        else:
            if self.state is not None and (not self.text or self.state.state == "tool"):
                # A tab joining while the provider is retried, or a tool called.
                queue.put_nowait(self.state)
            self.listeners[queue] = maxsize
            if self.joined is not None:
                self.joined(self)
        return queue

    def unlisten(self, queue: asyncio.Queue[Piece]) -> None:
        self.listeners.pop(queue, None)

    def notice(self, notice: Notice) -> None:
        """Tell the listeners how the reply is doing while no text comes."""
        self.state = notice
        for queue in self.listeners:
            queue.put_nowait(notice)

    def _emit(self, offset: int, delta: str) -> None:
        if self.watch is not None:
            self.watch(self)
        for queue, bound in list(self.listeners.items()):
            if bound and queue.qsize() >= bound:
                # A slow socket is dropped, not waited for; it can resume from its offset.
                del self.listeners[queue]
                queue.put_nowait(None)
            else:
                queue.put_nowait((offset, delta))

    def _finish(self) -> None:
        self.finished.set()
        if self.watch is not None:
            self.watch(self)
        for queue in self.listeners:
            queue.put_nowait(None)
        self.listeners.clear()


StartedHere = Callable[["Run", MessageView], None]


class Starts:
    """Replies another instance started, told to this instance's tabs of their conversation
    (services.remote_replies) before the log brings the start: the run, and the visitor's
    message the reply answers, as the instance that started it read it."""

    def __init__(self) -> None:
        self._listeners: Listeners[str, StartedHere] = Listeners()

    def listen(self, conversation_id: str, listener: StartedHere) -> Callable[[], None]:
        return self._listeners.listen(conversation_id, listener)

    def listened(self, conversation_id: str) -> bool:
        return conversation_id in self._listeners

    def tell(self, run: Run, message: MessageView) -> None:
        for listener in self._listeners.of(run.conversation_id):
            try:
                listener(run, message)
            except Exception:
                log.exception("replies.start_listener_failed")


async def all_of(futures: list[asyncio.Future[Any]]) -> list[Any]:
    """Every future's result, once all have ended; the first failure raises (every outcome
    is taken, so that none is left unread)."""
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class ReplyStream:
    """Writes one run to the log: deltas per flush window, then exactly one end event.

    At most one delta append is in flight, in the background: the next token is read while the
    last ones commit, so a busy log slows the log, not the visitor. Appends stay in offset order
    because a flush starts only after the previous one ended, and each is queued for the store
    at once (``EventStore.enqueue``), so what the reply appends later lands after it. Until
    :meth:`completed` or :meth:`failed` says otherwise the reply ends as interrupted, so a
    cancellation anywhere still writes its end event.
    """

    def __init__(
        self, store: EventStore, run: Run, meta: Metadata, flush_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.run = run
        self.meta = meta
        self.stream = conversation_stream(run.conversation_id)
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.flushed = 0  # characters written to the log so far
        self.last_flush = clock()
        self.pending: asyncio.Future[Any] | None = None  # the delta append in flight
        self.end_event: EndEvent | None = None

    def on_delta(self, delta: str) -> None:
        """A piece of text from the provider: to the listeners now, to the log when due."""
        run = self.run
        offset = len(run.text)
        run.text += delta
        run._emit(offset, delta)
        now = self.clock()
        if now - self.last_flush >= self.flush_seconds and (
            self.pending is None or self.pending.done()
        ):
            self._flush_in_background()
            self.last_flush = now

    def _flush_in_background(self) -> None:
        previous, self.pending = self.pending, None
        if previous is not None:
            previous.result()  # the last flush ended; one that failed raises here
        self.pending = self._queue_flush()

    def _queue_flush(self) -> asyncio.Future[Any] | None:
        """The text not in the log yet, queued as one delta event (None when there is none)."""
        run = self.run
        if len(run.text) <= self.flushed:
            return None
        offset, self.flushed = self.flushed, len(run.text)
        return self.store.enqueue(
            self.stream,
            [domain.AssistantDelta(message_id=run.message_id, offset=offset,
                                   text=run.text[offset:self.flushed])],
            metadata=self.meta,
        )

    async def flush(self) -> None:
        """Append the text not in the log yet as one delta event."""
        queued = self._queue_flush()
        if queued is not None:
            await queued

    def queue_rest(self) -> asyncio.Future[Any] | None:
        """Every delta so far queued for the log, not waited for: one future for the appends
        in flight (None when there are none). Whatever is queued after this lands after them;
        the future must be awaited all the same (a refused append raises there)."""
        queued = [f for f in (self.pending, self._queue_flush()) if f is not None]
        self.pending = None
        if not queued:
            return None
        return queued[0] if len(queued) == 1 else asyncio.ensure_future(all_of(queued))

    async def settle(self) -> None:
        """Wait for the flush in flight; one that failed raises here."""
        if self.pending is not None:
            # Shielded: a reply cancelled here leaves its flush running, and the end event
            # waits for it.
            await asyncio.shield(self.pending)
            self.pending = None

    async def drain(self) -> None:
        """Every delta so far in the log."""
        await self.settle()
        await self.flush()

    def completed(self, result: ReplyResult) -> None:
        run = self.run
        run.status = "completed"
        if result.stop_reason is not None:
            log.info("chat.reply_truncated", message_id=run.message_id,
                     reason=result.stop_reason, chars=len(run.text))
        self.end_event = domain.AssistantCompleted(
            message_id=run.message_id, text=run.text,
            usage=domain.Usage(input_tokens=result.input_tokens,
                               output_tokens=result.output_tokens),
            provider_request_id=result.request_id,
        )

    def failed(self, error: LoaclError) -> None:
        """The visitor and the log get the text for the code, never the provider's words."""
        code, retry_after = _named(error)
        run = self.run
        run.error = ProviderError(code, reply_error_text(code), retry_after)
        run.status = "failed"
        self.end_event = domain.AssistantFailed(
            message_id=run.message_id, code=code, error=reply_error_text(code), text=run.text,
        )

    def interrupted(self) -> None:
        self.run.status = "interrupted"
        self.end_event = None

    async def end(self) -> EndEvent | None:
        """Append the end event after every delta: the one in flight is waited for and its
        outcome taken, so that a failure is not left unread.

        Returns None once the end is in the log. When the store refuses it, the run is marked
        failed with the store's code (the visitor is never told ``streaming`` for a reply that
        stopped) and the end event is returned, for :meth:`land` to write once the store takes
        writes again."""
        if self.pending is not None:
            await asyncio.wait([self.pending])
            if not self.pending.cancelled():
                self.pending.exception()
        end = self.end_event
        if end is None:
            end = domain.AssistantInterrupted(message_id=self.run.message_id, text=self.run.text)
        if isinstance(end, domain.AssistantFailed) and end.code in STORE_CODES:
            # The store has just refused this reply's writes: a second try now would queue
            # behind every other writer's wait for the same lock and keep the visitor from
            # learning it. :meth:`land` writes it once the store takes writes again.
            return end
        try:
            await self.store.append(self.stream, [end], metadata=self.meta)
        except LoaclError as exc:
            status = self.run.status
            self.failed(exc)
            if status == "interrupted":
                self.run.status = "interrupted"
            if exc.code == "subject_erased":
                return None  # the conversation is gone: there is no end to write
            return end
        return None

    async def land(
        self, end: EndEvent, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        first: float = 0.5, most: float = 30.0,
    ) -> None:
        """Write ``end`` until the store takes it, waiting longer after each refusal: the
        conversation is blocked until its reply has ended in the log."""
        wait = first
        while True:
            await sleep(wait)
            try:
                await self.store.append(self.stream, [end], metadata=self.meta)
            except LoaclError as exc:
                if exc.code == "subject_erased":
                    return  # erased meanwhile: nothing of it is to be written any more
                log.warning("chat.end_not_saved", message_id=self.run.message_id,
                            code=exc.code, retry_in=min(wait * 2, most))
                wait = min(wait * 2, most)
                continue
            log.info("chat.end_saved_late", message_id=self.run.message_id)
            return


def _named(error: LoaclError) -> tuple[str, float | None]:
    """The code a failed reply is recorded and shown with, and when to ask again: the
    provider's own codes and the store's kept, anything else is the provider's error."""
    if isinstance(error, ProviderError):
        return error.code, error.retry_after
    if error.code in STORE_CODES:
        return error.code, STORE_RETRY_AFTER
    if error.code == "subject_erased":
        return error.code, None
    if error.code.startswith("provider_"):
        return error.code, None
    return "provider_error", None
