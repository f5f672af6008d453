"""Erasure and export of personal data.

Erasing a conversation stops its reply in flight (which ends as interrupted, in the log), then
appends one ``privacy.erased`` event: in that event's transaction the read tables are blanked,
the uploaded bytes no other conversation shares are deleted and the conversation's data key is
destroyed (``store.projections.privacy``). The WAL is then cut, so that pages written before
are not left in it either.

Deleting an owner account erases, in this order: every conversation of its widgets (deleted
widgets' included), its widgets, its assistants (both deleted as an owner deletes them), its
sessions (revoked), and last the account itself (e-mail address, name, password hash and the
addresses it connected from, all sealed with the account's key).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from loacl.domain import accounts, assistants, widgets
from loacl.domain.errors import ConflictError, LoaclError
from loacl.domain.events import Event, Metadata
from loacl.domain.privacy import (
    ACCOUNT_DELETED,
    CONVERSATION,
    OWNER,
    RETENTION,
    VISITOR,
    SubjectErased,
    subject,
)
from loacl.domain.widgets import conversation_stream
from loacl.store import search
from loacl.store.eventstore import EventStore
from loacl.store.views import accounts as account_views
from loacl.store.views import conversations as views
from loacl.store.views import files as file_views
from loacl.store.views import privacy as privacy_views
from loacl.store.views.conversations import ConversationView, MessageView
from loacl.store.views.files import FileView

log = structlog.get_logger(__name__)

StopReply = Callable[[str], Awaitable[None]]
S = TypeVar("S")
RETRIES = 3


@dataclass
class Erasure:
    """What an erasure took, or (a dry run) would take."""

    scope: str
    conversations: list[str] = field(default_factory=list)
    messages: int = 0
    files: int = 0
    widgets: list[str] = field(default_factory=list)
    assistants: list[str] = field(default_factory=list)
    sessions: int = 0
    account: str | None = None
    # Events of these subjects written before sealing existed: their text stays in the log
    # until the history is resealed.
    plain_events: int = 0
    wal_cut: bool = True


@dataclass(frozen=True)
class ExportedFile:
    view: FileView
    data: bytes | None


@dataclass(frozen=True)
class Export:
    conversation: ConversationView
    messages: list[MessageView]
    files: list[ExportedFile]


class Privacy:
    def __init__(
        self, store: EventStore, stop_reply: StopReply | None = None,
        *, truncate_wal: bool = True,
    ) -> None:
        self.store = store
        self.stop_reply = stop_reply
        # Not while Litestream replicates the file: its checkpoints are its own.
        self.truncate_wal = truncate_wal

    # -- reading ----------------------------------------------------------------------------

    async def owned_conversation(self, owner_id: str, conversation_id: str) -> ConversationView:
        """The conversation, if it belongs to one of the owner's widgets (another owner's is
        indistinguishable from a missing one)."""
        found = await views.conversation(self.store, conversation_id)
        if found is None or found.owner_id != owner_id:
            raise LoaclError("not_found", "no such conversation")
        return found

    async def export(self, conversation_id: str) -> Export:
        found = await views.conversation(self.store, conversation_id)
        if found is None:
            raise LoaclError("not_found", "no such conversation")
        if found.erased:
            raise LoaclError("subject_erased", "this conversation was erased")
        messages = await views.history(self.store, conversation_id)
        files = await file_views.files_of(self.store, conversation_id)
        data = await file_views.blobs(self.store, (f.sha256 for f in files))
        return Export(found, messages, [ExportedFile(f, data.get(f.sha256)) for f in files])

    # -- erasing ----------------------------------------------------------------------------

    async def erase_conversation(
        self, conversation_id: str, *, reason: str, requested_by: str, meta: Metadata,
        scope: str | None = None, dry_run: bool = False, owner_id: str | None = None,
        cut_wal: bool = True,
    ) -> Erasure:
        found = await views.conversation(self.store, conversation_id)
        if found is None:
            raise LoaclError("not_found", "no such conversation")
        result = Erasure(scope or subject(CONVERSATION, conversation_id))
        await self._erase_conversations([found], result, reason, requested_by, meta, dry_run,
                                        owner_id, cut_wal)
        return result

    async def erase_idle(
        self, conversation_id: str, idle_before: str, *, meta: Metadata
    ) -> bool:
        """Erase the conversation if its last activity is still older than ``idle_before``
        (retention): a visitor who writes meanwhile keeps it. Whether it was erased."""
        stream = conversation_stream(conversation_id)
        version = await self.store.stream_version(stream)
        found = await views.conversation(self.store, conversation_id)
        if found is None or found.erased or found.last_activity_at >= idle_before:
            return False
        event = SubjectErased(
            subject=subject(CONVERSATION, conversation_id), reason=RETENTION,
            requested_by="retention", scope=subject(CONVERSATION, conversation_id),
        )
        try:
            await self.store.append(stream, [event], expected_version=version, metadata=meta)
        except ConflictError:
            return False
        log.info("privacy.erased", subject=event.subject, reason=RETENTION,
                 requested_by="retention")
        return True

    async def erase_visitor(
        self, visitor_id: str, *, reason: str, requested_by: str, meta: Metadata,
        dry_run: bool = False,
    ) -> Erasure:
        found = await views.conversations_of_visitor(self.store, visitor_id)
        if not found:
            raise LoaclError("not_found", "no conversation of such a visitor")
        result = Erasure(subject(VISITOR, visitor_id))
        await self._erase_conversations(found, result, reason, requested_by, meta, dry_run)
        return result

    async def _erase_conversations(
        self, found: list[ConversationView], result: Erasure, reason: str, requested_by: str,
        meta: Metadata, dry_run: bool, owner_id: str | None = None, cut_wal: bool = True,
    ) -> None:
        for conversation in found:
            if conversation.erased:
                continue
            cid = conversation.conversation_id
            result.conversations.append(cid)
            result.messages += len(await views.history(self.store, cid))
            result.files += len(await file_views.files_of(self.store, cid))
            result.plain_events += await privacy_views.plain_events(
                self.store, conversation_stream(cid)
            )
            if dry_run:
                continue
            if self.stop_reply is not None:
                await self.stop_reply(cid)
            await self._append_erased(
                conversation_stream(cid), subject(CONVERSATION, cid), reason, requested_by,
                result.scope, meta, owner_id,
            )
        if result.conversations and not dry_run:
            # The erased words leave the search index's older segments too (store.search).
            await self.store.run_on_writer(search.purge)
            if cut_wal:
                result.wal_cut = await self.cut_wal()

    async def _append_erased(
        self, stream: str, erased: str, reason: str, requested_by: str, scope: str,
        meta: Metadata, owner_id: str | None,
    ) -> None:
        event = SubjectErased(
            subject=erased, reason=reason, requested_by=requested_by, scope=scope
        )
        # The requester's address is the requester's personal data, sealed with their key
        # (an operator's or the retention job's has none).
        await self.store.append(
            stream, [event], metadata=meta,
            subject=subject(OWNER, owner_id) if owner_id is not None else None,
        )
        log.info("privacy.erased", subject=erased, reason=reason, requested_by=requested_by)

    async def cut_wal(self) -> bool:
        if not self.truncate_wal:
            return False
        cut = await self.store.truncate_wal()
        if not cut:
            log.warning("privacy.wal_not_cut", meaning="a reader held an older snapshot; the "
                        "WAL's old pages go at the next checkpoint")
        return cut

    async def erase_owner(
        self, user_id: str, *, requested_by: str, meta: Metadata, dry_run: bool = False,
    ) -> Erasure:
        """Delete an owner account and everything that was its (see the module's docstring)."""
        user = await account_views.user_by_id(self.store, user_id)
        if user is None:
            raise LoaclError("not_found", "no such account")
        scope = subject(OWNER, user_id)
        result = Erasure(scope, account=user.email)
        conversations = await views.conversations_of_owner(self.store, user_id)
        await self._erase_conversations(
            conversations, result, ACCOUNT_DELETED, requested_by, meta, dry_run, user_id
        )
        owned_widgets = await self._owned("widget", user_id)
        owned_assistants = await self._owned("assistant", user_id)
        sessions = await account_views.open_sessions(self.store, user_id)
        result.widgets, result.assistants, result.sessions = (
            owned_widgets, owned_assistants, len(sessions)
        )
        result.plain_events += await privacy_views.plain_events(
            self.store, accounts.user_stream(user_id)
        )
        if dry_run:
            return result
        for widget_id in owned_widgets:
            await self._decide(
                widgets.widget_stream(widget_id), widgets.Widget(), widgets.evolve_widget,
                lambda state: widgets.delete_widget(state, user_id), meta, scope,
            )
        for assistant_id in owned_assistants:
            await self._decide(
                assistants.assistant_stream(assistant_id), assistants.Assistant(),
                assistants.evolve_assistant,
                lambda state: assistants.delete_assistant(state, user_id), meta, scope,
            )
        for session_id in sessions:
            await self._decide(
                accounts.session_stream(session_id), accounts.Session(), accounts.evolve_session,
                lambda state: accounts.revoke_session(state, ACCOUNT_DELETED), meta, scope,
            )
        await self._append_erased(
            accounts.user_stream(user_id), scope, ACCOUNT_DELETED, requested_by, scope, meta,
            user_id,
        )
        result.wal_cut = await self.cut_wal()
        return result

    async def _owned(self, kind: str, owner_id: str) -> list[str]:
        """The ids of the owner's widgets or assistants (``kind``), oldest first."""
        rows = await self.store.query(
            f"SELECT {kind}_id FROM {kind}s WHERE owner_id = ? ORDER BY created_seq",
            (owner_id,),
        )
        return [str(r[0]) for r in rows]

    async def _decide(
        self, stream: str, initial: S, evolve: Callable[[S, Event], S],
        decide: Callable[[S], list[Event]], meta: Metadata, owner: str,
    ) -> None:
        """Load, decide, append; again when the stream moved on meanwhile."""
        for attempt in range(1, RETRIES + 1):
            state, version = await self.store.load(stream, initial, evolve)
            events = decide(state)
            if not events:
                return
            try:
                await self.store.append(
                    stream, events, expected_version=version, metadata=meta, subject=owner
                )
                return
            except ConflictError:
                if attempt == RETRIES:
                    raise
