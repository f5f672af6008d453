"""Handing conversations to people: the visitor or the assistant asks for one, a member takes
over, writes to the visitor, gives the conversation back or closes it; read marks for unread
counts; typing signals (never logged). When nobody can answer at once (outside the widget's
office hours, or no member online: :class:`Presence`, in memory), the visitor is told so and
may leave an address for replies by mail (:mod:`loacl.services.handoff_mail` sends them). The
rules are :mod:`loacl.domain.handoff`'s."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from email_validator import EmailNotValidError, validate_email

from loacl.domain import handoff as domain
from loacl.domain.accounts import display_name as display_name_of
from loacl.domain.errors import LoaclError
from loacl.domain.events import Event, Metadata
from loacl.domain.hours import Away, away
from loacl.domain.widgets import VisitorAccess, conversation_stream
from loacl.services.listeners import Listeners
from loacl.services.tokens import new_id
from loacl.store.eventstore import EventStore
from loacl.store.views import accounts as account_views
from loacl.store.views import conversations as views
from loacl.store.views import widgets as widget_views
from loacl.store.views.conversations import ConversationView, MessageView
from loacl.store.views.workspaces import role_of

Decide = Callable[[domain.Handoff], list[Event]]
ATTEMPTS = 5
MAX_ADDRESS = 320


async def display_name(store: EventStore, user_id: str) -> str:
    """The name a visitor sees on a member's messages: the account's name, else the local
    part of its e-mail address. The one place that decides it."""
    user = await account_views.user_by_id(store, user_id)
    if user is None:
        return "Support"
    return display_name_of(user.name.strip() if user.name else None, user.email)[:80] or "Support"


class Handoffs:
    def __init__(self, store: EventStore, typing_interval: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.typing = Typing(typing_interval, clock)
        self.presence = Presence()

    # -- reading -----------------------------------------------------------------------------

    async def conversation(self, owner_id: str, conversation_id: str) -> ConversationView:
        """The owner's conversation (another owner's is not found, nor an erased one)."""
        found = await views.conversation(self.store, conversation_id)
        if found is None or found.owner_id != owner_id:
            raise LoaclError("not_found", "no such conversation")
        if found.erased:
            raise LoaclError("subject_erased", "the conversation was erased")
        return found

    # -- changing ----------------------------------------------------------------------------

    async def _change(self, conversation_id: str, decide: Decide,
                      meta: Metadata) -> tuple[ConversationView, list[Event]]:
        """Decide on the conversation's state as the read tables hold it and append, guarded
        by the stream's version: a reply or a message appended meanwhile is read again."""
        stream = conversation_stream(conversation_id)
        for _ in range(ATTEMPTS):
            version = await self.store.stream_version(stream)
            found = await views.conversation(self.store, conversation_id)
            if found is None:
                raise LoaclError("not_found", "no such conversation")
            events = decide(found.handoff)
            if not events:
                return found, []
            try:
                await self.store.append(stream, events, expected_version=version,
                                        metadata=meta)
            except LoaclError as exc:
                if exc.code != "version_conflict":
                    raise
                continue
            changed = await views.conversation(self.store, conversation_id)
            assert changed is not None
            return changed, events
        raise LoaclError("version_conflict", "the conversation kept changing; try again")

    async def visitor_asks(self, access: VisitorAccess, reason: str,
                           meta: Metadata) -> ConversationView:
        reason = domain.checked_reason(reason)
        found, _ = await self._change(
            access.conversation_id,
            lambda h: domain.request_person(h, access.conversation_id, by=domain.VISITOR,
                                            reason=reason),
            meta,
        )
        return found

    async def assistant_asks(self, conversation_id: str, reason: str,
                             meta: Metadata) -> ConversationView:
        reason = domain.checked_reason(reason[:domain.MAX_REASON])
        found, _ = await self._change(
            conversation_id,
            lambda h: domain.request_person(h, conversation_id, by=domain.ASSISTANT,
                                            reason=reason),
            meta,
        )
        return found

    async def away(self, access: VisitorAccess, found: ConversationView,
                   now: datetime) -> Away | None:
        """Whether the visitor who asked for a person should hear that nobody is there (and
        when to expect a reply): outside the widget's office hours, or with no member of its
        workspace connected to the members' stream."""
        if found.state != domain.WAITING:
            return None
        widget = await widget_views.widget(self.store, access.widget_id)
        if widget is None:
            return None
        return away(widget.definition.office_hours, self.presence.online(widget.owner_id), now)

    async def leave_address(self, access: VisitorAccess, email: str,
                            meta: Metadata) -> ConversationView:
        """The visitor's address for the team's replies by mail (personal: sealed with the
        conversation's key)."""
        email = checked_address(email)
        stream = conversation_stream(access.conversation_id)
        for _ in range(ATTEMPTS):
            version = await self.store.stream_version(stream)
            found = await views.conversation(self.store, access.conversation_id)
            if found is None:
                raise LoaclError("not_found", "no such conversation")
            if found.erased:
                raise LoaclError("subject_erased", "the conversation was erased")
            events = domain.leave_reply_address(found.conversation_id, found.reply_email, email)
            if not events:
                return found
            try:
                await self.store.append(stream, events, expected_version=version,
                                        metadata=meta)
            except LoaclError as exc:
                if exc.code != "version_conflict":
                    raise
                continue
            changed = await views.conversation(self.store, access.conversation_id)
            assert changed is not None
            return changed
        raise LoaclError("version_conflict", "the conversation kept changing; try again")

    async def take_over(self, owner_id: str, member_id: str, conversation_id: str,
                        force: bool, meta: Metadata) -> ConversationView:
        await self.conversation(owner_id, conversation_id)
        name = await display_name(self.store, member_id)
        found, _ = await self._change(
            conversation_id,
            lambda h: domain.take_over(h, conversation_id, member_id=member_id, name=name,
                                       force=force),
            meta,
        )
        return found

    async def release(self, owner_id: str, member_id: str, conversation_id: str,
                      force: bool, meta: Metadata) -> ConversationView:
        await self.conversation(owner_id, conversation_id)
        found, _ = await self._change(
            conversation_id,
            lambda h: domain.release(h, conversation_id, member_id=member_id, force=force),
            meta,
        )
        return found

    async def close(self, owner_id: str, member_id: str, conversation_id: str,
                    meta: Metadata) -> ConversationView:
        await self.conversation(owner_id, conversation_id)
        found, _ = await self._change(
            conversation_id,
            lambda h: domain.close(h, conversation_id, by=domain.member(member_id)),
            meta,
        )
        return found

    async def assign(self, owner_id: str, member_id: str, conversation_id: str,
                     assignee_id: str | None, meta: Metadata) -> ConversationView:
        await self.conversation(owner_id, conversation_id)
        # ``owner_id`` is the workspace: the assignee must be one of its members.
        if assignee_id is not None and await role_of(self.store, owner_id, assignee_id) is None:
            raise LoaclError("unknown_member", "no member with this id",
                             errors=[{"field": "assignee_id", "message": "not a member"}])
        name = await display_name(self.store, assignee_id) if assignee_id else ""
        found, _ = await self._change(
            conversation_id,
            lambda h: domain.assign(h, conversation_id, by=domain.member(member_id),
                                    assignee_id=assignee_id, assignee_name=name),
            meta,
        )
        return found

    async def post(self, owner_id: str, member_id: str, conversation_id: str, text: str,
                   client_message_id: str | None, force: bool,
                   meta: Metadata) -> tuple[MessageView, bool]:
        """A member's message to the visitor; a resend with the same ``client_message_id``
        gives the first one back (and False)."""
        await self.conversation(owner_id, conversation_id)
        if client_message_id is not None:
            first = await views.message_by_client_id(self.store, conversation_id,
                                                     client_message_id)
            if first is not None and first.role == "agent":
                return first, False
        name = await display_name(self.store, member_id)
        message_id = new_id()
        await self._change(
            conversation_id,
            lambda h: domain.post_agent_message(
                h, conversation_id, member_id=member_id, name=name, message_id=message_id,
                text=text, client_message_id=client_message_id, force=force,
            ),
            meta,
        )
        found = await views.message(self.store, message_id)
        assert found is not None
        return found, True

    async def mark_read(self, owner_id: str, member_id: str, conversation_id: str,
                        up_to: int | None, meta: Metadata) -> int:
        """The member has read the conversation up to a message's cursor (or all of it)."""
        await self.conversation(owner_id, conversation_id)
        last = await views.last_message_seq(self.store, conversation_id)
        mark = last if up_to is None else min(up_to, last)
        await self.store.append(domain.inbox_stream(member_id), [domain.ConversationRead(
            conversation_id=conversation_id, member_id=member_id, up_to=mark)], metadata=meta)
        return mark


def checked_address(email: str) -> str:
    """An address mail can be sent to, normalized; ``invalid_email`` (422) otherwise."""
    email = email.strip()
    if not email or len(email) > MAX_ADDRESS:
        raise LoaclError("invalid_email", "email: an e-mail address such as ada@example.com",
                         errors=[{"field": "email", "message": "empty" if not email
                                  else f"at most {MAX_ADDRESS} characters"}])
    try:
        return str(validate_email(email, check_deliverability=False).normalized)
    except EmailNotValidError as exc:
        raise LoaclError("invalid_email", f"email: {exc}",
                         errors=[{"field": "email", "message": str(exc)}]) from None


class Presence:
    """Which workspaces have a member connected to the members' live stream now: kept in
    memory (being online is not a fact of the log), per process."""

    def __init__(self) -> None:
        self._online: dict[str, int] = {}

    def join(self, workspace_id: str) -> Callable[[], None]:
        """A member's socket is open; call what it returns when it closes."""
        self._online[workspace_id] = self._online.get(workspace_id, 0) + 1
        left = False

        def leave() -> None:
            nonlocal left
            if left:
                return
            left = True
            count = self._online.get(workspace_id, 0) - 1
            if count > 0:
                self._online[workspace_id] = count
            else:
                self._online.pop(workspace_id, None)

        return leave

    def online(self, workspace_id: str) -> bool:
        return self._online.get(workspace_id, 0) > 0


Listener = Callable[[dict[str, Any]], None]


class Typing:
    """Who is typing where, passed on at once and never logged. Each side of a conversation
    (the visitor, each member) is passed on at most once per ``interval`` seconds."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._listeners: Listeners[str | None, Listener] = Listeners()

    def listen(self, conversation_id: str | None, listener: Listener) -> Callable[[], None]:
        """``listener`` gets the signals of one conversation (None: every one)."""
        return self._listeners.listen(conversation_id, listener)

    def wait_for(self, conversation_id: str, who: str) -> float:
        """Seconds until ``who`` may signal again in the conversation (0: now)."""
        last = self._last.get((conversation_id, who))
        if last is None:
            return 0.0
        return max(0.0, last + self.interval - self.clock())

    def signal(self, conversation_id: str, who: str, name: str | None = None,
               typing: bool = True) -> bool:
        """Pass the signal on, unless ``who`` signalled less than ``interval`` ago (a stop is
        always passed on); whether it was."""
        now = self.clock()
        key = (conversation_id, who)
        if typing:
            if self.wait_for(conversation_id, who) > 0:
                return False
            self._last[key] = now
        else:
            self._last.pop(key, None)
        if len(self._last) > 10_000:  # forget old signals: only the recent ones matter
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
        side = "visitor" if who == domain.VISITOR else "agent"
        frame = {"type": "typing", "conversation_id": conversation_id, "from": side,
                 "typing": typing, **({"name": name} if name else {})}
        if side == "agent":  # for listeners only: the sockets send no account ids
            frame["member"] = who.removeprefix("member:")
        for listener in [*self._listeners.of(conversation_id), *self._listeners.of(None)]:
            listener(frame)
        return True
