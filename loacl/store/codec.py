"""Event encoding (msgspec JSON), upcasting of old schema versions, and the hash chain."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from loacl.domain.errors import LoaclError
from loacl.domain.events import EVENT_TYPES, Event, Metadata

GENESIS_HASH = "0" * 64

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
# (type, from_version) -> function turning a payload of that version into the next version.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}

_encoder = msgspec.json.Encoder()
_decoders: dict[type[Event], msgspec.json.Decoder[Any]] = {}
_current: dict[tuple[str, int], Callable[[str | bytes], Any]] = {}
_metadata_decoder = msgspec.json.Decoder(Metadata)
_raw_decoder = msgspec.json.Decoder(dict[str, Any])


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    def register(fn: Upcaster) -> Upcaster:
        UPCASTERS[(event_type, from_version)] = fn
        return fn

    return register


def encode_payload(event: Event) -> str:
    return _encoder.encode(event).decode()


def encode_metadata(metadata: Metadata) -> str:
    return _encoder.encode(metadata).decode()


@functools.lru_cache(maxsize=4096)
def decode_metadata(raw: str | bytes) -> Metadata:
    # Cached: the events of one append share their metadata, and Metadata is immutable.
    return _metadata_decoder.decode(raw)


def event_class(event_type: str) -> type[Event]:
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise LoaclError("unknown_event_type", f"no event type {event_type!r}") from None


def payload_decoder(event_type: str, schema_version: int) -> Callable[[str | bytes], Event]:
    """The function that decodes payloads of this type and schema version, upcasting old ones.

    Replay asks once per type and version, then calls it for every event."""
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
    return functools.partial(_upcast, event_type, schema_version)


def decode_payload(event_type: str, schema_version: int, raw: str | bytes) -> Event:
    # The current version of a known type takes one dict look-up.
    fast = _current.get((event_type, schema_version))
    if fast is not None:
        return fast(raw)  # type: ignore[no-any-return]
    return payload_decoder(event_type, schema_version)(raw)


def _upcast(event_type: str, schema_version: int, raw: str | bytes) -> Event:
    cls = event_class(event_type)
    data = _raw_decoder.decode(raw)
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
