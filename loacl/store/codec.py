"""Event encoding (msgspec JSON), sealed personal fields, upcasting of old schema versions, and
the hash chain.

An event class's ``personal`` fields are sealed with its subject's data key on the way into the
log and opened on the way out (``store.keys``); everything else is plain JSON. Without a key
(a store opened without a keyring) they are written plain, a value that happens to begin with
NUL escaped so that it is never taken for a sealed one."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import operator
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from loacl.domain.errors import LoaclError
from loacl.domain.events import EVENT_TYPES, Event, Metadata
from loacl.domain.privacy import Erased
from loacl.store.keys import MARK, METADATA_AAD, PLAIN, Sealer

GENESIS_HASH = "0" * 64

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
# (type, from_version) -> function turning a payload of that version into the next version.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}



def _as_builtin(value: object) -> object:
    if isinstance(value, Erased):  # an erased field written again (a resealed copy)
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


_encoder = msgspec.json.Encoder(enc_hook=_as_builtin)
_decoders: dict[type[Event], msgspec.json.Decoder[Any]] = {}
_current: dict[tuple[str, int], Callable[[str | bytes], Any]] = {}
_metadata_decoder = msgspec.json.Decoder(Metadata)
_raw_decoder = msgspec.json.Decoder(dict[str, Any])


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    def register(fn: Upcaster) -> Upcaster:
        UPCASTERS[(event_type, from_version)] = fn
        return fn

    return register


class Opener(Protocol):
    """What opens sealed values (``store.keys.Keyring``)."""

    @property
    def sealed_after(self) -> int: ...

    def open(self, token: str, aad: bytes) -> str: ...


Decode = Callable[[str | bytes], Event]
_set = object.__setattr__


_FIELDS: dict[type[Event], tuple[tuple[str, bytes | None], ...]] = {}


def _fields(cls: type[Event]) -> tuple[tuple[str, bytes | None], ...]:
    """Each field of the class in order, with the associated data its sealed value carries
    (None for a field that is not personal)."""
    found = _FIELDS.get(cls)
    if found is None:
        personal = set(cls.personal)
        found = _FIELDS[cls] = tuple(
            (f.name, f"{cls.event_type}.{f.name}".encode() if f.name in personal else None)
            for f in dataclasses.fields(cls)
        )
    return found


_SEALED: dict[type[Event], tuple[tuple[str, bytes], ...]] = {}


def _sealed_fields(cls: type[Event]) -> tuple[tuple[str, bytes], ...]:
    """The class's personal fields with their associated data (asked for every event written
    without a key, so kept)."""
    found = _SEALED.get(cls)
    if found is None:
        found = _SEALED[cls] = tuple((name, aad) for name, aad in _fields(cls) if aad is not None)
    return found


class _Seals(Protocol):
    def seal(self, aad: bytes, text: str) -> str: ...


_SealedEncode = Callable[[Event, _Seals], str]
_SEALING: dict[type[Event], _SealedEncode] = {}


def _sealing(cls: type[Event]) -> _SealedEncode:
    """The function that writes an event of ``cls`` with its personal fields sealed, made once
    per class: the fields' values in order (one C call), the personal ones sealed, and a struct
    of the same fields encoded. A class with one personal field, as most have, gets a function
    without a loop."""
    found = _SEALING.get(cls)
    if found is not None:
        return found
    fields = _fields(cls)
    names = [name for name, _ in fields]
    getter = operator.attrgetter(*names)
    values: Callable[[Event], tuple[Any, ...]] = (
        (lambda event: (getter(event),)) if len(names) == 1 else getter
    )
    personal = tuple((i, aad) for i, (_, aad) in enumerate(fields) if aad is not None)
    wire = msgspec.defstruct(f"{cls.__name__}Sealed", [(name, Any) for name in names])
    encode = _encoder.encode
    if len(personal) == 1:
        ((at, aad),) = personal

        def seal_one(event: Event, key: _Seals) -> str:
            row = list(values(event))
            value = row[at]
            if value:
                row[at] = key.seal(aad, value)
            return encode(wire(*row)).decode()

        found = seal_one
    else:

        def seal_all(event: Event, key: _Seals) -> str:
            row = list(values(event))
            for i, aad in personal:
                value = row[i]
                if value:
                    row[i] = key.seal(aad, value)
            return encode(wire(*row)).decode()

        found = seal_all
    _SEALING[cls] = found
    return found


class _Escape:
    """Writes a personal value plain, escaped (``PLAIN``): for an event written without a key
    whose personal value begins with NUL, so that it is never taken for a sealed one."""

    def seal(self, aad: bytes, text: str) -> str:
        return PLAIN + text


_ESCAPE = _Escape()


def encode_payload(event: Event, key: Sealer | None = None) -> str:
    """The event as JSON, its personal fields sealed with ``key`` (plain without one)."""
    cls = type(event)
    if not cls.personal:
        return _encoder.encode(event).decode()
    if key is not None:
        return _sealing(cls)(event, key)
    if not any(
        isinstance(value := getattr(event, name), str) and value.startswith(MARK)
        for name, _ in _sealed_fields(cls)
    ):
        return _encoder.encode(event).decode()
    return _sealing(cls)(event, _ESCAPE)


def encode_metadata(metadata: Metadata) -> str:
    ip = metadata.client_ip
    if ip is not None and ip.startswith(MARK):  # never a real address; kept apart all the same
        metadata = dataclasses.replace(metadata, client_ip=PLAIN + ip)
    return _encoder.encode(metadata).decode()


def encode_sealed_metadata(metadata: Metadata) -> str:
    """Metadata whose client IP is sealed already (``Keyring.seal_metadata``)."""
    return _encoder.encode(metadata).decode()


@functools.lru_cache(maxsize=4096)
def _metadata(raw: str | bytes) -> Metadata:
    # Cached: the events of one append share their metadata, and Metadata is immutable. A
    # sealed client IP is cached sealed: the cache never holds what an erasure took away.
    return _metadata_decoder.decode(raw)


def decode_metadata(raw: str | bytes, keys: Opener | None = None) -> Metadata:
    metadata = _metadata(raw)
    ip = metadata.client_ip
    if ip is not None and ip.startswith(MARK):
        return dataclasses.replace(metadata, client_ip=_open(ip, METADATA_AAD, keys))
    return metadata


def _open(token: str, aad: bytes, keys: Opener | None) -> str:
    if token.startswith(PLAIN):
        return token[2:]
    if keys is None:
        return _without_keys(token, aad)
    return keys.open(token, aad)


def _without_keys(token: str, aad: bytes) -> str:
    raise LoaclError(
        "keys_unavailable",
        "this event's personal fields are sealed: read it through a store opened with the "
        "database's master key",
    )


def _opening(plain: Decode, cls: type[Event], keys: Opener | None) -> Decode:
    """``plain`` followed by opening the class's sealed fields (replay's hot path: one call
    layer between the decoder and the cipher)."""
    fields = _sealed_fields(cls)
    open_ = keys.open if keys is not None else _without_keys
    if len(fields) == 1:
        ((name, aad),) = fields

        def decode_one(raw: str | bytes) -> Event:
            event = plain(raw)
            value = getattr(event, name)
            if value and value[0] == MARK:
                _set(event, name, value[2:] if value[1:2] == "=" else open_(value, aad))
            return event

        return decode_one

    def decode(raw: str | bytes) -> Event:
        event = plain(raw)
        for name, aad in fields:
            value = getattr(event, name)
            if value and value[0] == MARK:
                _set(event, name, value[2:] if value[1:2] == "=" else open_(value, aad))
        return event

    return decode


def event_class(event_type: str) -> type[Event]:
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise LoaclError("unknown_event_type", f"no event type {event_type!r}") from None


def plain_decoder(event_type: str, schema_version: int) -> Decode:
    """The function that decodes payloads of this type and schema version as they are (sealed
    fields left sealed), upcasting old ones."""
    fast = _current.get((event_type, schema_version))
    if fast is not None:
        return fast
    cls = event_class(event_type)
    if schema_version == cls.schema_version:
        decoder = _decoders.get(cls)
        if decoder is None:
            decoder = _decoders[cls] = msgspec.json.Decoder(cls)
        fast = _current[(event_type, schema_version)] = decoder.decode
        return fast
    if schema_version > cls.schema_version:
        raise LoaclError(
            "unknown_schema_version",
            f"{event_type} v{schema_version} is newer than this LOACL knows "
            f"(v{cls.schema_version})",
        )
    return functools.partial(_upcast, event_type, schema_version, None, False)


def payload_decoder(
    event_type: str, schema_version: int, keys: Opener | None = None
) -> Decode:
    """The function that decodes payloads of this type and schema version, upcasting old ones
    and opening sealed fields with ``keys``. Replay asks once per type and version, then calls
    it for every event."""
    plain = plain_decoder(event_type, schema_version)
    cls = event_class(event_type)
    if schema_version != cls.schema_version:
        return functools.partial(_upcast, event_type, schema_version, keys, True)
    if not cls.personal:
        return plain
    return _opening(plain, cls, keys)


def decode_payload(
    event_type: str, schema_version: int, raw: str | bytes, keys: Opener | None = None
) -> Event:
    return payload_decoder(event_type, schema_version, keys)(raw)


def _upcast(
    event_type: str, schema_version: int, keys: Opener | None, opened: bool, raw: str | bytes
) -> Event:
    cls = event_class(event_type)
    data = _raw_decoder.decode(raw)
    if opened:
        for name, value in data.items():
            if isinstance(value, str) and value.startswith(MARK):
                data[name] = _open(value, f"{event_type}.{name}".encode(), keys)
    for version in range(schema_version, cls.schema_version):
        # Look up apart from the call: a KeyError inside an upcaster is its own bug, not a
        # missing upcaster.
        upcast = UPCASTERS.get((event_type, version))
        if upcast is None:
            raise LoaclError("unknown_schema_version", f"no upcaster for {event_type} v{version}")
        data = upcast(data)
    return msgspec.convert(data, cls)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@functools.lru_cache(maxsize=4096)
def parse_time(text: str) -> datetime:
    # Cached: the events of one commit share their time.
    return datetime.fromisoformat(text)


def chain_hash(
    prev_hash: str,
    seq: int,
    stream: str,
    version: int,
    event_type: str,
    schema_version: int,
    payload: str,
    metadata: str,
    recorded_at: str,
) -> str:
    """sha256(previous hash || canonical row). The canonical row is a JSON array."""
    canonical = _encoder.encode(
        [seq, stream, version, event_type, schema_version, payload, metadata, recorded_at]
    )
    return hashlib.sha256(prev_hash.encode() + canonical).hexdigest()


# -- upcasters: each turns a payload of an old schema version into the next one ----------------


@upcaster("widget.created", 1)
@upcaster("widget.updated", 1)
def _widget_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v2 gave the definition a budget; a v1 widget keeps the server's defaults."""
    return {**data, "definition": {"budget": {}, **data["definition"]}}


@upcaster("assistant.created", 1)
@upcaster("assistant.updated", 1)
def _assistant_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """v2 gave the definition tools; a v1 assistant has none."""
    return {**data, "definition": {**data["definition"], "tools": []}}


_SETTINGS_V3 = {
    "feedback": True, "events_include_text": False, "title_blink": False,
    "proactive_greeting": "", "proactive_delay_seconds": 10, "prechat_fields": [],
}


@upcaster("widget.created", 2)
@upcaster("widget.updated", 2)
def _widget_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """v3 gave the settings the embed script's options; a v2 widget has their defaults (thumbs
    under replies, nothing else)."""
    definition = data["definition"]
    settings = {**_SETTINGS_V3, **definition.get("settings", {})}
    return {**data, "definition": {**definition, "settings": settings}}


@upcaster("widget.created", 3)
@upcaster("widget.updated", 3)
def _widget_v3_to_v4(data: dict[str, Any]) -> dict[str, Any]:
    """v4 gave the definition office hours; a v3 widget keeps none."""
    return {**data, "definition": {**data["definition"], "office_hours": None}}
