"""Typed reads of owner accounts (users, sessions, refresh tokens) and of what each owner holds,
as the operator's listings show it.

Each struct is the shape of one read; its fields are in the order its query selects them, so a
row converts to it as it is. Times are the read tables' text (ISO 8601, UTC), as the API shows them.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from loacl.store.eventstore import EventStore

T = TypeVar("T")


class UserView(msgspec.Struct, frozen=True, array_like=True):
    user_id: str
    email: str
    name: str | None
    email_verified_at: str | None
    created_at: str

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None


class Credentials(msgspec.Struct, frozen=True, array_like=True):
    """What a login or a password reset checks: kept apart from ``UserView`` so that the hash
    travels only where it is needed."""

    user_id: str
    email: str
    password_hash: str


class SessionUser(msgspec.Struct, frozen=True, array_like=True):
    """A session and the owner it belongs to, as every authenticated request checks it."""

    session_id: str
    user_id: str
    revoked_at: str | None
    email: str
    email_verified_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class SessionView(msgspec.Struct, frozen=True, array_like=True):
    """A session as its owner's list shows it; last used: its last refresh, else its start
    (an access token's use is not recorded)."""

    session_id: str
    created_at: str
    last_used_at: str
    expires_at: str
    client_ip: str | None


class OwnedAssistant(msgspec.Struct, frozen=True, array_like=True):
    assistant_id: str
    owner_email: str | None  # None when the owner's account is gone
    name: str
    provider: str
    model: str
    created_at: str


class OwnedWidget(msgspec.Struct, frozen=True, array_like=True):
    widget_id: str
    owner_email: str | None
    name: str
    assistant_id: str
    enabled: bool
    allowed_origins: tuple[str, ...]
    created_at: str


def _columns(shape: type[msgspec.Struct]) -> str:
    return ", ".join(shape.__struct_fields__)


_USER = f"SELECT {_columns(UserView)} FROM users"
_CREDENTIALS = f"SELECT {_columns(Credentials)} FROM users WHERE email = ?"
_SESSION_USER = (
    "SELECT s.session_id, s.user_id, s.revoked_at, u.email, u.email_verified_at FROM sessions s "
    "JOIN users u ON u.user_id = s.user_id WHERE s.session_id = ? AND s.user_id = ?"
)
_ASSISTANTS = (
    "SELECT a.assistant_id, u.email, a.name, a.provider, a.model, a.created_at "
    "FROM assistants a LEFT JOIN users u ON u.user_id = a.owner_id"
)
# The origins are the one field of the widget's definition the listing shows.
_WIDGETS = (
    "SELECT w.widget_id, u.email, w.name, w.assistant_id, w.enabled, "
    "json_extract(w.definition, '$.allowed_origins'), w.created_at "
    "FROM widgets w LEFT JOIN users u ON u.user_id = w.owner_id"
)
_ORIGINS = msgspec.json.Decoder(tuple[str, ...])


def _convert(rows: list[Any], shape: type[T]) -> list[T]:
    # Not strict: SQLite hands booleans back as 0 and 1.
    return msgspec.convert(rows, list[shape], strict=False)  # type: ignore[valid-type]


def _first(rows: list[Any], shape: type[T]) -> T | None:
    return _convert(rows[:1], shape)[0] if rows else None


async def user_by_id(store: EventStore, user_id: str) -> UserView | None:
    return _first(await store.query(f"{_USER} WHERE user_id = ?", (user_id,)), UserView)


async def user_by_email(store: EventStore, email: str) -> UserView | None:
    """E-mail addresses compare without case, as the users table declares."""
    return _first(await store.query(f"{_USER} WHERE email = ?", (email,)), UserView)


async def all_users(store: EventStore) -> list[UserView]:
    return _convert(await store.query(f"{_USER} ORDER BY created_at"), UserView)


async def credentials(store: EventStore, email: str) -> Credentials | None:
    return _first(await store.query(_CREDENTIALS, (email,)), Credentials)


async def session_of_refresh_token(store: EventStore, token_hash: str) -> str | None:
    """The session a refresh token (by its hash) was issued to, used or not."""
    rows = await store.query(
        "SELECT session_id FROM refresh_tokens WHERE token_hash = ?", (token_hash,)
    )
    return str(rows[0][0]) if rows else None


async def open_sessions(store: EventStore, user_id: str) -> list[str]:
    """The ids of the owner's sessions that were not revoked (expired ones included)."""
    rows = await store.query(
        "SELECT session_id FROM sessions WHERE user_id = ? AND revoked_at IS NULL", (user_id,)
    )
    return [str(session_id) for (session_id,) in rows]


async def active_sessions(store: EventStore, user_id: str, now: str) -> list[SessionView]:
    """The owner's sessions neither revoked nor expired at ``now``, last used first."""
    rows = await store.query(
        "SELECT session_id, created_at, coalesce(refreshed_at, created_at) AS used, expires_at, "
        "client_ip FROM sessions WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ? "
        "ORDER BY used DESC, session_id", (user_id, now),
    )
    return _convert(rows, SessionView)


async def session_user(store: EventStore, session_id: str, user_id: str) -> SessionUser | None:
    """The session, if it exists and belongs to ``user_id``, revoked or not."""
    return _first(await store.query(_SESSION_USER, (session_id, user_id)), SessionUser)


async def assistants_by_owner(
    store: EventStore, owner_email: str | None = None
) -> list[OwnedAssistant]:
    """Every assistant in the order they were created, or those of one owner."""
    where, params = (" WHERE u.email = ?", (owner_email,)) if owner_email else ("", ())
    rows = await store.query(f"{_ASSISTANTS}{where} ORDER BY a.created_seq", params)
    return _convert(rows, OwnedAssistant)


async def widgets_by_owner(
    store: EventStore, owner_email: str | None = None
) -> list[OwnedWidget]:
    """Every widget in the order they were created, or those of one owner."""
    where, params = (" WHERE u.email = ?", (owner_email,)) if owner_email else ("", ())
    rows = await store.query(f"{_WIDGETS}{where} ORDER BY w.created_seq", params)
    decoded = [(*row[:5], _ORIGINS.decode(row[5] or "[]"), row[6]) for row in rows]
    return _convert(decoded, OwnedWidget)
