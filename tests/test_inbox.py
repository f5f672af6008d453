"""The owner's inbox on a real uvicorn and SQLite: conversations across widgets, newest activity
first, paged, filtered and searched; one conversation, its transcript and files; another owner's
answers 404; erasure takes the words out of the search index and the file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loacl.services.keys import keyring_for
from loacl.settings import Settings
from loacl.store.projections import default_projections
from loacl.store.replay import replay
from loacl.store.sqlite import connect
from tests.test_chat import Site, Visitor, chat_settings, live

pytestmark = pytest.mark.e2e


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with live(chat_settings(tmp_path, None)) as built:
        yield built


def inbox(site: Site, headers: dict[str, str] | None = None, **params: Any) -> dict[str, Any]:
    response = site.http.get("/api/v1/conversations", params=params,
                             headers=headers or site.owner)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["data"]]


def chat(site: Site, widget_id: str, *texts: str) -> Visitor:
    visitor = site.visitor(widget_id)
    for text in texts:
        assert site.post(visitor, text).status_code == 201
    return visitor


def test_the_inbox_lists_every_widgets_conversations_newest_activity_first(site: Site) -> None:
    other = site.register("other@example.com")
    theirs = site.widget("demo", "demo")
    chat(site, theirs, "not yours")
    owner = site.register("owner@example.com")
    first = site.widget("demo", "demo")
    second = site.widget("demo", "demo")
    a = chat(site, first, "hello from a")
    b = chat(site, second, "hello from b")
    c = site.visitor(first)  # started, nothing said yet
    assert ids(inbox(site)) == [c.conversation_id, b.conversation_id, a.conversation_id]

    site.post(a, "a again, with a long question " + "x" * 300)
    page = inbox(site)
    assert ids(page) == [a.conversation_id, c.conversation_id, b.conversation_id]
    top = page["data"][0]
    assert top["widget_id"] == first and top["widget_name"] == "Site"
    assert top["widget_title"] == "Chat with us"
    assert top["message_count"] == 4 and top["status"] == "open" and top["erased_at"] is None
    # The last message is the demo's answer; the preview is its start, cut short.
    assert top["preview_role"] == "assistant"
    assert 0 < len(top["preview"]) <= 160
    assert top["last_activity_at"] >= top["created_at"]
    empty = page["data"][1]
    assert empty["message_count"] == 0 and empty["preview"] is None

    # The other owner sees only theirs; each sees the other's as missing.
    assert len(inbox(site, other)["data"]) == 1
    for path in (f"/api/v1/conversations/{a.conversation_id}",
                 f"/api/v1/conversations/{a.conversation_id}/messages"):
        refused = site.http.get(path, headers=other)
        assert refused.status_code == 404 and refused.json()["code"] == "not_found"
        assert site.http.get(path, headers=owner).status_code == 200
    assert site.http.get("/api/v1/conversations").status_code == 401


def test_paging_filters_and_dates(site: Site) -> None:
    site.register()
    first = site.widget("demo", "demo")
    second = site.widget("demo", "demo")
    made = [chat(site, first if n % 2 else second, f"visitor {n}").conversation_id
            for n in range(7)]
    newest_first = made[::-1]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["after"] = cursor
        page = inbox(site, **params)
        seen += ids(page)
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor == page["data"][-1]["cursor"]
    assert seen == newest_first

    assert ids(inbox(site, widget_id=first)) == [c for i, c in enumerate(made) if i % 2][::-1]
    assert ids(inbox(site, widget_id="nope")) == []
    everything = inbox(site)["data"]
    middle = everything[3]["last_activity_at"]
    assert ids(inbox(site, since=middle)) == newest_first[:4]
    assert ids(inbox(site, until=middle)) == newest_first[3:]
    assert ids(inbox(site, since="2000-01-01T00:00:00Z", until="2000-01-02T00:00:00")) == []

    erased = site.http.delete(f"/api/v1/conversations/{made[0]}", headers=site.owner)
    assert erased.status_code == 204
    assert ids(inbox(site, status="erased")) == [made[0]]
    assert made[0] not in ids(inbox(site, status="open"))
    gone = site.http.get(f"/api/v1/conversations/{made[0]}", headers=site.owner).json()
    assert gone["status"] == "erased" and gone["erased_at"] is not None

    for params in ({"status": "shut"}, {"since": "yesterday"}, {"limit": "0"},
                   {"q": "x" * 201}, {"after": "-1"}):
        refused = site.http.get("/api/v1/conversations", params=params, headers=site.owner)
        assert refused.status_code == 422, (params, refused.text)
        assert refused.json()["code"] == "validation_error"


def database_bytes(settings: Settings) -> bytes:
    path = settings.database_path
    return b"".join(Path(f"{path}{s}").read_bytes() for s in ("", "-wal")
                    if Path(f"{path}{s}").exists())


def test_search_finds_words_and_erasure_takes_them_out_of_the_index(site: Site) -> None:
    site.register()
    widget = site.widget("demo", "demo")
    apples = chat(site, widget, "Do you sell Äpfel and zucchinisoup?")
    pears = chat(site, widget, "I would like pears")
    assert ids(inbox(site, q="zucchinisoup")) == [apples.conversation_id]
    assert ids(inbox(site, q="zucchini")) == [apples.conversation_id]  # as one types
    assert ids(inbox(site, q="apfel sell")) == [apples.conversation_id]  # diacritics folded
    assert ids(inbox(site, q="pears")) == [pears.conversation_id]
    assert ids(inbox(site, q="pears zucchinisoup")) == []
    assert ids(inbox(site, q='" OR * NEAR(')) == []  # no word at all: nothing, not an error
    assert set(ids(inbox(site, q="demo"))) == {apples.conversation_id, pears.conversation_id}
    other = site.register("other@example.com")
    assert inbox(site, other, q="zucchinisoup")["data"] == []
    site.login()

    # Replay builds the same index from the log.
    conn = connect(site.settings.database_path)
    try:
        replay(conn, default_projections(), keys=keyring_for(site.settings).attach(conn))
    finally:
        conn.close()
    assert ids(inbox(site, q="zucchinisoup")) == [apples.conversation_id]

    assert b"zucchinisoup" in database_bytes(site.settings)  # the read table holds the text
    erased = site.http.delete(f"/api/v1/conversations/{apples.conversation_id}",
                              headers=site.owner)
    assert erased.status_code == 204
    assert inbox(site, q="zucchinisoup")["data"] == []
    conn = sqlite3.connect(site.settings.database_path)
    try:
        hits = conn.execute("SELECT rowid FROM messages_fts WHERE messages_fts MATCH "
                            "'zucchinisoup'").fetchall()
    finally:
        conn.close()
    assert hits == []
    # Nowhere in the file: not in the messages, not in the index's segments, not in the WAL.
    assert b"zucchinisoup" not in database_bytes(site.settings)
    assert ids(inbox(site, q="pears")) == [pears.conversation_id]


def test_transcript_and_files(site: Site) -> None:
    site.register()
    widget = site.widget("demo", "demo")
    visitor = site.visitor(widget)
    upload = site.http.post(f"/api/v1/widgets/{widget}/files", headers=visitor.headers,
                            files={"file": ("notes.txt", b"plain words\n", "text/plain")})
    assert upload.status_code == 201, upload.text
    file_id = upload.json()["id"]
    assert site.post(visitor, "see the file", file_ids=[file_id]).status_code == 201
    for n in range(3):
        assert site.post(visitor, f"more {n}").status_code == 201
    path = f"/api/v1/conversations/{visitor.conversation_id}"
    page = site.http.get(f"{path}/messages", params={"limit": 4}, headers=site.owner).json()
    assert page["data"][0]["text"] == "more 1"
    assert page["prev_cursor"] is not None and page["next_cursor"] is None
    earlier = site.http.get(f"{path}/messages", params={"before": page["prev_cursor"]},
                            headers=site.owner).json()
    assert earlier["data"][0]["text"] == "see the file"
    assert earlier["data"][0]["file_ids"] == [file_id]
    assert [(f["id"], f["filename"]) for f in earlier["files"]] == [(file_id, "notes.txt")]
    assert page["files"] == []

    download = site.http.get(f"{path}/files/{file_id}", headers=site.owner)
    assert download.status_code == 200 and download.content == b"plain words\n"
    assert download.headers["content-disposition"].startswith("attachment;")
    assert download.headers["x-content-type-options"] == "nosniff"
    other_widget_visitor = site.visitor(widget)
    missing = site.http.get(f"/api/v1/conversations/{other_widget_visitor.conversation_id}"
                            f"/files/{file_id}", headers=site.owner)
    assert missing.status_code == 404
    stranger = site.register("stranger@example.com")
    assert site.http.get(f"{path}/files/{file_id}", headers=stranger).status_code == 404
    both = site.http.get(f"{path}/messages", params={"before": 5, "after": 1},
                         headers=site.owner)
    assert both.status_code == 422


def test_an_erased_conversations_files_are_gone(site: Site) -> None:
    site.register()
    widget = site.widget("demo", "demo")
    visitor = site.visitor(widget)
    upload = site.http.post(f"/api/v1/widgets/{widget}/files", headers=visitor.headers,
                            files={"file": ("a.txt", b"secret\n", "text/plain")})
    file_id = upload.json()["id"]
    path = f"/api/v1/conversations/{visitor.conversation_id}"
    assert site.http.delete(path, headers=site.owner).status_code == 204
    gone = site.http.get(f"{path}/files/{file_id}", headers=site.owner)
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"


def test_unknown_ids_are_404(site: Site) -> None:
    site.register()
    for path in ("/api/v1/conversations/nope", "/api/v1/conversations/nope/messages",
                 "/api/v1/conversations/nope/files/nope"):
        response = site.http.get(path, headers=site.owner)
        assert response.status_code == 404, path
        assert isinstance(response, httpx.Response)
