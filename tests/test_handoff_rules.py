"""The rules of handing a conversation to a person (``domain.handoff``), as decisions: who may
change what, and the events each change is."""

from __future__ import annotations

import pytest

from loacl.domain import conversations as conv
from loacl.domain import handoff as ho
from loacl.domain.errors import LoaclError
from loacl.domain.events import Event
from loacl.http.errors import status_for

CID = "c1"
BOT = ho.Handoff()
WAITING = ho.Handoff(ho.WAITING)
MINE = ho.Handoff(ho.HUMAN, "u1", "Ann")
THEIRS = ho.Handoff(ho.HUMAN, "u2", "Bob")
CLOSED = ho.Handoff(ho.CLOSED)

def change(events: list[Event]) -> tuple[str, str, str, str, str | None]:
    (event,) = events
    assert isinstance(event, ho.ConversationStateChanged)
    return event.previous, event.state, event.by, event.cause, event.assignee_id

@pytest.mark.parametrize(("state", "expected"), [
    (BOT, ("bot", "waiting", "visitor", "visitor_asked", None)),
    (CLOSED, ("closed", "waiting", "visitor", "visitor_asked", None)),
    (WAITING, None),
    (MINE, None),
])
def test_the_visitor_asks_for_a_person(state: ho.Handoff, expected: tuple[str, ...] | None
                                       ) -> None:
    events = ho.request_person(state, CID, by=ho.VISITOR, reason=" now ")
    assert (change(events) if events else None) == expected

def test_the_assistant_asks_with_its_reason() -> None:
    (event,) = ho.request_person(BOT, CID, by=ho.ASSISTANT, reason="refund")
    assert isinstance(event, ho.ConversationStateChanged)
    assert (event.cause, event.reason) == ("assistant_asked", "refund")
    with pytest.raises(LoaclError) as long:
        ho.request_person(BOT, CID, by=ho.ASSISTANT, reason="x" * 501)
    assert long.value.code == "validation_error"

def test_taking_over_what_another_member_holds_needs_force() -> None:
    assert change(ho.take_over(WAITING, CID, member_id="u1", name="Ann")) == (
        "waiting", "human", "member:u1", "taken_over", "u1")
    assert ho.take_over(MINE, CID, member_id="u1", name="Ann") == []
    with pytest.raises(LoaclError) as taken:
        ho.take_over(THEIRS, CID, member_id="u1", name="Ann")
    assert (taken.value.code, status_for(taken.value.code)) == ("conversation_taken", 409)
    assert taken.value.extra["assignee_name"] == "Bob"
    assert change(ho.take_over(THEIRS, CID, member_id="u1", name="Ann", force=True))[4] == "u1"

def test_giving_back_closing_and_assigning() -> None:
    assert ho.release(BOT, CID, member_id="u1") == []
    assert change(ho.release(MINE, CID, member_id="u1")) == (
        "human", "bot", "member:u1", "released", None)
    with pytest.raises(LoaclError) as taken:
        ho.release(THEIRS, CID, member_id="u1")
    assert taken.value.code == "conversation_taken"
    assert change(ho.release(WAITING, CID, member_id="u1"))[1] == "bot"
    assert change(ho.close(THEIRS, CID, by=ho.member("u1")))[1] == "closed"
    assert ho.close(CLOSED, CID, by=ho.member("u1")) == []
    with pytest.raises(LoaclError) as closed:
        ho.assign(CLOSED, CID, by="member:u1", assignee_id="u1", assignee_name="Ann")
    assert (closed.value.code, status_for("conversation_closed")) == ("conversation_closed", 409)
    (assigned,) = ho.assign(WAITING, CID, by="member:u1", assignee_id="u2", assignee_name="Bob")
    assert isinstance(assigned, ho.ConversationAssigned)
    assert ho.evolve_handoff(WAITING, assigned) == ho.Handoff(ho.WAITING, "u2", "Bob")
    assert ho.assign(MINE, CID, by="member:u1", assignee_id="u1", assignee_name="Ann") == []

def test_a_members_message_takes_over_a_conversation_nobody_holds() -> None:
    first, message = ho.post_agent_message(BOT, CID, member_id="u1", name="Ann",
                                           message_id="m1", text=" Hello ")
    assert change([first]) == ("bot", "human", "member:u1", "agent_replied", "u1")
    assert isinstance(message, ho.AgentMessagePosted)
    assert (message.text, message.author_name) == ("Hello", "Ann")
    (only,) = ho.post_agent_message(MINE, CID, member_id="u1", name="Ann", message_id="m2",
                                    text="Again")
    assert isinstance(only, ho.AgentMessagePosted)
    with pytest.raises(LoaclError) as taken:
        ho.post_agent_message(THEIRS, CID, member_id="u1", name="Ann", message_id="m3",
                              text="Hi")
    assert taken.value.code == "conversation_taken"
    with pytest.raises(LoaclError) as empty:
        ho.post_agent_message(MINE, CID, member_id="u1", name="Ann", message_id="m4",
                              text="  ")
    assert empty.value.code == "validation_error"

def _conversation(handoff: ho.Handoff, running: bool = False) -> conv.Conversation:
    return conv.Conversation(CID, "w1", "v1", True, handoff=handoff,
                             running=conv.Reply("r0", "m0") if running else None)

def _post(state: conv.Conversation) -> list[str]:
    return [e.event_type for e in conv.post_message(
        state, message_id="m1", reply_id="r1", text="hi", file_ids=(), client_message_id=None,
        assistant_id="a1", provider="demo", model="demo")]

def test_who_answers_the_visitors_message() -> None:
    assert _post(_conversation(BOT)) == ["message.posted", "assistant.started"]
    assert _post(_conversation(WAITING)) == ["message.posted"]
    # While a person answers, the visitor may write while the assistant's last reply ends.
    assert _post(_conversation(MINE, running=True)) == ["message.posted"]
    assert _post(_conversation(CLOSED)) == ["conversation.state_changed", "message.posted",
                                           "assistant.started"]
    with pytest.raises(LoaclError) as busy:
        _post(_conversation(BOT, running=True))
    assert busy.value.code == "reply_in_progress"
