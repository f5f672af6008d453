"""What the rest of LOACL needs of an event store, whatever holds the log: SQLite
(``store.eventstore.EventStore``) or PostgreSQL (``store.postgres.eventstore.PgEventStore``).
Both pass one contract suite (tests/test_store_contract.py).

The SQLite store offers more (projections in the append's transaction, queries of the read
tables, calls on its writer connection): the parts of LOACL that use them are SQLite's until
the read tables have a PostgreSQL home of their own (docs/scale-out.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from loacl.domain.events import Event, Metadata, RecordedEvent
from loacl.store.audit import AuditResult
from loacl.store.broker import Broker
from loacl.store.checkpoints import Checkpoint
from loacl.store.keys import Keyring
from loacl.store.notifier import Notifier

S = TypeVar("S")


class EventLog(Protocol):
    """An append-only, hash-chained log of events in one global order without gaps."""

    keyring: Keyring | None  # seals personal fields on the way in, opens them on the way out
    broker: Broker  # this process's live subscribers, told after each commit
    notifier: Notifier  # wakes durable subscribers, told after each commit

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def append(
        self,
        stream: str,
        events: Sequence[Event],
        *,
        expected_version: int | None = None,
        metadata: Metadata | None = None,
        idempotency_key: str | None = None,
        subject: str | None = None,
    ) -> list[RecordedEvent]:
        """All or none of the events, at the stream's next versions and the log's next
        positions. ``expected_version`` 0 asks for a new stream, N for a stream at N, else
        ``ConflictError``; a repeated ``idempotency_key`` returns the first append's events
        and writes nothing. Concurrent appends are committed together (group commit)."""
        ...

    async def read_stream(self, stream: str, after_version: int = 0) -> list[RecordedEvent]: ...

    async def read_all(self, after: int = 0, limit: int | None = None) -> list[RecordedEvent]:
        """Events after a position, in order. A reader that has seen position N has seen every
        position before it: no event ever commits behind one already visible."""
        ...

    async def load(
        self, stream: str, initial: S, evolve: Callable[[S, Event], S]
    ) -> tuple[S, int]: ...

    async def stream_version(self, stream: str) -> int: ...

    async def head(self) -> int:
        """The last committed position (0 for an empty log)."""
        ...

    async def checkpoint(self, name: str) -> Checkpoint:
        """A durable subscriber's checkpoint, created at 0 the first time."""
        ...

    async def advance_checkpoint(self, name: str, expected: int, position: int) -> None:
        """Move the checkpoint to ``position`` if it is still at ``expected``, else
        ``checkpoints.Moved`` with the stored position (a reset, or a second runner)."""
        ...

    async def verify(self) -> AuditResult:
        """The hash chain walked from the start and checked against the log's head."""
        ...
