"""Conversations: a visitor's messages, the assistant's replies (streamed as deltas), files."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from loacl.domain.errors import LoaclError
from loacl.domain.events import Event
from loacl.domain.handoff import (
    AgentMessagePosted,
    ConversationAssigned,
    ConversationStateChanged,
    Handoff,
    before_visitor_message,
    evolve_handoff,
)
from loacl.domain.widgets import ConversationStarted


@dataclass(frozen=True, slots=True, kw_only=True)
class MessagePosted(Event):
    event_type = "message.posted"
    conversation_id: str
    message_id: str
    text: str
    file_ids: tuple[str, ...] = ()
    client_message_id: str | None = None
    personal = ("text",)
    # The client's id for a resend: chosen by the widget's code, not by the visitor.
    not_personal = ("conversation_id", "message_id", "file_ids", "client_message_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantStarted(Event):
    event_type = "assistant.started"
    conversation_id: str
    message_id: str
    reply_to: str
    assistant_id: str
    provider: str
    model: str
    not_personal = ("conversation_id", "message_id", "reply_to", "assistant_id", "provider",
                    "model")


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantDelta(Event):
    """Streamed text, coalesced per flush window; ``offset`` counts characters before it."""

    event_type = "assistant.delta"
    message_id: str
    offset: int
    text: str
    personal = ("text",)
    not_personal = ("message_id",)


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantCompleted(Event):
    event_type = "assistant.completed"
    message_id: str
    text: str
    usage: Usage = field(default_factory=Usage)
    provider_request_id: str | None = None
    personal = ("text",)
    not_personal = ("message_id", "provider_request_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantFailed(Event):
    """The provider failed; ``text`` is what arrived before it did, kept and marked."""

    event_type = "assistant.failed"
    message_id: str
    code: str
    error: str
    text: str = ""
    personal = ("text",)
    # ``error`` is LOACL's own text for the code, never the provider's words.
    not_personal = ("message_id", "code", "error")


@dataclass(frozen=True, slots=True, kw_only=True)
class AssistantInterrupted(Event):
    """The server stopped mid-reply (found at start-up); ``text`` is what the log held."""

    event_type = "assistant.interrupted"
    message_id: str
    text: str = ""
    personal = ("text",)
    not_personal = ("message_id",)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileUploaded(Event):
    event_type = "file.uploaded"
    file_id: str
    conversation_id: str
    widget_id: str
    visitor_id: str
    filename: str
    kind: str  # pdf | docx | doc | txt
    content_type: str
    size: int
    sha256: str
    # The digest names the bytes (a fingerprint of the document): sealed with the name.
    personal = ("filename", "sha256")
    not_personal = ("file_id", "conversation_id", "widget_id", "visitor_id", "kind",
                    "content_type")


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSentToProvider(Event):
    event_type = "file.sent_to_provider"
    file_id: str
    provider: str
    provider_file_id: str
    not_personal = ("file_id", "provider", "provider_file_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCalled(Event):
    """The model called one of the assistant's tools while writing reply ``message_id``, in
    round ``round`` (1 for the first). ``arguments`` is the model's JSON, cut to a bound: it
    may repeat what the visitor said (an order number, an address), so it is sealed."""

    event_type = "tool.called"
    message_id: str
    call_id: str
    name: str
    round: int
    arguments: str
    personal = ("arguments",)
    not_personal = ("message_id", "call_id", "name")


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolReturned(Event):
    """What the call gave the model: ``status`` ``ok`` or an error code (``invalid_arguments``,
    ``refused``, ``timeout``, ``http_error``, ``too_large``, ``invalid_response``,
    ``unreachable``, ``round_limit``), the endpoint's HTTP status when it answered, how long
    it took, and the output as the model got it (cut to a bound; sealed, as it may hold the
    visitor's data)."""

    event_type = "tool.returned"
    message_id: str
    call_id: str
    name: str
    status: str
    http_status: int | None = None
    duration_ms: int = 0
    output: str = ""
    personal = ("output",)
    not_personal = ("message_id", "call_id", "name", "status")


@dataclass(frozen=True, slots=True, kw_only=True)
class Citation:
    """A passage of the assistant's knowledge that reply text may cite as ``[number]``."""

    number: int
    document_id: str
    document: str  # the document's file name
    page: int
    passage: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyCited(Event):
    """Passages the assistant's knowledge search gave the model while it wrote reply
    ``message_id``, numbered on from those of earlier rounds: the sources shown under the
    reply. The owner's documents, not the visitor's words."""

    event_type = "reply.cited"
    message_id: str
    citations: tuple[Citation, ...]
    not_personal = ("message_id", "citations")


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackGiven(Event):
    """The visitor rated a reply (thumbs up or down, and perhaps a few words); the newest rating
    of a reply is the one that counts."""

    event_type = "feedback.given"
    conversation_id: str
    message_id: str
    rating: str  # up | down
    comment: str = ""
    personal = ("comment",)
    not_personal = ("conversation_id", "message_id", "rating")


@dataclass(frozen=True, slots=True, kw_only=True)
class VisitorIntroduced(Event):
    """The visitor's answers to the widget's pre-chat form (or the page's identify call): a
    name and an e-mail address, each "" when not given."""

    event_type = "visitor.introduced"
    conversation_id: str
    name: str = ""
    email: str = ""
    personal = ("name", "email")
    not_personal = ("conversation_id",)


RATINGS = ("up", "down")
MAX_COMMENT = 500

END_EVENTS = (AssistantCompleted, AssistantFailed, AssistantInterrupted)


@dataclass(frozen=True, slots=True)
class Reply:
    message_id: str
    reply_to: str
    text: str = ""
    status: str = "streaming"  # streaming | completed | failed | interrupted


@dataclass(frozen=True, slots=True)
class Conversation:
    conversation_id: str = ""
    widget_id: str = ""
    visitor_id: str = ""
    exists: bool = False
    message_ids: frozenset[str] = frozenset()
    running: Reply | None = None
    file_ids: frozenset[str] = frozenset()
    answered: frozenset[str] = frozenset()  # replies that completed: they may be rated
    handoff: Handoff = field(default_factory=Handoff)  # who answers (domain.handoff)


def evolve_conversation(state: Conversation, event: Event) -> Conversation:
    match event:
        case ConversationStarted():
            return Conversation(event.conversation_id, event.widget_id, event.visitor_id, True)
        case MessagePosted():
            return _with(state, message_ids=state.message_ids | {event.message_id})
        case AssistantStarted():
            return _with(state, running=Reply(event.message_id, event.reply_to))
        case AssistantDelta() if state.running is not None:
            running = state.running
            return _with(state, running=Reply(running.message_id, running.reply_to,
                                              running.text + event.text))
        case AssistantCompleted():
            return _with(state, running=None, answered=state.answered | {event.message_id})
        case AssistantFailed() | AssistantInterrupted():
            return _with(state, running=None)
        case FileUploaded():
            return _with(state, file_ids=state.file_ids | {event.file_id})
        case AgentMessagePosted():
            return _with(state, message_ids=state.message_ids | {event.message_id},
                         handoff=evolve_handoff(state.handoff, event))
        case ConversationStateChanged() | ConversationAssigned():
            return _with(state, handoff=evolve_handoff(state.handoff, event))
    return state


def _with(state: Conversation, **changes: object) -> Conversation:
    return replace(state, **changes)  # type: ignore[arg-type]


MAX_ATTACHMENTS = 10
MAX_CLIENT_ID = 100


def checked_message(
    text: str, file_ids: tuple[str, ...], client_message_id: str | None, max_chars: int
) -> str:
    """The message's text as it is kept (trimmed), or a refusal: the same for every way in."""
    text = text.strip()
    if not text:
        raise LoaclError(
            "validation_error", "text: a message needs some text",
            errors=[{"field": "text", "message": "empty"}],
        )
    if len(text) > max_chars:
        raise LoaclError(
            "message_too_long", f"a message may have at most {max_chars} characters",
            errors=[{"field": "text", "message": "too long"}],
        )
    if len(file_ids) > MAX_ATTACHMENTS:
        raise LoaclError(
            "validation_error", f"file_ids: at most {MAX_ATTACHMENTS} files a message",
            errors=[{"field": "file_ids", "message": f"at most {MAX_ATTACHMENTS}"}],
        )
    if client_message_id is not None and not 0 < len(client_message_id) <= MAX_CLIENT_ID:
        raise LoaclError(
            "validation_error", f"client_message_id: 1 to {MAX_CLIENT_ID} characters",
            errors=[{"field": "client_message_id", "message": "bad length"}],
        )
    return text


def post_message(
    state: Conversation, *, message_id: str, reply_id: str, text: str,
    file_ids: tuple[str, ...], client_message_id: str | None,
    assistant_id: str, provider: str, model: str,
) -> list[Event]:
    """The visitor's message and the start of the reply, or a refusal. While a person is
    asked for or answering (``handoff``), the message is kept with no reply; a closed
    conversation reopens first (see :mod:`loacl.domain.handoff`)."""
    if not state.exists:
        raise LoaclError("not_found", "no such conversation")
    answers = state.handoff.assistant_answers
    if answers and state.running is not None:
        raise LoaclError(
            "reply_in_progress", "wait for the current answer to finish before asking again"
        )
    unknown = [f for f in file_ids if f not in state.file_ids]
    if unknown:
        raise LoaclError(
            "unknown_file", f"no file {unknown[0]!r} was uploaded to this conversation",
            errors=[{"field": "file_ids", "message": "unknown file"}],
        )
    posted = MessagePosted(
        conversation_id=state.conversation_id, message_id=message_id, text=text,
        file_ids=file_ids, client_message_id=client_message_id,
    )
    if not answers:
        return [posted]
    return [
        *before_visitor_message(state.handoff, state.conversation_id),
        posted,
        AssistantStarted(
            conversation_id=state.conversation_id, message_id=reply_id, reply_to=message_id,
            assistant_id=assistant_id, provider=provider, model=model,
        ),
    ]


def give_feedback(
    state: Conversation, *, message_id: str, rating: str, comment: str
) -> list[Event]:
    """The visitor's rating of a completed reply of this conversation, or a refusal."""
    if message_id not in state.answered:
        raise LoaclError("not_found", "no completed reply with this id in the conversation")
    if rating not in RATINGS:
        raise LoaclError("validation_error", "rating: up or down",
                         errors=[{"field": "rating", "message": "up or down"}])
    comment = comment.strip()
    if len(comment) > MAX_COMMENT:
        raise LoaclError("validation_error", f"comment: at most {MAX_COMMENT} characters",
                         errors=[{"field": "comment", "message": "too long"}])
    return [FeedbackGiven(conversation_id=state.conversation_id, message_id=message_id,
                          rating=rating, comment=comment)]


def introduce(state: Conversation, *, name: str, email: str) -> list[Event]:
    """The visitor's name and e-mail address for this conversation, or a refusal."""
    if not state.exists:
        raise LoaclError("not_found", "no such conversation")
    name, email = name.strip(), email.strip()
    if not name and not email:
        raise LoaclError("validation_error", "give a name or an e-mail address",
                         errors=[{"field": "name", "message": "empty"}])
    if email and ("@" not in email or email.startswith("@") or email.endswith("@")):
        raise LoaclError("validation_error", "email: not an e-mail address",
                         errors=[{"field": "email", "message": "not an e-mail address"}])
    return [VisitorIntroduced(conversation_id=state.conversation_id, name=name, email=email)]
