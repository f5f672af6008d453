"""Typed reads of the read tables: one query function per shape the services need.

Each module here owns the SQL of one area and returns frozen domain objects or msgspec structs,
decoded once; nothing above ``store`` sees a positional row or a JSON column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from loacl.store.eventstore import EventStore


class Created(Protocol):
    @property
    def created_seq(self) -> int: ...


T = TypeVar("T")
C = TypeVar("C", bound=Created)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list; ``next_cursor`` is the position to ask for after, or None."""

    items: list[T]
    next_cursor: int | None


async def page_by_creation(
    store: EventStore, select: str, where: str, params: Sequence[Any], after: int, limit: int,
    decode: Callable[[Any], C],
) -> Page[C]:
    """Rows of ``select`` in creation order after the cursor ``after`` (a position in the
    log, so that a row made while a client pages through is never skipped)."""
    rows = await store.query(
        f"{select} WHERE {where} AND created_seq > ? ORDER BY created_seq LIMIT ?",
        (*params, after, limit + 1),
    )
    items = [decode(r) for r in rows]
    if len(items) > limit:  # the extra row only says that there is more
        return Page(items[:limit], items[limit - 1].created_seq)
    return Page(items, None)


async def first(
    store: EventStore, sql: str, params: Sequence[Any], decode: Callable[[Any], T]
) -> T | None:
    """The first row ``sql`` finds, decoded, or None."""
    rows = await store.query(sql, params)
    return decode(rows[0]) if rows else None
