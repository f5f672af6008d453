"""The log read as an operator holding the master key reads it: sealed fields opened.

The raw rows hold personal fields sealed (a NUL and base64); tests that assert on what a field
says read it through here, with the same keyring the server uses."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from loacl.domain.privacy import Erased
from loacl.services.keys import keyring_for
from loacl.settings import Settings
from loacl.store import codec

Open = Callable[[str, str, int], dict[str, Any]]
T = TypeVar("T")


def _builtin(value: object) -> object:
    if isinstance(value, Erased):
        return str(value)
    raise NotImplementedError(type(value))


def with_opener(settings: Settings, use: Callable[[Open, Callable[[str], dict[str, Any]]], T],
                   database: Path | None = None) -> T:
    """``use(open_payload, open_metadata)`` with a keyring over the settings' database."""
    conn = sqlite3.connect(f"file:{database or settings.database_path}?mode=ro", uri=True)
    keys = keyring_for(settings).attach(conn)
    try:
        def payload(event_type: str, raw: str, schema_version: int = 1) -> dict[str, Any]:
            event = codec.decode_payload(event_type, schema_version, raw, keys)
            opened: dict[str, Any] = msgspec.to_builtins(event, enc_hook=_builtin)
            return opened

        def metadata(raw: str) -> dict[str, Any]:
            opened: dict[str, Any] = msgspec.to_builtins(
                codec.decode_metadata(raw, keys), enc_hook=_builtin
            )
            return opened

        return use(payload, metadata)
    finally:
        conn.close()


def opened_rows(
    settings: Settings, sql: str, params: tuple[Any, ...] = (), database: Path | None = None
) -> list[tuple[Any, ...]]:
    """Rows of ``sql``, which selects ``type, schema_version, payload, metadata`` first and
    anything after: payload and metadata come back as JSON text again, opened."""
    conn = sqlite3.connect(database or settings.database_path)
    try:
        rows = conn.execute(sql, params).fetchall()
    finally:
        conn.close()

    def use(payload: Open, metadata: Callable[[str], dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [
            (kind, version, json.dumps(payload(kind, raw, version)),
             json.dumps(metadata(meta)), *rest)
            for kind, version, raw, meta, *rest in rows
        ]

    return with_opener(settings, use, database)
