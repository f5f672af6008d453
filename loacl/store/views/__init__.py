"""Typed reads of the read tables: one query function per shape the services need.

Each module here owns the SQL of one area and returns frozen domain objects or msgspec structs,
decoded once; nothing above ``store`` sees a positional row or a JSON column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list; ``next_cursor`` is the position to ask for after, or None."""

    items: list[T]
    next_cursor: int | None


def paged(items: list[T], limit: int, cursor: Callable[[T], int]) -> Page[T]:
    """A page from up to ``limit + 1`` rows: the extra row only says that there is more."""
    if len(items) > limit:
        return Page(items[:limit], cursor(items[limit - 1]))
    return Page(items, None)
