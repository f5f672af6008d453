"""Read tables for owner accounts: users, sessions, refresh_tokens."""

from __future__ import annotations

import sqlite3

from loacl.domain.accounts import (
    EmailVerified,
    PasswordChanged,
    SessionRefreshed,
    SessionRevoked,
    SessionStarted,
    UserRegistered,
    UserRenamed,
)
from loacl.domain.errors import LoaclError
from loacl.domain.events import RecordedEvent
from loacl.domain.privacy import is_erased
from loacl.store.codec import format_time
from loacl.store.projections import Projections

projections = Projections(tables=["users", "sessions", "refresh_tokens"])


@projections.on
def user_registered(
    conn: sqlite3.Connection, event: UserRegistered, recorded: RecordedEvent
) -> None:
    if is_erased(event.email):
        # The account was deleted: its row went with it (projections.privacy), and two erased
        # addresses must not collide on the way there.
        return
    at = format_time(recorded.recorded_at)
    try:
        conn.execute(
            "INSERT INTO users (user_id, email, name, password_hash, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (event.user_id, event.email, event.name, event.password_hash, at, at),
        )
    except sqlite3.IntegrityError:
        raise LoaclError("email_taken", "an account with this e-mail address exists") from None
    # The account's personal workspace: its id is the account's (see domain.workspaces).
    conn.execute(
        "INSERT INTO workspaces (workspace_id, name, personal, created_by, created_at, "
        "updated_at) VALUES (?, NULL, 1, ?, ?, ?)",
        (event.user_id, event.user_id, at, at),
    )
    conn.execute(
        "INSERT INTO workspace_members (workspace_id, user_id, role, joined_at) "
        "VALUES (?, ?, 'owner', ?)",
        (event.user_id, event.user_id, at),
    )


@projections.on
def user_renamed(conn: sqlite3.Connection, event: UserRenamed, recorded: RecordedEvent) -> None:
    conn.execute(
        "UPDATE users SET name = ?, updated_at = ? WHERE user_id = ?",
        (None if is_erased(event.name) else event.name, format_time(recorded.recorded_at),
         event.user_id),
    )


@projections.on
def email_verified(conn: sqlite3.Connection, event: EmailVerified, recorded: RecordedEvent) -> None:
    at = format_time(recorded.recorded_at)
    conn.execute(
        "UPDATE users SET email_verified_at = ?, updated_at = ? WHERE user_id = ?",
        (at, at, event.user_id),
    )


@projections.on
def password_changed(
    conn: sqlite3.Connection, event: PasswordChanged, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE users SET password_hash = ?, updated_at = ? WHERE user_id = ?",
        (event.password_hash, format_time(recorded.recorded_at), event.user_id),
    )


@projections.on
def session_started(
    conn: sqlite3.Connection, event: SessionStarted, recorded: RecordedEvent
) -> None:
    at = format_time(recorded.recorded_at)
    address = recorded.metadata.client_ip
    conn.execute(
        "INSERT INTO sessions (session_id, user_id, created_at, expires_at, client_ip) "
        "VALUES (?, ?, ?, ?, ?)",
        (event.session_id, event.user_id, at, format_time(event.expires_at),
         None if address is None or is_erased(address) else address),
    )
    conn.execute(
        "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES (?, ?, ?)",
        (event.refresh_token_hash, event.session_id, at),
    )


@projections.on
def session_refreshed(
    conn: sqlite3.Connection, event: SessionRefreshed, recorded: RecordedEvent
) -> None:
    at = format_time(recorded.recorded_at)
    conn.execute(
        "UPDATE sessions SET refreshed_at = ?, expires_at = ? WHERE session_id = ?",
        (at, format_time(event.expires_at), event.session_id),
    )
    conn.execute(
        "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?",
        (at, event.previous_token_hash),
    )
    conn.execute(
        "INSERT INTO refresh_tokens (token_hash, session_id, issued_at) VALUES (?, ?, ?)",
        (event.refresh_token_hash, event.session_id, at),
    )


@projections.on
def session_revoked(
    conn: sqlite3.Connection, event: SessionRevoked, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE sessions SET revoked_at = ?, revoked_reason = ? "
        "WHERE session_id = ? AND revoked_at IS NULL",
        (format_time(recorded.recorded_at), event.reason, event.session_id),
    )
