"""In-process push of committed events, for live views that want them with no read at all.

A slow subscriber is dropped, never waited for: waiting would hold up every append behind the
slowest reader, and buffering without bound would grow memory. Dropping is safe because nothing
is lost: the subscriber gets everything it buffered, without a gap, then ``SubscriptionOverflow``;
it subscribes again, reads the log after the last ``seq`` it saw (``EventStore.read_all(after=)``)
and skips the live events whose ``seq`` it has already read. Work that must not miss an event
across restarts is a durable subscriber instead (``store.subscriptions``): it reads the log
itself and is only woken by the notifier.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

from loacl.domain.events import RecordedEvent

Filter = Callable[[RecordedEvent], bool]


class SubscriptionOverflow(Exception):
    """The subscriber fell too far behind and was dropped; it may read the log and resume."""


class Subscription:
    def __init__(
        self, broker: Broker, accept: Filter | None, maxsize: int, stream: str | None = None
    ) -> None:
        self._broker = broker
        self._accept = accept
        self.stream = stream
        # The bound is checked by hand so that the end marker always fits: making room for it
        # by dropping a buffered event would leave a gap the subscriber cannot see when it
        # resumes from the log after the last event it got.
        self._maxsize = maxsize
        self._queue: asyncio.Queue[RecordedEvent | None] = asyncio.Queue()
        self.overflowed = False
        self.closed = False

    def _offer(self, event: RecordedEvent) -> None:
        if self.closed or (self._accept is not None and not self._accept(event)):
            return
        if self._queue.qsize() >= self._maxsize:
            self.overflowed = True
            self.close()
            return
        self._queue.put_nowait(event)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._broker._forget(self)
        self._queue.put_nowait(None)  # wakes a waiting reader once the buffer is drained

    async def get(self) -> RecordedEvent:
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # the end stays the end: a later get must not hang
            if self.overflowed:
                raise SubscriptionOverflow("subscriber fell behind")
            raise StopAsyncIteration
        return event

    def __aiter__(self) -> AsyncIterator[RecordedEvent]:
        return self

    async def __anext__(self) -> RecordedEvent:
        return await self.get()


class Broker:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        # By stream: a socket follows one conversation, and finding its few events among a
        # commit's many must not cost a look at every socket for every event.
        self._by_stream: dict[str, set[Subscription]] = {}

    def subscribe(
        self, accept: Filter | None = None, maxsize: int = 1000, *, stream: str | None = None
    ) -> Subscription:
        """Committed events from now on (of one ``stream`` only, if given) that ``accept``
        takes."""
        subscription = Subscription(self, accept, maxsize, stream)
        if stream is None:
            self._subscribers.add(subscription)
        else:
            self._by_stream.setdefault(stream, set()).add(subscription)
        return subscription

    def _forget(self, subscription: Subscription) -> None:
        if subscription.stream is None:
            self._subscribers.discard(subscription)
            return
        found = self._by_stream.get(subscription.stream)
        if found is not None:
            found.discard(subscription)
            if not found:
                del self._by_stream[subscription.stream]

    def publish(self, events: Sequence[RecordedEvent]) -> None:
        for subscription in list(self._subscribers):
            for event in events:
                subscription._offer(event)
        by_stream = self._by_stream
        if by_stream:
            for event in events:
                found = by_stream.get(event.stream)
                if found:
                    for subscription in list(found):
                        subscription._offer(event)

    def close(self) -> None:
        for subscription in [*self._subscribers, *(s for f in self._by_stream.values()
                                                   for s in f)]:
            subscription.close()
