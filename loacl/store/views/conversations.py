"""Conversations and their messages, decoded from the ``conversations`` and ``messages`` read
tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from loacl.domain.conversations import Citation, Conversation, MessagePosted, Reply
from loacl.domain.events import RecordedEvent
from loacl.domain.handoff import Handoff
from loacl.store.codec import format_time
from loacl.store.eventstore import EventStore
from loacl.store.views import Page, first, page_by_creation

_MESSAGE = (
    "SELECT message_id, conversation_id, role, text, status, error_code, reply_to, file_ids, "
    "client_message_id, input_tokens, output_tokens, created_seq, created_at, finished_at, "
    "feedback_rating, feedback_comment, feedback_at, citations, author_id, author_name "
    "FROM messages"
)
_CONVERSATION = (
    "SELECT conversation_id, widget_id, visitor_id, external_user_id, created_seq, created_at, "
    "last_activity_at, message_count, owner_id, erased_at, visitor_name, visitor_email, "
    "state, assignee_id, assignee_name, waiting_since, reply_email, reply_email_seq "
    "FROM conversations"
)
_file_ids = msgspec.json.Decoder(tuple[str, ...]).decode


@dataclass(frozen=True, slots=True)
class MessageView:
    message_id: str
    conversation_id: str
    role: str  # user | assistant | agent (a member of the team)
    text: str
    status: str  # completed | streaming | failed | interrupted
    error_code: str | None
    reply_to: str | None
    file_ids: tuple[str, ...]
    client_message_id: str | None
    input_tokens: int | None
    output_tokens: int | None
    created_seq: int
    created_at: str
    finished_at: str | None
    # The visitor's rating of a reply (up | down), its comment and time; None when unrated.
    feedback_rating: str | None = None
    feedback_comment: str | None = None
    feedback_at: str | None = None
    # The sources the reply cites (passages of the assistant's knowledge), numbered.
    citations: tuple[Citation, ...] = ()
    # A member's message (role agent): who wrote it, and the name the visitor sees.
    author_id: str | None = None
    author_name: str | None = None


@dataclass(frozen=True, slots=True)
class MessagePage:
    items: list[MessageView]
    more_before: bool
    more_after: bool


@dataclass(frozen=True, slots=True)
class ConversationView:
    conversation_id: str
    widget_id: str
    visitor_id: str
    external_user_id: str | None
    created_seq: int
    created_at: str
    last_activity_at: str
    message_count: int
    owner_id: str | None  # the widget's owner when the conversation started
    erased_at: str | None
    # The visitor's answers to the pre-chat form, if any.
    visitor_name: str | None = None
    visitor_email: str | None = None
    # Who answers it (domain.handoff): bot | waiting | human | closed, and the member holding it.
    state: str = "bot"
    assignee_id: str | None = None
    assignee_name: str | None = None
    waiting_since: str | None = None
    # The address the visitor left for the team's replies by mail, and the log position then.
    reply_email: str | None = None
    reply_email_seq: int | None = None

    @property
    def handoff(self) -> Handoff:
        return Handoff(self.state, self.assignee_id, self.assignee_name or "")

    @property
    def erased(self) -> bool:
        return self.erased_at is not None


_citations = msgspec.json.Decoder(tuple[Citation, ...]).decode


def _message(row: Any) -> MessageView:
    values = list(row)
    values[7] = _file_ids(values[7])
    values[17] = _citations(values[17])
    return MessageView(*values)


def posted_message(event: MessagePosted, recorded: RecordedEvent) -> MessageView:
    """A visitor's message as the read table shows it once ``recorded`` is projected
    (projections.conversations.message_posted), without reading it back: what the append
    returned is enough, and under load a read waits its turn behind many."""
    at = format_time(recorded.recorded_at)
    return MessageView(
        event.message_id, event.conversation_id, "user", event.text, "completed", None, None,
        tuple(event.file_ids), event.client_message_id, None, None, recorded.seq, at, at,
    )


async def message(store: EventStore, message_id: str) -> MessageView | None:
    return await first(store, f"{_MESSAGE} WHERE message_id = ?", (message_id,), _message)


async def message_by_client_id(
    store: EventStore, conversation_id: str, client_message_id: str
) -> MessageView | None:
    return await first(
        store, f"{_MESSAGE} WHERE conversation_id = ? AND client_message_id = ?",
        (conversation_id, client_message_id), _message,
    )


async def reply_id(store: EventStore, message_id: str) -> str | None:
    """The id of the assistant's reply to a visitor's message."""
    return await first(
        store, "SELECT message_id FROM messages WHERE reply_to = ?", (message_id,),
        lambda row: str(row[0]),
    )


async def _exists(store: EventStore, conversation_id: str, op: str, seq: int) -> bool:
    rows = await store.query(
        f"SELECT 1 FROM messages WHERE conversation_id = ? AND created_seq {op} ? LIMIT 1",
        (conversation_id, seq),
    )
    return bool(rows)


async def messages(
    store: EventStore, conversation_id: str, *, before: int | None, after: int | None,
    limit: int,
) -> MessagePage:
    """A page of messages, oldest first: the newest ones, or those before or after a cursor."""
    if after is not None:
        rows = await store.query(
            f"{_MESSAGE} WHERE conversation_id = ? AND created_seq > ? "
            "ORDER BY created_seq LIMIT ?",
            (conversation_id, after, limit + 1),
        )
        more_after, rows = len(rows) > limit, rows[:limit]
        more_before = after > 0 and await _exists(store, conversation_id, "<=", after)
    else:
        bound = before if before is not None else 2**62
        rows = await store.query(
            f"{_MESSAGE} WHERE conversation_id = ? AND created_seq < ? "
            "ORDER BY created_seq DESC LIMIT ?",
            (conversation_id, bound, limit + 1),
        )
        more_before, rows = len(rows) > limit, rows[:limit][::-1]
        more_after = before is not None and await _exists(store, conversation_id, ">=", before)
    return MessagePage([_message(r) for r in rows], more_before, more_after)


async def history(store: EventStore, conversation_id: str) -> list[MessageView]:
    """Every message of a conversation, oldest first."""
    rows = await store.query(
        f"{_MESSAGE} WHERE conversation_id = ? ORDER BY created_seq", (conversation_id,)
    )
    return [_message(r) for r in rows]


async def streaming_replies(store: EventStore) -> list[MessageView]:
    """Replies with no end event yet, across every conversation."""
    rows = await store.query(f"{_MESSAGE} WHERE role = 'assistant' AND status = 'streaming'")
    return [_message(r) for r in rows]


def _conversation(row: Any) -> ConversationView:
    return ConversationView(*row)


async def conversation(store: EventStore, conversation_id: str) -> ConversationView | None:
    return await first(
        store, f"{_CONVERSATION} WHERE conversation_id = ?", (conversation_id,), _conversation
    )


async def conversation_of_user(
    store: EventStore, widget_id: str, external_user_id: str
) -> ConversationView | None:
    return await first(
        store, f"{_CONVERSATION} WHERE widget_id = ? AND external_user_id = ?",
        (widget_id, external_user_id), _conversation,
    )


async def conversations_of(
    store: EventStore, widget_id: str, after: int, limit: int
) -> Page[ConversationView]:
    return await page_by_creation(
        store, _CONVERSATION, "widget_id = ?", (widget_id,), after, limit, _conversation
    )


async def conversations_of_visitor(store: EventStore, visitor_id: str) -> list[ConversationView]:
    rows = await store.query(
        f"{_CONVERSATION} WHERE visitor_id = ? ORDER BY created_seq", (visitor_id,)
    )
    return [_conversation(r) for r in rows]


async def conversations_of_owner(store: EventStore, owner_id: str) -> list[ConversationView]:
    """Every conversation of the owner's widgets, deleted widgets' included."""
    rows = await store.query(
        f"{_CONVERSATION} WHERE owner_id = ? ORDER BY created_seq", (owner_id,)
    )
    return [_conversation(r) for r in rows]


async def erased(store: EventStore, conversation_id: str) -> bool:
    rows = await store.query(
        "SELECT 1 FROM conversations WHERE conversation_id = ? AND erased_at IS NOT NULL",
        (conversation_id,),
    )
    return bool(rows)


async def running_reply(store: EventStore, conversation_id: str) -> Reply | None:
    """The reply of the conversation that has started and not ended, as the log holds it."""
    return await first(
        store,
        "SELECT message_id, reply_to, text FROM messages WHERE conversation_id = ? "
        "AND status = 'streaming' ORDER BY created_seq DESC LIMIT 1",
        (conversation_id,), lambda row: Reply(*row),
    )


async def answered(store: EventStore, conversation_id: str, message_id: str) -> bool:
    """Whether ``message_id`` is a reply of the conversation that completed."""
    rows = await store.query(
        "SELECT 1 FROM messages WHERE message_id = ? AND conversation_id = ? "
        "AND role = 'assistant' AND status = 'completed'",
        (message_id, conversation_id),
    )
    return bool(rows)


async def decision_state(store: EventStore, conversation_id: str) -> Conversation:
    """What posting a message decides on, from the read tables (see ``Chat._load``)."""
    found = await conversation(store, conversation_id)
    if found is None:
        return Conversation()
    running = await running_reply(store, conversation_id)
    files = await store.query(
        "SELECT file_id FROM files WHERE conversation_id = ?", (conversation_id,)
    )
    return Conversation(
        conversation_id, found.widget_id, found.visitor_id, True,
        running=running,
        file_ids=frozenset(file_id for (file_id,) in files),
        handoff=found.handoff,
    )


async def last_message_seq(store: EventStore, conversation_id: str) -> int:
    """The cursor of the conversation's newest message (0 when it has none)."""
    rows = await store.query(
        "SELECT max(created_seq) FROM messages WHERE conversation_id = ?", (conversation_id,)
    )
    return int(rows[0][0] or 0) if rows else 0


async def last_visitor_text(store: EventStore, conversation_id: str, upto: int) -> str | None:
    """The visitor's last message at or before log position ``upto``."""
    rows = await store.query(
        "SELECT text FROM messages WHERE conversation_id = ? AND role = 'user' "
        "AND created_seq <= ? ORDER BY created_seq DESC LIMIT 1",
        (conversation_id, upto),
    )
    return str(rows[0][0]) if rows else None
