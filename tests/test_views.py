"""The typed read views against a real database: what the domain's events become, decoded
into the one shape each reader uses (no rows, no JSON)."""

from __future__ import annotations

import pytest

from loacl.domain import assistants as asst
from loacl.domain import conversations as conv
from loacl.domain import widgets as wdg
from loacl.domain.errors import LoaclError
from loacl.providers import REGISTRY
from loacl.store.eventstore import NO_STREAM, EventStore
from loacl.store.views import assistants as assistant_views
from loacl.store.views import conversations as conversation_views
from loacl.store.views import files as file_views
from loacl.store.views import widgets as widget_views

ASSISTANT = asst.AssistantDefinition(
    name="Helper", provider="chat_completions", model="m-1", instructions="Be brief.",
    temperature=0.5, vector_store_ids=("vs_a", "vs_b"),
)
WIDGET = wdg.WidgetDefinition(
    name="Shop", assistant_id="a1",
    allowed_origins=("HTTPS://Shop.Example.com:443/", "https://shop.example.com",
                     "https://*.example.org"),
    settings=wdg.WidgetSettings(title="Ask us", theme="dark", locale="fr"),
    messages_per_minute=7, require_identity=True,
)


async def _world(store: EventStore) -> None:
    await store.append(asst.assistant_stream("a1"),
                       asst.create_assistant("a1", "o1", ASSISTANT), expected_version=NO_STREAM)
    await store.append(wdg.widget_stream("w1"), wdg.create_widget("w1", "o1", WIDGET),
                       expected_version=NO_STREAM)


async def test_an_assistant_and_a_widget_come_back_as_their_definitions(
    store: EventStore,
) -> None:
    await _world(store)
    assistant = await assistant_views.assistant(store, "a1")
    assert assistant is not None
    assert (assistant.owner_id, assistant.definition, assistant.version) == ("o1", ASSISTANT, 1)
    widget = await widget_views.widget(store, "w1")
    assert widget is not None
    # The domain put the origins in canonical form, each once, before the log took them.
    assert widget.definition.allowed_origins == ("https://shop.example.com",
                                                 "https://*.example.org")
    assert widget.definition.settings == WIDGET.settings
    assert (widget.secret_generation, widget.version) == (1, 1)
    setup = await widget_views.reply_setup(store, "w1")
    assert setup is not None
    assert (setup.assistant_id, setup.assistant, setup.messages_per_minute) == (
        "a1", ASSISTANT, 7)
    assert await assistant_views.widgets_using(store, "a1") == 1
    assert await widget_views.widget(store, "nope") is None
    assert await widget_views.reply_setup(store, "nope") is None


async def test_lists_page_by_creation_with_a_cursor(store: EventStore) -> None:
    for n in range(5):
        definition = asst.AssistantDefinition(name=f"A{n}", provider="demo", model="demo")
        await store.append(asst.assistant_stream(f"a{n}"),
                           asst.create_assistant(f"a{n}", "o1", definition))
    await store.append(asst.assistant_stream("other"), asst.create_assistant(
        "other", "o2", asst.AssistantDefinition(name="X", provider="demo", model="demo")))
    first = await assistant_views.assistants_of(store, "o1", 0, 2)
    assert [a.assistant_id for a in first.items] == ["a0", "a1"]
    assert first.next_cursor is not None
    second = await assistant_views.assistants_of(store, "o1", first.next_cursor, 2)
    third = await assistant_views.assistants_of(store, "o1", second.next_cursor or 0, 2)
    assert [a.assistant_id for a in second.items + third.items] == ["a2", "a3", "a4"]
    assert third.next_cursor is None


async def test_a_conversation_its_messages_files_and_what_posting_decides_on(
    store: EventStore,
) -> None:
    await _world(store)
    stream = wdg.conversation_stream("c1")
    await store.append(stream, [wdg.ConversationStarted(
        conversation_id="c1", widget_id="w1", visitor_id="v1", external_user_id="u1")])
    await file_views.keep_blob(store, "d" * 64, b"hello")
    await store.append(stream, [conv.FileUploaded(
        file_id="f1", conversation_id="c1", widget_id="w1", visitor_id="v1",
        filename="a.txt", kind="txt", content_type="text/plain", size=5, sha256="d" * 64)])
    state = await conversation_views.decision_state(store, "c1")
    events = conv.post_message(
        state, message_id="m1", reply_id="r1", text="Hi", file_ids=("f1",),
        client_message_id="k1", assistant_id="a1", provider="demo", model="demo")
    await store.append(stream, events)
    await store.append(stream, [conv.AssistantDelta(message_id="r1", offset=0, text="Hel")])

    state = await conversation_views.decision_state(store, "c1")
    assert state.exists and state.file_ids == frozenset({"f1"})
    assert state.running == conv.Reply("r1", "m1", "Hel")
    streaming = await conversation_views.streaming_replies(store)
    assert [(m.message_id, m.text, m.status) for m in streaming] == [("r1", "Hel", "streaming")]

    await store.append(stream, [conv.AssistantCompleted(
        message_id="r1", text="Hello", usage=conv.Usage(input_tokens=3, output_tokens=2))])
    sent = await conversation_views.message_by_client_id(store, "c1", "k1")
    assert sent is not None and (sent.message_id, sent.file_ids) == ("m1", ("f1",))
    assert await conversation_views.reply_id(store, "m1") == "r1"
    reply = await conversation_views.message(store, "r1")
    assert reply is not None
    assert (reply.text, reply.status, reply.input_tokens, reply.output_tokens) == (
        "Hello", "completed", 3, 2)
    page = await conversation_views.messages(store, "c1", before=None, after=None, limit=1)
    assert [m.message_id for m in page.items] == ["r1"]
    assert (page.more_before, page.more_after) == (True, False)
    found = await conversation_views.conversation_of_user(store, "w1", "u1")
    assert found is not None and (found.conversation_id, found.message_count) == ("c1", 2)
    stored = await file_views.file(store, "f1")
    assert stored is not None and (stored.filename, stored.kind, stored.size) == ("a.txt", "txt", 5)
    assert await file_views.blobs(store, ["d" * 64]) == {"d" * 64: b"hello"}
    assert await file_views.blob(store, "e" * 64) is None


def test_every_provider_an_assistant_may_name_has_a_factory() -> None:
    assert set(REGISTRY) == set(asst.PROVIDERS)


@pytest.mark.parametrize(
    ("text", "file_ids", "client_id", "code"),
    [
        ("   ", (), None, "validation_error"),
        ("x" * 11, (), None, "message_too_long"),
        ("hi", tuple(f"f{n}" for n in range(conv.MAX_ATTACHMENTS + 1)), None,
         "validation_error"),
        ("hi", (), "", "validation_error"),
        ("hi", (), "k" * (conv.MAX_CLIENT_ID + 1), "validation_error"),
    ],
)
def test_a_message_is_checked_the_same_for_every_way_in(
    text: str, file_ids: tuple[str, ...], client_id: str | None, code: str
) -> None:
    with pytest.raises(LoaclError) as caught:
        conv.checked_message(text, file_ids, client_id, max_chars=10)
    assert caught.value.code == code
    assert conv.checked_message("  hi  ", (), "k", max_chars=10) == "hi"


@pytest.mark.parametrize("origin", ["shop.example.com", "https://*.com", "null", "ftp://x.org"])
def test_a_widget_with_a_bad_origin_is_refused_by_the_domain(origin: str) -> None:
    bad = wdg.WidgetDefinition(name="W", assistant_id="a", allowed_origins=("https://ok.org",
                                                                           origin))
    with pytest.raises(LoaclError) as caught:
        wdg.create_widget("w", "o", bad)
    assert caught.value.code == "validation_error"
    assert caught.value.extra["errors"][0]["field"] == "allowed_origins.1"


def test_an_assistant_naming_no_known_provider_is_refused_by_the_domain() -> None:
    bad = asst.AssistantDefinition(name="A", provider="acme", model="m")
    with pytest.raises(LoaclError) as caught:
        asst.create_assistant("a", "o", bad)
    assert caught.value.code == "validation_error"
