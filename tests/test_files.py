"""Visitor uploads over real HTTP on uvicorn: the type decided from content and name together,
size caps enforced while reading, bytes content-addressed in SQLite, downloads for the uploader
and the owner only, and files passed on to the providers (uploaded once, or inlined)."""

from __future__ import annotations

import hashlib
import io
import select
import socket
import sqlite3
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from loacl.openai_testserver import Cut, OpenAITestServer
from loacl.services.files import sniff
from tests.test_chat import (
    Site,
    Visitor,
    audit_ok,
    chat_settings,
    event_count,
    live,
    log_of,
    replay_matches,
)

LIMIT = 50_000  # max_upload_size for these tests
WAIT = 30.0


def pdf_bytes(body: bytes = b"") -> bytes:
    return (
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
        b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\n" + body
        + b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"
    )


def docx_bytes(with_document: bool = True) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        archive.writestr("_rels/.rels", '<?xml version="1.0"?><Relationships/>')
        if with_document:
            archive.writestr(
                "word/document.xml",
                '<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/'
                'wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>Hello</w:t></w:r></w:p>'
                "</w:body></w:document>",
            )
        else:
            archive.writestr("xl/workbook.xml", '<?xml version="1.0"?><workbook/>')
    return buffer.getvalue()


OLE2 = bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504)  # a compound file's header sector
# The start of a Windows executable: "MZ", the DOS stub, and the NULs every PE header has.
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + bytes(48) + (
    b"This program cannot be run in DOS mode.\r\r\n$" + bytes(64) + b"PE\x00\x00"
)

ALLOWED = [
    ("report.pdf", pdf_bytes(), "pdf", "application/pdf"),
    ("letter.docx", docx_bytes(), "docx",
     "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ("old.doc", OLE2, "doc", "application/msword"),
    ("notes.txt", "Grüße — plain UTF-8 text\n".encode(), "txt", "text/plain; charset=utf-8"),
    ("UPPER.PDF", pdf_bytes(), "pdf", "application/pdf"),
]

DISGUISES = [
    ("exe-as-pdf", "invoice.pdf", EXE),
    ("zip-as-docx", "sheet.docx", docx_bytes(with_document=False)),
    ("broken-zip-as-docx", "broken.docx", b"PK\x03\x04" + b"not really a zip"),
    ("text-as-pdf", "fake.pdf", b"just some text, no PDF header\n"),
    ("pdf-as-txt", "sneaky.txt", pdf_bytes()),
    ("docx-as-pdf", "letter.pdf", docx_bytes()),
    ("nul-in-txt", "nul.txt", b"text with a \x00 NUL byte"),
    ("invalid-utf8-txt", "latin1.txt", "café".encode("latin-1")),
    ("no-extension", "README", b"plain text without an extension"),
    ("other-extension", "page.html", b"<html><script>alert(1)</script></html>"),
]


@dataclass
class World:
    site: Site
    responses: str  # widget ids
    chat_completions: str
    other_owner: dict[str, str]


@pytest.fixture(scope="module")
def world(
    openai_server: tuple[OpenAITestServer, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    settings = chat_settings(
        tmp_path_factory.mktemp("files"), openai_server[1], max_upload_size=LIMIT
    )
    with live(settings) as site:
        other = site.register("other@example.com")
        site.register()
        yield World(site, site.widget("openai"), site.widget("chat_completions"), other)
    audit_ok(settings)
    replay_matches(settings)


def upload(site: Site, visitor: Visitor, name: str, data: bytes,
           content_type: str = "application/octet-stream") -> httpx.Response:
    return site.http.post(
        f"/api/v1/widgets/{visitor.widget_id}/files", headers=visitor.headers,
        files={"file": (name, data, content_type)},
    )


def blobs(site: Site) -> dict[str, bytes]:
    conn = sqlite3.connect(site.settings.database_path)
    try:
        return {k: bytes(v) for k, v in conn.execute("SELECT sha256, data FROM blobs")}
    finally:
        conn.close()


# -- types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "data", "kind", "content_type"), ALLOWED,
                         ids=[a[0] for a in ALLOWED])
def test_each_allowed_type_is_stored_by_content(
    world: World, name: str, data: bytes, kind: str, content_type: str
) -> None:
    site = world.site
    visitor = site.visitor(world.responses)
    # The type the browser claims counts for nothing; the bytes and the name decide.
    uploaded = upload(site, visitor, name, data, "image/png")
    assert uploaded.status_code == 201, uploaded.text
    meta = uploaded.json()
    digest = hashlib.sha256(data).hexdigest()
    assert meta["filename"] == name
    assert (meta["kind"], meta["content_type"]) == (kind, content_type)
    assert (meta["size"], meta["sha256"]) == (len(data), digest)
    assert meta["conversation_id"] == visitor.conversation_id
    assert blobs(site)[digest] == data
    event = log_of(site.settings, visitor.conversation_id)[-1]
    assert event.type == "file.uploaded"
    assert event.payload["file_id"] == meta["id"]
    assert event.payload["sha256"] == digest
    assert event.payload["visitor_id"] == visitor.visitor_id
    assert "data" not in event.payload  # the bytes live in the blob table, not in the log

    downloaded = site.http.get(
        f"/api/v1/widgets/{visitor.widget_id}/files/{meta['id']}", headers=visitor.headers
    )
    assert downloaded.status_code == 200
    assert downloaded.content == data
    assert downloaded.headers["content-type"] == content_type
    assert downloaded.headers["content-disposition"] == (
        f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}"
    )
    assert downloaded.headers["x-content-type-options"] == "nosniff"


def test_the_same_bytes_twice_are_one_blob(world: World) -> None:
    site = world.site
    data = pdf_bytes(b"% unique to this test\n")
    first = upload(site, site.visitor(world.responses), "a.pdf", data)
    second = upload(site, site.visitor(world.responses), "b.pdf", data)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert first.json()["sha256"] == second.json()["sha256"]
    conn = sqlite3.connect(site.settings.database_path)
    try:
        (count,) = conn.execute(
            "SELECT count(*) FROM blobs WHERE sha256 = ?", (first.json()["sha256"],)
        ).fetchone()
    finally:
        conn.close()
    assert count == 1


@pytest.mark.parametrize(("name", "data"), [d[1:] for d in DISGUISES],
                         ids=[d[0] for d in DISGUISES])
def test_a_disguised_file_is_415_and_leaves_no_trace(
    world: World, name: str, data: bytes
) -> None:
    site = world.site
    visitor = site.visitor(world.responses)
    before, stored = event_count(site.settings), set(blobs(site))
    refused = upload(site, visitor, name, data, "application/pdf")
    assert refused.status_code == 415, refused.text
    assert refused.json()["code"] == "unsupported_file_type"
    assert "accepted types" in refused.json()["detail"]
    assert event_count(site.settings) == before
    assert set(blobs(site)) == stored


def test_sniffing_reads_the_content_alone() -> None:
    assert [sniff(data) for _, _, data in DISGUISES[:4]] == [None, None, None, "txt"]
    assert sniff(pdf_bytes()) == "pdf" and sniff(docx_bytes()) == "docx"
    assert sniff(OLE2) == "doc" and sniff("ü".encode()) == "txt"


def test_types_outside_the_allowed_list_are_refused(tmp_path: Path) -> None:
    settings = chat_settings(tmp_path, None, allowed_file_types=["pdf"])
    with live(settings) as site:
        site.register()
        visitor = site.visitor(site.widget("demo", "demo"))
        assert upload(site, visitor, "a.pdf", pdf_bytes()).status_code == 201
        refused = upload(site, visitor, "notes.txt", b"fine text")
        assert refused.status_code == 415
        assert refused.json()["code"] == "unsupported_file_type"
        assert "accepted types: pdf," in refused.json()["detail"]


def test_a_path_in_the_name_is_dropped(world: World) -> None:
    site = world.site
    visitor = site.visitor(world.responses)
    uploaded = upload(site, visitor, "..\\..\\etc/report:v2?.txt", b"harmless")
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["filename"] == "reportv2.txt"
    downloaded = site.http.get(
        f"/api/v1/widgets/{visitor.widget_id}/files/{uploaded.json()['id']}",
        headers=visitor.headers,
    )
    assert downloaded.headers["content-disposition"] == (
        "attachment; filename=\"reportv2.txt\"; filename*=UTF-8''reportv2.txt"
    )


def test_a_name_in_any_script_downloads(world: World) -> None:
    """Headers are Latin-1: the exact name travels percent-encoded (RFC 6266)."""
    site = world.site
    visitor = site.visitor(world.responses)
    uploaded = upload(site, visitor, "отчёт «итог» 2026.txt", "данные".encode())
    assert uploaded.status_code == 201, uploaded.text
    downloaded = site.http.get(
        f"/api/v1/widgets/{visitor.widget_id}/files/{uploaded.json()['id']}",
        headers=visitor.headers,
    )
    assert downloaded.status_code == 200
    assert downloaded.content == "данные".encode()
    disposition = downloaded.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="')
    encoded = disposition.split("filename*=UTF-8''", 1)[1]
    assert unquote(encoded) == "отчёт «итог» 2026.txt"


# -- malformed uploads -----------------------------------------------------------------------------


def test_an_empty_file_a_missing_field_or_no_multipart_is_refused(world: World) -> None:
    site = world.site
    visitor = site.visitor(world.responses)
    before = event_count(site.settings)
    empty = upload(site, visitor, "empty.txt", b"")
    assert (empty.status_code, empty.json()["code"]) == (422, "empty_file")
    path = f"/api/v1/widgets/{visitor.widget_id}/files"
    missing = site.http.post(path, headers=visitor.headers, data={"other": "x"},
                             files={"attachment": ("a.txt", b"text")})
    assert (missing.status_code, missing.json()["code"]) == (422, "validation_error")
    assert "file" in missing.json()["detail"]
    not_multipart = site.http.post(path, headers=visitor.headers, json={"file": "x"})
    assert (not_multipart.status_code, not_multipart.json()["code"]) == (422, "validation_error")
    anonymous = site.http.post(path, headers={"Origin": visitor.headers["Origin"]},
                               files={"file": ("a.txt", b"text")})
    assert anonymous.status_code == 401
    assert event_count(site.settings) == before


# -- size ----------------------------------------------------------------------------------------


def test_a_file_at_the_limit_passes_and_one_byte_more_is_413(world: World) -> None:
    site = world.site
    visitor = site.visitor(world.responses)
    at_limit = b"a" * LIMIT
    assert upload(site, visitor, "big.txt", at_limit).status_code == 201
    before = event_count(site.settings)
    over = upload(site, visitor, "big.txt", at_limit + b"a")
    assert over.status_code == 413, over.text
    assert over.json()["code"] == "file_too_large"
    assert str(LIMIT) in over.json()["detail"]
    assert event_count(site.settings) == before


def _raw(site: Site) -> socket.socket:
    parts = urlsplit(site.url)
    assert parts.hostname is not None and parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=WAIT)


def _head(visitor: Visitor, length_header: str) -> bytes:
    lines = [
        f"POST /api/v1/widgets/{visitor.widget_id}/files HTTP/1.1",
        "Host: 127.0.0.1",
        f"Origin: {visitor.headers['Origin']}",
        f"Authorization: {visitor.headers['Authorization']}",
        "Content-Type: multipart/form-data; boundary=xyz",
        length_header,
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response (head and the body its Content-Length announces)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed without a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)
    }
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(status_line.split()[1]), headers, body


def test_an_announced_oversize_body_is_refused_before_it_is_sent(world: World) -> None:
    site = world.site
    visitor = site.visitor(world.responses)
    with _raw(site) as sock:
        # Announce 100 MB and send none of it: the answer must come without waiting for it.
        sock.sendall(_head(visitor, f"Content-Length: {100 * 1024 * 1024}"))
        status, headers, body = _response(sock)
    assert status == 413, body
    assert b'"code":"file_too_large"' in body
    assert headers["content-type"] == "application/problem+json"


def test_a_chunked_upload_is_cut_off_once_it_is_too_big(world: World) -> None:
    site = world.site
    visitor = site.visitor(world.responses)
    before = event_count(site.settings)
    total = 64 * 1024 * 1024
    chunk = b"--xyz\r\n" + b"z" * (16 * 1024)
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    with _raw(site) as sock:
        sock.sendall(_head(visitor, "Transfer-Encoding: chunked"))
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the server has answered
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        status, _, body = _response(sock)
    assert status == 413, body
    assert b'"code":"file_too_large"' in body
    assert sent < total  # it answered long before the end
    assert event_count(site.settings) == before


# -- who may download ------------------------------------------------------------------------------


def test_only_the_uploader_and_the_widgets_owner_can_download(world: World) -> None:
    site = world.site
    uploader = site.visitor(world.responses)
    neighbour = site.visitor(world.responses)  # same widget, another visitor
    elsewhere = site.visitor(world.chat_completions)  # another widget of the same owner
    file_id = upload(site, uploader, "private.txt", b"only mine").json()["id"]
    path = f"/api/v1/widgets/{world.responses}/files/{file_id}"

    def get(headers: dict[str, str], at: str = path) -> httpx.Response:
        return site.http.get(at, headers=headers)

    assert get(uploader.headers).content == b"only mine"
    owner = get(site.owner)
    assert owner.status_code == 200 and owner.content == b"only mine"
    assert owner.headers["content-disposition"] == (
        "attachment; filename=\"private.txt\"; filename*=UTF-8''private.txt"
    )
    assert owner.headers["x-content-type-options"] == "nosniff"
    refused = get(neighbour.headers)
    assert (refused.status_code, refused.json()["code"]) == (404, "not_found")
    assert get(world.other_owner).status_code == 404
    # A token for another widget is no token here.
    assert get(elsewhere.headers).status_code == 401
    # Nor is the file under another widget's path, even for the same owner.
    assert get(site.owner, f"/api/v1/widgets/{world.chat_completions}/files/{file_id}"
               ).status_code == 404
    assert get(uploader.headers, f"{path}x").status_code == 404
    # A visitor from a page the widget does not allow is refused.
    foreign = {**uploader.headers, "Origin": "https://evil.example"}
    assert get(foreign).status_code in (401, 403)


# -- files and the providers -----------------------------------------------------------------------


def test_a_pdf_goes_to_openai_once_as_input_file(server: OpenAITestServer, world: World) -> None:
    site = world.site
    visitor = site.visitor(world.responses)
    data = pdf_bytes(b"% manual\n")
    file_id = upload(site, visitor, "manual.pdf", data).json()["id"]
    first = site.post(visitor, "What does the manual say?", file_ids=[file_id],
                      client_message_id="with-a-file")
    assert first.status_code == 201, first.text
    assert first.json()["message"]["file_ids"] == [file_id]
    # The message answered is the one the read table holds (it is not read back: made from
    # the append's own events).
    listed = site.messages(visitor)["data"]
    assert listed[0] == first.json()["message"]
    assert first.json()["reply"]["text"].endswith("Attached: manual.pdf.")
    second = site.post(visitor, "And on page two?")
    assert second.status_code == 201, second.text

    uploads = server.requests_to("files")
    assert len(uploads) == 1
    assert uploads[0].form == {"file": "manual.pdf", "purpose": "user_data"}
    sent = [
        e.payload for e in log_of(site.settings, visitor.conversation_id)
        if e.type == "file.sent_to_provider"
    ]
    assert len(sent) == 1
    provider_file_id = sent[0]["provider_file_id"]
    assert sent[0] == {"file_id": file_id, "provider": "openai",
                       "provider_file_id": provider_file_id}
    assert server.file_bytes(provider_file_id) == data
    turns = [r.json["input"] for r in server.requests_to("responses")]
    assert turns[0][0]["content"] == [
        {"type": "input_file", "file_id": provider_file_id},
        {"type": "input_text", "text": "What does the manual say?"},
    ]
    # The second turn sends the history with the same file id, not the file again.
    assert turns[1][0]["content"][0] == {"type": "input_file", "file_id": provider_file_id}
    assert turns[1][-1]["content"] == [{"type": "input_text", "text": "And on page two?"}]


def test_a_file_uploaded_before_a_failed_reply_is_not_uploaded_again(
    server: OpenAITestServer, world: World
) -> None:
    site = world.site
    visitor = site.visitor(world.responses)
    file_id = upload(site, visitor, "spec.pdf", pdf_bytes(b"% spec\n")).json()["id"]
    server.script("Half an answer, then the line drops.", [Cut(after_deltas=2)])
    failed = site.post(visitor, "Read the spec", file_ids=[file_id])
    assert failed.status_code == 503, failed.text
    again = site.post(visitor, "Try again please")
    assert again.status_code == 201, again.text
    assert len(server.requests_to("files")) == 1
    kinds = [e.type for e in log_of(site.settings, visitor.conversation_id)]
    assert kinds.count("file.sent_to_provider") == 1
    assert kinds.index("file.sent_to_provider") < kinds.index("assistant.failed")


def test_a_text_file_reaches_chat_completions_inlined(
    server: OpenAITestServer, world: World
) -> None:
    site = world.site
    visitor = site.visitor(world.chat_completions)
    notes = "Opening hours: 9 to 17 (Grüße)\nClosed on Sundays.\n"
    file_id = upload(site, visitor, "hours.txt", notes.encode()).json()["id"]
    posted = site.post(visitor, "When are you open?", file_ids=[file_id])
    assert posted.status_code == 201, posted.text
    messages = server.requests_to("chat")[0].json["messages"]
    assert messages == [
        {"role": "user", "content": f"When are you open?\n\n--- hours.txt ---\n{notes}"},
    ]
    assert not server.requests_to("files")  # nothing uploaded: the text went inline
    assert not [e for e in log_of(site.settings, visitor.conversation_id)
                if e.type == "file.sent_to_provider"]


@pytest.mark.parametrize(("name", "data"), [("scan.pdf", pdf_bytes()),
                                            ("letter.docx", docx_bytes()), ("old.doc", OLE2)])
def test_other_files_are_refused_for_chat_completions_clearly(
    server: OpenAITestServer, world: World, name: str, data: bytes
) -> None:
    site = world.site
    visitor = site.visitor(world.chat_completions)
    file_id = upload(site, visitor, name, data).json()["id"]
    before = event_count(site.settings)
    refused = site.post(visitor, "Read it", file_ids=[file_id])
    assert refused.status_code == 422, refused.text
    problem: dict[str, Any] = refused.json()
    assert problem["code"] == "unsupported_file_for_provider"
    assert name in problem["detail"] and "text files only" in problem["detail"]
    assert event_count(site.settings) == before
    assert not server.requests_to("chat")


def test_a_file_of_another_conversation_cannot_be_sent(world: World) -> None:
    site = world.site
    owner_of_file = site.visitor(world.responses)
    file_id = upload(site, owner_of_file, "mine.pdf", pdf_bytes()).json()["id"]
    thief = site.visitor(world.responses)
    other = site.visitor(world.chat_completions)
    before = event_count(site.settings)
    refused = site.post(thief, "Read it", file_ids=[file_id])
    assert (refused.status_code, refused.json()["code"]) == (422, "unknown_file")
    # Not even the name of another conversation's file leaks through chat_completions' check.
    refused = site.post(other, "Read it", file_ids=[file_id])
    assert (refused.status_code, refused.json()["code"]) == (422, "unknown_file")
    assert "mine.pdf" not in refused.text
    assert event_count(site.settings) == before
