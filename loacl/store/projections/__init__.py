"""Projections: handlers per event type that keep the read tables, run inside the append's
transaction so that a read after a write sees it and a table constraint can veto an append."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from typing import TypeVar

from loacl.domain.events import Event, RecordedEvent

Handler = Callable[[sqlite3.Connection, RecordedEvent], None]
H = TypeVar("H", bound=Handler)


class Projections:
    def __init__(self, tables: Iterable[str] = ()) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self.tables: list[str] = list(tables)

    def on(self, *event_classes: type[Event]) -> Callable[[H], H]:
        def register(handler: H) -> H:
            for cls in event_classes:
                self._handlers.setdefault(cls.event_type, []).append(handler)
            return handler

        return register

    def include(self, other: Projections) -> None:
        for event_type, handlers in other._handlers.items():
            self._handlers.setdefault(event_type, []).extend(handlers)
        self.tables.extend(other.tables)

    def apply(self, conn: sqlite3.Connection, events: Iterable[RecordedEvent]) -> None:
        handlers = self._handlers
        for event in events:
            for handler in handlers.get(event.event.event_type, ()):
                handler(conn, event)


def default_projections() -> Projections:
    """Every read table LOACL keeps, with its handlers."""
    from loacl.store.projections import accounts, conversations, widgets

    projections = Projections()
    projections.include(accounts.projections)
    projections.include(widgets.projections)
    projections.include(conversations.projections)
    return projections
