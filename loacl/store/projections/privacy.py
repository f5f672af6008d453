"""What an erasure does to the read tables, in the erasure's own transaction: the subject's
content is blanked (``[erased]``), its counts and times kept; uploaded bytes no other file names
are deleted; its data key is destroyed (``data_keys``, outside the hash chain).

Replay runs the same handler on events whose personal fields already read as ``[erased]``: it
ends with the same tables, and writes nothing outside them, since the key is gone already.
"""

from __future__ import annotations

import sqlite3

from loacl.domain.events import RecordedEvent
from loacl.domain.privacy import CONVERSATION, ERASED, OWNER, SubjectErased, split_subject
from loacl.store.codec import format_time
from loacl.store.projections import Projections

projections = Projections()


@projections.on
def subject_erased(
    conn: sqlite3.Connection, event: SubjectErased, recorded: RecordedEvent
) -> None:
    at = format_time(recorded.recorded_at)
    kind, subject_id = split_subject(event.subject)
    if kind == CONVERSATION:
        _erase_conversation(conn, subject_id, at)
    elif kind == OWNER:
        _erase_owner(conn, subject_id, at)
    destroy_key(conn, event.subject, at)


def _erase_conversation(conn: sqlite3.Connection, conversation_id: str, at: str) -> None:
    # A reply still streaming (erased from another process) ends here; its own end event is
    # refused once the key is gone.
    conn.execute(
        "UPDATE messages SET text = ?, "
        "feedback_comment = CASE WHEN feedback_comment IS NULL THEN NULL ELSE ? END, "
        "error_code = CASE status WHEN 'streaming' THEN 'interrupted' ELSE error_code END, "
        "finished_at = CASE status WHEN 'streaming' THEN ? ELSE finished_at END, "
        "status = CASE status WHEN 'streaming' THEN 'interrupted' ELSE status END "
        "WHERE conversation_id = ?",
        (ERASED, ERASED, at, conversation_id),
    )
    digests = [str(d) for (d,) in conn.execute(
        "SELECT sha256 FROM files WHERE conversation_id = ?", (conversation_id,)
    )]
    conn.execute(
        "UPDATE files SET filename = ?, sha256 = ? WHERE conversation_id = ?",
        (ERASED, ERASED, conversation_id),
    )
    conn.execute(
        "UPDATE conversations SET external_user_id = NULL, erased_at = ?, "
        "visitor_name = CASE WHEN visitor_name IS NULL THEN NULL ELSE ? END, "
        "visitor_email = CASE WHEN visitor_email IS NULL THEN NULL ELSE ? END, "
        "reply_email = CASE WHEN reply_email IS NULL THEN NULL ELSE ? END "
        "WHERE conversation_id = ?",
        (at, ERASED, ERASED, ERASED, conversation_id),
    )
    for digest in dict.fromkeys(digests):
        # Content-addressed: the same bytes uploaded to another conversation stay.
        if conn.execute("SELECT 1 FROM main.blobs WHERE sha256 = ?", (digest,)).fetchone() and (
            not conn.execute("SELECT 1 FROM files WHERE sha256 = ? LIMIT 1", (digest,)).fetchone()
        ):
            conn.execute("DELETE FROM main.blobs WHERE sha256 = ?", (digest,))


def _erase_owner(conn: sqlite3.Connection, user_id: str, at: str) -> None:
    conn.execute(
        "DELETE FROM refresh_tokens WHERE session_id IN "
        "(SELECT session_id FROM sessions WHERE user_id = ?)",
        (user_id,),
    )
    conn.execute(
        "UPDATE sessions SET revoked_at = coalesce(revoked_at, ?), client_ip = NULL, "
        "revoked_reason = coalesce(revoked_reason, 'account_deleted') WHERE user_id = ?",
        (at, user_id),
    )
    conn.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
    # Its memberships end, its personal workspace (whose things were erased before) goes, and
    # the addresses it invited (sealed with its key) read as erased, as on replay.
    conn.execute("DELETE FROM workspace_members WHERE user_id = ? OR workspace_id = ?",
                 (user_id, user_id))
    conn.execute("DELETE FROM workspaces WHERE workspace_id = ? AND personal = 1", (user_id,))
    conn.execute("DELETE FROM workspace_invites WHERE workspace_id = ?", (user_id,))
    conn.execute("UPDATE workspace_invites SET email = ? WHERE invited_by = ?",
                 (ERASED, user_id))


def destroy_key(conn: sqlite3.Connection, subject: str, at: str) -> None:
    """Null the subject's key (or record that it has none, so that it never gets one), and move
    the erasure count so that every writer forgets it. Read first: replay, which meets the key
    gone, must not take the write lock a running server holds."""
    row = conn.execute(
        "SELECT wrapped IS NOT NULL FROM main.data_keys WHERE subject = ?", (subject,)
    ).fetchone()
    if row is not None and not row[0]:
        return
    if row is None:
        conn.execute(
            "INSERT INTO main.data_keys (subject, wrapped, master_id, created_at, erased_at) "
            "VALUES (?, NULL, NULL, ?, ?)",
            (subject, at, at),
        )
    else:
        conn.execute(
            "UPDATE main.data_keys SET wrapped = NULL, erased_at = ? WHERE subject = ?",
            (at, subject),
        )
    conn.execute("UPDATE main.key_state SET erasures = erasures + 1 WHERE id = 1")
