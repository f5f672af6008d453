"""Start-up recovery: replies that were streaming when the server stopped are closed as
interrupted, keeping the text the log holds, so that the visitor can ask again."""

from __future__ import annotations

import structlog

from loacl.domain.conversations import AssistantInterrupted, Conversation, evolve_conversation
from loacl.domain.events import Metadata
from loacl.domain.widgets import conversation_stream
from loacl.store.eventstore import EventStore
from loacl.store.views import conversations as views

log = structlog.get_logger(__name__)


async def recover(store: EventStore) -> int:
    """Close every run with no end event; returns how many were closed."""
    replies = await views.streaming_replies(store)
    for reply in replies:
        message_id = reply.message_id
        stream = conversation_stream(reply.conversation_id)
        state, version = await store.load(stream, Conversation(), evolve_conversation)
        text = state.running.text if state.running else ""
        await store.append(
            stream, [AssistantInterrupted(message_id=message_id, text=text)],
            expected_version=version, metadata=Metadata(actor="loacl:recovery"),
        )
        log.warning("recovery.reply_interrupted", message_id=message_id, chars=len(text))
    log.info("recovery.done", interrupted=len(replies), events=await store.head())
    return len(replies)
