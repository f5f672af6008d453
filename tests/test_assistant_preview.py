"""``POST /api/v1/assistant-preview``: the console's preview chat against an assistant not saved
yet. Real server, real openai SDK against the project's test server."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from loacl.openai_testserver import HttpError, OpenAITestServer
from loacl.settings import Settings
from tests.test_chat import Site, chat_settings, live

ASSISTANT = {"name": "Draft", "provider": "openai", "model": "gpt-4o-mini",
             "instructions": "Always answer: Ahoy, matey!", "temperature": 0.3}


def lines(response: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def counts(settings: Settings) -> tuple[int, int, int]:
    conn = sqlite3.connect(settings.database_path)
    try:
        return tuple(conn.execute(q).fetchone()[0] for q in (
            "SELECT count(*) FROM events", "SELECT count(*) FROM conversations",
            "SELECT count(*) FROM webhook_deliveries"))
    finally:
        conn.close()


def preview(site: Site, assistant: dict[str, Any], *texts: str) -> Any:
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "text": t}
             for i, t in enumerate(texts)]
    return site.http.post("/api/v1/assistant-preview", headers=site.owner,
                          json={"assistant": assistant, "messages": turns})


def test_a_preview_streams_the_unsaved_assistants_reply_and_stores_nothing(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = chat_settings(tmp_path, root)
    with live(settings) as site:
        site.owner = site.register()
        before = counts(settings)
        answered = preview(site, ASSISTANT, "Hello?")
        assert answered.status_code == 200, answered.text
        assert answered.headers["content-type"].startswith("application/x-ndjson")
        pieces = lines(answered)
        deltas = [p for p in pieces if p["type"] == "delta"]
        assert len(deltas) > 1, "streamed in pieces"
        assert "".join(d["text"] for d in deltas) == "Ahoy, matey!"
        offsets = [d["offset"] for d in deltas]
        assert offsets == sorted(offsets) and offsets[0] == 0
        assert pieces[-1]["type"] == "done" and pieces[-1]["status"] == "completed"
        assert pieces[-1]["length"] == len("Ahoy, matey!")
        # The draft went to the provider as it stands: instructions, temperature, history.
        sent = server.requests_to("responses")[-1].json
        assert sent["instructions"] == ASSISTANT["instructions"]
        assert sent["temperature"] == 0.3
        # A changed draft answers differently at once: nothing was saved in between.
        changed = preview(site, {**ASSISTANT, "instructions": "Always answer: Bonjour."},
                          "Hello?", "Ahoy, matey!", "Again?")
        assert "".join(p["text"] for p in lines(changed) if p["type"] == "delta") == "Bonjour."
        sent = server.requests_to("responses")[-1].json
        assert [m["role"] for m in sent["input"]] == ["user", "assistant", "user"]
        assert site.http.get("/api/v1/assistants", headers=site.owner).json()["data"] == []
    # Nothing in the log, no conversation in the inbox, nothing for webhooks.
    assert counts(settings) == before


def test_a_preview_is_refused_without_an_owner_and_rate_limited(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = chat_settings(tmp_path, root, preview_messages_per_minute=2)
    with live(settings) as site:
        anonymous = site.http.post("/api/v1/assistant-preview", json={
            "assistant": ASSISTANT, "messages": [{"role": "user", "text": "Hi"}]})
        assert anonymous.status_code == 401
        site.owner = site.register()
        last_is_reply = preview(site, ASSISTANT, "Hi", "Hello")
        assert last_is_reply.status_code == 422
        unknown = preview(site, {**ASSISTANT, "model": "no-such-model"}, "Hi")
        assert unknown.status_code == 422 and unknown.json()["code"] == "unknown_model"
        assert preview(site, ASSISTANT, "Hi").status_code == 200
        limited = preview(site, ASSISTANT, "Hi")
        assert limited.status_code == 429, limited.text
        assert limited.json()["code"] == "rate_limited"
        assert "retry-after" in limited.headers


def test_a_provider_failure_ends_the_preview_with_an_error_line(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = chat_settings(tmp_path, root, provider_max_retries=0)
    with live(settings) as site:
        site.owner = site.register()
        server.script(faults=[HttpError(status=500, should_retry=False)])
        failed = preview(site, ASSISTANT, "Hi")
        assert failed.status_code == 200
        end = lines(failed)[-1]
        assert end["type"] == "error" and end["code"] == "provider_unavailable", end
        assert end["text"]
