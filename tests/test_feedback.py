"""Visitors' ratings of replies and their pre-chat answers, over real HTTP on uvicorn: what the
visitor and the owner see, the events appended (their personal fields sealed), usage, erasure,
and replay equal to live."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from loacl.services.chat import Chat
from tests.test_chat import (
    ORIGIN,
    WAIT,
    audit_ok,
    chat_settings,
    live,
    log_of,
    replay_matches,
)


def _raw_payloads(path: Path, event_type: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute(
            "SELECT payload FROM events WHERE type = ? ORDER BY seq", (event_type,))]
    finally:
        conn.close()


def test_a_rating_is_the_visitors_and_the_owner_sees_and_counts_it(tmp_path: Path) -> None:
    settings = chat_settings(tmp_path, None)
    with live(settings) as site:
        owner = site.register()
        widget = site.widget(provider="demo", model="demo")
        visitor = site.visitor(widget)
        posted = site.post(visitor, "How do I return a parcel?")
        assert posted.status_code == 201, posted.text
        question, reply = posted.json()["message"], posted.json()["reply"]
        assert reply["feedback"] is None
        url = f"/api/v1/widgets/{widget}/messages/{reply['id']}/feedback"

        # Only a completed reply of the visitor's own conversation can be rated.
        for target, body, status, code in [
            (question["id"], {"rating": "up"}, 404, "not_found"),
            ("0" * 32, {"rating": "up"}, 404, "not_found"),
            (reply["id"], {"rating": "meh"}, 422, "validation_error"),
            (reply["id"], {"rating": "up", "comment": "x" * 501}, 422, "validation_error"),
            (reply["id"], {"rating": "up", "extra": 1}, 422, "validation_error"),
        ]:
            refused = site.http.post(
                f"/api/v1/widgets/{widget}/messages/{target}/feedback", json=body,
                headers=visitor.headers)
            assert refused.status_code == status, refused.text
            assert refused.json()["code"] == code
        stranger = site.visitor(widget)
        assert site.http.post(url, json={"rating": "up"},
                              headers=stranger.headers).status_code == 404
        assert site.http.post(url, json={"rating": "up"}, headers={
            **visitor.headers, "Origin": "https://elsewhere.example"}).status_code == 403

        first = site.http.post(url, json={"rating": "up"}, headers=visitor.headers)
        assert first.status_code == 200, first.text
        assert first.headers["access-control-allow-origin"] == ORIGIN
        assert first.json()["feedback"]["rating"] == "up"
        second = site.http.post(url, json={"rating": "down", "comment": "  Too vague.  "},
                                headers=visitor.headers)
        assert second.json()["feedback"]["rating"] == "down"
        assert second.json()["feedback"]["comment"] == "Too vague."

        # The visitor's history and the owner's transcript show the newest rating.
        [_, seen] = site.messages(visitor)["data"]
        assert seen["feedback"]["rating"] == "down"
        transcript = site.http.get(f"/api/v1/widgets/{widget}/messages", headers=owner,
                                   params={"conversation_id": visitor.conversation_id}).json()
        assert transcript["data"][1]["feedback"]["comment"] == "Too vague."
        usage = site.http.get("/api/v1/usage", headers=owner,
                              params={"group_by": "widget"}).json()
        assert (usage["total"]["feedback_up"], usage["total"]["feedback_down"]) == (0, 1)
        assert usage["data"][0]["feedback_down"] == 1

        # The pre-chat answers, kept with the conversation.
        profile = f"/api/v1/widgets/{widget}/profile"
        for body in ({}, {"name": " "}, {"email": "not-an-address"}):
            refused = site.http.post(profile, json=body, headers=visitor.headers)
            assert refused.status_code == 422, (body, refused.text)
        given = site.http.post(profile, json={"name": "Zoë", "email": "zoe@example.com"},
                               headers=visitor.headers)
        assert given.status_code == 200, given.text
        assert given.json() == {"name": "Zoë", "email": "zoe@example.com"}
        again = site.http.post(profile, json={"email": "zoe@example.org"},
                               headers=visitor.headers)
        assert again.json() == {"name": "Zoë", "email": "zoe@example.org"}
        listed = site.http.get(f"/api/v1/widgets/{widget}/conversations", headers=owner)
        mine = next(c for c in listed.json()["data"] if c["id"] == visitor.conversation_id)
        assert (mine["visitor_name"], mine["visitor_email"]) == ("Zoë", "zoe@example.org")

    # The log has the facts; the comment and the answers are sealed in it.
    rows = log_of(settings, visitor.conversation_id)
    ratings = [r.payload for r in rows if r.type == "feedback.given"]
    assert [(r["rating"], r["comment"]) for r in ratings] == [("up", ""), ("down", "Too vague.")]
    introduced = [r.payload for r in rows if r.type == "visitor.introduced"]
    assert introduced == [
        {"conversation_id": visitor.conversation_id, "name": "Zoë", "email": "zoe@example.com"},
        {"conversation_id": visitor.conversation_id, "name": "", "email": "zoe@example.org"},
    ]
    raw = "".join(_raw_payloads(settings.database_path, "feedback.given")
                  + _raw_payloads(settings.database_path, "visitor.introduced"))
    for secret in ("Too vague.", "Zoë", "zoe@example.com"):
        assert secret not in raw
    audit_ok(settings)
    replay_matches(settings)


def test_erasing_a_conversation_erases_its_comment_and_answers(tmp_path: Path) -> None:
    settings = chat_settings(tmp_path, None)
    with live(settings) as site:
        owner = site.register()
        widget = site.widget(provider="demo", model="demo")
        visitor = site.visitor(widget)
        reply = site.post(visitor, "Hello").json()["reply"]
        rated = site.http.post(f"/api/v1/widgets/{widget}/messages/{reply['id']}/feedback",
                               json={"rating": "up", "comment": "Lovely"},
                               headers=visitor.headers)
        assert rated.status_code == 200, rated.text
        assert site.http.post(f"/api/v1/widgets/{widget}/profile", json={"name": "Ada"},
                              headers=visitor.headers).status_code == 200
        erased = site.http.delete(f"/api/v1/conversations/{visitor.conversation_id}",
                                  headers=owner)
        assert erased.status_code < 300, erased.text
        transcript = site.http.get(f"/api/v1/widgets/{widget}/messages", headers=owner,
                                   params={"conversation_id": visitor.conversation_id}).json()
        assert transcript["data"][1]["feedback"] == {
            "rating": "up", "comment": "[erased]", "at": transcript["data"][1]["feedback"]["at"]}
        listed = site.http.get(f"/api/v1/widgets/{widget}/conversations", headers=owner)
        [conversation] = listed.json()["data"]
        assert (conversation["visitor_name"], conversation["visitor_email"]) == ("[erased]", None)
    audit_ok(settings)
    replay_matches(settings)


def test_a_message_sent_while_the_visitors_name_is_saved_is_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The widget saves the name and address from identify() as its first message may go out:
    the name lands between the message's read of the conversation and its append. The
    message is recorded and answered, not refused as if a reply were being written."""
    settings = chat_settings(tmp_path, None)
    with live(settings) as site:
        site.register()
        widget = site.widget(provider="demo", model="demo")
        visitor = site.visitor(widget)
        chat: Chat = site.app.state.chat
        load = chat._load
        message_read, name_saved = threading.Event(), threading.Event()

        async def read_then_let_the_name_in(conversation_id: str) -> Any:
            loaded = await load(conversation_id)
            if not message_read.is_set():  # the message's read: hold it until the name is in
                message_read.set()
                await asyncio.to_thread(name_saved.wait, WAIT)
            return loaded

        monkeypatch.setattr(chat, "_load", read_then_let_the_name_in)
        answers: list[httpx.Response] = []
        sending = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{site.url}/api/v1/widgets/{widget}/messages", json={"text": "Hello"},
            headers=visitor.headers, timeout=WAIT)))
        sending.start()
        assert message_read.wait(WAIT)
        named = site.http.post(f"/api/v1/widgets/{widget}/profile",
                               json={"name": "Alice", "email": "alice@example.com"},
                               headers=visitor.headers)
        name_saved.set()
        sending.join(WAIT)
        assert named.status_code == 200, named.text
        [posted] = answers
        assert posted.status_code == 201, posted.text
        assert posted.json()["reply"]["status"] == "completed"
        assert [m["text"] for m in site.messages(visitor)["data"]][:1] == ["Hello"]

    types = [r.type for r in log_of(settings, visitor.conversation_id)]
    assert types.index("visitor.introduced") < types.index("message.posted")
    audit_ok(settings)
    replay_matches(settings)
