"""Projections: handlers per event type that keep the read tables, run inside the append's
transaction so that a read after a write sees it and a table constraint can veto an append."""

from __future__ import annotations

import inspect
import sqlite3
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from loacl.domain.events import Event, RecordedEvent

# ``handler(conn, event, recorded)``: the event typed as the handler's annotation says, and its
# record (position, version, time) beside it.
Handler = Callable[[sqlite3.Connection, Any, RecordedEvent], None]
H = TypeVar("H", bound=Handler)


def _handled(handler: Callable[..., None]) -> tuple[type[Event], ...]:
    """The event classes a handler takes, from its ``event`` parameter's annotation (a class,
    or a union of classes)."""
    hints = typing.get_type_hints(handler)
    name = list(inspect.signature(handler).parameters)[1]
    annotation = hints[name]
    found = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (
        annotation,
    )
    for cls in found:
        if not (isinstance(cls, type) and issubclass(cls, Event)):
            raise TypeError(f"{handler.__name__}: annotate its event with event classes")
    return tuple(found)


class Projections:
    def __init__(self, tables: Iterable[str] = ()) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self.tables: list[str] = list(tables)
        # The event types some handler reads personal fields of (every one registered with
        # ``on``): replay opens their sealed fields, and only theirs.
        self.opened: set[str] = set()
        self.sealed: list[Handler] = []  # those registered with ``on_sealed``

    def on(self, handler: H) -> H:
        """Register ``handler`` for the events its annotation names."""
        for cls in _handled(handler):
            self._handlers.setdefault(cls.event_type, []).append(handler)
            self.opened.add(cls.event_type)
        return handler

    def on_sealed(self, handler: H) -> H:
        """Register ``handler``, declaring that it reads none of its events' personal fields
        (``Event.personal``): replay may hand it events whose personal fields are still sealed
        (a NUL and base64, see ``store.keys``), and opens them only for a type that another
        handler registered with ``on`` takes. Live appends hand every handler the events as
        written. A test checks each such declaration: the handler's tables are the same
        whatever its events' personal fields hold."""
        for cls in _handled(handler):
            self._handlers.setdefault(cls.event_type, []).append(handler)
        self.sealed.append(handler)
        return handler

    def include(self, other: Projections) -> None:
        for event_type, handlers in other._handlers.items():
            self._handlers.setdefault(event_type, []).extend(handlers)
        self.tables.extend(other.tables)
        self.opened |= other.opened
        self.sealed.extend(other.sealed)

    def apply(self, conn: sqlite3.Connection, events: Iterable[RecordedEvent]) -> None:
        handlers = self._handlers
        for recorded in events:
            event = recorded.event
            for handler in handlers.get(event.event_type, ()):
                handler(conn, event, recorded)


def default_projections() -> Projections:
    """Every read table LOACL keeps, with its handlers."""
    from loacl.store.projections import (
        accounts,
        conversations,
        handoff,
        knowledge,
        privacy,
        webhooks,
        widgets,
        workspaces,
    )

    projections = Projections()
    projections.include(accounts.projections)
    projections.include(workspaces.projections)
    projections.include(widgets.projections)
    projections.include(conversations.projections)
    projections.include(handoff.projections)
    projections.include(privacy.projections)
    projections.include(webhooks.projections)
    projections.include(knowledge.projections)
    return projections
