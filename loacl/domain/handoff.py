"""Who answers a conversation: the assistant (``bot``), nobody yet (``waiting``: a person was
asked for), a member of the team (``human``), or nobody any more (``closed``).

Every change is a ``conversation.state_changed`` event that says who made it (``by``: the
visitor, the assistant, or ``member:<account id>``), why (``cause``, a stable code) and, for a
handoff, the reason in words (sealed: the model's reason may repeat the visitor's words).

The rules, decided here once:

- a visitor's message to a ``closed`` conversation reopens it to ``bot`` (as help desks do: a
  closed ticket reopens on the customer's reply) and the assistant answers it;
- in ``waiting`` and ``human`` the visitor's messages are kept and shown to the team, and the
  assistant does not answer them;
- asking for a person while one is asked for or present changes nothing;
- a member takes over a conversation another member holds only when forced
  (``conversation_taken`` otherwise); the same for giving it back and for replying into it;
- a member's reply into a conversation the assistant (or nobody) answers takes it over first,
  so that the assistant does not answer the visitor's next message over the person.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from loacl.domain.errors import LoaclError
from loacl.domain.events import Event

BOT, WAITING, HUMAN, CLOSED = "bot", "waiting", "human", "closed"
STATES = (BOT, WAITING, HUMAN, CLOSED)
VISITOR, ASSISTANT = "visitor", "assistant"

# Why a state changed: a stable code in the event.
VISITOR_ASKED = "visitor_asked"
ASSISTANT_ASKED = "assistant_asked"
TAKEN_OVER = "taken_over"
AGENT_REPLIED = "agent_replied"
RELEASED = "released"
CLOSED_BY = "closed"
REOPENED = "reopened"
CAUSES = (VISITOR_ASKED, ASSISTANT_ASKED, TAKEN_OVER, AGENT_REPLIED, RELEASED, CLOSED_BY,
          REOPENED)

MAX_REASON = 500
MAX_AGENT_TEXT = 20_000


def member(user_id: str) -> str:
    """``by`` for a member of the team."""
    return f"member:{user_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationStateChanged(Event):
    event_type = "conversation.state_changed"
    conversation_id: str
    state: str  # one of STATES
    previous: str
    by: str  # visitor | assistant | member:<account id>
    cause: str  # one of CAUSES
    reason: str = ""  # in words, when given (a handoff's reason)
    assignee_id: str | None = None  # who holds it afterwards (None: nobody)
    assignee_name: str = ""
    personal = ("reason",)
    not_personal = ("conversation_id", "state", "previous", "by", "cause", "assignee_id",
                    "assignee_name")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationAssigned(Event):
    """A member is named to answer the conversation (None: nobody); its state stays."""

    event_type = "conversation.assigned"
    conversation_id: str
    assignee_id: str | None
    assignee_name: str = ""
    by: str
    not_personal = ("conversation_id", "assignee_id", "assignee_name", "by")


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentMessagePosted(Event):
    """A member's message to the visitor, shown with the member's display name."""

    event_type = "agent.message_posted"
    conversation_id: str
    message_id: str
    author_id: str
    author_name: str
    text: str
    client_message_id: str | None = None
    personal = ("text",)
    not_personal = ("conversation_id", "message_id", "author_id", "author_name",
                    "client_message_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConversationRead(Event):
    """A member has read the conversation up to the message at log position ``up_to``
    (appended to the member's own ``inbox-`` stream: a read is not the conversation's news)."""

    event_type = "conversation.read"
    conversation_id: str
    member_id: str
    up_to: int
    not_personal = ("conversation_id", "member_id")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyAddressLeft(Event):
    """The visitor left an e-mail address for the team's replies (nobody was there to answer
    at once): members' messages in the conversation are then also sent there by mail.
    Personal: sealed with the conversation's key, gone when the conversation is erased."""

    event_type = "visitor.reply_address_left"
    conversation_id: str
    email: str
    personal = ("email",)
    not_personal = ("conversation_id",)


def leave_reply_address(conversation_id: str, current: str | None, email: str) -> list[Event]:
    """The visitor's address for replies by mail (already checked as an address); leaving the
    same one again changes nothing."""
    if current == email:
        return []
    return [ReplyAddressLeft(conversation_id=conversation_id, email=email)]


def inbox_stream(member_id: str) -> str:
    return f"inbox-{member_id}"


@dataclass(frozen=True, slots=True)
class Handoff:
    state: str = BOT
    assignee_id: str | None = None
    assignee_name: str = ""

    @property
    def assistant_answers(self) -> bool:
        return self.state in (BOT, CLOSED)


def evolve_handoff(state: Handoff, event: Event) -> Handoff:
    match event:
        case ConversationStateChanged():
            return Handoff(event.state, event.assignee_id, event.assignee_name)
        case ConversationAssigned():
            return replace(state, assignee_id=event.assignee_id,
                           assignee_name=event.assignee_name)
        case AgentMessagePosted() if state.state != HUMAN:
            return Handoff(HUMAN, event.author_id, event.author_name)
    return state


def _changed(
    state: Handoff, conversation_id: str, to: str, by: str, cause: str, reason: str = "",
    assignee_id: str | None = None, assignee_name: str = "",
) -> ConversationStateChanged:
    return ConversationStateChanged(
        conversation_id=conversation_id, state=to, previous=state.state, by=by, cause=cause,
        reason=reason, assignee_id=assignee_id, assignee_name=assignee_name,
    )


def _held_by_another(state: Handoff, member_id: str, force: bool) -> None:
    if state.state == HUMAN and state.assignee_id not in (None, member_id) and not force:
        raise LoaclError(
            "conversation_taken",
            f"{state.assignee_name or 'another member'} is answering this conversation; "
            "send force: true to take it over",
            assignee_id=state.assignee_id, assignee_name=state.assignee_name,
        )


def checked_reason(reason: str) -> str:
    reason = reason.strip()
    if len(reason) > MAX_REASON:
        raise LoaclError("validation_error", f"reason: at most {MAX_REASON} characters",
                         errors=[{"field": "reason", "message": "too long"}])
    return reason


def request_person(
    state: Handoff, conversation_id: str, *, by: str, reason: str = ""
) -> list[Event]:
    """The visitor (``by`` visitor) or the assistant (``by`` assistant) asks for a person: the
    conversation waits for one, unless one is asked for or present already."""
    if state.state in (WAITING, HUMAN):
        return []
    cause = ASSISTANT_ASKED if by == ASSISTANT else VISITOR_ASKED
    return [_changed(state, conversation_id, WAITING, by, cause, checked_reason(reason),
                     state.assignee_id, state.assignee_name)]


def take_over(
    state: Handoff, conversation_id: str, *, member_id: str, name: str, force: bool = False
) -> list[Event]:
    """A member answers the conversation from now on; the assistant stops answering."""
    if state.state == HUMAN and state.assignee_id == member_id:
        return []
    _held_by_another(state, member_id, force)
    return [_changed(state, conversation_id, HUMAN, member(member_id), TAKEN_OVER,
                     assignee_id=member_id, assignee_name=name)]


def release(
    state: Handoff, conversation_id: str, *, member_id: str, force: bool = False
) -> list[Event]:
    """The member gives the conversation back to the assistant (from ``waiting`` too: nobody
    is needed after all)."""
    if state.state not in (WAITING, HUMAN):
        return []
    _held_by_another(state, member_id, force)
    return [_changed(state, conversation_id, BOT, member(member_id), RELEASED)]


def close(state: Handoff, conversation_id: str, *, by: str) -> list[Event]:
    if state.state == CLOSED:
        return []
    return [_changed(state, conversation_id, CLOSED, by, CLOSED_BY)]


def assign(
    state: Handoff, conversation_id: str, *, by: str, assignee_id: str | None,
    assignee_name: str,
) -> list[Event]:
    if state.state == CLOSED:
        raise LoaclError("conversation_closed",
                         "the conversation is closed; take it over to reopen it")
    if state.assignee_id == assignee_id:
        return []
    return [ConversationAssigned(conversation_id=conversation_id, assignee_id=assignee_id,
                                 assignee_name=assignee_name if assignee_id else "", by=by)]


def checked_agent_text(text: str) -> str:
    text = text.strip()
    if not text:
        raise LoaclError("validation_error", "text: a message needs some text",
                         errors=[{"field": "text", "message": "empty"}])
    if len(text) > MAX_AGENT_TEXT:
        raise LoaclError("message_too_long",
                         f"a message may have at most {MAX_AGENT_TEXT} characters",
                         errors=[{"field": "text", "message": "too long"}])
    return text


def post_agent_message(
    state: Handoff, conversation_id: str, *, member_id: str, name: str, message_id: str,
    text: str, client_message_id: str | None = None, force: bool = False,
) -> list[Event]:
    """A member's message to the visitor; a conversation nobody held is taken over first."""
    text = checked_agent_text(text)
    _held_by_another(state, member_id, force)
    events: list[Event] = []
    if not (state.state == HUMAN and state.assignee_id == member_id):
        cause = TAKEN_OVER if state.state == HUMAN else AGENT_REPLIED
        events.append(_changed(state, conversation_id, HUMAN, member(member_id), cause,
                               assignee_id=member_id, assignee_name=name))
    events.append(AgentMessagePosted(
        conversation_id=conversation_id, message_id=message_id, author_id=member_id,
        author_name=name, text=text, client_message_id=client_message_id,
    ))
    return events


def before_visitor_message(state: Handoff, conversation_id: str) -> list[Event]:
    """What a visitor's message changes first: a closed conversation reopens to the
    assistant."""
    if state.state == CLOSED:
        return [_changed(state, conversation_id, BOT, VISITOR, REOPENED)]
    return []
