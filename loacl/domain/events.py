"""Events are past-tense facts. Each class names its wire type and schema version.

Events are frozen dataclasses so that the domain needs nothing outside the standard library;
the store encodes them (msgspec) and pins their wire format with golden files.

Each class also says, next to its fields, which of them hold personal data: ``personal`` names
the top-level text fields the store seals with the key of the event's subject (see
``loacl.domain.privacy``), and ``not_personal`` every other field that holds text, each
decision made once, here. A test fails for a text field named in neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, NamedTuple

EVENT_TYPES: dict[str, type[Event]] = {}


@dataclass(frozen=True, kw_only=True)
class Event:
    event_type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1
    # Fields of type str (or str | None) sealed with the subject's key: erased with it.
    personal: ClassVar[tuple[str, ...]] = ()
    # Fields holding text that is not personal data; a nested dataclass may be named whole.
    not_personal: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only a class that names its own type registers: a subclass inheriting the name would
        # take over its parent's wire type.
        event_type = cls.__dict__.get("event_type")
        if not event_type:
            return
        known = EVENT_TYPES.get(event_type)
        # dataclass(slots=True) builds a second class of the same name (its qualified name is
        # set only afterwards); the last one registered is the real one. Another class claiming
        # the type would decode the log wrongly.
        if known is not None and (known.__module__, known.__name__) != (
            cls.__module__, cls.__name__,
        ):
            raise TypeError(
                f"event type {event_type!r} is already {known.__module__}.{known.__qualname__}"
            )
        EVENT_TYPES[event_type] = cls


@dataclass(frozen=True, slots=True, kw_only=True)
class Metadata:
    """Who and what caused an append. Never holds secrets."""

    actor: str | None = None
    request_id: str | None = None
    client_ip: str | None = None
    causation_id: str | None = None


class RecordedEvent(NamedTuple):
    """An event as the log holds it: its position, stream, version and chain hash.

    A named tuple, not a dataclass: replay builds one per event, and a tuple is built fastest.
    """

    seq: int
    stream: str
    version: int
    event: Event
    metadata: Metadata
    recorded_at: datetime
    hash: str

    @property
    def type(self) -> str:
        return self.event.event_type
