"""Erasure, retention and export on a real server: what the owner, the visitor and the operator
see, what the log records, and what is left in the database's bytes (the file, its WAL, a backup
taken afterwards), searched for the erased text."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import signal
import sqlite3
import subprocess
import sys
import time
import types
import typing
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from loacl.cli import main
from loacl.domain.events import EVENT_TYPES, Event
from loacl.domain.privacy import ERASED
from loacl.http.app import create_app
from loacl.openai_testserver import Stall, split_deltas
from loacl.settings import CONFIG_ENV, ENV_NAMES, Settings
from loacl.store.projections import default_projections
from tests.test_chat import (
    PASSWORD,
    Site,
    Visitor,
    audit_ok,
    chat_settings,
    live,
    log_of,
    replay_matches,
)
from tests.test_stream import provider_server, reply_text, start

default_projections()  # every module that defines event types

QUESTION = "zqx-question-about-parcel-4417"
FILE_TEXT = b"zqx-invoice-content-9921 for the parcel"
FILE_NAME = "zqx-invoice-5532.txt"


def raw(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def database_bytes(settings: Settings) -> bytes:
    path = settings.database_path
    return raw(path) + raw(Path(f"{path}-wal"))


def absent(data: bytes, *markers: str | bytes) -> list[str]:
    """The markers found in ``data`` (so a failure names them)."""
    found = []
    for marker in markers:
        needle = marker.encode() if isinstance(marker, str) else marker
        if needle in data:
            found.append(needle.decode(errors="replace"))
    return found


def upload(site: Site, visitor: Visitor, name: str, data: bytes) -> dict[str, Any]:
    response = site.http.post(
        f"/api/v1/widgets/{visitor.widget_id}/files", headers=visitor.headers,
        files={"file": (name, data, "text/plain")},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def backup(settings: Settings, dest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [CONFIG_ENV, *ENV_NAMES.values()]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{settings.database_path}")
    monkeypatch.setenv("LOACL_DATA_DIR", str(settings.data_dir))
    assert main(["backup", str(dest)]) == 0


def blob_digests(settings: Settings) -> set[str]:
    conn = sqlite3.connect(settings.database_path)
    try:
        return {str(d) for (d,) in conn.execute("SELECT sha256 FROM blobs")}
    finally:
        conn.close()


# -- the declaration rule ---------------------------------------------------------------------


def _text_fields(cls: type[Any], prefix: str = "") -> list[str]:
    """Every field of ``cls`` that holds text (str, str | None, a tuple or list of str), nested
    dataclasses followed, as dotted paths."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        args = typing.get_args(kind)
        if dataclasses.is_dataclass(kind):
            found += _text_fields(kind, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        elif kind is str or (isinstance(kind, types.UnionType) and str in args) or (
            typing.get_origin(kind) in (tuple, list) and str in args
        ):
            found.append(prefix + f.name)
    return found


def loacl_events() -> list[type[Event]]:
    return [cls for cls in EVENT_TYPES.values() if cls.__module__.startswith("loacl.")]


@pytest.mark.parametrize("cls", loacl_events(), ids=lambda c: c.event_type)
def test_every_text_field_of_an_event_is_declared_personal_or_not(cls: type[Event]) -> None:
    declared = set(cls.personal) | set(cls.not_personal)
    assert not set(cls.personal) & set(cls.not_personal), "declared both ways"
    names = {f.name for f in dataclasses.fields(cls)}
    assert declared <= names, f"declared fields that {cls.__name__} does not have"
    for path in _text_fields(cls):
        parts = path.split(".")
        assert any(".".join(parts[:n]) in declared for n in range(1, len(parts) + 1)), (
            f"{cls.__name__}.{path} holds text: declare it in `personal` or `not_personal`"
        )
    hints = typing.get_type_hints(cls)
    for name in cls.personal:
        assert hints[name] in (str, str | None), f"{name}: only text fields can be sealed"


def test_the_rule_catches_an_undeclared_field() -> None:
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Noted(Event):
        note: str
        tags: tuple[str, ...] = ()

    assert _text_fields(Noted) == ["note", "tags"]
    assert not ({"note", "tags"} & (set(Noted.personal) | set(Noted.not_personal)))


# -- erasing a conversation after its reply ---------------------------------------------------


def test_an_erased_conversation_leaves_no_trace_in_the_file_its_wal_or_a_later_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = chat_settings(tmp_path, None, demo_widget=False)
    with live(settings) as site:
        owner = site.register()
        widget_id = site.widget(provider="demo", model="demo")
        visitor = site.visitor(widget_id)
        other = site.visitor(widget_id)
        sent = upload(site, visitor, FILE_NAME, FILE_TEXT)
        shared = upload(site, other, "same.txt", b"the same bytes in two conversations")
        kept = upload(site, visitor, "kept.txt", b"the same bytes in two conversations")
        posted = site.post(visitor, QUESTION, file_ids=[sent["id"]])
        assert posted.status_code == 201, posted.text
        reply = posted.json()["reply"]["text"]
        assert QUESTION in reply  # the demo answer repeats the question
        assert site.post(other, "a question of someone else").status_code == 201
        # Before: the read tables hold the text (so the search below can fail)...
        before = database_bytes(settings)
        assert absent(before, QUESTION, FILE_NAME, FILE_TEXT) == [
            QUESTION, FILE_NAME, FILE_TEXT.decode()
        ]
        # ... but the log never does, nor the visitors' addresses: sealed from the start.
        conn = sqlite3.connect(settings.database_path)
        payloads = "".join(p for (p,) in conn.execute("SELECT payload || metadata FROM events"))
        conn.close()
        assert not absent(payloads.encode(), QUESTION, FILE_NAME, "127.0.0.1")

        # Another owner cannot erase it, nor find out that it exists.
        intruder = site.http.post("/api/v1/auth/register",
                                  json={"email": "mallory@example.com", "password": PASSWORD})
        assert intruder.status_code == 202
        theirs = site.login("mallory@example.com")
        url = f"/api/v1/conversations/{visitor.conversation_id}"
        refused = site.http.delete(url, headers=theirs)
        assert (refused.status_code, refused.json()["code"]) == (404, "not_found")

        head = len(log_of(settings))
        erased = site.http.delete(url, headers=owner)
        assert erased.status_code == 204, erased.text
        again = site.http.delete(url, headers=owner)  # erasing twice is erasing once
        assert again.status_code == 204
        added = log_of(settings)[head:]
        assert [r.type for r in added] == ["privacy.erased"]
        user_id = site.http.get("/api/v1/auth/me", headers=owner).json()["id"]
        assert added[0].payload == {
            "subject": f"conversation:{visitor.conversation_id}", "reason": "request",
            "requested_by": user_id, "scope": f"conversation:{visitor.conversation_id}",
        }

        # The owner sees counts and times, not the text.
        listed = site.http.get(
            f"/api/v1/widgets/{widget_id}/messages", headers=owner,
            params={"conversation_id": visitor.conversation_id},
        ).json()["data"]
        assert [m["text"] for m in listed] == [ERASED, ERASED]
        assert [m["status"] for m in listed] == ["completed", "completed"]
        conversations = site.http.get(f"/api/v1/widgets/{widget_id}/conversations",
                                      headers=owner).json()["data"]
        mine = next(c for c in conversations if c["id"] == visitor.conversation_id)
        assert mine["message_count"] == 2 and mine["erased_at"] is not None
        gone = site.http.get(f"{url}/export", headers=owner)
        assert (gone.status_code, gone.json()["code"]) == (410, "subject_erased")

        # Bytes another conversation shares stay; its own go.
        digests = blob_digests(settings)
        assert shared["sha256"] in digests and kept["sha256"] == shared["sha256"]
        assert sent["sha256"] not in digests
        still = site.http.get(f"/api/v1/widgets/{widget_id}/files/{shared['id']}",
                              headers=other.headers)
        assert still.content == b"the same bytes in two conversations"

        # The visitor's token no longer opens it; starting again gives a new conversation.
        refused = site.http.get(f"/api/v1/widgets/{widget_id}/messages",
                                headers=visitor.headers)
        assert (refused.status_code, refused.json()["code"]) == (401, "invalid_token")
        token = visitor.headers["Authorization"].removeprefix("Bearer ")
        again_session = site.http.post(
            f"/api/v1/widgets/{widget_id}/sessions", json={"visitor_token": token},
            headers={"Origin": visitor.headers["Origin"]},
        )
        assert again_session.status_code == 201
        assert again_session.json()["conversation_id"] != visitor.conversation_id

        # Immediately, in the live file and its WAL.
        assert absent(database_bytes(settings), QUESTION, reply, FILE_NAME, FILE_TEXT) == []
        dest = tmp_path / "after.db"
        backup(settings, dest, monkeypatch)
        assert absent(raw(dest), QUESTION, reply, FILE_NAME, FILE_TEXT) == []
        # The other conversation is untouched.
        assert "a question of someone else" in [
            m["text"] for m in site.messages(other)["data"]
        ]
    assert absent(database_bytes(settings), QUESTION, FILE_NAME, FILE_TEXT) == []
    audit_ok(settings)
    replay_matches(settings)


# -- erasing a conversation while its reply streams -------------------------------------------


async def test_erasing_mid_stream_stops_the_reply_tells_the_socket_and_keeps_nothing(
    settings: Settings,
) -> None:
    text = reply_text(40, tag="zqx-streamed-")
    pieces = split_deltas(text)
    with provider_server() as provider, start(settings, provider, flush_interval_ms=0) as site:
        site.provider.script(text, [Stall(seconds=30, after_deltas=6)])
        session = site.session()
        async with site.tab(session) as tab:
            ack = await site.ask(tab, QUESTION)
            seen = await tab.follow(ack["reply_id"], stop_after=len("".join(pieces[:6])))
            assert seen.text and seen.done is None
            erased = await asyncio.to_thread(
                site.http.delete, f"/api/v1/conversations/{session.conversation_id}",
                headers=site.headers,
            )
            assert erased.status_code == 204, erased.text
            await tab.follow(ack["reply_id"])
            code, reason = await tab.closed()
        assert tab.reply(ack["reply_id"]).done["status"] == "interrupted"  # type: ignore[index]
        assert (code, reason) == (4401, "this conversation was erased; start again")
        kinds = [k for k, _ in site.log.events(ack["reply_id"])]
        assert kinds[0] == "assistant.started" and kinds[-1] == "assistant.interrupted"
        assert set(kinds[1:-1]) == {"assistant.delta"}
        stream = log_of(settings, session.conversation_id)
        assert stream[-1].type == "privacy.erased"
        assert stream[-2].type == "assistant.interrupted"
        assert all(r.payload.get("text") in (None, "", ERASED) for r in stream)
        assert absent(database_bytes(settings), QUESTION, seen.text) == []
        # A new question in the erased conversation is refused, not written.
        refused = await asyncio.to_thread(
            site.http.post, f"/api/v1/widgets/{site.widget_id}/messages",
            json={"text": "still there?"},
            headers={"Origin": "http://localhost:3000",
                     "Authorization": f"Bearer {session.token}"},
        )
        assert refused.status_code == 401
        assert len(log_of(settings, session.conversation_id)) == len(stream)
    audit_ok(settings)
    replay_matches(settings)


# -- deleting an owner account ----------------------------------------------------------------


def test_deleting_an_account_erases_its_widgets_assistants_and_conversations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = chat_settings(tmp_path, None, demo_widget=False)
    email, name = "zqx-ada-7781@example.com", "Ada zqx-Lovelace-3390"
    with live(settings) as site:
        registered = site.http.post("/api/v1/auth/register",
                                    json={"email": email, "password": PASSWORD, "name": name})
        assert registered.status_code == 202
        owner = site.login(email)
        user_id = site.http.get("/api/v1/auth/me", headers=owner).json()["id"]
        first = site.widget(provider="demo", model="demo")
        second = site.widget(provider="demo", model="demo")
        visitors = [site.visitor(first), site.visitor(second)]
        upload(site, visitors[0], FILE_NAME, FILE_TEXT)
        for n, visitor in enumerate(visitors):
            assert site.post(visitor, f"{QUESTION}-{n}").status_code == 201
        deleted_widget = site.widget(provider="demo", model="demo")
        orphan = site.visitor(deleted_widget)
        assert site.post(orphan, f"{QUESTION}-orphan").status_code == 201
        assert site.http.delete(f"/api/v1/widgets/{deleted_widget}",
                                headers=owner).status_code == 204

        site.register("bob@example.com")
        bob = site.owner
        bobs_widget = site.widget(provider="demo", model="demo")
        bobs_visitor = site.visitor(bobs_widget)
        assert site.post(bobs_visitor, "Bob's visitor asks").status_code == 201

        wrong = site.http.request("DELETE", "/api/v1/auth/me", headers=owner,
                                  json={"password": "not the password"})
        assert (wrong.status_code, wrong.json()["code"]) == (401, "invalid_credentials")
        head = len(log_of(settings))
        gone = site.http.request("DELETE", "/api/v1/auth/me", headers=owner,
                                 json={"password": PASSWORD})
        assert gone.status_code == 204, gone.text
        added = [(r.type, r.payload.get("reason"), r.payload.get("subject"))
                 for r in log_of(settings)[head:]]
        erased_conversations = {f"conversation:{v.conversation_id}"
                                for v in [*visitors, orphan]}
        assert {s for t, _, s in added if t == "privacy.erased"} == {
            *erased_conversations, f"owner:{user_id}"
        }
        assert added[-1] == ("privacy.erased", "account_deleted", f"owner:{user_id}")
        assert [t for t, _, _ in added].count("widget.deleted") == 2
        assert [t for t, _, _ in added].count("assistant.deleted") == 3
        assert ("session.revoked", "account_deleted", None) in added

        assert site.http.get("/api/v1/auth/me", headers=owner).status_code == 401
        login = site.http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 401
        config = site.http.get(f"/api/v1/widgets/{first}/config",
                               headers={"Origin": "http://localhost:3000"})
        assert config.status_code == 404
        assert absent(database_bytes(settings), email, name, QUESTION, FILE_NAME,
                      FILE_TEXT) == []
        dest = tmp_path / "after.db"
        backup(settings, dest, monkeypatch)
        assert absent(raw(dest), email, name, QUESTION, FILE_NAME, FILE_TEXT) == []

        # Bob and his visitors are untouched; the address may be registered again.
        assert site.http.get("/api/v1/auth/me", headers=bob).status_code == 200
        texts = [m["text"] for m in site.messages(bobs_visitor)["data"]]
        assert texts[0] == "Bob's visitor asks"
        again = site.http.post("/api/v1/auth/register", json={"email": email,
                                                               "password": PASSWORD})
        assert again.status_code == 202
        relogged = site.login(email)
        assert site.http.get("/api/v1/auth/me", headers=relogged).json()["id"] != user_id
    audit_ok(settings)
    replay_matches(settings)


# -- export -----------------------------------------------------------------------------------


def test_export_gives_every_message_and_file_as_json_and_as_a_zip(tmp_path: Path) -> None:
    settings = chat_settings(tmp_path, None, demo_widget=False)
    with live(settings) as site:
        owner = site.register()
        widget_id = site.widget(provider="demo", model="demo")
        visitor = site.visitor(widget_id)
        files = [upload(site, visitor, FILE_NAME, FILE_TEXT),
                 upload(site, visitor, "notes-é.txt", "Grüße 🙂".encode())]
        first = site.post(visitor, QUESTION, file_ids=[files[0]["id"]])
        second = site.post(visitor, "and a second question")
        assert first.status_code == second.status_code == 201
        url = f"/api/v1/conversations/{visitor.conversation_id}/export"

        response = site.http.get(url, headers=owner)
        assert response.status_code == 200, response.text
        assert "attachment" in response.headers["content-disposition"]
        exported = response.json()
        assert exported["format"] == "loacl.conversation-export.v1"
        assert exported["conversation"]["id"] == visitor.conversation_id
        assert exported["conversation"]["visitor_id"] == visitor.visitor_id
        listed = site.messages(visitor)["data"]
        assert [(m["id"], m["role"], m["text"]) for m in exported["messages"]] == [
            (m["id"], m["role"], m["text"]) for m in listed
        ]
        assert exported["messages"][0]["text"] == QUESTION
        assert exported["messages"][0]["file_ids"] == [files[0]["id"]]
        by_id = {f["id"]: f for f in exported["files"]}
        assert base64.b64decode(by_id[files[0]["id"]]["content_base64"]) == FILE_TEXT
        assert base64.b64decode(by_id[files[1]["id"]]["content_base64"]) == "Grüße 🙂".encode()
        assert by_id[files[1]["id"]]["filename"] == "notes-é.txt"

        zipped = site.http.get(url, headers=owner, params={"format": "zip"})
        assert zipped.status_code == 200
        assert zipped.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
            inside = json.loads(archive.read("conversation.json"))
            assert inside["messages"] == exported["messages"]
            for item in inside["files"]:
                assert "content_base64" not in item
                original = by_id[item["id"]]
                assert archive.read(item["path"]) == base64.b64decode(original["content_base64"])

        bad = site.http.get(url, headers=owner, params={"format": "xml"})
        assert (bad.status_code, bad.json()["code"]) == (422, "validation_error")
        site.register("eve@example.com")
        assert site.http.get(url, headers=site.owner).status_code == 404
        assert site.http.get(url).status_code == 401


# -- retention --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def retained(tmp_path: Path) -> Iterator[tuple[TestClient, Clock, Settings]]:
    settings = chat_settings(tmp_path, None, demo_widget=False, retention_check_minutes=0)
    clock = Clock()
    with TestClient(create_app(settings, clock=clock)) as client:
        yield client, clock, settings


def _visitor(client: TestClient, widget_id: str, text: str) -> str:
    origin = {"Origin": "http://localhost:3000"}
    session = client.post(f"/api/v1/widgets/{widget_id}/sessions", json={}, headers=origin)
    assert session.status_code == 201, session.text
    body = session.json()
    posted = client.post(f"/api/v1/widgets/{widget_id}/messages", json={"text": text},
                         headers={**origin, "Authorization": f"Bearer {body['visitor_token']}"})
    assert posted.status_code == 201, posted.text
    return str(body["conversation_id"])


def _owner(client: TestClient) -> dict[str, str]:
    client.post("/api/v1/auth/register", json={"email": "o@example.com", "password": PASSWORD})
    login = client.post("/api/v1/auth/login", json={"email": "o@example.com",
                                                    "password": PASSWORD})
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def _widget(client: TestClient, owner: dict[str, str], **fields: Any) -> str:
    assistant = client.post("/api/v1/assistants", headers=owner,
                            json={"name": "A", "provider": "demo", "model": "demo"})
    widget = client.post("/api/v1/widgets", headers=owner, json={
        "name": "W", "assistant_id": assistant.json()["id"],
        "allowed_origins": ["http://localhost:3000"], **fields,
    })
    assert widget.status_code == 201, widget.text
    return str(widget.json()["id"])


def _erased(settings: Settings) -> dict[str, str]:
    conn = sqlite3.connect(settings.database_path)
    try:
        return dict(conn.execute(
            "SELECT conversation_id, erased_at FROM conversations WHERE erased_at IS NOT NULL"
        ).fetchall())
    finally:
        conn.close()


def test_retention_erases_idle_conversations_as_the_clock_moves_on(
    retained: tuple[TestClient, Clock, Settings],
) -> None:
    client, clock, settings = retained
    owner = _owner(client)
    kept_30 = _widget(client, owner, retention_days=30)
    forever = _widget(client, owner)
    old = _visitor(client, kept_30, "an old question")
    never = _visitor(client, forever, "kept forever")
    clock.now += timedelta(days=20)
    owner = _owner(client)
    recent = _visitor(client, kept_30, "a newer question")
    retention = client.app.state.retention  # type: ignore[attr-defined]
    portal: Any = client.portal
    assert portal.call(retention.run_once) == 0  # nothing is 30 days idle yet

    clock.now += timedelta(days=10, seconds=1)
    due = {w.widget_id: w for w in portal.call(retention.due)}
    assert due[kept_30].due == 1 and due[kept_30].retention_days == 30
    assert forever not in due
    head = len(log_of(settings))
    assert portal.call(retention.run_once) == 1
    assert set(_erased(settings)) == {old}
    added = log_of(settings)[head:]
    assert [(r.type, r.payload["reason"], r.payload["requested_by"]) for r in added] == [
        ("privacy.erased", "retention", "retention")
    ]
    assert portal.call(retention.run_once) == 0

    clock.now += timedelta(days=20)
    assert portal.call(retention.run_once) == 1
    assert set(_erased(settings)) == {old, recent}
    clock.now += timedelta(days=3650)
    assert portal.call(retention.run_once) == 0  # no retention_days: kept
    assert never not in _erased(settings)
    audit_ok(settings)
    replay_matches(settings)


def test_retention_erases_in_small_batches_and_runs_by_itself(tmp_path: Path) -> None:
    settings = chat_settings(tmp_path, None, demo_widget=False, retention_batch=2,
                             retention_check_minutes=0)
    clock = Clock()
    with TestClient(create_app(settings, clock=clock)) as client:
        owner = _owner(client)
        widget_id = _widget(client, owner, retention_days=1)
        idle = [_visitor(client, widget_id, f"question {n}") for n in range(5)]
        clock.now += timedelta(days=2)
        portal: Any = client.portal
        retention = client.app.state.retention  # type: ignore[attr-defined]
        assert [portal.call(retention.run_once) for _ in range(4)] == [2, 2, 1, 0]
        assert set(_erased(settings)) == set(idle)
    # Started with a check interval, the server runs the job on its own.
    settings = settings.model_copy(update={"retention_check_minutes": 0.001})
    with TestClient(create_app(settings, clock=clock)) as client:
        portal = client.portal
        later = _visitor(client, widget_id, "one more")
        clock.now += timedelta(days=2)
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while later not in _erased(settings):
            assert datetime.now(UTC) < deadline, "the retention job did not run"
            portal.call(asyncio.sleep, 0.05)


def test_an_erasure_by_the_cli_beside_a_running_server_leaves_the_wal_to_its_next_round(
    retained: tuple[TestClient, Clock, Settings], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client, _, settings = retained
    owner = _owner(client)
    widget_id = _widget(client, owner)
    conversation_id = _visitor(client, widget_id, QUESTION)
    portal: Any = client.portal
    retention = client.app.state.retention  # type: ignore[attr-defined]
    assert portal.call(retention.run_once) == 0  # the round knows the erasure count
    for name in [CONFIG_ENV, *ENV_NAMES.values()]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{settings.database_path}")
    monkeypatch.setenv("LOACL_DATA_DIR", str(settings.data_dir))
    assert main(["privacy", "erase", "--conversation", conversation_id]) == 0
    out = capsys.readouterr().out
    assert "a running server cuts it at its next retention round" in out
    # The CLI left the WAL alone (the server holds the file): its older pages still hold the
    # text the read tables no longer do.
    wal = Path(f"{settings.database_path}-wal")
    assert absent(raw(wal), QUESTION) == [QUESTION]
    assert portal.call(retention.run_once) == 0
    assert absent(raw(wal) + raw(settings.database_path), QUESTION) == []
    assert not wal.exists() or wal.stat().st_size == 0


# -- a Litestream replica, restored after the erasure -----------------------------------------


@contextlib.contextmanager
def litestream(settings: Settings, replica: Path) -> Iterator[Path]:
    """``litestream replicate`` of the settings' database into the folder ``replica``, as a
    child process; yields its config."""
    binary = Path(sys.executable).parent / "litestream"
    config = settings.data_dir / "litestream.yml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        "dbs:\n"
        f"  - path: {json.dumps(str(settings.database_path.resolve()))}\n"
        "    replica:\n"
        f"      url: {json.dumps(replica.resolve().as_uri())}\n"
        "      sync-interval: 100ms\n"
    )
    log = (settings.data_dir / "litestream.log").open("wb")
    process = subprocess.Popen([str(binary), "replicate", "-config", str(config)],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        yield config
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def restored(config: Path, settings: Settings, out: Path) -> Path:
    out.unlink(missing_ok=True)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "litestream"), "restore", "-config", str(config),
         "-o", str(out), str(settings.database_path.resolve())],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0 or not out.exists(), done.stderr
    return out


def test_a_replica_restored_after_the_erasure_holds_no_plaintext(tmp_path: Path) -> None:
    settings = chat_settings(tmp_path, None, demo_widget=False)
    replica = tmp_path / "replica"
    copy = tmp_path / "restored.db"

    def holds(kind: str) -> bool:
        if not restored(config, settings, copy).exists():
            return False
        conn = sqlite3.connect(copy)
        try:
            return bool(conn.execute("SELECT 1 FROM events WHERE type = ?", (kind,)).fetchone())
        finally:
            conn.close()

    with live(settings) as site:
        owner = site.register()
        widget_id = site.widget(provider="demo", model="demo")
        visitor = site.visitor(widget_id)
        with litestream(settings, replica) as config:
            upload(site, visitor, FILE_NAME, FILE_TEXT)
            assert site.post(visitor, QUESTION).status_code == 201
            deadline = time.monotonic() + 60
            while not holds("message.posted"):
                assert time.monotonic() < deadline, "the replica did not catch up"
                time.sleep(0.2)
            assert absent(copy.read_bytes(), QUESTION, FILE_TEXT), "the check could not fail"
            erased = site.http.delete(f"/api/v1/conversations/{visitor.conversation_id}",
                                      headers=owner)
            assert erased.status_code == 204
            while not holds("privacy.erased"):
                assert time.monotonic() < deadline, "the replica did not catch up"
                time.sleep(0.2)
    assert absent(copy.read_bytes(), QUESTION, FILE_NAME, FILE_TEXT) == []
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


def test_under_litestream_an_erasure_leaves_the_wal_to_it(tmp_path: Path) -> None:
    plain = chat_settings(tmp_path, None)
    assert create_app(plain).state.privacy.truncate_wal is True
    replicated = plain.model_copy(update={"replica_url": (tmp_path / "r").as_uri()})
    assert create_app(replicated).state.privacy.truncate_wal is False
    supervised = plain.model_copy(update={"under_litestream": True})
    assert create_app(supervised).state.privacy.truncate_wal is False
