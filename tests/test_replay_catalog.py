"""Replay equals live for assistants, widgets, conversations, messages and files: random valid
sequences of commands (erasures among them), run through the domain's decisions and an event
store that seals personal fields, then every read table dumped before and after ``replay``
(which reads erased fields as ``[erased]``) and compared row by row."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loacl.domain import accounts
from loacl.domain import assistants as asst
from loacl.domain import conversations as conv
from loacl.domain import handoff as ho
from loacl.domain import webhooks as hooks
from loacl.domain import widgets as wdg
from loacl.domain import workspaces as spaces
from loacl.domain.errors import LoaclError
from loacl.domain.events import Event, Metadata
from loacl.domain.privacy import SubjectErased
from loacl.store import audit, migrations, replay
from loacl.store.eventstore import NO_STREAM, EventStore
from loacl.store.keys import Keyring, MasterKeys
from loacl.store.projections import default_projections
from loacl.store.sqlite import connect

TABLES = default_projections().tables
KINDS = [
    "assistant", "edit_assistant", "delete_assistant", "widget", "edit_widget", "rotate",
    "delete_widget", "conversation", "upload", "ask", "stream", "finish", "send_file", "erase",
    "erase_owner", "webhook", "edit_webhook", "rotate_webhook", "disable_webhook",
    "delete_webhook", "register", "rename_user", "workspace", "rename_workspace",
    "delete_workspace", "invite", "revoke_invite", "join", "role", "remove_member",
    "handoff", "takeover", "agent_message", "release", "close", "assign", "read",
    "reply_address",
]
HANDOFF_KINDS = {"handoff", "takeover", "agent_message", "release", "close", "assign", "read",
                 "reply_address"}
MASTER = bytes(range(32))
TEXTS = ["Bonjour", "Où est mon colis ? 📦", "", "**bold** and `code`", "a" * 300]


@dataclass
class World:
    assistants: list[str] = field(default_factory=list)
    widgets: list[str] = field(default_factory=list)
    conversations: list[str] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)
    erased: set[str] = field(default_factory=set)
    webhooks: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    workspaces: list[str] = field(default_factory=list)
    counter: int = 0

    def new(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"


async def _refusable(append: Awaitable[object], code: str) -> bool:
    """Run an append the read tables may veto with ``code``; whether it was written."""
    try:
        await append
    except LoaclError as exc:
        assert exc.code == code, exc
        return False
    return True


def _definition(name: str, n: int) -> asst.AssistantDefinition:
    return asst.AssistantDefinition(
        name=name, provider=("openai", "chat_completions", "demo")[n % 3], model=f"model-{n}",
        instructions=TEXTS[n % len(TEXTS)], temperature=None if n % 2 else n / 10,
        vector_store_ids=("vs_a",) if n % 4 == 0 else (),
    )


def _widget(name: str, assistant_id: str, n: int) -> wdg.WidgetDefinition:
    return wdg.WidgetDefinition(
        name=name, assistant_id=assistant_id,
        allowed_origins=("https://shop.example.com", "https://*.example.org")[: 1 + n % 2],
        settings=wdg.WidgetSettings(theme=("light", "dark", "auto")[n % 3], locale="fr"),
        messages_per_minute=1 + n, enabled=n % 5 != 0,
    )


async def _step(store: EventStore, world: World, kind: str, a: int, b: int) -> None:
    # Commands that need something first make it, so that short examples reach every step.
    if kind in {"edit_assistant", "delete_assistant", "widget"} and not world.assistants:
        kind = "assistant"
    if kind in {"edit_widget", "rotate", "delete_widget", "conversation"} and not world.widgets:
        kind = "widget" if world.assistants else "assistant"
    if kind in {"upload", "ask", "stream", "finish", "send_file", "erase",
                *HANDOFF_KINDS} and not world.conversations:
        kind = "conversation" if world.widgets else ("widget" if world.assistants
                                                      else "assistant")
    owner = f"owner{a % 2}"
    events: list[Event]
    if kind.endswith("webhook"):
        await _webhook_step(store, world, kind, owner, a, b)
        return
    if kind in WORKSPACE_KINDS:
        await _workspace_step(store, world, kind, a, b)
        return
    if kind == "assistant":
        assistant_id = world.new("a")
        world.assistants.append(assistant_id)
        await store.append(asst.assistant_stream(assistant_id),
                           asst.create_assistant(assistant_id, owner, _definition("A", b)),
                           expected_version=NO_STREAM)
        return
    if kind in {"edit_assistant", "delete_assistant"}:
        assistant_id = world.assistants[a % len(world.assistants)]
        state, version = await store.load(
            asst.assistant_stream(assistant_id), asst.Assistant(), asst.evolve_assistant
        )
        if state.deleted:
            return
        if kind == "edit_assistant":
            events = asst.update_assistant(state, state.owner_id, _definition(f"A{b}", b))
        else:
            events = asst.delete_assistant(state, state.owner_id)
        await _refusable(store.append(asst.assistant_stream(assistant_id), events,
                                      expected_version=version), "assistant_in_use")
        return
    if kind == "widget":
        widget_id = world.new("w")
        world.widgets.append(widget_id)
        assistant_id = world.assistants[b % len(world.assistants)]
        created = await _refusable(
            store.append(wdg.widget_stream(widget_id),
                         wdg.create_widget(widget_id, owner, _widget("W", assistant_id, b)),
                         expected_version=NO_STREAM),
            "unknown_assistant",
        )
        if not created:
            world.widgets.remove(widget_id)
        return
    if kind in {"edit_widget", "rotate", "delete_widget"}:
        widget_id = world.widgets[a % len(world.widgets)]
        widget, version = await store.load(
            wdg.widget_stream(widget_id), wdg.Widget(), wdg.evolve_widget
        )
        if widget.deleted:
            return
        assert widget.definition is not None
        if kind == "edit_widget":
            events = wdg.update_widget(
                widget, widget.owner_id,
                _widget(f"W{b}", world.assistants[b % len(world.assistants)], b),
            )
        elif kind == "rotate":
            events = wdg.rotate_secret(widget, widget.owner_id)
        else:
            events = wdg.delete_widget(widget, widget.owner_id)
        await _refusable(store.append(wdg.widget_stream(widget_id), events,
                                      expected_version=version), "unknown_assistant")
        return
    if kind == "conversation":
        conversation_id = world.new("c")
        world.conversations.append(conversation_id)
        world.files[conversation_id] = []
        await store.append(
            wdg.conversation_stream(conversation_id),
            [wdg.ConversationStarted(
                conversation_id=conversation_id, widget_id=world.widgets[b % len(world.widgets)],
                visitor_id=world.new("v"),
                external_user_id=world.new("crm-") if b % 3 == 0 else None,
            )],
            expected_version=NO_STREAM,
        )
        return
    if kind == "erase_owner":
        owner_id = f"owner{a % 2}"
        if owner_id in world.erased:
            return
        world.erased.add(owner_id)
        await store.append(f"user-{owner_id}", [SubjectErased(
            subject=f"owner:{owner_id}", reason="request", requested_by="test",
            scope=f"owner:{owner_id}",
        )])
        return
    conversation_id = world.conversations[a % len(world.conversations)]
    if conversation_id in world.erased:
        return
    stream = wdg.conversation_stream(conversation_id)
    if kind == "erase":
        world.erased.add(conversation_id)
        await store.append(stream, [SubjectErased(
            subject=f"conversation:{conversation_id}", reason="retention",
            requested_by="retention", scope=f"conversation:{conversation_id}",
        )], metadata=Metadata(client_ip="192.0.2.1"))
        return
    talk, version = await store.load(stream, conv.Conversation(), conv.evolve_conversation)
    if kind in HANDOFF_KINDS:
        await _handoff_step(store, world, kind, talk, version, a, b)
        return
    if kind == "upload":
        file_id = world.new("f")
        world.files[conversation_id].append(file_id)
        events = [conv.FileUploaded(
            file_id=file_id, conversation_id=conversation_id, widget_id=talk.widget_id,
            visitor_id=talk.visitor_id, filename=f"doc{b}.txt", kind="txt",
            content_type="text/plain; charset=utf-8", size=10 + b, sha256=f"{b:064x}",
        )]
    elif kind == "send_file":
        if not world.files[conversation_id]:
            return
        file_id = world.files[conversation_id][b % len(world.files[conversation_id])]
        events = [conv.FileSentToProvider(file_id=file_id, provider="openai",
                                          provider_file_id=f"file-{b}")]
    elif kind == "ask":
        if talk.running is not None:
            return
        events = conv.post_message(
            talk, message_id=world.new("m"), reply_id=world.new("r"),
            text=TEXTS[b % len(TEXTS)] or "?", file_ids=tuple(world.files[conversation_id][:1]),
            client_message_id=f"c{b}" if b % 2 else None, assistant_id="a", provider="demo",
            model="demo",
        )
    elif talk.running is None:
        return
    elif kind == "stream":
        text = TEXTS[b % len(TEXTS)] or " "
        events = [conv.AssistantDelta(message_id=talk.running.message_id,
                                      offset=len(talk.running.text), text=text)]
    else:
        running = talk.running
        end: list[Event] = [
            conv.AssistantCompleted(message_id=running.message_id, text=running.text,
                                    usage=conv.Usage(input_tokens=b, output_tokens=a)),
            conv.AssistantFailed(message_id=running.message_id, code="provider_error",
                                 error="boom", text=running.text),
            conv.AssistantInterrupted(message_id=running.message_id, text=running.text),
        ]
        events = [end[b % 3]]
    await store.append(stream, events, expected_version=version,
                       metadata=Metadata(client_ip=f"192.0.2.{b}"))


async def _handoff_step(
    store: EventStore, world: World, kind: str, talk: conv.Conversation, version: int, a: int,
    b: int,
) -> None:
    """Who answers the conversation: the visitor or the assistant asks for a person, members
    (two of them, so that one may hold what the other wants) take over, write, give back,
    close, assign and read."""
    member, name = f"owner{a % 2}", f"Agent {a % 2}"
    cid, state = talk.conversation_id, talk.handoff
    events: list[Event]
    try:
        if kind == "handoff":
            events = ho.request_person(state, cid, by=(ho.VISITOR, ho.ASSISTANT)[b % 2],
                                       reason=TEXTS[b % len(TEXTS)])
        elif kind == "takeover":
            events = ho.take_over(state, cid, member_id=member, name=name, force=b % 3 == 0)
        elif kind == "agent_message":
            events = ho.post_agent_message(
                state, cid, member_id=member, name=name, message_id=world.new("g"),
                text=TEXTS[b % len(TEXTS)] or "Hello", force=b % 2 == 0,
                client_message_id=f"g{b}" if b % 2 else None)
        elif kind == "release":
            events = ho.release(state, cid, member_id=member, force=b % 2 == 0)
        elif kind == "close":
            events = ho.close(state, cid, by=ho.member(member))
        elif kind == "assign":
            events = ho.assign(state, cid, by=ho.member(member),
                               assignee_id=None if b % 3 == 0 else member, assignee_name=name)
        elif kind == "reply_address":
            # The decision compares with the address left before; the catalog leaves a new
            # one each time (a repeat is a no-op the service decides from the read table).
            events = ho.leave_reply_address(cid, None, f"visitor{b}@exämple.com")
        else:
            await store.append(ho.inbox_stream(member), [ho.ConversationRead(
                conversation_id=cid, member_id=member, up_to=b * 3)])
            return
    except LoaclError as exc:
        assert exc.code in ("conversation_taken", "conversation_closed"), exc
        return
    if events:
        await store.append(wdg.conversation_stream(cid), events, expected_version=version)


async def _webhook_step(
    store: EventStore, world: World, kind: str, owner: str, a: int, b: int
) -> None:
    if kind != "webhook" and not world.webhooks:
        kind = "webhook"
    definition = hooks.WebhookDefinition(
        url=f"https://hooks.example.com/{b}", event_types=(hooks.ALL_KINDS[b % 8],),
        personal_data=bool(b % 2), enabled=bool(a % 3), description=TEXTS[b % len(TEXTS)])
    if kind == "webhook":
        webhook_id = world.new("h")
        world.webhooks.append(webhook_id)
        await store.append(hooks.webhook_stream(webhook_id), hooks.create_webhook(
            hooks.Webhook(), webhook_id=webhook_id, owner_id=owner, definition=definition),
            expected_version=NO_STREAM)
        return
    webhook_id = world.webhooks[a % len(world.webhooks)]
    state, version = await store.load(hooks.webhook_stream(webhook_id), hooks.Webhook(),
                                      hooks.evolve_webhook)
    if not state.exists:
        return
    events: list[Event] = {
        "edit_webhook": lambda: hooks.update_webhook(state, state.owner_id, definition),
        "rotate_webhook": lambda: hooks.rotate_secret(state, state.owner_id),
        "disable_webhook": lambda: hooks.disable_webhook(state, hooks.FAILURES, b),
        "delete_webhook": lambda: hooks.delete_webhook(state, state.owner_id),
    }[kind]()
    await store.append(hooks.webhook_stream(webhook_id), events, expected_version=version)


WORKSPACE_KINDS = {"register", "rename_user", "workspace", "rename_workspace", "delete_workspace",
                   "invite", "revoke_invite", "join", "role", "remove_member"}


async def _workspace_step(store: EventStore, world: World, kind: str, a: int, b: int) -> None:
    """Accounts (owner0 and owner1 among them, whom erase_owner erases), workspaces personal and
    made, invites, members and roles, through the domain's decisions."""
    users = [u for u in world.users if u not in world.erased]
    if kind != "register" and not users:
        kind = "register"
    if kind in {"invite", "revoke_invite", "join", "role", "remove_member"} and not (
        world.workspaces or users
    ):
        kind = "workspace"
    if kind == "register":
        owner = f"owner{a % 2}"
        user_id = owner if owner not in world.users and owner not in world.erased else (
            world.new("u"))
        world.users.append(user_id)
        await store.append(f"user-{user_id}", accounts.register(
            user_id, f"{user_id}@example.com", TEXTS[b % len(TEXTS)][:200] or None, "$argon2id$x"),
            expected_version=NO_STREAM)
        return
    if kind == "rename_user":
        user_id = users[a % len(users)]
        state, version = await store.load(f"user-{user_id}", accounts.User(),
                                          accounts.evolve_user)
        await store.append(f"user-{user_id}", accounts.rename(state, TEXTS[b % len(TEXTS)][:200]),
                           expected_version=version)
        return
    if kind == "workspace":
        workspace_id = world.new("ws")
        world.workspaces.append(workspace_id)
        await store.append(spaces.workspace_stream(workspace_id), spaces.create(
            workspace_id, f"Team {b}", users[a % len(users)]), expected_version=NO_STREAM)
        return
    targets = [*world.workspaces, *users]
    workspace_id = targets[a % len(targets)]
    if kind in {"rename_workspace", "delete_workspace"} and not world.workspaces:
        return
    if kind in {"rename_workspace", "delete_workspace"}:
        workspace_id = world.workspaces[a % len(world.workspaces)]
    start = spaces.personal(workspace_id) if workspace_id in world.users else spaces.Workspace()
    space, version = await store.load(spaces.workspace_stream(workspace_id), start,
                                      spaces.evolve)
    await _decide_workspace(store, world, kind, space, version, users, a, b)


async def _decide_workspace(
    store: EventStore, world: World, kind: str, state: spaces.Workspace, version: int,
    users: list[str], a: int, b: int,
) -> None:
    workspace_id = state.workspace_id
    members = sorted(m for m in state.members if m not in world.erased)
    if state.deleted or not state.exists or not members:
        return
    subject: str | None = None
    events: list[Event]
    try:
        if kind == "rename_workspace":
            events = spaces.rename(state, f"Renamed {b}")
        elif kind == "delete_workspace":
            events = spaces.delete(state)
        elif kind == "invite":
            inviter = members[b % len(members)]
            subject = f"owner:{inviter}"
            events = spaces.invite(state, world.new("i"), f"guest{b}@example.com",
                                   spaces.ROLES[b % 3], f"{world.counter:064x}", inviter,
                                   datetime(2031, 1, 1, tzinfo=UTC))
        elif kind in {"revoke_invite", "join"}:
            open_ = sorted(i for i, v in state.invites.items() if not (v.used or v.revoked))
            if not open_:
                return
            invite_id = open_[b % len(open_)]
            events = (spaces.revoke_invite(state, invite_id) if kind == "revoke_invite" else
                      spaces.accept(state, invite_id, users[b % len(users)],
                                    datetime(2030, 1, 1, tzinfo=UTC)))
        elif kind == "role":
            events = spaces.change_role(state, members[b % len(members)], spaces.ROLES[a % 3])
        else:
            events = spaces.remove(state, members[b % len(members)], "removed")
    except LoaclError:
        return  # refused (the last owner, a member already): nothing to write
    await store.append(spaces.workspace_stream(workspace_id), events,
                       expected_version=version, subject=subject)


def _keys() -> Keyring:
    return Keyring(MasterKeys(lambda: [MASTER]))


async def _live(path: Path, commands: list[tuple[str, int, int]]) -> None:
    world = World()
    async with EventStore(path, default_projections(), keyring=_keys()) as store:
        for command in commands:
            await _step(store, world, *command)


@settings(max_examples=40, deadline=None)
@given(
    commands=st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(0, 5), st.integers(0, 11)),
        min_size=10, max_size=60,
    )
)
def test_replay_equals_live_for_widgets_and_conversations(
    commands: list[tuple[str, int, int]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "loacl.db"
        conn = connect(path)
        migrations.up(conn)
        asyncio.run(_live(path, commands))
        live = replay.dump_tables(conn, TABLES)
        (count,) = conn.execute("SELECT count(*) FROM events").fetchone()
        result = replay.replay(conn, default_projections(), keys=_keys().attach(conn))
        assert result.events == count
        rebuilt = replay.dump_tables(conn, TABLES)
        for table in TABLES:
            assert rebuilt[table] == live[table], table
        assert audit.verify(conn).ok
        conn.close()


async def test_the_read_tables_keep_widgets_and_assistants_consistent(
    store: EventStore,
) -> None:
    """The store, not only the service, refuses a deleted assistant under a widget: two owners'
    requests racing past the service's check cannot leave a widget without its assistant."""
    await store.append(asst.assistant_stream("a1"),
                       asst.create_assistant("a1", "o", _definition("A", 1)), expected_version=0)
    await store.append(wdg.widget_stream("w1"),
                       wdg.create_widget("w1", "o", _widget("W", "a1", 1)), expected_version=0)
    with pytest.raises(LoaclError) as in_use:
        await store.append(asst.assistant_stream("a1"),
                           [asst.AssistantDeleted(assistant_id="a1")], expected_version=1)
    assert in_use.value.code == "assistant_in_use"
    with pytest.raises(LoaclError) as unknown:
        await store.append(wdg.widget_stream("w2"),
                           wdg.create_widget("w2", "o", _widget("W", "nope", 1)),
                           expected_version=0)
    assert unknown.value.code == "unknown_assistant"
    assert [e.type for e in await store.read_all()] == ["assistant.created", "widget.created"]
