"""Replay opens a sealed field only where a projection reads it: the event types some handler
registered with ``Projections.on`` takes. A handler registered with ``on_sealed`` declares that
it reads no personal field; each such declaration in LOACL's own projections is checked here
against its tables, and replay still equals live."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from loacl.domain.conversations import MessagePosted, ToolCalled
from loacl.domain.errors import LoaclError
from loacl.domain.events import Event, Metadata, RecordedEvent
from loacl.domain.handoff import ConversationStateChanged
from loacl.domain.privacy import ERASED, SubjectErased
from loacl.domain.widgets import ConversationStarted
from loacl.store import migrations
from loacl.store.eventstore import EventStore
from loacl.store.keys import MARK, Keyring, MasterKeys
from loacl.store.projections import Handler, Projections, _handled, default_projections
from loacl.store.replay import dump_tables, replay
from loacl.store.sqlite import connect
from tests.test_codec import SAMPLES

MASTER = bytes(range(32))


def keyring() -> Keyring:
    return Keyring(MasterKeys(lambda: [MASTER]))


Tables = dict[str, list[tuple[object, ...]]]


def _sample(event_type: str, **changes: Any) -> Any:
    return dataclasses.replace(SAMPLES[event_type], **changes)


def _state_changed(cid: str, reason: str) -> ConversationStateChanged:
    changed: ConversationStateChanged = _sample(
        "conversation.state_changed", conversation_id=cid, reason=reason
    )
    return changed


async def _seed(path: Path, cid: str) -> None:
    async with EventStore(path, default_projections(), keyring=keyring()) as store:
        await store.append(f"conversation-{cid}", [
            ConversationStarted(conversation_id=cid, widget_id="w", visitor_id="v"),
            MessagePosted(conversation_id=cid, message_id=f"{cid}-q", text=f"zqx-question-{cid}"),
            _state_changed(cid, f"zqx-reason-{cid}"),
            _sample("tool.called", arguments=f'{{"q": "zqx-args-{cid}"}}'),
        ], metadata=Metadata(actor="visitor:v", client_ip="198.51.100.7"))


def test_replay_opens_only_the_types_a_handler_reads(db_path: Path) -> None:
    asyncio.run(_seed(db_path, "c1"))
    seen: dict[str, list[str]] = {"text": [], "reason": [], "reason_both": []}
    projections = Projections()

    @projections.on
    def posted(conn: sqlite3.Connection, event: MessagePosted, recorded: RecordedEvent) -> None:
        seen["text"].append(event.text)

    @projections.on_sealed
    def changed(
        conn: sqlite3.Connection, event: ConversationStateChanged, recorded: RecordedEvent
    ) -> None:
        seen["reason"].append(event.reason)

    conn = connect(db_path)
    try:
        replay(conn, projections, keys=keyring().attach(conn))
        assert seen["text"] == ["zqx-question-c1"]
        # Left sealed: the handler said it reads no personal field.
        assert len(seen["reason"]) == 1 and seen["reason"][0].startswith(MARK)
        assert "zqx-reason" not in seen["reason"][0]
        assert projections.opened == {"message.posted"}

        # Another handler of the same type registered with ``on``: now it is opened for both.
        @projections.on
        def changed_too(
            conn: sqlite3.Connection, event: ConversationStateChanged, recorded: RecordedEvent
        ) -> None:
            seen["reason_both"].append(event.reason)

        seen["reason"].clear()
        replay(conn, projections, keys=keyring().attach(conn))
        assert seen["reason"] == seen["reason_both"] == ["zqx-reason-c1"]
    finally:
        conn.close()


def test_replay_equals_live_with_declared_handlers_and_after_an_erasure(db_path: Path) -> None:
    asyncio.run(_seed(db_path, "c1"))
    asyncio.run(_seed(db_path, "c2"))

    async def erase() -> None:
        async with EventStore(db_path, default_projections(), keyring=keyring()) as store:
            await store.append("conversation-c1", [SubjectErased(
                subject="conversation:c1", reason="request", requested_by="test",
                scope="conversation:c1",
            )])

    asyncio.run(erase())
    tables = default_projections().tables
    conn = connect(db_path)
    try:
        live = dump_tables(conn, tables)
        assert live["conversations"] and live["messages"]
        replay(conn, default_projections(), keys=keyring().attach(conn))
        assert dump_tables(conn, tables) == live
        texts = {row[0]: row[1] for row in conn.execute(
            "SELECT conversation_id, text FROM messages")}
        assert texts == {"c1": ERASED, "c2": "zqx-question-c2"}
    finally:
        conn.close()
    data = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
    for erased in (b"zqx-question-c1", b"zqx-reason-c1", b"zqx-args-c1"):
        assert erased not in data


def _before(target: str) -> list[Event]:
    """Every sample before ``target``, in the order SAMPLES lists them (a conversation's start
    before its state changes), so that the handler has rows to change."""
    events: list[Event] = []
    for event_type, sample in SAMPLES.items():
        if event_type == target:
            return events
        events.append(sample)
    raise AssertionError(target)


def _tables_after(
    path: Path, before: list[Event], handler_event: Event
) -> tuple[Tables, Tables]:
    conn = connect(path)
    migrations.up(conn)
    projections = default_projections()
    seq = 0

    def record(event: Event) -> RecordedEvent:
        nonlocal seq
        seq += 1
        return RecordedEvent(seq, "s", seq, event, Metadata(), datetime(2026, 1, 1, tzinfo=UTC),
                             "0" * 64)

    try:
        for event in before:
            conn.execute("SAVEPOINT one")
            try:
                projections.apply(conn, [record(event)])
            except (sqlite3.Error, LoaclError):  # a veto: that sample is left out
                conn.execute("ROLLBACK TO one")
            conn.execute("RELEASE one")
        untouched = dump_tables(conn, projections.tables)
        recorded = record(handler_event)
        for handler in projections.sealed:
            if handler_event.event_type in {
                cls.event_type for cls in _classes(handler)
            }:
                handler(conn, handler_event, recorded)
        return untouched, dump_tables(conn, projections.tables)
    finally:
        conn.close()


def _classes(handler: Handler) -> tuple[type[Event], ...]:
    return _handled(handler)


def _declared() -> list[tuple[str, str]]:
    return sorted(
        (handler.__qualname__, cls.event_type)
        for handler in default_projections().sealed for cls in _classes(handler)
    )


@pytest.mark.parametrize(("handler", "event_type"), _declared())
def test_a_handler_declared_sealed_reads_no_personal_field(
    tmp_path: Path, handler: str, event_type: str
) -> None:
    """The handler's tables are the same whether its event's personal fields hold their text
    or a sealed value, and the handler does change them (the check is not vacuous)."""
    sample = SAMPLES[event_type]
    assert type(sample).personal, f"{handler} takes {event_type}, which has no personal field"
    sealed = _sample(event_type, **{name: MARK + "AQAAAAEsealed" for name in type(sample).personal})
    before = _before(event_type)
    untouched, opened = _tables_after(tmp_path / "opened.db", before, sample)
    _, unopened = _tables_after(tmp_path / "sealed.db", before, sealed)
    assert opened != untouched, f"{handler} changed nothing: the check would prove nothing"
    assert unopened == opened


def test_loacl_declares_its_handlers_that_read_no_personal_field() -> None:
    assert _declared() == [("state_changed", "conversation.state_changed")]
    assert ToolCalled.event_type not in default_projections().opened  # no handler at all
    assert ConversationStateChanged.event_type not in default_projections().opened
