"""Start-up recovery: replies that were streaming when the server stopped are closed as
interrupted, keeping the text the log holds, so that the visitor can ask again."""

from __future__ import annotations

import structlog

from loacl.domain.conversations import AssistantInterrupted, Conversation, evolve_conversation
from loacl.domain.events import Metadata
from loacl.domain.widgets import conversation_stream
from loacl.store.eventstore import EventStore

log = structlog.get_logger(__name__)


async def recover(store: EventStore) -> int:
    """Close every run with no end event; returns how many were closed."""
    rows = await store.query(
        "SELECT message_id, conversation_id FROM messages "
        "WHERE role = 'assistant' AND status = 'streaming'"
    )
    for message_id, conversation_id in rows:
        stream = conversation_stream(conversation_id)
        state, version = await store.load(stream, Conversation(), evolve_conversation)
        text = state.running.text if state.running else ""
        await store.append(
            stream, [AssistantInterrupted(message_id=message_id, text=text)],
            expected_version=version, metadata=Metadata(actor="loacl:recovery"),
        )
        log.warning("recovery.reply_interrupted", message_id=message_id, chars=len(text))
    log.info("recovery.done", interrupted=len(rows), events=await store.head())
    return len(rows)
