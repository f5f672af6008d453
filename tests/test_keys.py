"""Data keys and master keys: sealing every personal field, opening it, refusing a wrong key or
a moved value; rotating the master key beside a running server; a database from before sealing,
migrated, erased and resealed into a new file; the operator's erase and status commands."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loacl.cli import main
from loacl.domain import widgets
from loacl.domain.conversations import AssistantCompleted, AssistantStarted, MessagePosted
from loacl.domain.errors import LoaclError
from loacl.domain.events import Event, Metadata, RecordedEvent
from loacl.domain.privacy import ERASED, SubjectErased
from loacl.services.accounts import Accounts
from loacl.services.keys import keyring_for
from loacl.settings import (
    CONFIG_ENV,
    ENV_NAMES,
    MASTER_KEY_FILE,
    Settings,
    SettingsError,
    format_master_key,
    load_settings,
    master_keys,
)
from loacl.store import codec, migrations
from loacl.store.eventstore import NO_STREAM, EventStore
from loacl.store.keys import MARK, Keyring, MasterKeys, SealKey, key_of, master_id, nonce
from loacl.store.projections import default_projections
from loacl.store.replay import dump_tables
from loacl.store.sqlite import connect
from tests.sealed import opened_rows
from tests.test_chat import PASSWORD, audit_ok, chat_settings, live, log_of, replay_matches
from tests.test_codec import SAMPLES

Cli = Callable[..., tuple[int, str, str]]
MASTER = bytes(range(32))


def keyring(*keys: bytes) -> Keyring:
    return Keyring(MasterKeys(lambda: list(keys or [MASTER])))


def sealing(keys: Keyring, conn: sqlite3.Connection, subject: str) -> SealKey:
    key = keys.for_sealing(conn, subject)
    assert key is not None
    return key


@pytest.fixture
def cli(settings: Settings, chdir_tmp: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Cli:
    for name in [CONFIG_ENV, *ENV_NAMES.values()]:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("LOACL_"):
            monkeypatch.delenv(name)

    def run(*args: str, database: Path | None = None) -> tuple[int, str, str]:
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database or settings.database_path}")
        monkeypatch.setenv("LOACL_DATA_DIR", str(settings.data_dir))
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


# -- sealing and opening ----------------------------------------------------------------------


@pytest.fixture
def opened(db_path: Path) -> Iterator[tuple[sqlite3.Connection, Keyring]]:
    conn = connect(db_path)
    keys = keyring().attach(conn)
    keys.prepare(conn, ["conversation:c1", "conversation:c2", "owner:u1"])
    yield conn, keys
    conn.close()


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_every_personal_field_is_sealed_and_opens_again(
    event_type: str, opened: tuple[sqlite3.Connection, Keyring]
) -> None:
    conn, keys = opened
    sample = SAMPLES[event_type]
    key = sealing(keys, conn, "owner:u1")
    payload = codec.encode_payload(sample, key)
    for name in type(sample).personal:
        value = getattr(sample, name)
        if value:
            assert value not in payload
            assert json.loads(payload)[name].startswith(MARK)
    assert codec.decode_payload(event_type, sample.schema_version, payload, keys) == sample
    if any(getattr(sample, name) for name in type(sample).personal):
        with pytest.raises(LoaclError) as refused:
            codec.decode_payload(event_type, sample.schema_version, payload)
        assert refused.value.code == "keys_unavailable"


def test_a_sealed_value_moved_to_another_field_or_event_does_not_open(
    opened: tuple[sqlite3.Connection, Keyring],
) -> None:
    conn, keys = opened
    key = sealing(keys, conn, "conversation:c1")
    sealed = key.seal(b"message.posted.text", "Hello")
    assert keys.open(sealed, b"message.posted.text") == "Hello"
    with pytest.raises(LoaclError) as moved:
        keys.open(sealed, b"assistant.delta.text")
    assert moved.value.code == "log_damaged"
    assert key_of(sealed) == key.key_id
    other = sealing(keys, conn, "conversation:c2")
    assert other.key_id != key.key_id


def test_a_wrong_master_key_is_named_not_guessed(
    db_path: Path, opened: tuple[sqlite3.Connection, Keyring]
) -> None:
    conn, keys = opened
    sealed = sealing(keys, conn, "conversation:c1").seal(b"x.y", "secret")
    stranger = keyring(bytes(32)).attach(conn)
    with pytest.raises(LoaclError) as refused:
        stranger.open(sealed, b"x.y")
    assert refused.value.code == "master_key_missing"
    with pytest.raises(LoaclError) as refused:
        stranger.prepare(conn, ["conversation:c3"])
    assert refused.value.code == "master_key_missing"


def test_an_erased_key_opens_nothing_and_seals_nothing(
    opened: tuple[sqlite3.Connection, Keyring],
) -> None:
    conn, keys = opened
    sealed = sealing(keys, conn, "conversation:c1").seal(b"x.y", "secret")
    conn.execute("UPDATE data_keys SET wrapped = NULL WHERE subject = 'conversation:c1'")
    keys.observe(keys.erasures + 1)  # what a writer does when the count moves
    assert keys.open(sealed, b"x.y") is ERASED
    with pytest.raises(LoaclError) as refused:
        sealing(keys, conn, "conversation:c1")
    assert refused.value.code == "subject_erased"
    assert keys.open(sealing(keys, conn, "conversation:c2").seal(b"x.y", "ok"), b"x.y") == "ok"


def test_nonces_never_repeat() -> None:
    seen = {nonce() for _ in range(50_000)}
    assert len(seen) == 50_000
    assert all(len(n) == 12 for n in list(seen)[:10])


@given(st.text(max_size=40))
def test_plain_text_beginning_with_nul_is_kept_apart_without_keys(text: str) -> None:
    event = MessagePosted(conversation_id="c", message_id="m", text=MARK + text)
    payload = codec.encode_payload(event)
    assert codec.decode_payload("message.posted", 1, payload) == event
    meta = Metadata(client_ip=MARK + text)
    assert codec.decode_metadata(codec.encode_metadata(meta)) == meta


def test_the_master_key_is_generated_once_with_mode_0600_and_never_shown(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = master_keys(settings)
    path = tmp_path / "data" / MASTER_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert master_keys(settings) == first and len(first[0]) == 32
    configured = Settings(data_dir=tmp_path / "data", master_key=format_master_key(MASTER))
    assert master_keys(configured) == [MASTER]
    with pytest.raises(SettingsError) as bad:
        load_settings(environ={"LOACL_MASTER_KEY": "c2VjcmV0"})
    assert "c2VjcmV0" not in str(bad.value) and "(hidden)" in str(bad.value)


# -- the store seals what it writes -----------------------------------------------------------


async def _seed_conversation(store: EventStore, cid: str, text: str) -> None:
    await store.append(f"conversation-{cid}", [
        MessagePosted(conversation_id=cid, message_id=f"{cid}-q", text=text),
        AssistantStarted(conversation_id=cid, message_id=f"{cid}-a", reply_to=f"{cid}-q",
                         assistant_id="a", provider="demo", model="demo"),
        AssistantCompleted(message_id=f"{cid}-a", text=f"answer to {text}"),
    ], metadata=Metadata(actor="test", client_ip="203.0.113.9"))


def test_the_store_seals_text_and_address_and_reads_them_back(db_path: Path) -> None:
    async def run() -> list[RecordedEvent]:
        async with EventStore(db_path, default_projections(), keyring=keyring()) as store:
            await _seed_conversation(store, "c1", "zqx-first")
            return await store.read_stream("conversation-c1")

    read = asyncio.run(run())
    assert [r.metadata.client_ip for r in read] == ["203.0.113.9"] * 3
    assert read[0].event == MessagePosted(conversation_id="c1", message_id="c1-q",
                                          text="zqx-first")
    conn = sqlite3.connect(db_path)
    stored = "".join(p for (p,) in conn.execute("SELECT payload || metadata FROM events"))
    conn.close()
    assert "zqx-first" not in stored and "203.0.113.9" not in stored


def test_events_of_an_erased_subject_are_refused_even_in_the_same_batch(db_path: Path) -> None:
    async def run() -> list[Any]:
        async with EventStore(db_path, default_projections(), keyring=keyring()) as store:
            await _seed_conversation(store, "c1", "first")
            erase = store.append("conversation-c1", [SubjectErased(
                subject="conversation:c1", reason="request", requested_by="test",
                scope="conversation:c1",
            )])
            after = store.append("conversation-c1", [
                MessagePosted(conversation_id="c1", message_id="late", text="too late")
            ])
            return list(await asyncio.gather(erase, after, return_exceptions=True))

    erased, late = asyncio.run(run())
    assert not isinstance(erased, BaseException)
    assert isinstance(late, LoaclError) and late.code == "subject_erased"
    conn = sqlite3.connect(db_path)
    kinds = [k for (k,) in conn.execute("SELECT type FROM events ORDER BY seq")]
    conn.close()
    assert kinds[-1] == "privacy.erased" and "too late" not in kinds


def test_an_address_is_sealed_once_per_subject_and_erased_with_it(db_path: Path) -> None:
    """Requests of one conversation from one address share its sealed value (the same
    plaintext under the same key, nothing else); another conversation's differs; erasing the
    first leaves its address unreadable in the log and in the file's bytes, the second's not."""

    async def run() -> tuple[list[RecordedEvent], list[RecordedEvent]]:
        async with EventStore(db_path, default_projections(), keyring=keyring()) as store:
            for cid in ("c1", "c2"):
                for n in range(2):  # two requests: request ids differ, the address does not
                    await store.append(f"conversation-{cid}", [MessagePosted(
                        conversation_id=cid, message_id=f"{cid}-{n}", text=f"zqx-{cid}-{n}",
                    )], metadata=Metadata(actor="visitor:v", request_id=f"{cid}-r{n}",
                                          client_ip="198.51.100.77"))
            await store.append("conversation-c1", [SubjectErased(
                subject="conversation:c1", reason="request", requested_by="test",
                scope="conversation:c1",
            )])
            return (await store.read_stream("conversation-c1"),
                    await store.read_stream("conversation-c2"))

    first, second = asyncio.run(run())
    conn = sqlite3.connect(db_path)
    raw = {stream: [json.loads(m)["client_ip"] for (m,) in conn.execute(
        "SELECT metadata FROM events WHERE stream = ? AND type = 'message.posted' ORDER BY seq",
        (stream,))] for stream in ("conversation-c1", "conversation-c2")}
    conn.close()
    assert raw["conversation-c1"][0] == raw["conversation-c1"][1]  # one seal, reused
    assert raw["conversation-c2"][0] == raw["conversation-c2"][1]
    assert raw["conversation-c1"][0] != raw["conversation-c2"][0]  # another key, another value
    assert all(v.startswith(MARK) for values in raw.values() for v in values)
    assert [r.metadata.client_ip for r in second] == ["198.51.100.77"] * 2
    assert [r.metadata.client_ip for r in first[:2]] == [ERASED, ERASED]
    posted = [r.event for r in first[:2]]
    assert all(isinstance(e, MessagePosted) and e.text == ERASED for e in posted)
    data = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
    assert b"198.51.100.77" not in data and b"zqx-c1" not in data


# -- rotating the master key beside a running server ------------------------------------------


def test_keys_rotate_online_keeps_everything_readable_and_audit_passing(
    tmp_path: Path, cli: Cli, settings: Settings,
) -> None:
    settings = chat_settings(tmp_path, None, demo_widget=False)
    with live(settings) as site:
        site.register()
        widget_id = site.widget(provider="demo", model="demo")
        before = site.visitor(widget_id)
        assert site.post(before, "asked before the rotation").status_code == 201
        old = master_keys(settings)
        code, out, _ = cli("keys", "rotate", database=settings.database_path)
        assert code == 0, out
        new = master_keys(settings)
        assert len(new) == 2 and new[1:] == old
        assert f"master key {master_id(new[0])} now seals every data key" in out
        # The running server seals new subjects with the new key, and reads the old ones.
        after = site.visitor(widget_id)
        assert site.post(after, "asked after the rotation").status_code == 201
        assert site.post(before, "and again in the old one").status_code == 201
        conn = sqlite3.connect(settings.database_path)
        masters = {m for (m,) in conn.execute(
            "SELECT master_id FROM data_keys WHERE wrapped IS NOT NULL"
        )}
        conn.close()
        assert masters == {master_id(new[0])}
    code, out, _ = cli("keys", "rotate", "--forget-old", database=settings.database_path)
    assert code == 0 and "removed from the key file" in out
    assert len(master_keys(settings)) == 1
    assert cli("audit", "verify", database=settings.database_path)[0] == 0
    audit_ok(settings)
    replay_matches(settings)
    texts = [r.payload.get("text") for r in log_of(settings) if r.type == "message.posted"]
    assert texts == ["asked before the rotation", "asked after the rotation",
                     "and again in the old one"]
    with live(settings) as site:  # a fresh server opens every key with the one master key
        site.login()
        assert [m["text"] for m in site.messages(before)["data"]][-2] == "and again in the old one"


# -- a database from before sealing -----------------------------------------------------------


async def _old_loacl(settings: Settings) -> None:
    """What a LOACL without sealing wrote: plaintext personal fields."""
    async with EventStore(settings.database_path, default_projections()) as store:
        user = await Accounts.for_operator(store, settings).create_user(
            "old@example.com", PASSWORD, "Old Owner", verified=True, meta=Metadata()
        )
        definition = widgets.WidgetDefinition(name="Old", assistant_id="asst-old")
        await store.append("assistant-asst-old", [_assistant(user.user_id)],
                           expected_version=NO_STREAM)
        await store.append(widgets.widget_stream("w-old"),
                           widgets.create_widget("w-old", user.user_id, definition),
                           expected_version=NO_STREAM)
        for cid in ("c-keep", "c-erase"):
            await store.append(f"conversation-{cid}", [widgets.ConversationStarted(
                conversation_id=cid, widget_id="w-old", visitor_id=f"v-{cid}",
            )], expected_version=NO_STREAM)
            await _seed_conversation(store, cid, f"zqx-old-{cid}")


def _assistant(owner_id: str) -> Event:
    from loacl.domain.assistants import AssistantCreated, AssistantDefinition

    return AssistantCreated(assistant_id="asst-old", owner_id=owner_id,
                            definition=AssistantDefinition(name="A", provider="demo",
                                                           model="demo"))


def test_an_old_database_migrates_erases_and_is_resealed_into_a_new_file(
    tmp_path: Path, cli: Cli, settings: Settings,
) -> None:
    conn = connect(settings.database_path)
    migrations.up(conn)
    conn.close()
    asyncio.run(_old_loacl(settings))
    # Back to before sealing existed, and up again: the migration marks the history plain.
    assert cli("migrate", "down", "--to", "8")[0] == 0
    conn = sqlite3.connect(settings.database_path)
    head = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    conn.close()
    code, out, _ = cli("migrate", "up")
    later = [f"applied {m.version:04d}_{m.name}" for m in migrations.MIGRATIONS if m.version > 8]
    assert later[0] == "applied 0009_privacy"
    assert (code, out.strip().splitlines()) == (0, later)
    conn = sqlite3.connect(settings.database_path)
    assert conn.execute("SELECT sealed_after FROM key_state").fetchone() == (head,)
    owners = {o for (o,) in conn.execute("SELECT owner_id FROM conversations")}
    conn.close()
    assert len(owners) == 1 and None not in owners  # found in the log

    async def newer() -> None:
        async with EventStore(settings.database_path, default_projections(),
                              keyring=keyring_for(settings)) as store:
            await store.append("conversation-c-keep", [MessagePosted(
                conversation_id="c-keep", message_id="new", text="zqx-new-text",
            )], metadata=Metadata(client_ip="198.51.100.7"))

    asyncio.run(newer())
    rows = opened_rows(settings, "SELECT type, schema_version, payload, metadata, seq FROM "
                                 "events WHERE type = 'message.posted' ORDER BY seq")
    assert [json.loads(p)["text"] for _, _, p, _, _ in rows] == [
        "zqx-old-c-keep", "zqx-old-c-erase", "zqx-new-text"]
    plain = sqlite3.connect(settings.database_path)
    payloads = [p for (p,) in plain.execute(
        "SELECT payload FROM events WHERE type = 'message.posted' ORDER BY seq")]
    plain.close()
    assert "zqx-old-c-keep" in payloads[0]  # old events stay as they were written
    assert "zqx-new-text" not in payloads[2]  # new ones are sealed
    code, out, _ = cli("privacy", "status", "--json")
    assert json.loads(out)["events_before_sealing"] == head

    code, out, _ = cli("privacy", "erase", "--conversation", "c-erase")
    assert code == 0
    assert "were written before personal fields were sealed" in out
    log = sqlite3.connect(settings.database_path)
    in_log = "".join(p for (p,) in log.execute("SELECT payload FROM events"))
    log.close()
    assert "zqx-old-c-erase" in in_log  # what erasure cannot reach without resealing

    out_file = tmp_path / "resealed.db"
    code, out, _ = cli("privacy", "reseal", str(out_file))
    assert code == 0, out
    assert "audit ok" in out
    # The erased conversation is nowhere in the new file; the log holds no plaintext at all
    # (the read tables hold what is live, as they always do).
    data = out_file.read_bytes()
    for marker in (b"zqx-old-c-erase", b"203.0.113.9", b"198.51.100.7"):
        assert marker not in data, marker
    resealed = sqlite3.connect(out_file)
    in_log = "".join(p for (p,) in resealed.execute("SELECT payload || metadata FROM events"))
    resealed.close()
    for text in ("zqx-old-c-keep", "zqx-new-text", "old@example.com", "Old Owner"):
        assert text not in in_log, text
    tables = default_projections().tables
    old_conn, new_conn = sqlite3.connect(settings.database_path), sqlite3.connect(out_file)
    try:
        assert dump_tables(new_conn, tables) == dump_tables(old_conn, tables)
        assert new_conn.execute("SELECT sealed_after FROM key_state").fetchone() == (0,)
    finally:
        old_conn.close()
        new_conn.close()
    assert cli("restore", "--force", str(out_file))[0] == 0
    assert cli("audit", "verify")[0] == 0
    rows = opened_rows(settings, "SELECT type, schema_version, payload, metadata FROM events "
                                 "WHERE type = 'message.posted' ORDER BY seq")
    assert [json.loads(p)["text"] for _, _, p, _ in rows] == [
        "zqx-old-c-keep", ERASED, "zqx-new-text"]
    assert {json.loads(m)["client_ip"] for _, _, _, m in rows} == {
        "203.0.113.9", ERASED, "198.51.100.7"}


# -- the operator's commands ------------------------------------------------------------------


def test_privacy_erase_by_visitor_with_a_dry_run_first(
    tmp_path: Path, cli: Cli, settings: Settings,
) -> None:
    settings = chat_settings(tmp_path, None, demo_widget=False)
    with live(settings) as site:
        site.register()
        widget_id = site.widget(provider="demo", model="demo", per_minute=600)
        visitor = site.visitor(widget_id)
        assert site.post(visitor, "zqx-visitor-asks").status_code == 201
    count = len(log_of(settings))
    run = functools.partial(cli, database=settings.database_path)
    code, out, _ = run("privacy", "erase", "--visitor", visitor.visitor_id, "--dry-run")
    assert code == 0
    assert out.splitlines()[-3:] == [
        f"would erase visitor:{visitor.visitor_id}:",
        "  1 conversation(s): 2 message(s), 0 file(s)",
        f"    {visitor.conversation_id}",
    ]
    assert len(log_of(settings)) == count
    code, out, _ = run("privacy", "erase", "--visitor", visitor.visitor_id)
    assert code == 0 and f"erased visitor:{visitor.visitor_id}:" in out.splitlines()
    added = log_of(settings)[count:]
    assert [(r.type, r.payload["scope"], r.payload["requested_by"]) for r in added] == [
        ("privacy.erased", f"visitor:{visitor.visitor_id}", "operator")
    ]
    code, out, _ = run("privacy", "erase", "--owner", "nobody@example.com")
    assert code == 1
    code, out, _ = run("privacy", "status")
    assert code == 0 and "conversations erased: 1" in out
    assert b"zqx-visitor-asks" not in settings.database_path.read_bytes()
    audit_ok(settings)
    replay_matches(settings)
