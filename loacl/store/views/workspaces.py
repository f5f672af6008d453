"""Typed reads of workspaces, their members and invites."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from loacl.store.eventstore import EventStore

T = TypeVar("T")


class WorkspaceView(msgspec.Struct, frozen=True, array_like=True):
    """A workspace as one of its members sees it (``role``: theirs)."""

    workspace_id: str
    name: str | None  # None: a personal workspace, shown by its account's name
    personal: bool
    created_at: str
    role: str
    owner_name: str | None
    owner_email: str | None


class MemberView(msgspec.Struct, frozen=True, array_like=True):
    user_id: str
    email: str
    name: str | None
    role: str
    joined_at: str


class InviteView(msgspec.Struct, frozen=True, array_like=True):
    invite_id: str
    workspace_id: str
    email: str
    role: str
    invited_by: str
    created_at: str
    expires_at: str
    accepted_at: str | None
    revoked_at: str | None


def _convert(rows: list[Any], shape: type[T]) -> list[T]:
    return msgspec.convert(rows, list[shape], strict=False)  # type: ignore[valid-type]


_WORKSPACES = (
    "SELECT w.workspace_id, w.name, w.personal, w.created_at, m.role, u.name, u.email "
    "FROM workspace_members m JOIN workspaces w ON w.workspace_id = m.workspace_id "
    "LEFT JOIN users u ON u.user_id = w.created_by "
    "WHERE m.user_id = ? AND w.deleted_at IS NULL"
)
_INVITES = (
    "SELECT invite_id, workspace_id, email, role, invited_by, created_at, expires_at, "
    "accepted_at, revoked_at FROM workspace_invites"
)


async def role_of(store: EventStore, workspace_id: str, user_id: str) -> str | None:
    """The account's role in the workspace, or None when it is no member (or the workspace is
    gone): what every request acting in a workspace checks."""
    rows = await store.query(
        "SELECT role FROM workspace_members WHERE workspace_id = ? AND user_id = ?",
        (workspace_id, user_id),
    )
    return str(rows[0][0]) if rows else None


async def workspaces_of(store: EventStore, user_id: str) -> list[WorkspaceView]:
    """The account's workspaces: its personal one first, then the others as they were joined."""
    return _convert(await store.query(
        f"{_WORKSPACES} ORDER BY w.workspace_id != ?, m.joined_at, w.workspace_id",
        (user_id, user_id),
    ), WorkspaceView)


async def workspace_of(store: EventStore, workspace_id: str, user_id: str) -> WorkspaceView | None:
    found = _convert(await store.query(
        f"{_WORKSPACES} AND w.workspace_id = ?", (user_id, workspace_id)
    ), WorkspaceView)
    return found[0] if found else None


async def members(store: EventStore, workspace_id: str) -> list[MemberView]:
    return _convert(await store.query(
        "SELECT m.user_id, u.email, u.name, m.role, m.joined_at FROM workspace_members m "
        "JOIN users u ON u.user_id = m.user_id WHERE m.workspace_id = ? "
        "ORDER BY m.joined_at, m.user_id",
        (workspace_id,),
    ), MemberView)


async def open_invites(store: EventStore, workspace_id: str, now: str) -> list[InviteView]:
    """Invites neither used, revoked nor expired, oldest first."""
    return _convert(await store.query(
        f"{_INVITES} WHERE workspace_id = ? AND accepted_at IS NULL AND revoked_at IS NULL "
        "AND expires_at > ? ORDER BY created_seq",
        (workspace_id, now),
    ), InviteView)


async def invite_by_token(store: EventStore, token_hash: str) -> InviteView | None:
    found = _convert(await store.query(f"{_INVITES} WHERE token_hash = ?", (token_hash,)),
                     InviteView)
    return found[0] if found else None


async def holds_anything(store: EventStore, workspace_id: str) -> bool:
    """Whether assistants or widgets (not deleted) are still in the workspace."""
    rows = await store.query(
        "SELECT 1 FROM assistants WHERE owner_id = ? UNION ALL "
        "SELECT 1 FROM widgets WHERE owner_id = ? LIMIT 1",
        (workspace_id, workspace_id),
    )
    return bool(rows)


async def owner_emails(store: EventStore, workspace_id: str) -> list[str]:
    """Where a workspace's notices go: the addresses of its owners."""
    found = await store.query(
        "SELECT u.email FROM workspace_members m JOIN users u ON u.user_id = m.user_id "
        "WHERE m.workspace_id = ? AND m.role = 'owner' ORDER BY m.joined_at, u.email",
        (workspace_id,),
    )
    return [str(row[0]) for row in found]


async def member_emails(store: EventStore, workspace_id: str) -> list[str]:
    """The addresses of every member who can answer conversations (owners, admins, agents)."""
    found = await store.query(
        "SELECT u.email FROM workspace_members m JOIN users u ON u.user_id = m.user_id "
        "WHERE m.workspace_id = ? ORDER BY m.joined_at, u.email",
        (workspace_id,),
    )
    return [str(row[0]) for row in found]
