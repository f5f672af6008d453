"""Read tables for handing conversations to people: the conversation's state and assignee,
members' messages (role ``agent``) and how far each member has read."""

from __future__ import annotations

import sqlite3

from loacl.domain.events import RecordedEvent
from loacl.domain.handoff import (
    HUMAN,
    AgentMessagePosted,
    ConversationAssigned,
    ConversationRead,
    ConversationStateChanged,
    ReplyAddressLeft,
)
from loacl.store.codec import format_time
from loacl.store.projections import Projections

projections = Projections(tables=["conversation_reads"])


# Reads no personal field (the reason is never written to a table): replay leaves it sealed.
@projections.on_sealed
def state_changed(
    conn: sqlite3.Connection, event: ConversationStateChanged, recorded: RecordedEvent
) -> None:
    at = format_time(recorded.recorded_at)
    # The inbox moves a conversation whose state changed to the top; waiting_since is kept
    # from the first moment of waiting until someone answers or it is given back or closed.
    conn.execute(
        "UPDATE conversations SET state = ?, assignee_id = ?, assignee_name = ?, "
        "waiting_since = CASE WHEN ? = 'waiting' THEN coalesce(waiting_since, ?) ELSE NULL END, "
        "state_changed_at = ?, last_activity_at = ?, last_activity_seq = ? "
        "WHERE conversation_id = ?",
        (event.state, event.assignee_id, event.assignee_name or None, event.state, at, at, at,
         recorded.seq, event.conversation_id),
    )


@projections.on
def assigned(
    conn: sqlite3.Connection, event: ConversationAssigned, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE conversations SET assignee_id = ?, assignee_name = ? WHERE conversation_id = ?",
        (event.assignee_id, event.assignee_name or None, event.conversation_id),
    )


@projections.on
def agent_message(
    conn: sqlite3.Connection, event: AgentMessagePosted, recorded: RecordedEvent
) -> None:
    at = format_time(recorded.recorded_at)
    conn.execute(
        "INSERT INTO messages (message_id, conversation_id, role, text, status, reply_to, "
        "file_ids, client_message_id, created_seq, created_at, finished_at, author_id, "
        "author_name) VALUES (?, ?, 'agent', ?, 'completed', NULL, '[]', ?, ?, ?, ?, ?, ?)",
        (event.message_id, event.conversation_id, event.text, event.client_message_id,
         recorded.seq, at, at, event.author_id, event.author_name),
    )
    # A member's message is an answer: the conversation is the member's (domain.handoff), and
    # the member has read what came before it.
    conn.execute(
        "UPDATE conversations SET last_activity_at = ?, last_activity_seq = ?, "
        "message_count = message_count + 1, state = ?, assignee_id = ?, assignee_name = ?, "
        "waiting_since = NULL WHERE conversation_id = ?",
        (at, recorded.seq, HUMAN, event.author_id, event.author_name, event.conversation_id),
    )
    _read(conn, event.conversation_id, event.author_id, recorded.seq, at)


@projections.on
def reply_address_left(
    conn: sqlite3.Connection, event: ReplyAddressLeft, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE conversations SET reply_email = ?, reply_email_seq = ? WHERE conversation_id = ?",
        (event.email, recorded.seq, event.conversation_id),
    )


@projections.on
def read(conn: sqlite3.Connection, event: ConversationRead, recorded: RecordedEvent) -> None:
    _read(conn, event.conversation_id, event.member_id, event.up_to,
          format_time(recorded.recorded_at))


def _read(conn: sqlite3.Connection, conversation_id: str, member_id: str, up_to: int,
          at: str) -> None:
    # A read mark only moves forward: an older tab marking late does not bring unread back.
    conn.execute(
        "INSERT INTO conversation_reads (conversation_id, member_id, up_to, read_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (conversation_id, member_id) DO UPDATE SET "
        "up_to = max(up_to, excluded.up_to), read_at = excluded.read_at",
        (conversation_id, member_id, up_to, at),
    )

