"""Workspaces and their members: events, state and decisions.

A workspace holds what an owner kept before: assistants, widgets, conversations, webhooks,
usage and budgets. Their events and read tables carry an ``owner_id``: that field holds the
**workspace id**. Every account has a personal workspace whose id is the account's own id; it is
implied by ``user.registered`` (no ``workspace.created`` event), so that the ``owner_id`` every
event written before workspaces existed already names the right workspace, and replay of an old
log builds the same workspaces as the migration did. A workspace made later
(``workspace.created``) gets a fresh id.

Roles, from most to least: ``owner`` (delete the workspace, manage members, roles and invites),
``admin`` (assistants, widgets, settings, webhooks, usage), ``agent`` (the inbox: conversations,
transcripts, files, the live stream). The last owner can neither leave nor be demoted.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from loacl.domain.errors import LoaclError
from loacl.domain.events import Event

OWNER = "owner"
ADMIN = "admin"
AGENT = "agent"
ROLES = (OWNER, ADMIN, AGENT)
_RANK = {OWNER: 3, ADMIN: 2, AGENT: 1}
MAX_NAME = 200


def at_least(role: str, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may (an owner anything an admin may, and so on)."""
    return _RANK.get(role, 0) >= _RANK[needed]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkspaceCreated(Event):
    event_type = "workspace.created"
    workspace_id: str
    name: str
    created_by: str  # the account that made it: its first owner
    not_personal = ("workspace_id", "name", "created_by")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkspaceRenamed(Event):
    event_type = "workspace.renamed"
    workspace_id: str
    name: str
    not_personal = ("workspace_id", "name")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkspaceDeleted(Event):
    event_type = "workspace.deleted"
    workspace_id: str
    not_personal = ("workspace_id",)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberInvited(Event):
    """An invite mailed to ``email``; the link holds a random token of which only the digest
    is kept. Sealed with the inviting account's key."""

    event_type = "member.invited"
    workspace_id: str
    invite_id: str
    email: str
    role: str
    token_hash: str
    invited_by: str
    expires_at: datetime
    personal = ("email",)
    not_personal = ("workspace_id", "invite_id", "role", "token_hash", "invited_by")


@dataclass(frozen=True, slots=True, kw_only=True)
class InviteRevoked(Event):
    event_type = "member.invite_revoked"
    workspace_id: str
    invite_id: str
    not_personal = ("workspace_id", "invite_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberJoined(Event):
    event_type = "member.joined"
    workspace_id: str
    user_id: str
    role: str
    invite_id: str  # the invite it used (each is used once)
    not_personal = ("workspace_id", "user_id", "role", "invite_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRoleChanged(Event):
    event_type = "member.role_changed"
    workspace_id: str
    user_id: str
    role: str
    not_personal = ("workspace_id", "user_id", "role")


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRemoved(Event):
    event_type = "member.removed"
    workspace_id: str
    user_id: str
    reason: str  # "removed" (by an owner) | "left" (by themselves)
    not_personal = ("workspace_id", "user_id", "reason")


MEMBER_EVENTS = (
    MemberInvited, InviteRevoked, MemberJoined, MemberRoleChanged, MemberRemoved,
)


def workspace_stream(workspace_id: str) -> str:
    return f"workspace-{workspace_id}"


@dataclass(frozen=True, slots=True)
class Invite:
    invite_id: str
    email: str
    role: str
    token_hash: str
    expires_at: datetime
    used: bool = False
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class Workspace:
    workspace_id: str = ""
    exists: bool = False
    deleted: bool = False
    members: dict[str, str] = field(default_factory=dict)  # account id -> role
    invites: dict[str, Invite] = field(default_factory=dict)


def personal(user_id: str) -> Workspace:
    """The state a personal workspace starts from (before any event of its own stream)."""
    return Workspace(user_id, True, False, {user_id: OWNER}, {})


def evolve(state: Workspace, event: Event) -> Workspace:
    match event:
        case WorkspaceCreated():
            return Workspace(event.workspace_id, True, False, {event.created_by: OWNER}, {})
        case WorkspaceDeleted():
            return replace(state, deleted=True, members={}, invites={})
        case MemberInvited():
            invite = Invite(event.invite_id, event.email, event.role, event.token_hash,
                            event.expires_at)
            return replace(state, invites={**state.invites, event.invite_id: invite})
        case InviteRevoked():
            revoked = state.invites.get(event.invite_id)
            if revoked is None:
                return state
            return replace(state, invites={
                **state.invites, event.invite_id: replace(revoked, revoked=True)})
        case MemberJoined():
            invites = dict(state.invites)
            if event.invite_id in invites:
                invites[event.invite_id] = replace(invites[event.invite_id], used=True)
            return replace(state, members={**state.members, event.user_id: event.role},
                           invites=invites)
        case MemberRoleChanged():
            return replace(state, members={**state.members, event.user_id: event.role})
        case MemberRemoved():
            members = dict(state.members)
            members.pop(event.user_id, None)
            return replace(state, members=members)
    return state


def _live(state: Workspace) -> None:
    if not state.exists or state.deleted:
        raise LoaclError("not_found", "no such workspace")


def _name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise LoaclError("validation_error", f"name: 1 to {MAX_NAME} characters",
                         errors=[{"field": "name", "message": "1 to 200 characters"}])
    return name


def _role(role: str) -> str:
    if role not in ROLES:
        raise LoaclError("validation_error", f"role: one of {', '.join(ROLES)}",
                         errors=[{"field": "role", "message": f"one of {', '.join(ROLES)}"}])
    return role


def create(workspace_id: str, name: str, created_by: str) -> list[Event]:
    return [WorkspaceCreated(workspace_id=workspace_id, name=_name(name), created_by=created_by)]


def rename(state: Workspace, name: str) -> list[Event]:
    _live(state)
    return [WorkspaceRenamed(workspace_id=state.workspace_id, name=_name(name))]


def delete(state: Workspace) -> list[Event]:
    _live(state)
    return [WorkspaceDeleted(workspace_id=state.workspace_id)]


def invite(state: Workspace, invite_id: str, email: str, role: str, token_hash: str,
           invited_by: str, expires_at: datetime) -> list[Event]:
    _live(state)
    return [MemberInvited(
        workspace_id=state.workspace_id, invite_id=invite_id, email=email, role=_role(role),
        token_hash=token_hash, invited_by=invited_by, expires_at=expires_at,
    )]


def _open_invite(state: Workspace, invite_id: str) -> Invite:
    found = state.invites.get(invite_id)
    if found is None or found.revoked or found.used:
        raise LoaclError("not_found", "no such invite")
    return found


def revoke_invite(state: Workspace, invite_id: str) -> list[Event]:
    _live(state)
    _open_invite(state, invite_id)
    return [InviteRevoked(workspace_id=state.workspace_id, invite_id=invite_id)]


def accept(state: Workspace, invite_id: str, user_id: str, now: datetime) -> list[Event]:
    """Join with an invite: once, before it expires. A member already keeps the role they
    have (the invite is used up all the same, never raising a role by itself)."""
    invalid = LoaclError("invalid_invite", "this invite is not valid, was used, or has expired")
    if not state.exists or state.deleted:
        raise invalid
    found = state.invites.get(invite_id)
    if found is None or found.revoked or found.used or found.expires_at <= now:
        raise invalid
    if user_id in state.members:
        raise LoaclError("already_member", "you are a member of this workspace already")
    return [MemberJoined(workspace_id=state.workspace_id, user_id=user_id, role=found.role,
                         invite_id=invite_id)]


def _owners(state: Workspace) -> list[str]:
    return [user for user, role in state.members.items() if role == OWNER]


def change_role(state: Workspace, user_id: str, role: str) -> list[Event]:
    _live(state)
    current = state.members.get(user_id)
    if current is None:
        raise LoaclError("not_found", "no such member")
    role = _role(role)
    if current == role:
        return []
    if current == OWNER and _owners(state) == [user_id]:
        raise LoaclError("last_owner", "a workspace keeps at least one owner: make another "
                         "member owner first")
    return [MemberRoleChanged(workspace_id=state.workspace_id, user_id=user_id, role=role)]


def remove(state: Workspace, user_id: str, reason: str) -> list[Event]:
    _live(state)
    current = state.members.get(user_id)
    if current is None:
        raise LoaclError("not_found", "no such member")
    if current == OWNER and _owners(state) == [user_id]:
        raise LoaclError("last_owner", "a workspace keeps at least one owner: make another "
                         "member owner first, or delete the workspace")
    return [MemberRemoved(workspace_id=state.workspace_id, user_id=user_id, reason=reason)]
