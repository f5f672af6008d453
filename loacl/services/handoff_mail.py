"""Mail around a handoff, sent by the ``handoff-mail`` subscriber of the log:

- **to the team**: when a conversation starts waiting for a person, each member of its
  workspace (owners, admins and agents: all of them answer) gets a mail naming the widget, who
  asked (the visitor or the assistant) and a link to the conversation in the console; at most
  one per conversation per ``handoff_mail_minutes``, counted in the log's own times, so that a
  visitor asking again and again makes no more mail. The visitor's last message and the
  handoff's reason are quoted only with ``handoff_mail_personal`` (off by default: a mailbox is
  out of an erasure's reach).
- **to the visitor**: a member's message in a conversation whose visitor left an address
  (``visitor.reply_address_left``) is also mailed there, while no tab of the visitor's widget
  holds the conversation open (a visitor who is there reads it in the widget; one who comes
  back later finds it in the history too). Which of the two happened is recorded, and a
  message is decided on once.

At least once, never twice: the subscriber's checkpoint moves after a batch is handled, and each
mail sent is recorded (``handoff_mails``) and looked up before sending, so that a batch handed
over again after a crash or a restart sends only what had not gone out. A crash between the
send and its record sends that one mail again, with the same Message-ID.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

import structlog

from loacl.domain.events import RecordedEvent
from loacl.domain.handoff import (
    ASSISTANT_ASKED,
    WAITING,
    AgentMessagePosted,
    ConversationStateChanged,
)
from loacl.services.mail import Mailer
from loacl.settings import Settings
from loacl.store.codec import format_time, parse_time
from loacl.store.eventstore import EventStore
from loacl.store.handoff_mails import SqliteHandoffMails
from loacl.store.operational import MailRecord
from loacl.store.subscriptions import Effect
from loacl.store.views import conversations as views
from loacl.store.views import widgets as widget_views
from loacl.store.views import workspaces as workspace_views

log = structlog.get_logger(__name__)

SUBSCRIBER = "handoff-mail"
WAITING_MAIL, REPLY_MAIL = "waiting", "reply"
# A member's message the visitor had open in the widget: not mailed, and recorded so that a
# batch handed over again later (the visitor gone by then) does not mail it after all.
READ_LIVE = "reply_read_live"


class HandoffMail:
    def __init__(self, store: EventStore, settings: Settings, mailer: Mailer,
                 visitor_online: Callable[[str], bool] = lambda _: False,
                 sent: MailRecord | None = None) -> None:
        self.store = store
        # The mails sent: in the store's file, or in PostgreSQL with the log (http.app).
        self.sent: MailRecord = sent if sent is not None else SqliteHandoffMails(store)
        self.settings = settings
        self.mailer = mailer
        # Whether a tab of the visitor's widget holds the conversation open (in memory).
        self.visitor_online = visitor_online

    def subscriber(self) -> Effect:
        return Effect(SUBSCRIBER, self.handle, types=frozenset({
            ConversationStateChanged.event_type, AgentMessagePosted.event_type}))

    async def handle(self, events: Sequence[RecordedEvent]) -> None:
        for recorded in events:
            event = recorded.event
            if isinstance(event, ConversationStateChanged) and event.state == WAITING:
                await self._waiting(recorded, event)
            elif isinstance(event, AgentMessagePosted):
                await self._reply(recorded, event)

    def _link(self, conversation_id: str) -> str:
        base = (self.settings.public_url
                or f"http://{self.settings.host}:{self.settings.port}").rstrip("/")
        return f"{base}/console/conversations/{conversation_id}"

    async def _waiting(self, recorded: RecordedEvent, event: ConversationStateChanged) -> None:
        minutes = self.settings.handoff_mail_minutes
        key = str(recorded.seq)
        if minutes == 0 or await self.sent.was_sent(WAITING_MAIL, key):
            return
        found = await views.conversation(self.store, event.conversation_id)
        if found is None or found.erased or found.owner_id is None:
            return
        last = await self.sent.last_sent(found.conversation_id, WAITING_MAIL)
        if last is not None and recorded.recorded_at - parse_time(last) < timedelta(
                minutes=minutes):
            log.info("handoff.mail_skipped", conversation_id=found.conversation_id,
                     last_sent=last)
            return
        widget = await widget_views.widget(self.store, found.widget_id)
        name = widget.definition.name if widget is not None else found.widget_id
        who = "The assistant" if event.cause == ASSISTANT_ASKED else "A visitor"
        lines = [f"{who} asked for a person in a conversation on your widget “{name}” "
                 f"({found.widget_id}).", ""]
        if self.settings.handoff_mail_personal:
            if event.reason:
                lines += ["Reason given:", event.reason, ""]
            text = await views.last_visitor_text(self.store, found.conversation_id,
                                                 recorded.seq)
            if text:
                lines += ["The visitor's last message:", text[:2000], ""]
        else:
            lines += ["What the visitor wrote is not in this mail (the server's "
                      "handoff_mail_personal is off); read it in the console.", ""]
        lines += [f"Open the conversation: {self._link(found.conversation_id)}", "",
                  f"You get at most one such mail per conversation every {minutes} minutes."]
        addresses = await workspace_views.member_emails(self.store, found.owner_id)
        subject = f"LOACL: a visitor is waiting for a person on “{name}”"
        message_id = f"<handoff.waiting.{recorded.seq}@loacl>"
        for address in addresses:
            await self.mailer.deliver(address, subject, "\n".join(lines) + "\n", message_id)
        await self.sent.record(WAITING_MAIL, key, found.conversation_id,
                                   format_time(recorded.recorded_at))
        log.info("handoff.mail_sent", conversation_id=found.conversation_id,
                 recipients=len(addresses))

    async def _reply(self, recorded: RecordedEvent, event: AgentMessagePosted) -> None:
        found = await views.conversation(self.store, event.conversation_id)
        if (found is None or found.erased or found.reply_email is None
                or found.reply_email_seq is None or found.reply_email_seq > recorded.seq):
            return  # no address, or one left after this message was written
        for kind in (REPLY_MAIL, READ_LIVE):
            if await self.sent.was_sent(kind, event.message_id):
                return  # decided before
        at = format_time(recorded.recorded_at)
        if self.visitor_online(found.conversation_id):
            # The visitor reads it in the widget now.
            await self.sent.record(READ_LIVE, event.message_id,
                                       found.conversation_id, at)
            return
        widget = await widget_views.widget(self.store, found.widget_id)
        title = widget.definition.settings.title if widget is not None else "the chat"
        body = (f"{event.author_name} answered you in “{title}”:\n\n{event.text}\n\n"
                "Open the chat on the website to answer; the whole conversation is there.\n"
                "You get this mail because you left this address in the chat.\n")
        await self.mailer.deliver(found.reply_email, f"{event.author_name} answered you",
                                  body, f"<handoff.reply.{event.message_id}@loacl>")
        await self.sent.record(REPLY_MAIL, event.message_id,
                                   found.conversation_id, at)
        log.info("handoff.reply_mailed", conversation_id=found.conversation_id,
                 message_id=event.message_id)
