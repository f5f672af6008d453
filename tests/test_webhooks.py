"""Outgoing webhooks end to end: a real uvicorn, a real SQLite file, the real openai SDK against
the OpenAI test server, and a real HTTP server started here that receives the deliveries and
checks each signature with the Standard Webhooks library."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from loacl.http.app import create_app
from loacl.openai_testserver import OpenAITestServer
from loacl.settings import Settings
from tests.live import serve
from tests.test_stream import MODEL, ORIGIN, PASSWORD, provider_server

pytestmark = pytest.mark.e2e

WAIT = 30.0


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def json(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.body)
        return found


@dataclass
class Receiver:
    """An HTTP server on loopback that keeps what it is sent and answers ``status``; it can be
    stopped and started again on the same port."""

    port: int = 0
    status: int = 204
    delay: float = 0.0  # seconds before each answer: sends that overlap
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.received.append(Received(
                        {k.lower(): v for k, v in self.headers.items()}, body))
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(self, done: Callable[[list[Received]], bool], within: float = WAIT
                 ) -> list[Received]:
        deadline = time.monotonic() + within
        while True:
            with self._lock:
                seen = list(self.received)
            if done(seen):
                return seen
            assert time.monotonic() < deadline, f"not received in time: {len(seen)} so far"
            time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    found.start()
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture
def provider() -> Iterator[tuple[OpenAITestServer, str]]:
    with provider_server(token_delay=0.0) as running_server:
        yield running_server


@dataclass
class Site:
    http: httpx.Client
    headers: dict[str, str]
    widget_id: str = ""

    def visitor(self) -> str:
        made = self.http.post(f"/api/v1/widgets/{self.widget_id}/sessions", json={},
                              headers={"Origin": ORIGIN})
        assert made.status_code == 201, made.text
        return str(made.json()["visitor_token"])

    def ask(self, token: str, text: str) -> dict[str, Any]:
        answer = self.http.post(f"/api/v1/widgets/{self.widget_id}/messages",
                                json={"text": text},
                                headers={"Origin": ORIGIN, "Authorization": f"Bearer {token}"})
        assert answer.status_code in (200, 201), answer.text
        found: dict[str, Any] = answer.json()
        return found

    def hook(self, url: str, *types: str, personal: bool = False) -> dict[str, Any]:
        made = self.http.post("/api/v1/webhooks", headers=self.headers, json={
            "url": url, "event_types": list(types or ("conversation.started",
                                                      "message.posted", "reply.completed")),
            "personal_data": personal})
        assert made.status_code == 201, made.text
        found: dict[str, Any] = made.json()
        return found


def configured(settings: Settings, provider: tuple[OpenAITestServer, str], **more: Any
               ) -> Settings:
    return settings.model_copy(update={
        "openai_api_key": "sk-test", "openai_base_url": f"{provider[1]}/v1",
        "require_verified_email": False, "provider_max_retries": 0,
        "outbound_allow_private": True, "outbound_allow_http": True,
        "webhook_retry_base_seconds": 0.05, **more,
    })


@contextlib.contextmanager
def running(settings: Settings, *, first: bool = True) -> Iterator[Site]:
    """LOACL on loopback; the first time with an owner, an assistant and a widget."""
    with serve(create_app(settings)) as base, httpx.Client(base_url=base, timeout=WAIT) as http:
        email = "owner@example.com"
        if first:
            made = http.post("/api/v1/auth/register", json={"email": email,
                                                            "password": PASSWORD})
            assert made.status_code == 202, made.text
        login = http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        site = Site(http, {"Authorization": f"Bearer {login.json()['access_token']}"})
        if first:
            assistant = http.post("/api/v1/assistants", headers=site.headers, json={
                "name": "Helper", "provider": "openai", "model": MODEL})
            assert assistant.status_code == 201, assistant.text
            widget = http.post("/api/v1/widgets", headers=site.headers, json={
                "name": "Site", "assistant_id": assistant.json()["id"],
                "allowed_origins": [ORIGIN], "limits": {"messages_per_minute": 600}})
            assert widget.status_code == 201, widget.text
            site.widget_id = widget.json()["id"]
        else:
            site.widget_id = http.get("/api/v1/widgets", headers=site.headers
                                      ).json()["data"][0]["id"]
        yield site


def verified(received: Received, *secrets: str) -> dict[str, Any]:
    """The payload, if one of ``secrets`` signed it (each is tried)."""
    for secret in secrets:
        with contextlib.suppress(WebhookVerificationError):
            found: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
            return found
    raise AssertionError(f"no valid signature on {received.id}")


def events_of(settings: Settings, prefix: str) -> list[str]:
    conn = sqlite3.connect(settings.database_path)
    try:
        return [t for (t,) in conn.execute(
            "SELECT type FROM events WHERE type LIKE ? ORDER BY seq", (f"{prefix}%",))]
    finally:
        conn.close()


def test_deliveries_are_signed_ordered_and_private_by_default(
    settings: Settings, provider: tuple[OpenAITestServer, str], receiver: Receiver
) -> None:
    config = configured(settings, provider)
    with running(config) as site:
        hook = site.hook(receiver.url)
        assert hook["secret"].startswith("whsec_") and hook["personal_data"] is False
        shown = site.http.get(f"/api/v1/webhooks/{hook['id']}", headers=site.headers)
        assert shown.status_code == 200 and "secret" not in shown.json()
        provider[0].script("The answer is 42.")
        token = site.visitor()
        site.ask(token, "What is the answer?")
        seen = receiver.wait_for(lambda r: len(r) >= 3)
        payloads = [verified(r, hook["secret"]) for r in seen]
        assert [p["type"] for p in payloads] == [
            "conversation.started", "message.posted", "reply.completed"]
        conversation = payloads[0]["data"]["conversation_id"]
        assert all(p["data"]["conversation_id"] == conversation for p in payloads)
        assert all(p["data"]["widget_id"] == site.widget_id for p in payloads)
        # No personal data: ids, never the texts or the visitor.
        assert "What is the answer?" not in b"".join(r.body for r in seen).decode()
        assert all("text" not in p["data"] and "visitor_id" not in p["data"] for p in payloads)
        assert payloads[2]["data"]["usage"]["output_tokens"] > 0
        # Standard Webhooks headers: a unique id per message, a timestamp near now.
        assert len({r.id for r in seen}) == 3
        assert all(abs(int(r.headers["webhook-timestamp"]) - time.time()) < 300 for r in seen)
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "A" * 32).verify(seen[0].body, seen[0].headers)
        log = site.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries",
                            headers=site.headers)
        assert log.status_code == 200
        entries = log.json()["data"]
        assert [e["event_type"] for e in entries] == [
            "reply.completed", "message.posted", "conversation.started"]  # newest first
        deadline = time.monotonic() + WAIT
        while any(e["status"] != "delivered" for e in entries):
            assert time.monotonic() < deadline
            time.sleep(0.05)
            entries = site.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries",
                                    headers=site.headers).json()["data"]
        assert all(e["attempts"] == 1 and e["response_status"] == 204
                   and e["latency_ms"] is not None for e in entries)
    assert events_of(config, "webhook.") == ["webhook.created"]


def test_an_endpoint_with_personal_data_gets_the_texts(
    settings: Settings, provider: tuple[OpenAITestServer, str], receiver: Receiver
) -> None:
    with running(configured(settings, provider)) as site:
        hook = site.hook(receiver.url, "message.posted", "reply.completed", personal=True)
        provider[0].script("Bonjour !")
        site.ask(site.visitor(), "Où est mon colis ?")
        seen = receiver.wait_for(lambda r: len(r) >= 2)
        posted, completed = (verified(r, hook["secret"]) for r in seen)
        assert posted["data"]["text"] == "Où est mon colis ?"
        assert posted["data"]["visitor_id"]
        assert completed["data"]["text"] == "Bonjour !"


def test_no_loss_and_no_reordering_across_a_restart_and_a_receiver_down(
    settings: Settings, provider: tuple[OpenAITestServer, str], receiver: Receiver
) -> None:
    config = configured(settings, provider, webhook_disable_after=10_000)
    receiver.stop()  # down before anything is sent
    with running(config) as site:
        hook = site.hook(receiver.url, "message.posted", "reply.completed")
        tokens = [site.visitor() for _ in range(3)]
        for round_no in range(3):
            for n, token in enumerate(tokens):
                provider[0].script(f"reply {round_no}-{n}")
                site.ask(token, f"question {round_no}-{n}")
        time.sleep(0.3)  # some attempts fail against the closed port meanwhile
    # LOACL restarted while the receiver is still down; then the receiver comes back.
    with running(config, first=False) as site:
        time.sleep(0.2)
        receiver.start()
        seen = receiver.wait_for(lambda r: len({x.id for x in r}) >= 18)
        time.sleep(0.3)  # nothing more should come
        seen = list(receiver.received)
        failed = site.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries?limit=100",
                               headers=site.headers).json()["data"]
    payloads = [verified(r, hook["secret"]) for r in seen]
    # Duplicates only with the same id and the same body (a send cut by the restart).
    by_id: dict[str, bytes] = {}
    for r in seen:
        assert by_id.setdefault(r.id, r.body) == r.body
    assert len(by_id) == 18
    # Per conversation: each message then its reply, in the order they happened.
    per: dict[str, list[str]] = {}
    for r, p in zip(seen, payloads, strict=True):
        if by_id.get(r.id) is not None:
            per.setdefault(p["data"]["conversation_id"], []).append(r.id)
    for ids in per.values():
        unique = list(dict.fromkeys(ids))
        positions = [int(i.split("_")[1]) for i in unique]
        assert positions == sorted(positions), "reordered within a conversation"
        assert len(unique) == 6
    assert all(e["status"] == "delivered" for e in failed)
    assert any(e["attempts"] > 1 for e in failed), "the receiver was down: retried"


def test_an_endpoint_failing_in_a_row_is_disabled_and_its_owner_told(
    settings: Settings, provider: tuple[OpenAITestServer, str], receiver: Receiver
) -> None:
    config = configured(settings, provider, webhook_disable_after=3)
    receiver.status = 500
    with running(config) as site:
        hook = site.hook(receiver.url, "message.posted")
        site.ask(site.visitor(), "hello")
        receiver.wait_for(lambda r: len(r) >= 3)
        deadline = time.monotonic() + WAIT
        while True:
            shown = site.http.get(f"/api/v1/webhooks/{hook['id']}", headers=site.headers)
            if shown.json()["enabled"] is False:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert shown.json()["disabled_reason"] == "failures"
        time.sleep(0.3)
        assert len(receiver.received) == 3, "nothing is sent to a disabled endpoint"
        mails = list((config.data_dir / "outbox").glob("*.eml"))
        assert any("a webhook endpoint was disabled" in m.read_text() for m in mails)
        # Turned on again: the delivery still pending goes out.
        receiver.status = 200
        on = site.http.patch(f"/api/v1/webhooks/{hook['id']}", headers={
            **site.headers, "If-Match": shown.headers["etag"]}, json={"enabled": True})
        assert on.status_code == 200, on.text
        assert on.json()["enabled"] is True and on.json()["disabled_reason"] is None
        seen = receiver.wait_for(lambda r: len(r) >= 4)
        assert {r.id for r in seen} == {seen[0].id}  # the same message every time
    assert events_of(config, "webhook.") == [
        "webhook.created", "webhook.disabled", "webhook.updated"]


def test_redelivery_test_events_and_rotation(
    settings: Settings, provider: tuple[OpenAITestServer, str], receiver: Receiver
) -> None:
    config = configured(settings, provider)
    with running(config) as site:
        hook = site.hook(receiver.url, "message.posted")
        test = site.http.post(f"/api/v1/webhooks/{hook['id']}/test", headers=site.headers)
        assert test.status_code == 202, test.text
        [first] = receiver.wait_for(lambda r: len(r) >= 1)
        assert verified(first, hook["secret"])["type"] == "webhook.test"
        again = site.http.post(
            f"/api/v1/webhooks/{hook['id']}/deliveries/{test.json()['id']}/redeliver",
            headers=site.headers)
        assert again.status_code == 202, again.text
        seen = receiver.wait_for(lambda r: len(r) >= 2)
        assert seen[1].id == first.id and seen[1].body == first.body
        shown = site.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries/{test.json()['id']}",
                              headers=site.headers).json()
        assert shown["attempts"] == 2 and shown["status"] == "delivered"
        missing = site.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries/999",
                                headers=site.headers)
        assert missing.status_code == 404
        # A new secret, shown once; the old one still signs for a day.
        etag = site.http.get(f"/api/v1/webhooks/{hook['id']}", headers=site.headers
                             ).headers["etag"]
        rotated = site.http.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret",
                                 headers={**site.headers, "If-Match": etag})
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        assert new != hook["secret"]
        site.ask(site.visitor(), "after the rotation")
        seen = receiver.wait_for(lambda r: len(r) >= 3)
        assert len(seen[2].headers["webhook-signature"].split(" ")) == 2
        assert verified(seen[2], new)["type"] == "message.posted"
        assert verified(seen[2], hook["secret"])["type"] == "message.posted"
        # Deleted: gone for its owner.
        etag = rotated.headers["etag"]
        gone = site.http.delete(f"/api/v1/webhooks/{hook['id']}",
                                headers={**site.headers, "If-Match": etag})
        assert gone.status_code == 204
        assert site.http.get(f"/api/v1/webhooks/{hook['id']}",
                             headers=site.headers).status_code == 404
    assert events_of(config, "webhook.") == [
        "webhook.created", "webhook.secret_rotated", "webhook.deleted"]


@pytest.mark.parametrize("url", [
    "http://hooks.example.com/x",  # not https
    "https://127.0.0.1/x", "https://[::1]/x", "https://10.0.0.8/x", "https://192.168.1.1/x",
    "https://169.254.169.254/latest/meta-data", "https://[::ffff:127.0.0.1]/x",
    "https://localhost/x", "https://0.0.0.0/x", "https://100.64.0.1/x",
    "https://user:pw@hooks.example.com/x",
])
def test_urls_loacl_may_not_call_are_refused(
    settings: Settings, provider: tuple[OpenAITestServer, str], url: str
) -> None:
    strict = configured(settings, provider, outbound_allow_private=False,
                        outbound_allow_http=False)
    with running(strict) as site:
        refused = site.http.post("/api/v1/webhooks", headers=site.headers, json={
            "url": url, "event_types": ["message.posted"]})
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "url_not_allowed"
        assert site.http.get("/api/v1/webhooks", headers=site.headers).json()["data"] == []
    assert events_of(strict, "webhook.") == []


def test_unknown_event_types_are_refused(
    settings: Settings, provider: tuple[OpenAITestServer, str], receiver: Receiver
) -> None:
    with running(configured(settings, provider)) as site:
        refused = site.http.post("/api/v1/webhooks", headers=site.headers, json={
            "url": receiver.url, "event_types": ["message.deleted"]})
        assert refused.status_code == 422
        assert refused.json()["code"] == "validation_error"
        reserved = site.hook(receiver.url, "member.changed")
        assert reserved["event_types"] == ["member.changed"]


def test_a_handoff_and_a_close_are_delivered(
    settings: Settings, provider: tuple[OpenAITestServer, str], receiver: Receiver
) -> None:
    with running(configured(settings, provider)) as site:
        hook = site.hook(receiver.url, "handoff.requested", "conversation.closed",
                         personal=True)
        token = site.visitor()
        site.ask(token, "Hello")
        asked = site.http.post(f"/api/v1/widgets/{site.widget_id}/handoff",
                               json={"reason": "refund please"},
                               headers={"Origin": ORIGIN, "Authorization": f"Bearer {token}"})
        assert asked.status_code == 200, asked.text
        conversation = site.http.get("/api/v1/conversations", headers=site.headers).json()
        conversation_id = conversation["data"][0]["id"]
        closed = site.http.post(f"/api/v1/conversations/{conversation_id}/close",
                                headers=site.headers)
        assert closed.status_code == 200, closed.text
        seen = receiver.wait_for(lambda r: len(r) >= 2)
        payloads = [verified(r, hook["secret"]) for r in seen]
        assert [p["type"] for p in payloads] == ["handoff.requested", "conversation.closed"]
        assert payloads[0]["data"] | {"widget_id": None, "visitor_id": None} == {
            "conversation_id": conversation_id, "widget_id": None, "visitor_id": None,
            "state": "waiting", "previous": "bot", "by": "visitor", "cause": "visitor_asked",
            "reason": "refund please"}
        assert payloads[1]["data"]["state"] == "closed"
        assert payloads[1]["data"]["by"].startswith("member:")


def test_an_erased_account_takes_its_endpoints_with_it(
    settings: Settings, provider: tuple[OpenAITestServer, str], receiver: Receiver
) -> None:
    config = configured(settings, provider)
    with running(config) as site:
        site.hook(receiver.url, "message.posted")
        gone = site.http.request("DELETE", "/api/v1/auth/me", headers=site.headers,
                                 json={"password": PASSWORD})
        assert gone.status_code == 204, gone.text
    assert events_of(config, "webhook.") == ["webhook.created", "webhook.deleted"]
    conn = sqlite3.connect(config.database_path)
    try:
        assert conn.execute("SELECT count(*) FROM webhooks").fetchone() == (0,)
    finally:
        conn.close()


def test_a_repaired_database_keeps_its_endpoints_and_pending_deliveries(
    settings: Settings, provider: tuple[OpenAITestServer, str], receiver: Receiver
) -> None:
    """``loacl repair`` rebuilds the endpoints from their events and carries the outbox over:
    what was waiting for a receiver that was down is sent from the repaired file, under the
    same ids and signatures, in order, with its attempts so far."""
    from loacl.services.keys import keyring_for
    from loacl.store.projections import default_projections
    from loacl.store.repair import repair

    config = configured(settings, provider, webhook_disable_after=10_000)
    receiver.stop()
    with running(config) as site:
        hook = site.hook(receiver.url, "message.posted", "reply.completed")
        token = site.visitor()
        for n in range(3):
            provider[0].script(f"reply {n}")
            site.ask(token, f"question {n}")
        deadline = time.monotonic() + WAIT
        while True:  # an attempt has failed against the closed port; the rest wait behind it
            rows = site.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries?limit=100",
                                 headers=site.headers).json()["data"]
            if len(rows) == 6 and any(r["attempts"] >= 1 for r in rows):
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.05)
    out = settings.database_path.with_name("repaired.db")
    result = repair(settings.database_path, out, default_projections(),
                    keys=keyring_for(config))
    assert result.lost == [] and result.notes == []
    repaired = config.model_copy(update={"database_url": f"sqlite:///{out}"})
    receiver.start()
    with running(repaired, first=False) as site:
        listed = site.http.get("/api/v1/webhooks", headers=site.headers).json()["data"]
        assert [w["id"] for w in listed] == [hook["id"]]
        seen = receiver.wait_for(lambda r: len({x.id for x in r}) >= 6)
        log = site.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries?limit=100",
                            headers=site.headers).json()["data"]
    assert {r.id for r in seen} == {r["message_id"] for r in rows}
    texts = [verified(r, hook["secret"])["data"]["message_id"] for r in seen]
    assert len(dict.fromkeys(texts)) == 6
    positions = [int(r.id.split("_")[1]) for r in dict((r.id, r) for r in seen).values()]
    assert positions == sorted(positions)
    assert all(e["status"] == "delivered" for e in log)
    assert any(e["attempts"] >= 2 for e in log), "the attempts before the repair are kept"


def _smash_late_page(path: Any) -> None:
    """Overwrite the cells of the events table's second-to-last leaf page (late traffic, well
    after the endpoint was made), as a failing disk would."""
    conn = sqlite3.connect(path)
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    pages = [p for (p,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY pageno")]
    conn.close()
    assert len(pages) >= 4, pages
    with path.open("r+b") as f:
        f.seek((pages[-2] - 1) * size + 8)
        f.write(b"\xa5" * 400)


def test_a_repair_that_loses_events_leaves_their_deliveries_out_and_sends_the_rest(
    settings: Settings, provider: tuple[OpenAITestServer, str], receiver: Receiver
) -> None:
    """Deliveries waiting for a receiver that was down, then a damaged log: ``loacl repair``
    leaves out the deliveries of the events it could not read and sends every other one from
    the repaired file, under the id of its event's new position, each once, in order."""
    from loacl.services.keys import keyring_for
    from loacl.store.projections import default_projections
    from loacl.store.repair import repair

    config = configured(settings, provider, webhook_disable_after=10_000)
    receiver.stop()
    with running(config) as site:
        hook = site.hook(receiver.url, "message.posted", "reply.completed")
        token = site.visitor()
        for n in range(12):
            provider[0].script(f"reply {n} " + "words " * 40)
            site.ask(token, f"question {n} " + "more " * 40)
        deadline = time.monotonic() + WAIT
        while True:
            rows = site.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries?limit=100",
                                 headers=site.headers).json()["data"]
            if len(rows) == 24:
                break
            assert time.monotonic() < deadline, rows
            time.sleep(0.05)
    conn = sqlite3.connect(config.database_path)
    (created,) = conn.execute(
        "SELECT seq FROM events WHERE type = 'webhook.created'").fetchone()
    waiting = {int(s): str(m) for s, m in conn.execute(
        "SELECT source_seq, message_id FROM webhook_deliveries")}
    conn.close()
    _smash_late_page(config.database_path)
    out = settings.database_path.with_name("repaired.db")
    result = repair(settings.database_path, out, default_projections(),
                    keys=keyring_for(config))
    assert result.lost, "the smashed page held events"
    assert all(first > created for first, _ in result.lost), (result.lost, created)

    def lost(seq: int) -> bool:
        return any(a <= seq <= b for a, b in result.lost)

    def moved(seq: int) -> int:
        return seq - sum(b - a + 1 for a, b in result.lost if b < seq)

    kept = {seq: f"msg_{moved(seq)}_{hook['id']}" for seq in waiting if not lost(seq)}
    gone = len(waiting) - len(kept)
    assert gone > 0 and len(kept) > 0
    assert f"{gone} webhook deliveries told of lost events and are left out" in result.notes
    repaired = config.model_copy(update={"database_url": f"sqlite:///{out}"})
    receiver.start()
    with running(repaired, first=False) as site:
        seen = receiver.wait_for(lambda r: len({x.id for x in r}) >= len(kept))
        time.sleep(0.3)  # anything more would come now
        log = site.http.get(f"/api/v1/webhooks/{hook['id']}/deliveries?limit=100",
                            headers=site.headers).json()["data"]
        seen = list(receiver.received)
    assert {r.id for r in seen} == set(kept.values())
    assert len(seen) == len(kept)  # each once
    positions = [int(r.id.split("_")[1]) for r in seen]
    assert positions == sorted(positions)
    for r in seen:
        verified(r, hook["secret"])  # signed with the endpoint's secret
    assert len(log) == len(kept) and all(e["status"] == "delivered" for e in log)
