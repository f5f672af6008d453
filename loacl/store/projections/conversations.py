"""Read tables for messages and files, and conversation activity."""

from __future__ import annotations

import json
import sqlite3

from loacl.domain.conversations import (
    AssistantCompleted,
    AssistantDelta,
    AssistantFailed,
    AssistantInterrupted,
    AssistantStarted,
    Citation,
    FeedbackGiven,
    FileSentToProvider,
    FileUploaded,
    MessagePosted,
    ReplyCited,
    VisitorIntroduced,
)
from loacl.domain.events import RecordedEvent
from loacl.store.codec import format_time
from loacl.store.projections import Projections

projections = Projections(tables=["messages", "files"])

_INSERT = (
    "INSERT INTO messages (message_id, conversation_id, role, text, status, reply_to, file_ids, "
    "client_message_id, created_seq, created_at, finished_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# A reply also names who wrote it: usage is grouped and priced by assistant and model.
_INSERT_REPLY = (
    "INSERT INTO messages (message_id, conversation_id, role, text, status, reply_to, file_ids, "
    "client_message_id, created_seq, created_at, finished_at, assistant_id, model) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _touch(conn: sqlite3.Connection, conversation_id: str, at: str, seq: int) -> None:
    conn.execute(
        "UPDATE conversations SET last_activity_at = ?, last_activity_seq = ?, "
        "message_count = message_count + 1 WHERE conversation_id = ?",
        (at, seq, conversation_id),
    )


@projections.on
def message_posted(conn: sqlite3.Connection, event: MessagePosted, recorded: RecordedEvent) -> None:
    at = format_time(recorded.recorded_at)
    conn.execute(
        _INSERT,
        (event.message_id, event.conversation_id, "user", event.text, "completed", None,
         json.dumps(list(event.file_ids)), event.client_message_id, recorded.seq, at, at),
    )
    _touch(conn, event.conversation_id, at, recorded.seq)


@projections.on
def assistant_started(
    conn: sqlite3.Connection, event: AssistantStarted, recorded: RecordedEvent
) -> None:
    at = format_time(recorded.recorded_at)
    conn.execute(
        _INSERT_REPLY,
        (event.message_id, event.conversation_id, "assistant", "", "streaming", event.reply_to,
         "[]", None, recorded.seq, at, None, event.assistant_id, event.model),
    )
    _touch(conn, event.conversation_id, at, recorded.seq)


@projections.on
def assistant_delta(
    conn: sqlite3.Connection, event: AssistantDelta, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE messages SET text = text || ? WHERE message_id = ? AND status = 'streaming'",
        (event.text, event.message_id),
    )


@projections.on
def assistant_completed(
    conn: sqlite3.Connection, event: AssistantCompleted, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE messages SET text = ?, status = 'completed', input_tokens = ?, "
        "output_tokens = ?, finished_at = ? WHERE message_id = ?",
        (event.text, event.usage.input_tokens, event.usage.output_tokens,
         format_time(recorded.recorded_at), event.message_id),
    )


@projections.on
def assistant_failed(
    conn: sqlite3.Connection, event: AssistantFailed, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE messages SET text = ?, status = 'failed', error_code = ?, finished_at = ? "
        "WHERE message_id = ?",
        (event.text, event.code, format_time(recorded.recorded_at), event.message_id),
    )


@projections.on
def assistant_interrupted(
    conn: sqlite3.Connection, event: AssistantInterrupted, recorded: RecordedEvent
) -> None:
    conn.execute(
        "UPDATE messages SET text = ?, status = 'interrupted', error_code = 'interrupted', "
        "finished_at = ? WHERE message_id = ?",
        (event.text, format_time(recorded.recorded_at), event.message_id),
    )


@projections.on
def file_uploaded(conn: sqlite3.Connection, event: FileUploaded, recorded: RecordedEvent) -> None:
    conn.execute(
        "INSERT INTO files (file_id, conversation_id, widget_id, visitor_id, filename, kind, "
        "content_type, size, sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (event.file_id, event.conversation_id, event.widget_id, event.visitor_id,
         event.filename, event.kind, event.content_type, event.size, event.sha256,
         format_time(recorded.recorded_at)),
    )


@projections.on
def file_sent(conn: sqlite3.Connection, event: FileSentToProvider, recorded: RecordedEvent) -> None:
    conn.execute(
        "UPDATE files SET provider = ?, provider_file_id = ? WHERE file_id = ?",
        (event.provider, event.provider_file_id, event.file_id),
    )


@projections.on
def feedback_given(conn: sqlite3.Connection, event: FeedbackGiven, recorded: RecordedEvent) -> None:
    conn.execute(
        "UPDATE messages SET feedback_rating = ?, feedback_comment = ?, feedback_at = ? "
        "WHERE message_id = ? AND conversation_id = ?",
        (event.rating, event.comment, format_time(recorded.recorded_at), event.message_id,
         event.conversation_id),
    )


@projections.on
def visitor_introduced(
    conn: sqlite3.Connection, event: VisitorIntroduced, recorded: RecordedEvent
) -> None:
    # A field left empty keeps what the visitor said before.
    conn.execute(
        "UPDATE conversations SET visitor_name = coalesce(nullif(?, ''), visitor_name), "
        "visitor_email = coalesce(nullif(?, ''), visitor_email) WHERE conversation_id = ?",
        (event.name, event.email, event.conversation_id),
    )


@projections.on
def reply_cited(conn: sqlite3.Connection, event: ReplyCited, recorded: RecordedEvent) -> None:
    # Each round's citations follow the earlier rounds' (their numbers go on from them).
    row = conn.execute(
        "SELECT citations FROM messages WHERE message_id = ?", (event.message_id,)
    ).fetchone()
    if row is None:
        return
    cited = [*json.loads(row[0]), *(_citation(c) for c in event.citations)]
    conn.execute("UPDATE messages SET citations = ? WHERE message_id = ?",
                 (json.dumps(cited, ensure_ascii=False), event.message_id))


def _citation(c: Citation) -> dict[str, object]:
    return {"number": c.number, "document_id": c.document_id, "document": c.document,
            "page": c.page, "passage": c.passage}
