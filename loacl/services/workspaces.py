"""Workspaces: create, rename, delete; members, their roles, and invites by e-mail.

An invite is a mail with a one-time link to the console (``/console/invite?token=…``); the
token is random and only its digest is logged. Accepting it joins the workspace, as a logged-in
account or as a new one made with the invited address (verified by the invite itself).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from urllib.parse import quote

import structlog

from loacl.domain import workspaces as domain
from loacl.domain.errors import ConflictError, LoaclError
from loacl.domain.events import Event, Metadata
from loacl.services.accounts import Accounts, TokenPair, normalize_email, owner_subject
from loacl.services.mail import OutboxTransport
from loacl.services.passwords import check_password
from loacl.services.tokens import new_id, new_refresh_token, token_hash
from loacl.store.codec import format_time
from loacl.store.eventstore import NO_STREAM, EventStore
from loacl.store.views import accounts as accounts_view
from loacl.store.views import workspaces as views
from loacl.store.views.workspaces import InviteView, MemberView, WorkspaceView

log = structlog.get_logger(__name__)

RETRIES = 3
INVITE_DAYS = 7


class Workspaces:
    def __init__(self, store: EventStore, accounts: Accounts) -> None:
        self.store = store
        self.accounts = accounts
        self.settings = accounts.settings
        self.clock = accounts.clock

    # -- reading ----------------------------------------------------------------------------

    async def of(self, user_id: str) -> list[WorkspaceView]:
        return await views.workspaces_of(self.store, user_id)

    async def get(self, workspace_id: str, user_id: str) -> WorkspaceView:
        found = await views.workspace_of(self.store, workspace_id, user_id)
        if found is None:
            raise LoaclError("not_found", "no such workspace")
        return found

    async def members(self, workspace_id: str) -> list[MemberView]:
        return await views.members(self.store, workspace_id)

    async def invites(self, workspace_id: str) -> list[InviteView]:
        return await views.open_invites(self.store, workspace_id, format_time(self.clock()))

    async def _load(self, workspace_id: str) -> tuple[domain.Workspace, int]:
        # A personal workspace has no workspace.created: it starts as its account made it.
        rows = await self.store.query(
            "SELECT personal FROM workspaces WHERE workspace_id = ?", (workspace_id,)
        )
        start = (domain.personal(workspace_id) if rows and rows[0][0]
                 else domain.Workspace(workspace_id))
        return await self.store.load(domain.workspace_stream(workspace_id), start,
                                     domain.evolve)

    async def _decide(
        self, workspace_id: str, decide: Callable[[domain.Workspace], list[Event]],
        meta: Metadata, subject: str | None = None,
    ) -> list[Event]:
        for attempt in range(1, RETRIES + 1):
            state, version = await self._load(workspace_id)
            events = decide(state)
            if not events:
                return events
            try:
                await self.store.append(
                    domain.workspace_stream(workspace_id), events, expected_version=version,
                    metadata=meta, subject=subject,
                )
                return events
            except ConflictError:
                if attempt == RETRIES:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- workspaces -------------------------------------------------------------------------

    async def create(self, user_id: str, name: str, meta: Metadata) -> WorkspaceView:
        workspace_id = new_id()
        await self.store.append(
            domain.workspace_stream(workspace_id), domain.create(workspace_id, name, user_id),
            expected_version=NO_STREAM, metadata=meta,
        )
        return await self.get(workspace_id, user_id)

    async def rename(self, workspace_id: str, user_id: str, name: str,
                     meta: Metadata) -> WorkspaceView:
        await self._decide(workspace_id, lambda s: domain.rename(s, name), meta)
        return await self.get(workspace_id, user_id)

    async def delete(self, workspace_id: str, meta: Metadata) -> None:
        """Only an empty workspace goes: its widgets would otherwise keep answering visitors
        with nobody left to see them."""
        if await views.holds_anything(self.store, workspace_id):
            raise LoaclError("workspace_not_empty", "delete the workspace's widgets and "
                             "assistants first")
        await self._decide(workspace_id, domain.delete, meta)

    # -- members ----------------------------------------------------------------------------

    async def change_role(self, workspace_id: str, user_id: str, role: str,
                          meta: Metadata) -> MemberView:
        await self._decide(workspace_id, lambda s: domain.change_role(s, user_id, role), meta)
        for member in await self.members(workspace_id):
            if member.user_id == user_id:
                return member
        raise LoaclError("not_found", "no such member")

    async def remove(self, workspace_id: str, user_id: str, reason: str,
                     meta: Metadata) -> None:
        """End the membership: the member's tokens for this workspace are refused from the
        next request on, and their open owner streams close (they follow member.removed)."""
        await self._decide(workspace_id, lambda s: domain.remove(s, user_id, reason), meta)

    # -- invites ----------------------------------------------------------------------------

    async def invite(self, workspace_id: str, invited_by: str, email: str, role: str,
                     base_url: str, meta: Metadata) -> InviteView:
        email = normalize_email(email)
        token = new_refresh_token()
        invite_id = new_id()
        expires = self.clock() + timedelta(days=INVITE_DAYS)
        await self._decide(
            workspace_id,
            lambda s: domain.invite(s, invite_id, email, role, token_hash(token), invited_by,
                                    expires),
            meta, subject=owner_subject(invited_by),
        )
        found = await views.invite_by_token(self.store, token_hash(token))
        assert found is not None
        await self._mail_invite(found, token, base_url)
        return found

    async def _mail_invite(self, invite: InviteView, token: str, base_url: str) -> None:
        inviter = await accounts_view.user_by_id(self.store, invite.invited_by)
        place = await views.workspace_of(self.store, invite.workspace_id, invite.invited_by)
        who = inviter.name or inviter.email if inviter is not None else "Someone"
        where = (place.name or "their workspace") if place is not None else "a workspace"
        base = (self.settings.public_url or base_url).rstrip("/")
        link = f"{base}/console/invite?token={quote(token, safe='')}"
        self.accounts.mailer.send(
            invite.email, f"{who} invited you to {where} on LOACL",
            f"{who} invited you to join {where} on LOACL as {invite.role}.\n\n"
            f"Open this link to accept (it works once, until {invite.expires_at}):\n\n"
            f"{link}\n\n"
            "Or, without a browser, with an account of yours logged in:\n\n"
            f"  curl -X POST {base}/api/v1/invites/accept -H 'Authorization: Bearer TOKEN' "
            f"-H 'Content-Type: application/json' -d '{{\"token\": \"{token}\"}}'\n\n"
            "If you did not expect this, ignore this mail.\n",
        )
        if isinstance(self.accounts.mailer.transport, OutboxTransport):
            log.info("mail.outbox_link", to=invite.email, link=link)

    async def revoke_invite(self, workspace_id: str, invite_id: str, meta: Metadata) -> None:
        await self._decide(workspace_id, lambda s: domain.revoke_invite(s, invite_id), meta)

    async def _invite_of(self, token: str) -> InviteView:
        found = await views.invite_by_token(self.store, token_hash(token))
        if found is None:
            raise LoaclError("invalid_invite", "this invite is not valid, was used, or has "
                             "expired")
        return found

    async def accept(self, token: str, user_id: str, meta: Metadata) -> str:
        """Join the invite's workspace as the account ``user_id``; returns the workspace id."""
        invite = await self._invite_of(token)
        now = self.clock()
        await self._decide(
            invite.workspace_id, lambda s: domain.accept(s, invite.invite_id, user_id, now),
            meta,
        )
        return invite.workspace_id

    async def accept_new(self, token: str, password: str, name: str | None,
                         meta: Metadata) -> tuple[str, TokenPair]:
        """Accept with a new account under the invited address, and log it in (acting in the
        workspace it joined). An address with an account must log in and accept as that."""
        invite = await self._invite_of(token)
        if invite.accepted_at or invite.revoked_at or invite.expires_at <= format_time(
            self.clock()
        ):
            raise LoaclError("invalid_invite", "this invite is not valid, was used, or has "
                             "expired")
        if await accounts_view.credentials(self.store, invite.email) is not None:
            raise LoaclError("account_exists", "an account with this address exists: log in "
                             "and accept the invite as it")
        check_password(password)
        user = await self.accounts.create_user(invite.email, password, name, verified=True,
                                               meta=meta)
        workspace_id = await self.accept(token, user.user_id, meta)
        return workspace_id, await self.accounts.start_session_in(
            user.user_id, workspace_id, meta)

