"""Replies streaming on another LOACL instance, followed here through the log.

Sockets follow a reply through its ``Run`` (services.replies): the text so far, then each piece
as it comes. A reply another instance runs has no run here, so this service makes one from the
events copied in from PostgreSQL: ``assistant.started`` opens it, each ``assistant.delta``
adds its text at its offset, the end event ends it. The store tells this service before its
subscribers (``EventStore.on_copied``), so a tab told of the start finds the run. A tab on this
instance then follows it (and resumes it) exactly as one of a reply running here, only in the
log's flush steps rather than token by token."""

from __future__ import annotations

from collections.abc import Sequence

from loacl.domain import conversations as domain
from loacl.domain.events import RecordedEvent
from loacl.services.chat import Chat
from loacl.services.replies import Run

_ENDS = (domain.AssistantCompleted, domain.AssistantFailed, domain.AssistantInterrupted)
_STATUS = {domain.AssistantCompleted: "completed", domain.AssistantFailed: "failed",
           domain.AssistantInterrupted: "interrupted"}


_REPLY_EVENTS = (domain.AssistantStarted, domain.AssistantDelta, *_ENDS)


class RemoteReplies:
    def __init__(self, chat: Chat) -> None:
        self.chat = chat
        self.runs: dict[str, Run] = {}  # by reply id: the replies another instance runs

    def stop(self) -> None:
        for run in self.runs.values():
            run._finish()
        self.runs.clear()

    def take_all(self, copied: Sequence[RecordedEvent]) -> None:
        for recorded in copied:
            if isinstance(recorded.event, _REPLY_EVENTS):
                self.take(recorded)

    def take(self, recorded: RecordedEvent) -> None:
        event = recorded.event
        if isinstance(event, domain.AssistantStarted):
            run = Run(event.conversation_id, event.message_id, event.reply_to)
            self.runs[event.message_id] = run
            self.chat.runs[event.conversation_id] = run
            return
        assert isinstance(event, (domain.AssistantDelta, *_ENDS))
        found = self.runs.get(event.message_id)
        if found is None:  # started before this instance began to follow
            return
        run = found
        if isinstance(event, domain.AssistantDelta):
            known = len(run.text)
            if event.offset + len(event.text) <= known:
                return
            piece = event.text[max(0, known - event.offset):]
            run.text += piece
            run._emit(known, piece)
            return
        assert isinstance(event, _ENDS)
        rest = event.text[len(run.text):] if event.text.startswith(run.text) else ""
        if rest:
            offset = len(run.text)
            run.text += rest
            run._emit(offset, rest)
        run.status = _STATUS[type(event)]
        run._finish()
        del self.runs[event.message_id]
        if self.chat.runs.get(run.conversation_id) is run:
            del self.chat.runs[run.conversation_id]
