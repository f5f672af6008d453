"""Read tables for workspaces: workspaces, workspace_members, workspace_invites (personal
workspaces are made by ``projections.accounts`` on ``user.registered``)."""

from __future__ import annotations

import sqlite3

from loacl.domain.events import RecordedEvent
from loacl.domain.workspaces import (
    InviteRevoked,
    MemberInvited,
    MemberJoined,
    MemberRemoved,
    MemberRoleChanged,
    WorkspaceCreated,
    WorkspaceDeleted,
    WorkspaceRenamed,
)
from loacl.store.codec import format_time
from loacl.store.projections import Projections

projections = Projections(tables=["workspaces", "workspace_members", "workspace_invites"])


@projections.on
def workspace_created(
    conn: sqlite3.Connection, event: WorkspaceCreated, recorded: RecordedEvent
) -> None:
    at = format_time(recorded.recorded_at)
    conn.execute(
        "INSERT INTO workspaces (workspace_id, name, personal, created_by, created_at, "
        "updated_at) VALUES (?, ?, 0, ?, ?, ?)",
        (event.workspace_id, event.name, event.created_by, at, at),
    )
    conn.execute(
        "INSERT INTO workspace_members (workspace_id, user_id, role, joined_at) "
        "VALUES (?, ?, 'owner', ?)",
        (event.workspace_id, event.created_by, at),
    )


@projections.on
def workspace_renamed(
    conn: sqlite3.Connection, event: WorkspaceRenamed, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE workspaces SET name = ?, updated_at = ? WHERE workspace_id = ?",
        (event.name, format_time(recorded.recorded_at), event.workspace_id),
    )


@projections.on
def workspace_deleted(
    conn: sqlite3.Connection, event: WorkspaceDeleted, recorded: RecordedEvent
) -> None:
    at = format_time(recorded.recorded_at)
    conn.execute(
        "UPDATE workspaces SET deleted_at = ?, updated_at = ? WHERE workspace_id = ?",
        (at, at, event.workspace_id),
    )
    conn.execute("DELETE FROM workspace_members WHERE workspace_id = ?", (event.workspace_id,))
    conn.execute(
        "UPDATE workspace_invites SET revoked_at = ? "
        "WHERE workspace_id = ? AND accepted_at IS NULL AND revoked_at IS NULL",
        (at, event.workspace_id),
    )


@projections.on
def member_invited(
    conn: sqlite3.Connection, event: MemberInvited, recorded: RecordedEvent
) -> None:
    conn.execute(
        "INSERT INTO workspace_invites (invite_id, workspace_id, email, role, token_hash, "
        "invited_by, created_seq, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (event.invite_id, event.workspace_id, event.email, event.role, event.token_hash,
         event.invited_by, recorded.seq, format_time(recorded.recorded_at),
         format_time(event.expires_at)),
    )


@projections.on
def invite_revoked(
    conn: sqlite3.Connection, event: InviteRevoked, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE workspace_invites SET revoked_at = ? WHERE invite_id = ?",
        (format_time(recorded.recorded_at), event.invite_id),
    )


@projections.on
def member_joined(conn: sqlite3.Connection, event: MemberJoined, recorded: RecordedEvent) -> None:
    at = format_time(recorded.recorded_at)
    conn.execute(
        "INSERT INTO workspace_members (workspace_id, user_id, role, joined_at) "
        "VALUES (?, ?, ?, ?)",
        (event.workspace_id, event.user_id, event.role, at),
    )
    conn.execute(
        "UPDATE workspace_invites SET accepted_at = ?, accepted_by = ? WHERE invite_id = ?",
        (at, event.user_id, event.invite_id),
    )


@projections.on
def member_role_changed(
    conn: sqlite3.Connection, event: MemberRoleChanged, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE workspace_members SET role = ? WHERE workspace_id = ? AND user_id = ?",
        (event.role, event.workspace_id, event.user_id),
    )


@projections.on
def member_removed(
    conn: sqlite3.Connection, event: MemberRemoved, recorded: RecordedEvent
) -> None:
    conn.execute(
        "DELETE FROM workspace_members WHERE workspace_id = ? AND user_id = ?",
        (event.workspace_id, event.user_id),
    )
