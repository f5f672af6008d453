"""Knowledge kept in OpenAI vector stores, end to end: a real LOACL on uvicorn, the real SDK
against the project's OpenAI test server (which keeps files and vector stores, moves their files
from in_progress to completed, and answers file_search with file_citation annotations)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from loacl.openai_testserver import HttpError, OpenAITestServer
from loacl.settings import Settings
from tests.test_chat import (
    PASSWORD,
    Site,
    audit_ok,
    chat_settings,
    live,
    log_of,
    replay_matches,
    wait_until,
)
from tests.test_knowledge import REFUNDS, SHIPPING, added, assistant, settled, upload


def openai_settings(tmp_path: Path, root: str, **overrides: Any) -> Settings:
    return chat_settings(tmp_path, root, knowledge_remote_poll_seconds=0.02,
                         knowledge_remote_retry_seconds=0.01, **overrides)


def choose(site: Site, assistant_id: str, store: str) -> Any:
    return site.http.put(f"/api/v1/assistants/{assistant_id}/knowledge-store",
                         headers=site.owner, json={"store": store})


def knowledge_events(settings: Settings) -> list[str]:
    return [r.type for r in log_of(settings) if r.type.startswith("knowledge.")]


@pytest.fixture(autouse=True)
def slow_reading(server: OpenAITestServer) -> None:
    server.processing_reads = 2  # each file is in_progress for two reads, then completed


def test_documents_live_in_a_vector_store_and_the_reply_cites_them(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = openai_settings(tmp_path, root)
    with live(settings) as site:
        assistant_id, visitor = assistant(site)
        assert site.http.get(f"/api/v1/assistants/{assistant_id}/knowledge-store",
                             headers=site.owner).json() == {"store": "local",
                                                            "vector_store_id": None}
        chosen = choose(site, assistant_id, "openai")
        assert chosen.status_code == 200, chosen.text
        assert chosen.json() == {"store": "openai", "vector_store_id": None}  # on first doc
        refunds = added(site, assistant_id, "refunds.md", REFUNDS.encode())
        shipping = added(site, assistant_id, "shipping.txt", SHIPPING.encode())
        assert refunds["status"] == "ready", refunds
        remote = refunds["openai"]
        assert remote["status"] == "completed" and remote["last_error"] is None
        vector_store_id = remote["vector_store_id"]
        assert shipping["openai"]["vector_store_id"] == vector_store_id  # one store
        store = server.vector_stores[vector_store_id]
        assert store["name"] == "LOACL: Shop"
        assert {f["id"] for f in server.store_files(vector_store_id)} == {
            remote["file_id"], shipping["openai"]["file_id"]}
        assert server.file_bytes(remote["file_id"]) == REFUNDS.encode()
        assert {r.form["purpose"] for r in server.requests_to("files") if r.form} == {
            "assistants"}

        server.script("You may return it within 30 days.")
        posted = site.post(visitor, "How many days do I have to return a product?")
        assert posted.status_code == 201, posted.text
        reply = posted.json()["reply"]
        listed = site.messages(visitor)["data"]

        # Deleting a document deletes its vector store file and its file.
        url = f"/api/v1/assistants/{assistant_id}/knowledge/{shipping['id']}"
        assert site.http.delete(url, headers=site.owner).status_code == 204
        wait_until(lambda: shipping["openai"]["file_id"] not in server.file_ids,
                   "the deleted document's file to be deleted at OpenAI")
        assert [f["id"] for f in server.store_files(vector_store_id)] == [remote["file_id"]]

        # Back to local: the vector store and the remaining file are deleted.
        assert choose(site, assistant_id, "local").json()["store"] == "local"
        wait_until(lambda: vector_store_id not in server.vector_stores,
                   "the vector store to be deleted")
        wait_until(lambda: remote["file_id"] not in server.file_ids, "the file to be deleted")
        after = site.http.get(f"/api/v1/assistants/{assistant_id}/knowledge/{refunds['id']}",
                              headers=site.owner).json()
        store_now = site.http.get(f"/api/v1/assistants/{assistant_id}/knowledge-store",
                                  headers=site.owner).json()
    request = server.requests_to("responses")[0].json
    assert request["tools"] == [{"type": "file_search", "vector_store_ids": [vector_store_id]}]
    assert request["include"] == ["file_search_call.results"]
    assert reply["status"] == "completed"
    (citation,) = reply["citations"]
    assert citation["number"] == 1 and citation["document"] == "refunds.md"
    assert citation["document_id"] == refunds["id"]
    assert "within 30 days of delivery" in citation["passage"]
    assert listed[-1]["citations"] == reply["citations"]
    assert after["status"] == "ready" and after["openai"] is None  # searched locally again
    assert store_now == {"store": "local", "vector_store_id": None}
    kinds = [r.type for r in log_of(settings, visitor.conversation_id)]
    assert kinds.count("reply.cited") == 1 and "tool.called" not in kinds
    events = knowledge_events(settings)
    for kind in ("knowledge.store_chosen", "knowledge.vector_store_created",
                 "knowledge.remote_uploaded", "knowledge.remote_added",
                 "knowledge.remote_completed", "knowledge.remote_deleted",
                 "knowledge.vector_store_deleted"):
        assert kind in events, kind
    assert events.count("knowledge.remote_deleted") == 2
    audit_ok(settings)
    replay_matches(settings)


def test_provider_faults_on_upload_end_failed_with_the_reason(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = openai_settings(tmp_path, root, knowledge_remote_attempts=3)
    server.file_failures["scan.md"] = ("unsupported_file", "The file has no text to read.")
    with live(settings) as site:
        assistant_id, _ = assistant(site)
        assert choose(site, assistant_id, "openai").status_code == 200
        server.script(faults=[HttpError(status=500), HttpError(status=503),
                              HttpError(status=502)], endpoint="files")
        sent = upload(site, assistant_id, "refunds.md", REFUNDS.encode())
        assert sent.status_code == 202, sent.text
        failed = settled(site, assistant_id, sent.json()["id"])
        # A passing fault is retried: the next upload goes through.
        server.script(faults=[HttpError(status=500)], endpoint="files")
        retried = added(site, assistant_id, "shipping.md", SHIPPING.encode())
        refused = added(site, assistant_id, "scan.md", b"Scanned\n\nNothing here.")
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "provider_unavailable"
    assert "3 times" in failed["error"]["message"]
    assert failed["openai"]["status"] == "failed"
    assert retried["status"] == "ready" and retried["openai"]["status"] == "completed"
    assert refused["status"] == "failed"
    assert refused["error"] == {"code": "unsupported_file",
                                "message": "The file has no text to read."}
    assert refused["openai"]["last_error"] == refused["error"]
    assert "knowledge.remote_failed" in knowledge_events(settings)
    audit_ok(settings)


def test_openai_knowledge_needs_the_openai_provider(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = openai_settings(tmp_path, root, chat_completions_base_url=f"{root}/v1")
    with live(settings) as site:
        other, _ = assistant(site, provider="chat_completions")
        refused = choose(site, other, "openai")
        unknown = choose(site, other, "pinecone")
        openai_one = site.http.post("/api/v1/assistants", headers=site.owner, json={
            "name": "Docs", "provider": "openai", "model": "gpt-4o-mini"}).json()
        assert choose(site, openai_one["id"], "openai").status_code == 200
        moved = site.http.patch(f"/api/v1/assistants/{openai_one['id']}", headers=site.owner,
                                json={"provider": "chat_completions"})
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == "knowledge_store_not_supported"
    assert unknown.status_code == 422 and unknown.json()["code"] == "validation_error"
    assert moved.status_code == 422, moved.text
    assert moved.json()["code"] == "knowledge_store_not_supported", moved.text
    assert "knowledge.store_chosen" in knowledge_events(settings)


def test_deleting_all_knowledge_or_the_assistant_deletes_the_vector_store(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = openai_settings(tmp_path, root)
    with live(settings) as site:
        first, _ = assistant(site)
        choose(site, first, "openai")
        doc = added(site, first, "refunds.md", REFUNDS.encode())
        store = doc["openai"]["vector_store_id"]
        assert site.http.delete(f"/api/v1/assistants/{first}/knowledge",
                                headers=site.owner).status_code == 204
        wait_until(lambda: store not in server.vector_stores, "the store to be deleted")
        wait_until(lambda: doc["openai"]["file_id"] not in server.file_ids, "the file")
        listed = site.http.get(f"/api/v1/assistants/{first}/knowledge",
                               headers=site.owner).json()["data"]
        # An assistant no widget uses, deleted with its knowledge at OpenAI.
        second = site.http.post("/api/v1/assistants", headers=site.owner, json={
            "name": "Docs", "provider": "openai", "model": "gpt-4o-mini"}).json()["id"]
        choose(site, second, "openai")
        other = added(site, second, "shipping.md", SHIPPING.encode())["openai"]
        assert site.http.delete(f"/api/v1/assistants/{second}",
                                headers=site.owner).status_code == 204
        wait_until(lambda: other["vector_store_id"] not in server.vector_stores,
                   "the deleted assistant's store to be deleted")
    assert listed == []
    assert other["file_id"] not in server.file_ids


def test_an_imported_assistant_keeps_its_vector_stores_beside_the_new_one(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    """An Assistants-API export's ``vector_store_ids`` stay searched; with knowledge kept at
    OpenAI, the documents uploaded go to a store LOACL creates, searched first, and LOACL
    never deletes a store it did not create."""
    from loacl import admin
    from loacl.store import migrations
    from loacl.store.sqlite import connect

    settings = openai_settings(tmp_path, root)
    conn = connect(settings.database_path)
    migrations.up(conn)
    conn.close()
    asyncio.run(admin.create_user(settings, "owner@example.com", PASSWORD,
                                  name=None, verified=True))
    export = Path(__file__).parent / "data" / "openai_assistants_export.json"
    results = asyncio.run(admin.import_assistants(settings, export, "owner@example.com",
                                                  validate=False))
    (support,) = [r for r in results if r.source_id == "asst_support01"]
    assert support.assistant_id is not None
    with live(settings) as site:
        site.login()
        imported = site.http.get(f"/api/v1/assistants/{support.assistant_id}",
                                 headers=site.owner).json()["file_search"]["vector_store_ids"]
        widget = site.http.post("/api/v1/widgets", headers=site.owner, json={
            "name": "Site", "assistant_id": support.assistant_id,
            "allowed_origins": ["http://localhost:3000"]})
        visitor = site.visitor(widget.json()["id"])
        assert choose(site, support.assistant_id, "openai").status_code == 200
        doc = added(site, support.assistant_id, "refunds.md", REFUNDS.encode())
        own = doc["openai"]["vector_store_id"]
        server.script("Within 30 days.")
        reply = site.post(visitor, "How many days to return a product?").json()["reply"]
        choose(site, support.assistant_id, "local")
        wait_until(lambda: own not in server.vector_stores, "LOACL's store to be deleted")
    (tool,) = server.requests_to("responses")[0].json["tools"]
    assert tool == {"type": "file_search", "vector_store_ids": [own, *imported]}
    assert reply["citations"][0]["document"] == "refunds.md"
    deleted = [r.path for r in server.requests_to("vector_stores") if r.method == "DELETE"]
    assert f"/v1/vector_stores/{own}" in deleted
    assert not any(i in path for i in imported for path in deleted)


def test_a_document_still_read_at_a_stop_is_followed_after_the_restart(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = openai_settings(tmp_path, root)
    server.processing_reads = 10**9  # OpenAI keeps reading
    with live(settings) as site:
        assistant_id, _ = assistant(site)
        choose(site, assistant_id, "openai")
        sent = upload(site, assistant_id, "refunds.md", REFUNDS.encode()).json()
        url = f"/api/v1/assistants/{assistant_id}/knowledge/{sent['id']}"
        seen: dict[str, Any] = {}

        def reading() -> bool:
            seen.update(site.http.get(url, headers=site.owner).json())
            return (seen["openai"] or {}).get("status") == "in_progress"

        wait_until(reading, "OpenAI to be reading the document")
    assert seen["status"] == "processing" and seen["openai"]["file_id"] in server.file_ids
    server.processing_reads = 0  # done, while LOACL is stopped
    with live(settings) as site:
        site.login()
        done = settled(site, assistant_id, sent["id"])
    assert done["status"] == "ready" and done["openai"]["status"] == "completed"
    events = knowledge_events(settings)
    assert events.count("knowledge.remote_uploaded") == 1  # not uploaded twice
    assert events[-1] == "knowledge.remote_completed"
    audit_ok(settings)


def _to_delete(settings: Settings) -> list[tuple[str, str]]:
    with sqlite3.connect(settings.database_path) as conn:
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT document_id, file_id FROM knowledge_remote_deletions")]


def test_a_file_openai_failed_to_delete_is_deleted_later_and_after_a_restart(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    attempts = 2
    settings = openai_settings(tmp_path, root, knowledge_remote_attempts=attempts,
                               knowledge_remote_delete_retry_seconds=3600)

    def deletes() -> list[Any]:
        return [r for r in server.requests_to("files") if r.method == "DELETE"]

    with live(settings) as site:
        assistant_id, _ = assistant(site)
        choose(site, assistant_id, "openai")
        doc = added(site, assistant_id, "refunds.md", REFUNDS.encode())
        file_id = doc["openai"]["file_id"]
        # OpenAI fails every try of the deletion: the file stays to delete, not forgotten.
        server.script(faults=[HttpError(status=500)] * attempts, endpoint="files")
        url = f"/api/v1/assistants/{assistant_id}/knowledge/{doc['id']}"
        assert site.http.delete(url, headers=site.owner).status_code == 204
        wait_until(lambda: len(deletes()) == attempts, "OpenAI to be asked to delete the file")
        assert file_id in server.file_ids
        assert _to_delete(settings) == [(doc["id"], file_id)]
    assert "knowledge.remote_deleted" not in knowledge_events(settings)
    # The next start tries again; OpenAI fails once more, and the try after the pause deletes.
    server.script(faults=[HttpError(status=503)], endpoint="files")
    again = openai_settings(tmp_path, root, knowledge_remote_attempts=1,
                            knowledge_remote_delete_retry_seconds=0.05)
    with live(again):
        wait_until(lambda: file_id not in server.file_ids, "the file to be deleted at OpenAI")
        wait_until(lambda: _to_delete(settings) == [], "the deletion to be done")
    assert len(deletes()) == attempts + 2
    assert knowledge_events(settings).count("knowledge.remote_deleted") == 1
    audit_ok(settings)
