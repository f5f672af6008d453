"""Start-up recovery: replies that were streaming when the server stopped are closed as
interrupted, keeping the text the log holds, so that the visitor can ask again.

With a log in PostgreSQL shared by several instances, a reply streaming in the log may be
running on another one: only a reply whose lease is free (the instance that ran it stopped or
lost its connection: store.postgres.upstream) is closed, and the instances look again every
minute for those a stopped instance left."""

from __future__ import annotations

import structlog

from loacl.domain.conversations import AssistantInterrupted, Conversation, evolve_conversation
from loacl.domain.errors import ConflictError
from loacl.domain.events import Metadata
from loacl.domain.widgets import conversation_stream
from loacl.store.eventstore import EventStore
from loacl.store.views import conversations as views

log = structlog.get_logger(__name__)


async def recover(store: EventStore, *, quiet: bool = False) -> int:
    """Close every run with no end event that no instance runs; returns how many were
    closed."""
    replies = await views.streaming_replies(store)
    upstream = store.upstream
    closed = 0
    for reply in replies:
        message_id = reply.message_id
        if upstream is not None and await upstream.leased(message_id):
            continue
        stream = conversation_stream(reply.conversation_id)
        state, version = await store.load(stream, Conversation(), evolve_conversation)
        text = state.running.text if state.running else ""
        try:
            await store.append(
                stream, [AssistantInterrupted(message_id=message_id, text=text)],
                expected_version=version, metadata=Metadata(actor="loacl:recovery"),
            )
        except ConflictError:  # it ended meanwhile (on another instance, not copied yet)
            continue
        log.warning("recovery.reply_interrupted", message_id=message_id, chars=len(text))
        closed += 1
    if closed or not quiet:
        log.info("recovery.done", interrupted=closed, events=await store.head())
    return closed
