"""Read tables for assistants, widgets and conversations."""

from __future__ import annotations

import sqlite3

import msgspec

from loacl.domain.assistants import AssistantCreated, AssistantDeleted, AssistantUpdated
from loacl.domain.errors import LoaclError
from loacl.domain.events import RecordedEvent
from loacl.domain.privacy import is_erased
from loacl.domain.widgets import (
    ConversationStarted,
    WidgetCreated,
    WidgetDeleted,
    WidgetSecretRotated,
    WidgetUpdated,
)
from loacl.store.codec import format_time
from loacl.store.projections import Projections

projections = Projections(tables=["assistants", "widgets", "conversations"])


_encoder = msgspec.json.Encoder()


def _json(value: object) -> str:
    return _encoder.encode(value).decode()


@projections.on
def assistant_created(
    conn: sqlite3.Connection, event: AssistantCreated, recorded: RecordedEvent
) -> None:
    at = format_time(recorded.recorded_at)
    d = event.definition
    conn.execute(
        "INSERT INTO assistants (assistant_id, owner_id, name, provider, model, definition, "
        "version, created_seq, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (event.assistant_id, event.owner_id, d.name, d.provider, d.model, _json(d),
         recorded.version, recorded.seq, at, at),
    )


@projections.on
def assistant_updated(
    conn: sqlite3.Connection, event: AssistantUpdated, recorded: RecordedEvent
) -> None:
    d = event.definition
    conn.execute(
        "UPDATE assistants SET name = ?, provider = ?, model = ?, definition = ?, version = ?, "
        "updated_at = ? WHERE assistant_id = ?",
        (d.name, d.provider, d.model, _json(d), recorded.version,
         format_time(recorded.recorded_at), event.assistant_id),
    )


@projections.on
def assistant_deleted(
    conn: sqlite3.Connection, event: AssistantDeleted, recorded: RecordedEvent
) -> None:
    # Checked here, in the writer's transaction, and not only by the service: a widget saved
    # at the same moment would otherwise be left pointing at a deleted assistant.
    used = conn.execute(
        "SELECT count(*) FROM widgets WHERE assistant_id = ?", (event.assistant_id,)
    ).fetchone()[0]
    if used:
        raise LoaclError(
            "assistant_in_use", f"{used} widget(s) use this assistant; point them elsewhere first"
        )
    conn.execute("DELETE FROM assistants WHERE assistant_id = ?", (event.assistant_id,))


def _assistant_exists(conn: sqlite3.Connection, assistant_id: str) -> None:
    if conn.execute(
        "SELECT 1 FROM assistants WHERE assistant_id = ?", (assistant_id,)
    ).fetchone() is None:
        raise LoaclError(
            "unknown_assistant", f"no assistant {assistant_id!r}",
            errors=[{"field": "assistant_id", "message": "unknown assistant"}],
        )


@projections.on
def widget_created(conn: sqlite3.Connection, event: WidgetCreated, recorded: RecordedEvent) -> None:
    at = format_time(recorded.recorded_at)
    d = event.definition
    _assistant_exists(conn, d.assistant_id)
    conn.execute(
        "INSERT INTO widgets (widget_id, owner_id, name, assistant_id, enabled, definition, "
        "secret_generation, version, created_seq, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
        (event.widget_id, event.owner_id, d.name, d.assistant_id, d.enabled, _json(d),
         recorded.version, recorded.seq, at, at),
    )


@projections.on
def widget_updated(conn: sqlite3.Connection, event: WidgetUpdated, recorded: RecordedEvent) -> None:
    d = event.definition
    _assistant_exists(conn, d.assistant_id)
    conn.execute(
        "UPDATE widgets SET name = ?, assistant_id = ?, enabled = ?, definition = ?, "
        "version = ?, updated_at = ? WHERE widget_id = ?",
        (d.name, d.assistant_id, d.enabled, _json(d), recorded.version,
         format_time(recorded.recorded_at), event.widget_id),
    )


@projections.on
def widget_secret_rotated(
    conn: sqlite3.Connection, event: WidgetSecretRotated, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE widgets SET secret_generation = ?, version = ?, updated_at = ? "
        "WHERE widget_id = ?",
        (event.generation, recorded.version, format_time(recorded.recorded_at), event.widget_id),
    )


@projections.on
def widget_deleted(conn: sqlite3.Connection, event: WidgetDeleted, recorded: RecordedEvent) -> None:
    conn.execute("DELETE FROM widgets WHERE widget_id = ?", (event.widget_id,))


@projections.on
def conversation_started(
    conn: sqlite3.Connection, event: ConversationStarted, recorded: RecordedEvent
) -> None:
    at = format_time(recorded.recorded_at)
    # An erased conversation's site user is forgotten (projections.privacy): a later one of the
    # same user starts afresh.
    user = None if is_erased(event.external_user_id) else event.external_user_id
    # Checked here, in the writer's transaction: two devices of one signed-in user starting at
    # the same moment must end up in one conversation, and the later one learns which.
    if user is not None and conn.execute(
        "SELECT 1 FROM conversations WHERE widget_id = ? AND external_user_id = ?",
        (event.widget_id, user),
    ).fetchone():
        raise LoaclError(
            "conversation_exists", "this signed-in user already has a conversation here"
        )
    # The widget's owner as it is now, so that the owner's conversations are found after the
    # widget is gone.
    conn.execute(
        "INSERT INTO conversations (conversation_id, widget_id, visitor_id, external_user_id, "
        "created_seq, created_at, last_activity_at, last_activity_seq, owner_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, (SELECT owner_id FROM widgets WHERE widget_id = ?))",
        (event.conversation_id, event.widget_id, event.visitor_id, user,
         recorded.seq, at, at, recorded.seq, event.widget_id),
    )

