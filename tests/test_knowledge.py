"""Knowledge end to end: a real LOACL on uvicorn reads documents the tests make (PDF, Word,
Markdown, HTML, text), indexes their passages in the same SQLite file, and answers the model's
``file_search`` calls (scripted on the project's OpenAI test server, reached by the real SDK)
with passages that the reply then cites."""

from __future__ import annotations

import io
import itertools
import json
import math
import random
import sqlite3
from pathlib import Path
from typing import Any

import docx
import httpx
import pytest

from loacl import samples
from loacl.openai_testserver import FunctionCall, HttpError, OpenAITestServer, embedding
from loacl.services.extract import kind_of, passages
from loacl.services.knowledge import fuse
from loacl.settings import Settings
from loacl.store.sqlite import connect
from tests.test_chat import (
    PASSWORD,
    Site,
    Visitor,
    audit_ok,
    chat_settings,
    live,
    log_of,
    replay_matches,
    wait_until,
)

REFUNDS = (
    "Refund policy\n\nCustomers may return any product within 30 days of delivery for a full "
    "refund. The refund is paid to the original card within five working days."
)
SHIPPING = "Shipping\n\nParcels leave our warehouse in Leeds every weekday at noon."


def pdf_bytes(pages: list[str]) -> bytes:
    """A small, valid PDF with one line of text per page ("" for a page without text)."""
    return samples.pdf([[text] if text else [] for text in pages])


def docx_bytes(paragraphs: list[str]) -> bytes:
    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def assistant(site: Site, provider: str = "openai", **fields: Any) -> tuple[str, Visitor]:
    site.register()
    created = site.http.post("/api/v1/assistants", headers=site.owner, json={
        "name": "Shop", "provider": provider, "model": "gpt-4o-mini", **fields})
    assert created.status_code == 201, created.text
    widget = site.http.post("/api/v1/widgets", headers=site.owner, json={
        "name": "Site", "assistant_id": created.json()["id"],
        "allowed_origins": ["http://localhost:3000"]})
    assert widget.status_code == 201, widget.text
    return created.json()["id"], site.visitor(widget.json()["id"])


def upload(site: Site, assistant_id: str, name: str, data: bytes) -> httpx.Response:
    return site.http.post(f"/api/v1/assistants/{assistant_id}/knowledge", headers=site.owner,
                          files={"file": (name, data)})


def settled(site: Site, assistant_id: str, document_id: str) -> dict[str, Any]:
    """The document once its reading has ended (ready or failed)."""
    url = f"/api/v1/assistants/{assistant_id}/knowledge/{document_id}"
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(site.http.get(url, headers=site.owner).json())
        return found["status"] in ("ready", "failed")

    wait_until(done, f"document {document_id} to be read")
    return found


def added(site: Site, assistant_id: str, name: str, data: bytes) -> dict[str, Any]:
    sent = upload(site, assistant_id, name, data)
    assert sent.status_code == 202, sent.text
    assert sent.json()["status"] in ("queued", "processing", "ready")
    return settled(site, assistant_id, sent.json()["id"])


def chunk_rows(settings: Settings, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    conn = connect(settings.database_path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def search_call(query: str, call_id: str = "call_s1") -> FunctionCall:
    return FunctionCall(name="file_search", arguments=json.dumps({"query": query}),
                        call_id=call_id)


# -- reading documents ------------------------------------------------------------------------


def test_every_kind_of_document_is_read_into_passages(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = chat_settings(tmp_path, root)
    html = (b"<html><head><style>p{color:red}</style><script>var secret = 1;</script></head>"
            b"<body><h1>Opening hours</h1><p>We open at nine &amp; close at five.</p></body>"
            b"</html>")
    with live(settings) as site:
        assistant_id, _ = assistant(site)
        pdf = added(site, assistant_id, "manual.pdf",
                    pdf_bytes(["Warranty lasts two years", "Batteries are not covered"]))
        word = added(site, assistant_id, "policy.docx", docx_bytes(REFUNDS.split("\n\n")))
        markdown = added(site, assistant_id, "ship.md", f"# {SHIPPING}".encode())
        page = added(site, assistant_id, "hours.html", html)
        text = added(site, assistant_id, "notes.txt", b"Gift cards never expire.")
        listed = site.http.get(f"/api/v1/assistants/{assistant_id}/knowledge",
                               headers=site.owner).json()
    assert pdf["status"] == "ready" and pdf["pages"] == 2 and pdf["kind"] == "pdf"
    for document in (word, markdown, page, text):
        assert document["status"] == "ready", document
        assert document["pages"] == 1 and document["chunks"] >= 1 and document["error"] is None
    assert [d["filename"] for d in listed["data"]] == [
        "manual.pdf", "policy.docx", "ship.md", "hours.html", "notes.txt"]
    rows = chunk_rows(settings, "SELECT d.filename, c.page, c.text FROM knowledge_chunks c "
                      "JOIN knowledge_documents d USING (document_id) ORDER BY c.chunk_id")
    texts = {(name, page): body for name, page, body in rows}
    assert "Warranty lasts two years" in texts["manual.pdf", 1]
    assert "Batteries are not covered" in texts["manual.pdf", 2]
    assert "within 30 days of delivery" in texts["policy.docx", 1]
    assert "We open at nine & close at five." in texts["hours.html", 1]
    assert "secret" not in texts["hours.html", 1] and "color" not in texts["hours.html", 1]
    kinds = [r.type for r in log_of(settings) if r.type.startswith("knowledge.")]
    assert kinds.count("knowledge.uploaded") == 5 and kinds.count("knowledge.indexed") == 5
    audit_ok(settings)


def test_a_corrupt_pdf_fails_and_says_why(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = chat_settings(tmp_path, root)
    with live(settings) as site:
        assistant_id, _ = assistant(site)
        broken = added(site, assistant_id, "broken.pdf", b"%PDF-1.4\n1 0 obj garbage\n%%EOF")
        scanned = added(site, assistant_id, "scan.pdf", pdf_bytes([""]))
    assert broken["status"] == "failed"
    assert broken["error"]["code"] == "unreadable_document"
    assert broken["error"]["message"].startswith("the PDF cannot be read")
    assert scanned["status"] == "failed" and scanned["error"]["code"] == "no_text"
    failed = [r.payload for r in log_of(settings) if r.type == "knowledge.failed"]
    assert {f["code"] for f in failed} == {"unreadable_document", "no_text"}


@pytest.mark.parametrize(("name", "data", "status", "code"), [
    ("virus.exe", b"MZ\x90\x00", 415, "unsupported_document_type"),
    ("fake.pdf", b"just text", 415, "unsupported_document_type"),
    ("fake.docx", b"not a zip", 415, "unsupported_document_type"),
    ("empty.txt", b"", 422, "empty_file"),
    ("big.txt", b"x" * 2049, 413, "file_too_large"),
])
def test_bad_uploads_are_refused_with_a_stable_code_and_nothing_logged(
    tmp_path: Path, server: OpenAITestServer, root: str, name: str, data: bytes, status: int,
    code: str,
) -> None:
    settings = chat_settings(tmp_path, root, knowledge_max_upload_size=2048)
    with live(settings) as site:
        assistant_id, _ = assistant(site)
        refused = upload(site, assistant_id, name, data)
        other = site.http.post("/api/v1/assistants/nope/knowledge", headers=site.owner,
                               files={"file": ("a.txt", b"hello")})
    assert refused.status_code == status, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["code"] == code
    assert other.status_code == 404
    assert not [r for r in log_of(settings) if r.type.startswith("knowledge.")]


# -- answering with citations -----------------------------------------------------------------


def test_the_model_searches_the_knowledge_and_the_reply_cites_it(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = chat_settings(tmp_path, root)
    server.script(calls=[search_call("refund days")])
    with live(settings) as site:
        assistant_id, visitor = assistant(site)
        added(site, assistant_id, "policy.docx", docx_bytes(REFUNDS.split("\n\n")))
        added(site, assistant_id, "shipping.md", SHIPPING.encode())
        posted = site.post(visitor, "How long do I have to return something?")
        assert posted.status_code == 201, posted.text
        reply = posted.json()["reply"]
        listed = site.messages(visitor)["data"]
    first, second = server.requests_to("responses")
    (offered,) = [t for t in first.json["tools"] if t.get("name") == "file_search"]
    assert offered["type"] == "function"
    assert offered["parameters"]["required"] == ["query"]
    output = json.loads(second.json["input"][-1]["output"])
    top = output["results"][0]
    assert top["source"] == 1 and top["document"] == "policy.docx"
    assert "within 30 days of delivery" in top["text"]
    assert all(r["document"] != "shipping.md" for r in output["results"])  # no shared word
    assert reply["status"] == "completed"
    (citation,) = reply["citations"]
    assert citation["number"] == 1 and citation["document"] == "policy.docx"
    assert citation["page"] == 1 and "within 30 days" in citation["passage"]
    assert listed[-1]["citations"] == reply["citations"]
    assert listed[0]["role"] == "user" and "citations" not in listed[0]
    kinds = [r.type for r in log_of(settings, visitor.conversation_id)]
    assert kinds.count("tool.called") == 1 and kinds.count("reply.cited") == 1
    returned = [r.payload for r in log_of(settings, visitor.conversation_id)
                if r.type == "tool.returned"]
    assert returned[0]["name"] == "file_search" and returned[0]["status"] == "ok"
    audit_ok(settings)
    replay_matches(settings)


def test_an_assistant_without_ready_documents_is_offered_no_search(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = chat_settings(tmp_path, root)
    with live(settings) as site:
        assistant_id, visitor = assistant(site)
        added(site, assistant_id, "broken.pdf", b"%PDF-1.4 nothing")
        assert site.post(visitor, "echo:hi").status_code == 201
    (request,) = server.requests_to("responses")
    assert "tools" not in request.json


def test_chat_completions_models_search_the_knowledge_too(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = chat_settings(tmp_path, root, chat_completions_base_url=f"{root}/v1")
    server.script(calls=[search_call("warehouse")], endpoint="chat")
    with live(settings) as site:
        assistant_id, visitor = assistant(site, provider="chat_completions")
        added(site, assistant_id, "shipping.txt", SHIPPING.encode())
        reply = site.post(visitor, "Where do parcels come from?").json()["reply"]
    assert reply["citations"][0]["document"] == "shipping.txt"
    answer = server.requests_to("chat")[1].json["messages"][-1]
    assert answer["role"] == "tool" and "Leeds" in answer["content"]


# The question shares no word with the refund passage, but the model says they mean the same:
# only the embeddings can find it.
MEANING = "money back"
PASSAGE = "Customers may return any product within 30 days of delivery for a full refund."


def by_meaning(tmp_path: Path, server: OpenAITestServer, root: str) -> Settings:
    """Settings with embeddings, one result per search, and the model scripted to search."""
    server.vectors[MEANING] = embedding("refund")
    server.vectors[PASSAGE] = embedding("refund")
    server.script(calls=[search_call(MEANING)])
    return chat_settings(tmp_path, root, embedding_model="text-embedding-3-small",
                         knowledge_results=1, knowledge_chunk_chars=200)


def test_hybrid_ranking_finds_a_passage_by_meaning_when_embeddings_are_served(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = by_meaning(tmp_path, server, root)
    with live(settings) as site:
        assistant_id, visitor = assistant(site)
        added(site, assistant_id, "policy.txt", PASSAGE.encode())
        added(site, assistant_id, "shipping.txt", SHIPPING.encode())
        wait_until(lambda: bool(chunk_rows(settings, "SELECT count(*) FROM knowledge_vectors")
                                [0][0] >= 2), "the embeddings")
        reply = site.post(visitor, "Can I get my money back?").json()["reply"]
    assert reply["citations"][0]["passage"] == PASSAGE
    embedded = server.requests_to("embeddings")
    assert embedded[0].json["model"] == "text-embedding-3-small"
    assert embedded[-1].json["input"] == [MEANING]
    vectors = chunk_rows(settings, "SELECT length(embedding) FROM knowledge_vectors")
    assert {n for (n,) in vectors} == {4 * 64}
    replay_matches(settings)
    conn = connect(settings.database_path)
    try:  # replay rebuilt the passages and kept their embeddings
        assert conn.execute("SELECT count(*) FROM knowledge_vectors").fetchone()[0] >= 2
    finally:
        conn.close()


def test_a_document_added_after_a_search_is_found_by_meaning_at_the_next(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    """The nearest-passage search works on a copy of the embeddings: a new document's
    passages join it before the next search."""
    settings = by_meaning(tmp_path, server, root)
    with live(settings) as site:
        assistant_id, visitor = assistant(site)
        added(site, assistant_id, "shipping.txt", SHIPPING.encode())
        wait_until(lambda: bool(chunk_rows(settings, "SELECT count(*) FROM knowledge_vectors")
                                [0][0] >= 1), "the first embeddings")
        before = site.post(visitor, "Can I get my money back?").json()["reply"]
        added(site, assistant_id, "policy.txt", PASSAGE.encode())
        wait_until(lambda: bool(chunk_rows(
            settings, "SELECT count(*) FROM knowledge_vectors v JOIN knowledge_chunks c "
            "ON c.text_sha256 = v.text_sha256 WHERE c.text LIKE 'Customers%'")[0][0]),
            "the new document's embeddings")
        server.script(calls=[search_call(MEANING)])
        after = site.post(visitor, "And my money back?").json()["reply"]
    assert [c["document"] for c in before["citations"]] == ["shipping.txt"]
    assert [c["passage"] for c in after["citations"]] == [PASSAGE]


def test_a_failing_embeddings_endpoint_leaves_full_text_search(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = chat_settings(tmp_path, root, embedding_model="text-embedding-3-small",
                             provider_max_retries=0)
    for _ in range(8):
        server.script(faults=[HttpError(status=400, message="no such model")],
                      endpoint="embeddings")
    server.script(calls=[search_call("warehouse")])
    with live(settings) as site:
        assistant_id, visitor = assistant(site)
        document = added(site, assistant_id, "shipping.txt", SHIPPING.encode())
        reply = site.post(visitor, "Where from?").json()["reply"]
    assert document["status"] == "ready"
    assert reply["citations"][0]["document"] == "shipping.txt"


# -- deleting ---------------------------------------------------------------------------------


def test_deleting_a_document_removes_its_passages_and_index_entries(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = chat_settings(tmp_path, root)
    with live(settings) as site:
        assistant_id, visitor = assistant(site)
        kept = added(site, assistant_id, "shipping.txt", SHIPPING.encode())
        gone = added(site, assistant_id, "refunds.txt", REFUNDS.encode())
        url = f"/api/v1/assistants/{assistant_id}/knowledge/{gone['id']}"
        assert site.http.delete(url, headers=site.owner).status_code == 204
        assert site.http.get(url, headers=site.owner).json()["code"] == "document_not_found"
        assert site.http.delete(url, headers=site.owner).status_code == 404
        server.script(calls=[search_call("refund warehouse")])
        reply = site.post(visitor, "Refunds?").json()["reply"]
    assert [c["document"] for c in reply["citations"]] == ["shipping.txt"]
    assert chunk_rows(settings, "SELECT DISTINCT document_id FROM knowledge_chunks") == [
        (kept["id"],)]
    hits = chunk_rows(settings, "SELECT rowid FROM knowledge_fts WHERE knowledge_fts MATCH "
                      "'refund'")
    assert hits == []
    kept_bytes = chunk_rows(settings, "SELECT sha256 FROM blobs")
    assert kept_bytes == [(kept["sha256"],)]  # the deleted document's bytes are gone
    assert [r.type for r in log_of(settings) if r.type == "knowledge.deleted"] == [
        "knowledge.deleted"]
    audit_ok(settings)
    replay_matches(settings)


def test_another_owner_cannot_see_or_delete_the_documents(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = chat_settings(tmp_path, root)
    with live(settings) as site:
        assistant_id, _ = assistant(site)
        document = added(site, assistant_id, "a.txt", b"hello there")
        site.register("other@example.com")
        base = f"/api/v1/assistants/{assistant_id}/knowledge"
        assert site.http.get(base, headers=site.owner).status_code == 404
        assert site.http.delete(f"{base}/{document['id']}",
                                headers=site.owner).status_code == 404


# -- the parts on their own -------------------------------------------------------------------


def test_passages_overlap_and_keep_their_page() -> None:
    words = " ".join(f"w{i}" for i in range(300))
    found = passages([words, "second page text"], size=200, overlap=40)
    assert all(len(p.text) <= 200 + 42 for p in found)
    for before, after in itertools.pairwise(found):
        if after.page == before.page:
            assert after.text.split("\n\n")[0] in before.text  # the overlap repeats its end
    assert found[-1].page == 2 and "second page text" in found[-1].text


def test_fusion_favours_what_both_rankings_agree_on() -> None:
    assert fuse([1, 2, 3], [3, 4, 1]) == [1, 3, 2, 4]


def test_kind_of_trusts_neither_name_nor_content_alone() -> None:
    assert kind_of("a.PDF", b"%PDF-1.7 ...") == "pdf"
    assert kind_of("a.markdown", b"# hi") == "md"
    with pytest.raises(Exception, match="not a html file"):
        kind_of("a.html", b"\x00\x01")


def test_the_migration_made_the_index(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert {"knowledge_documents", "knowledge_chunks", "knowledge_fts",
            "knowledge_vectors"} <= names


# -- an imported Assistants-API assistant -----------------------------------------------------


def test_an_imported_assistant_with_file_search_answers_from_uploaded_documents(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    """``loacl assistants import`` keeps the export's vector stores; once the owner uploads the
    documents, LOACL's own file_search answers, and OpenAI's tool over the old stores stands
    aside (the two would share a name)."""
    import asyncio

    from loacl import admin
    from loacl.store import migrations

    settings = chat_settings(tmp_path, root)
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
    server.script(calls=[search_call("refund days")])
    with live(settings) as site:
        site.login()
        widget = site.http.post("/api/v1/widgets", headers=site.owner, json={
            "name": "Site", "assistant_id": support.assistant_id,
            "allowed_origins": ["http://localhost:3000"]})
        assert widget.status_code == 201, widget.text
        visitor = site.visitor(widget.json()["id"])
        added(site, support.assistant_id, "policy.docx", docx_bytes(REFUNDS.split("\n\n")))
        reply = site.post(visitor, "Can I return this?").json()["reply"]
    first = server.requests_to("responses")[0].json
    assert [t["type"] for t in first["tools"]] == ["function"]
    assert first["tools"][0]["name"] == "file_search"
    assert reply["citations"][0]["document"] == "policy.docx"


# -- the full-text index's segments ------------------------------------------------------------


async def test_merging_the_index_keeps_every_search_result(store: Any) -> None:
    from loacl.domain.knowledge import DocumentIndexed, DocumentUploaded, Passage, knowledge_stream
    from loacl.store.views import knowledge as views

    words = [f"{stem}{n}" for stem in ("ship", "refund", "order", "lamp") for n in range(40)]
    cycle = itertools.cycle(words)
    for d in range(12):  # one document at a time, each its own segment of the index
        document = f"doc-{d}"
        texts = [" ".join(next(cycle) for _ in range(7 + (d + p) % 11)) for p in range(20)]
        await store.append(knowledge_stream("a-1"), [
            DocumentUploaded(document_id=document, assistant_id="a-1", filename=f"{d}.md",
                             kind="md", content_type="text/markdown", size=1,
                             sha256="0" * 64),
            DocumentIndexed(document_id=document, pages=1, passages=tuple(
                Passage(text=t, page=1) for t in texts)),
        ])

    def segments() -> int:
        with sqlite3.connect(store.path) as conn:
            return int(conn.execute(
                "SELECT count(DISTINCT segid) FROM knowledge_fts_idx").fetchone()[0])

    questions = ["ship3 refund7", "lamp1 order2 ship9", "refund39", "order5 order6 lamp30",
                 "nothing here", "ship1 ship2 ship3 ship4 refund1 refund2"]
    before = [await views.search_text(store, "a-1", q, 8) for q in questions]
    assert segments() > 1
    assert await views.merge_text_index(store) >= 1
    assert segments() == 1
    assert await views.merge_text_index(store) == 0  # nothing left to merge
    after = [await views.search_text(store, "a-1", q, 8) for q in questions]
    assert after == before
    assert any(len(found) == 8 for found in after) and after[4] == []


# -- ranking: the assistant's passages, exactly, however the index is shared -------------------


async def test_full_text_search_ranks_exactly_the_assistants_passages_whatever_its_share(
    store: Any,
) -> None:
    """The whole index is ranked to a narrow top and the assistant's passages kept from it,
    or, for a small share, the assistant's passages are ranked alone: either way the result
    is the assistant's own BM25 ranking, as a query over its passages alone gives it."""
    from loacl.domain.knowledge import DocumentIndexed, DocumentUploaded, Passage, knowledge_stream
    from loacl.store.views import knowledge as views

    rng = random.Random(5)
    words = [f"{stem}{n}" for stem in ("ship", "refund", "order", "lamp") for n in range(60)]
    # a-big holds 70% of the passages, a-half 25%, a-small 5%; a-none has none.
    for assistant, documents in (("a-big", 14), ("a-half", 5), ("a-small", 1)):
        for d in range(documents):
            document = f"{assistant}-{d}"
            await store.append(knowledge_stream(assistant), [
                DocumentUploaded(document_id=document, assistant_id=assistant,
                                 filename=f"{d}.md", kind="md", content_type="text/markdown",
                                 size=1, sha256="0" * 64),
                DocumentIndexed(document_id=document, pages=1, passages=tuple(
                    Passage(text=" ".join(rng.choice(words) for _ in range(30)), page=1)
                    for _ in range(20))),
            ])

    async def alone(assistant: str, question: str, limit: int) -> list[Any]:
        rows = await store.query(
            "SELECT c.chunk_id, c.document_id, d.filename, c.page, c.text "
            "FROM knowledge_chunks c JOIN knowledge_documents d USING (document_id) "
            "JOIN (SELECT rowid AS id, bm25(knowledge_fts) AS score FROM knowledge_fts "
            "WHERE knowledge_fts MATCH ?) f ON f.id = c.chunk_id "
            "WHERE c.assistant_id = ? ORDER BY f.score, c.chunk_id LIMIT ?",
            (views.match_query(question), assistant, limit))
        return [views.Hit(*r) for r in rows]

    questions = [" ".join(rng.choice(words) for _ in range(n)) for n in (1, 2, 3, 6, 6, 6)]
    questions += ["ship1", "nothing here", "lamp59 zebra"]
    checked = 0
    for assistant in ("a-big", "a-half", "a-small", "a-none"):
        for question in questions:
            for limit in (1, 5, 20, 500):
                found = await views.search_text(store, assistant, question, limit)
                expected = await alone(assistant, question, limit)
                assert [h.chunk_id for h in found] == [h.chunk_id for h in expected], (
                    assistant, question, limit)
                assert found == expected
                checked += len(found)
    assert checked > 1000  # the rankings compared were not empty
    assert await views.search_text(store, "a-none", "ship1 ship2", 5) == []


async def test_nearest_passages_are_the_assistants_closest_by_cosine(store: Any) -> None:
    """sqlite-vec's k nearest over the assistant's embeddings, checked against cosine
    distance computed here; another assistant's embeddings and another model's are left out,
    and a change of the embeddings is seen at the next search."""
    from loacl.domain.knowledge import DocumentIndexed, DocumentUploaded, Passage, knowledge_stream
    from loacl.services.knowledge import as_vector
    from loacl.store.projections.knowledge import text_digest
    from loacl.store.views import knowledge as views

    rng = random.Random(9)
    vectors: dict[str, list[float]] = {}
    for assistant in ("a-1", "a-2"):
        texts = [f"{assistant} passage {i}" for i in range(60)]
        await store.append(knowledge_stream(assistant), [
            DocumentUploaded(document_id=f"{assistant}-doc", assistant_id=assistant,
                             filename="d.md", kind="md", content_type="text/markdown", size=1,
                             sha256="0" * 64),
            DocumentIndexed(document_id=f"{assistant}-doc", pages=1,
                            passages=tuple(Passage(text=t, page=1) for t in texts)),
        ])
        for t in texts:
            vectors[text_digest(t)] = [rng.uniform(-1, 1) for _ in range(16)]
    await views.keep_vectors(store, "m", [(d, as_vector(v)) for d, v in vectors.items()])
    await views.keep_vectors(store, "other", [(d, as_vector([1.0] * 16)) for d in vectors])
    rows = await store.query(
        "SELECT chunk_id, assistant_id, text_sha256 FROM knowledge_chunks")

    def cosine(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return 1 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    index = views.VectorIndex(store)
    try:
        for _ in range(5):
            asked = [rng.uniform(-1, 1) for _ in range(16)]
            found = await index.nearest("a-1", "m", as_vector(asked), 10)
            distance = {chunk_id: cosine(asked, vectors[digest])
                        for chunk_id, assistant, digest in rows if assistant == "a-1"}
            assert set(found) <= set(distance) and len(found) == 10
            # The ten closest, closest first (float32 there, float64 here: equal to 1e-5).
            assert [distance[c] for c in found] == pytest.approx(
                sorted(distance.values())[:10], abs=1e-5)
        # New embeddings for a-1's passages: the next search sees them.
        closest = next(r for r in rows if r[1] == "a-1")
        await views.keep_vectors(store, "m", [(closest[2], as_vector(asked))])
        index.changed()
        assert (await index.nearest("a-1", "m", as_vector(asked), 3))[0] == closest[0]
        assert await index.nearest("a-1", "m", as_vector([1.0] * 8), 3) == []  # other size
        assert await index.nearest("a-3", "m", as_vector(asked), 3) == []
    finally:
        index.close()
