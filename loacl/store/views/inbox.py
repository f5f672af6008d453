"""The owner's inbox: conversations across every widget of one owner, newest activity first,
filtered and searched, each with a short preview of its last message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loacl.domain.handoff import STATES as HANDOFF_STATES
from loacl.store.eventstore import EventStore
from loacl.store.search import match_query
from loacl.store.views import Page

PREVIEW_CHARS = 160

# The preview: the newest message with text (a reply that has only started has none yet).
_LAST = (
    "(SELECT {column} FROM messages m WHERE m.conversation_id = c.conversation_id "
    "AND m.text != '' ORDER BY m.created_seq DESC LIMIT 1)"
)
_ITEM = (
    "SELECT c.conversation_id, c.widget_id, w.name, "
    "json_extract(w.definition, '$.settings.title'), c.visitor_id, c.external_user_id, "
    "c.created_at, c.last_activity_at, c.last_activity_seq, c.message_count, c.erased_at, "
    f"{_LAST.format(column=f'substr(m.text, 1, {PREVIEW_CHARS + 1})')}, "
    f"{_LAST.format(column='m.role')}, "
    "c.state, c.assignee_id, c.assignee_name, c.waiting_since, "
    # Unread: the visitor's messages after the member's read mark (the first parameter).
    "(SELECT count(*) FROM messages u WHERE u.conversation_id = c.conversation_id "
    "AND u.role = 'user' AND u.created_seq > coalesce((SELECT r.up_to FROM conversation_reads r "
    "WHERE r.conversation_id = c.conversation_id AND r.member_id = ?), 0)), "
    "CASE WHEN c.erased_at IS NULL THEN c.reply_email END "
    "FROM conversations c LEFT JOIN widgets w ON w.widget_id = c.widget_id"
)
# Conversations with a message matching the search: from the index's hits (rowid = position).
_MATCHING = (
    "c.conversation_id IN (SELECT m.conversation_id FROM messages_fts f "
    "JOIN messages m ON m.created_seq = f.rowid WHERE messages_fts MATCH ?)"
)

# open and erased: whether the conversation is erased; the others: who answers it
# (domain.handoff's states).
STATUSES = ("open", "erased", *HANDOFF_STATES)
UNASSIGNED = "none"  # assignee=none: conversations nobody holds


@dataclass(frozen=True, slots=True)
class InboxItem:
    conversation_id: str
    widget_id: str
    widget_name: str | None  # None once the widget is deleted
    widget_title: str | None
    visitor_id: str
    external_user_id: str | None
    created_at: str
    last_activity_at: str
    last_activity_seq: int
    message_count: int
    erased_at: str | None
    preview: str | None  # the start of the last message's text, None while it has none
    preview_role: str | None  # user | assistant | agent
    state: str = "bot"  # bot | waiting | human | closed
    assignee_id: str | None = None
    assignee_name: str | None = None
    waiting_since: str | None = None
    unread: int = 0  # the visitor's messages the member has not read
    reply_email: str | None = None  # where the visitor asked to be answered by mail

    @property
    def status(self) -> str:
        return "erased" if self.erased_at is not None else "open"

    @property
    def preview_text(self) -> str | None:
        text = self.preview
        if text is None or len(text) <= PREVIEW_CHARS:
            return text
        return text[:PREVIEW_CHARS - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class InboxFilter:
    widget_id: str | None = None
    status: str | None = None  # one of STATUSES
    since: str | None = None  # last activity at or after (codec.format_time)
    until: str | None = None  # last activity at or before
    text: str | None = None  # words every hit has in one of its messages
    assignee: str | None = None  # a member's id, or UNASSIGNED


def _item(row: Any) -> InboxItem:
    return InboxItem(*row)


async def inbox(
    store: EventStore, owner_id: str, where: InboxFilter, after: int | None, limit: int,
    member_id: str | None = None,
) -> Page[InboxItem]:
    """A page of the owner's conversations, by last activity, newest first; ``after`` is the
    ``last_activity_seq`` the previous page ended with. A conversation with new activity moves
    to the top (where live updates show it), so paging may meet it once more or not at all."""
    clauses: list[str] = ["c.owner_id = ?"]
    params: list[Any] = [member_id or owner_id, owner_id]
    if where.widget_id is not None:
        clauses.append("c.widget_id = ?")
        params.append(where.widget_id)
    if where.status == "open":
        clauses.append("c.erased_at IS NULL")
    elif where.status == "erased":
        clauses.append("c.erased_at IS NOT NULL")
    elif where.status is not None:
        clauses.append("c.state = ?")
        params.append(where.status)
    if where.assignee == UNASSIGNED:
        clauses.append("c.assignee_id IS NULL")
    elif where.assignee is not None:
        clauses.append("c.assignee_id = ?")
        params.append(where.assignee)
    if where.since is not None:
        clauses.append("c.last_activity_at >= ?")
        params.append(where.since)
    if where.until is not None:
        clauses.append("c.last_activity_at <= ?")
        params.append(where.until)
    if where.text is not None:
        query = match_query(where.text)
        if query is None:
            return Page([], None)
        clauses.append(_MATCHING)
        params.append(query)
    if after:
        clauses.append("c.last_activity_seq < ?")
        params.append(after)
    rows = await store.query(
        f"{_ITEM} WHERE {' AND '.join(clauses)} ORDER BY c.last_activity_seq DESC LIMIT ?",
        (*params, limit + 1),
    )
    items = [_item(r) for r in rows]
    if len(items) > limit:
        return Page(items[:limit], items[limit - 1].last_activity_seq)
    return Page(items, None)


async def inbox_item(
    store: EventStore, conversation_id: str, member_id: str | None = None
) -> InboxItem | None:
    rows = await store.query(f"{_ITEM} WHERE c.conversation_id = ?",
                             (member_id, conversation_id))
    return _item(rows[0]) if rows else None


async def owner_of(store: EventStore, conversation_id: str) -> str | None:
    rows = await store.query(
        "SELECT owner_id FROM conversations WHERE conversation_id = ?", (conversation_id,)
    )
    return str(rows[0][0]) if rows and rows[0][0] is not None else None
