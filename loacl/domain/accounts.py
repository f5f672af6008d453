"""Owner accounts and their login sessions: events, state and decisions."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from loacl.domain.errors import LoaclError
from loacl.domain.events import Event


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRegistered(Event):
    event_type = "user.registered"
    user_id: str
    email: str
    name: str | None
    password_hash: str
    personal = ("email", "name", "password_hash")
    not_personal = ("user_id",)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailVerified(Event):
    event_type = "user.email_verified"
    user_id: str
    not_personal = ("user_id",)


@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordChanged(Event):
    event_type = "user.password_changed"
    user_id: str
    password_hash: str
    reason: str  # "reset" | "rehash" | "change" (the owner changed it, knowing the old one)
    personal = ("password_hash",)
    not_personal = ("user_id", "reason")


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRenamed(Event):
    """The account's display name changed (the name agents are shown by)."""

    event_type = "user.renamed"
    user_id: str
    name: str | None
    personal = ("name",)
    not_personal = ("user_id",)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStarted(Event):
    event_type = "session.started"
    session_id: str
    user_id: str
    refresh_token_hash: str
    expires_at: datetime
    # A digest of a random token: it says nothing about the person.
    not_personal = ("session_id", "user_id", "refresh_token_hash")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRefreshed(Event):
    event_type = "session.refreshed"
    session_id: str
    previous_token_hash: str
    refresh_token_hash: str
    expires_at: datetime
    not_personal = ("session_id", "previous_token_hash", "refresh_token_hash")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRevoked(Event):
    event_type = "session.revoked"
    session_id: str
    # "logout" | "refresh_token_reused" | "password_reset" | "account_deleted" |
    # "password_changed" (another session of an owner who changed the password) | "revoked"
    # (ended by its owner from another session)
    reason: str
    not_personal = ("session_id", "reason")


def user_stream(user_id: str) -> str:
    return f"user-{user_id}"


def session_stream(session_id: str) -> str:
    return f"session-{session_id}"


@dataclass(frozen=True, slots=True)
class User:
    user_id: str = ""
    email: str = ""
    name: str | None = None
    password_hash: str = ""
    verified: bool = False
    exists: bool = False


def evolve_user(state: User, event: Event) -> User:
    match event:
        case UserRegistered():
            return User(event.user_id, event.email, event.name, event.password_hash, False, True)
        case EmailVerified():
            return replace(state, verified=True)
        case PasswordChanged():
            return replace(state, password_hash=event.password_hash)
        case UserRenamed():
            return replace(state, name=event.name)
    return state


MAX_DISPLAY_NAME = 200


def display_name(name: str | None, email: str) -> str:
    """What an account is shown as: its name, else its e-mail address's local part."""
    return name if name else email.partition("@")[0]


def rename(state: User, name: str | None) -> list[Event]:
    if not state.exists:
        raise LoaclError("user_not_found", "no such user")
    name = name.strip() if name is not None else None
    name = name or None
    if name is not None and len(name) > MAX_DISPLAY_NAME:
        raise LoaclError("validation_error", "name: at most 200 characters",
                         errors=[{"field": "name", "message": "at most 200 characters"}])
    if name == state.name:
        return []
    return [UserRenamed(user_id=state.user_id, name=name)]


def register(user_id: str, email: str, name: str | None, password_hash: str) -> list[Event]:
    return [UserRegistered(user_id=user_id, email=email, name=name, password_hash=password_hash)]


def verify_email(state: User) -> list[Event]:
    if not state.exists:
        raise LoaclError("user_not_found", "no such user")
    if state.verified:
        return []
    return [EmailVerified(user_id=state.user_id)]


def change_password(state: User, password_hash: str, reason: str) -> list[Event]:
    if not state.exists:
        raise LoaclError("user_not_found", "no such user")
    return [PasswordChanged(user_id=state.user_id, password_hash=password_hash, reason=reason)]


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str = ""
    user_id: str = ""
    current_token_hash: str = ""
    used_token_hashes: frozenset[str] = frozenset()
    expires_at: datetime | None = None
    revoked: bool = False
    exists: bool = False


def evolve_session(state: Session, event: Event) -> Session:
    match event:
        case SessionStarted():
            return Session(
                event.session_id, event.user_id, event.refresh_token_hash, frozenset(),
                event.expires_at, False, True,
            )
        case SessionRefreshed():
            return replace(
                state,
                current_token_hash=event.refresh_token_hash,
                used_token_hashes=state.used_token_hashes | {event.previous_token_hash},
                expires_at=event.expires_at,
            )
        case SessionRevoked():
            return replace(state, revoked=True)
    return state


def start_session(
    session_id: str, user_id: str, token_hash: str, expires_at: datetime
) -> list[Event]:
    return [
        SessionStarted(
            session_id=session_id, user_id=user_id,
            refresh_token_hash=token_hash, expires_at=expires_at,
        )
    ]


def refresh_session(
    state: Session, presented_hash: str, new_hash: str, expires_at: datetime, now: datetime
) -> list[Event]:
    """Rotate the refresh token. A used token revokes the whole session (a stolen copy)."""
    if not state.exists or state.revoked:
        raise LoaclError("invalid_refresh_token", "the refresh token is not valid")
    if presented_hash in state.used_token_hashes:
        return [SessionRevoked(session_id=state.session_id, reason="refresh_token_reused")]
    if presented_hash != state.current_token_hash or (
        state.expires_at is not None and state.expires_at <= now
    ):
        raise LoaclError("invalid_refresh_token", "the refresh token is not valid")
    return [
        SessionRefreshed(
            session_id=state.session_id, previous_token_hash=presented_hash,
            refresh_token_hash=new_hash, expires_at=expires_at,
        )
    ]


def revoke_session(state: Session, reason: str) -> list[Event]:
    if not state.exists or state.revoked:
        return []
    return [SessionRevoked(session_id=state.session_id, reason=reason)]
