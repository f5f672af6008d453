"""The operational tables of the effects that act outside the database: webhook deliveries
(with each endpoint's run of failures) and the record of handoff mails sent.

They are not read tables (the log does not rebuild them) and not the log: they record what was
done to other systems. On one machine they live in the SQLite file (``SqliteDeliveries``,
``SqliteHandoffMails``); with the log in PostgreSQL they live there
(``store.postgres.operational``), so that every instance reads the same ones and any instance
may send a delivery that is due. ``http.app`` chooses which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from loacl.store.views import Page
from loacl.store.views.webhooks import Delivery, NewDelivery, Outcome


class DeliveryTable(Protocol):
    """Times are ``codec.format_time`` text, as the log writes them."""

    async def enqueue(self, deliveries: Sequence[NewDelivery], now: str, retry_until: str
                      ) -> int:
        """Add deliveries (one whose message id is there already is left as it is); how many
        were new."""
        ...

    async def due(self, now: str, exclude: Sequence[int], limit: int) -> list[Delivery]:
        """Deliveries to attempt now, this caller's to send until it records the attempt or
        releases them: no other dispatcher is given them meanwhile."""
        ...

    async def next_due(self, now: str) -> str | None:
        """When the earliest delivery another look could be given is due."""
        ...

    async def release(self, delivery_ids: Sequence[int], until: str | None = None) -> None:
        """Give back deliveries ``due`` gave and that were not attempted; none is given again
        before ``until``."""
        ...

    async def delivery(self, webhook_id: str, delivery_id: int) -> Delivery | None: ...

    async def by_message(self, message_id: str) -> Delivery | None: ...

    async def deliveries_of(self, webhook_id: str, after: int, limit: int) -> Page[Delivery]:
        """An endpoint's delivery log, newest first; ``after`` is a cursor from a page before."""
        ...

    async def record_attempt(self, delivery_id: int, webhook_id: str, outcome: Outcome,
                             now: str) -> int:
        """The attempt's outcome, and the endpoint's run of failures after it (0 on success)."""
        ...

    async def redeliver(self, delivery_id: int, now: str, retry_until: str) -> None:
        """Send the delivery again, soon, with a fresh retry window; its message id stays."""
        ...

    async def forget_failures(self, webhook_id: str) -> None: ...

    async def failures_in_row(self, webhook_id: str) -> int: ...


class MailRecord(Protocol):
    """The handoff mails sent (``services.handoff_mail``), looked up before each is sent."""

    async def was_sent(self, kind: str, key: str) -> bool: ...

    async def last_sent(self, conversation_id: str, kind: str) -> str | None:
        """When the last mail of ``kind`` about the conversation went out."""
        ...

    async def record(self, kind: str, key: str, conversation_id: str, sent_at: str) -> None: ...
