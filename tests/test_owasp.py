"""The OWASP API Security Top 10 (2023), one scenario table per category, against a real uvicorn
on loopback with real clients.

Each row is a request and the refusal expected (status and problem ``code``); a refusal writes
nothing to the event log, which every row checks. Rows that need a step first (a throttle to
fill, a setting) say so in ``before`` or run on a server of their own. The findings of issue 14
are named in the rows' ids (``f1`` ... ``f14``); each is also driven harder in
``tests/test_security.py`` (findings 1, 2, 6-12, 14), ``tests/test_limits.py`` (3, 4),
``tests/test_budgets.py`` (5), ``tests/test_stream.py`` and ``tests/test_widget.py`` (13);
Schemathesis checks the whole API document against the server in ``tests/test_schemathesis.py``.

The categories: API1 broken object-level authorization, API2 broken authentication, API3 broken
object property level authorization, API4 unrestricted resource consumption, API5 broken
function-level authorization, API6 unrestricted access to sensitive business flows, API7
server-side request forgery, API8 security misconfiguration, API9 improper inventory
management, API10 unsafe consumption of APIs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey
from starlette.routing import Route, WebSocketRoute
from structlog.testing import capture_logs
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from loacl.http.routing import declared
from loacl.http.validation import MAX_JSON_BODY, MAX_JSON_DEPTH
from loacl.openai_testserver import HttpError, OpenAITestServer
from scripts.audit_dependencies import Audit, read_report, summary
from tests.test_budgets import demo_rows
from tests.test_chat import ORIGIN, PASSWORD, WAIT, Site, Visitor, chat_settings, live
from tests.test_limits import OTHER_ADDRESS, from_other_address
from tests.test_security import _chunks, logins, nested, statuses, via

pytestmark = pytest.mark.e2e

EVIL = "https://evil.example"
MAX_UPLOAD = 64 * 1024
HOUR = 3600


# -- the world: two owners, each with an assistant and a widget; visitors with conversations -----


@dataclass
class World:
    site: Site
    openai: OpenAITestServer
    ids: dict[str, str] = field(default_factory=dict)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    visitors: dict[str, Visitor] = field(default_factory=dict)

    @property
    def http(self) -> httpx.Client:
        return self.site.http

    def events(self) -> int:
        conn = sqlite3.connect(self.site.settings.database_path, timeout=WAIT)
        try:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        finally:
            conn.close()

    def token(self, who: str) -> str:
        return self.headers[who]["Authorization"].removeprefix("Bearer ")

    def secret(self) -> str:
        return (self.site.settings.data_dir / "jwt_secret").read_text().strip()


def furnish(site: Site, openai: OpenAITestServer) -> World:
    world = World(site, openai)
    for owner in ("a", "b"):
        world.headers[f"owner_{owner}"] = site.register(f"{owner}@example.com")
        assistant = site.http.post("/api/v1/assistants", headers=site.owner, json={
            "name": f"Helper {owner}", "provider": "openai", "model": "gpt-4o-mini"})
        assert assistant.status_code == 201, assistant.text
        world.ids[f"{owner}_assistant"] = assistant.json()["id"]
        world.ids[f"{owner}_widget"] = site.widget()
        world.ids[f"{owner}_user"] = site.http.get("/api/v1/auth/me",
                                                   headers=site.owner).json()["id"]
    for name, owner in (("a", "a"), ("a2", "a"), ("b", "b")):
        visitor = site.visitor(world.ids[f"{owner}_widget"])
        world.visitors[name] = visitor
        world.headers[f"visitor_{name}"] = visitor.headers
        world.ids[f"{name}_conversation"] = visitor.conversation_id
        said = site.post(visitor, f"echo:the private words of visitor {name}")
        assert said.status_code == 201, said.text
        uploaded = site.http.post(
            f"/api/v1/widgets/{visitor.widget_id}/files", headers=visitor.headers,
            files={"file": (f"{name}.txt", f"the file of visitor {name}".encode(), "text/plain")})
        assert uploaded.status_code == 201, uploaded.text
        world.ids[f"{name}_file"] = uploaded.json()["id"]
    world.headers["anonymous"] = {}
    return world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory,
          openai_server: tuple[OpenAITestServer, str]) -> Iterator[World]:
    tmp_path = tmp_path_factory.mktemp("owasp")
    settings = chat_settings(tmp_path, openai_server[1], max_upload_size=MAX_UPLOAD)
    with live(settings) as site:
        yield furnish(site, openai_server[0])


# -- rows ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A request and the refusal expected of it (``code`` None: a success, checked by
    ``then``)."""

    who: str  # a name in World.headers, or "forged:<kind>" (see forged())
    method: str
    path: str  # may name the world's ids: {a_widget}, {b_assistant}, ...
    status: int
    code: str | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    then: Callable[[World, httpx.Response], None] | None = None


def row(rid: str, *args: Any, **kwargs: Any) -> Any:
    return pytest.param(Row(*args, **kwargs), id=rid)


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged(world: World, kind: str) -> str:
    """A token made by an attacker: ``owner`` ones pass as owner A, ``visitor`` ones as visitor
    A, unless the server checks what it must."""
    now = int(time.time())
    owner = jwt.decode(world.token("owner_a"), OctKey.import_key(world.secret())).claims
    visitor = jwt.decode(world.token("visitor_a"), OctKey.import_key(world.secret())).claims
    claims = dict(visitor if kind.startswith("visitor") else owner)
    real, wrong = OctKey.import_key(world.secret()), OctKey.import_key("not the server's key " * 3)
    what = kind.split("-", 1)[1]
    if what == "alg-none":
        return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    if what == "wrong-key":
        return jwt.encode({"alg": "HS256"}, claims, wrong)
    if what == "expired":
        return jwt.encode({"alg": "HS256"}, claims | {"iat": now - 7200, "exp": now - 3600}, real)
    if what == "wrong-audience":  # a link token of another purpose, signed with the real key
        return jwt.encode({"alg": "HS256"}, claims | {"aud": "loacl-reset-password"}, real)
    if what == "other-owner":  # owner A's token rewritten to name owner B, re-signed wrongly
        return jwt.encode({"alg": "HS256"}, claims | {"sub": world.ids["b_user"]}, wrong)
    if what == "tampered":  # payload changed, signature kept
        head, _, signature = world.token("owner_a").split(".")
        return f"{head}.{b64(claims | {'sub': world.ids['b_user']})}.{signature}"
    raise AssertionError(kind)


def send(world: World, spec: Row) -> httpx.Response:
    if spec.who.startswith("forged:"):
        headers = {"Authorization": f"Bearer {forged(world, spec.who.removeprefix('forged:'))}"}
        if spec.who.startswith("forged:visitor"):
            headers["Origin"] = ORIGIN
    else:
        headers = dict(world.headers[spec.who])
    headers |= spec.headers
    return world.http.request(spec.method, spec.path.format(**world.ids), headers=headers,
                              json=spec.json, content=spec.content)


def check(world: World, spec: Row) -> httpx.Response:
    """Send the row; assert its answer, and that a refusal wrote nothing."""
    before = world.events()
    response = send(world, spec)
    assert response.status_code == spec.status, response.text
    if spec.code is not None:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == spec.code, response.text
    if response.status_code >= 400:
        assert world.events() == before, "a refusal wrote to the log"
    if spec.then is not None:
        spec.then(world, response)
    return response


# -- API1: broken object-level authorization ----------------------------------------------------

ASSISTANT = {"name": "Mine now", "provider": "openai", "model": "gpt-4o-mini"}
FULL_ASSISTANT: dict[str, Any] = {
    **ASSISTANT, "instructions": "", "temperature": None, "top_p": None,
    "max_output_tokens": None, "file_search": None, "tools": [], "handoff": False}


def widget_body(assistant: str) -> dict[str, Any]:
    return {"name": "Mine now", "assistant_id": assistant, "allowed_origins": [EVIL]}


def only_own_messages(world: World, response: httpx.Response) -> None:
    texts = [m["text"] for m in response.json()["data"]]
    assert "echo:the private words of visitor a" not in texts, texts
    assert response.json()["conversation_id"] == world.ids["a2_conversation"]


API1 = [
    # Owner B against owner A's objects: as if they did not exist.
    row("owner-reads-anothers-assistant", "owner_b", "GET", "/api/v1/assistants/{a_assistant}",
        404, "not_found"),
    row("owner-replaces-anothers-assistant", "owner_b", "PUT",
        "/api/v1/assistants/{a_assistant}", 404, "not_found", json=FULL_ASSISTANT,
        headers={"If-Match": "*"}),
    row("owner-patches-anothers-assistant", "owner_b", "PATCH",
        "/api/v1/assistants/{a_assistant}", 404, "not_found", json={"name": "Mine now"},
        headers={"If-Match": "*"}),
    row("owner-deletes-anothers-assistant", "owner_b", "DELETE",
        "/api/v1/assistants/{a_assistant}", 404, "not_found", headers={"If-Match": "*"}),
    row("owner-reads-anothers-widget", "owner_b", "GET", "/api/v1/widgets/{a_widget}", 404,
        "not_found"),
    row("owner-patches-anothers-widget", "owner_b", "PATCH", "/api/v1/widgets/{a_widget}", 404,
        "not_found", json={"allowed_origins": [EVIL]}, headers={"If-Match": "*"}),
    row("owner-deletes-anothers-widget", "owner_b", "DELETE", "/api/v1/widgets/{a_widget}", 404,
        "not_found", headers={"If-Match": "*"}),
    row("owner-takes-anothers-embed-code", "owner_b", "GET",
        "/api/v1/widgets/{a_widget}/embed-code", 404, "not_found"),
    row("owner-rotates-anothers-secret", "owner_b", "POST",
        "/api/v1/widgets/{a_widget}/rotate-secret", 404, "not_found"),
    row("owner-lists-anothers-conversations", "owner_b", "GET",
        "/api/v1/widgets/{a_widget}/conversations", 404, "not_found"),
    row("owner-reads-anothers-conversation", "owner_b", "GET",
        "/api/v1/widgets/{a_widget}/messages?conversation_id={a_conversation}", 404,
        "not_found"),
    row("owner-reads-anothers-conversation-through-own-widget", "owner_b", "GET",
        "/api/v1/widgets/{b_widget}/messages?conversation_id={a_conversation}", 404,
        "not_found"),
    row("owner-reads-anothers-file", "owner_b", "GET",
        "/api/v1/widgets/{a_widget}/files/{a_file}", 404, "not_found"),
    row("owner-reads-anothers-usage", "owner_b", "GET", "/api/v1/usage?widget_id={a_widget}",
        404, "not_found"),
    row("owner-builds-on-anothers-assistant", "owner_b", "POST", "/api/v1/widgets", 422,
        "unknown_assistant", json={"name": "x", "assistant_id": "{a_assistant}"}),
    # Visitors: each reads its own conversation and files only.
    row("visitor-reads-another-visitors-file", "visitor_a2", "GET",
        "/api/v1/widgets/{a_widget}/files/{a_file}", 404, "not_found"),
    row("visitor-attaches-another-visitors-file", "visitor_a2", "POST",
        "/api/v1/widgets/{a_widget}/messages", 422, "unknown_file",
        json={"text": "what does it say?", "file_ids": ["{a_file}"]}),
    row("visitor-asks-for-another-conversation", "visitor_a2", "GET",
        "/api/v1/widgets/{a_widget}/messages?conversation_id={a_conversation}", 200,
        then=only_own_messages),
    row("visitor-of-another-widget-reads", "visitor_b", "GET",
        "/api/v1/widgets/{a_widget}/messages", 401, "invalid_token"),
    row("visitor-of-another-widget-posts", "visitor_b", "POST",
        "/api/v1/widgets/{a_widget}/messages", 401, "invalid_token", json={"text": "hi"}),
    row("visitor-of-another-widget-uploads", "visitor_b", "POST",
        "/api/v1/widgets/{a_widget}/files", 401, "invalid_token",
        content=b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n"
        b"\r\nhello\r\n--x--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=x"}),
]


def formatted(spec: Row, world: World) -> Row:
    """The row with ids in its JSON body filled in as well."""
    if spec.json is None:
        return spec
    text = json.dumps(spec.json)
    for name, value in world.ids.items():
        text = text.replace("{" + name + "}", value)
    return Row(**{**spec.__dict__, "json": json.loads(text)})


@pytest.mark.parametrize("spec", API1)
def test_api1_object_level_authorization(world: World, spec: Row) -> None:
    check(world, formatted(spec, world))


SOCKETS = [
    # (scenario, whose token, on whose widget, in the URL or the first frame, expected)
    pytest.param("visitor_b", "a_widget", "frame", 4401, id="another-widgets-token-first-frame"),
    pytest.param("visitor_b", "a_widget", "url", 401, id="another-widgets-token-in-url"),
    pytest.param("owner_a", "a_widget", "frame", 4401, id="the-owners-token-is-no-visitor"),
    pytest.param("visitor_a", "a_widget", "frame", 0, id="its-own-widget"),
]


@pytest.mark.parametrize(("who", "widget", "how", "expected"), SOCKETS)
def test_api1_a_socket_is_its_own_visitors(world: World, who: str, widget: str, how: str,
                                           expected: int) -> None:
    base = f"{world.site.url.replace('http://', 'ws://')}/api/v1/widgets/{world.ids[widget]}"
    token = world.token(who)
    url = f"{base}/stream?token={token}" if how == "url" else f"{base}/stream"

    async def go() -> int:
        try:
            async with connect(url, origin=Origin(ORIGIN), open_timeout=WAIT) as ws:
                if how == "frame":
                    await ws.send(json.dumps({"type": "auth", "token": token}))
                try:
                    first = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
                except ConnectionClosed:
                    return ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else -1
                assert first == {"type": "ready",
                                 "conversation_id": world.visitors["a"].conversation_id,
                                 "state": "bot", "agent": None}
                return 0
        except InvalidStatus as refused:
            return refused.response.status_code

    assert asyncio.run(go()) == expected


# -- API2: broken authentication ----------------------------------------------------------------


def same_answer_as_a_new_address(world: World, response: httpx.Response) -> None:
    assert response.json() == {"email": "a@example.com", "status": "mail_sent"}


API2 = [
    # Forged and misused tokens.
    row("owner-token-alg-none", "forged:owner-alg-none", "GET", "/api/v1/auth/me", 401,
        "invalid_token"),
    row("owner-token-wrong-key", "forged:owner-wrong-key", "GET", "/api/v1/auth/me", 401,
        "invalid_token"),
    row("owner-token-expired", "forged:owner-expired", "GET", "/api/v1/auth/me", 401,
        "token_expired"),
    row("owner-token-wrong-audience", "forged:owner-wrong-audience", "GET", "/api/v1/auth/me",
        401, "invalid_token"),
    row("owner-token-for-another-owner", "forged:owner-other-owner", "GET", "/api/v1/auth/me",
        401, "invalid_token"),
    row("owner-token-tampered", "forged:owner-tampered", "GET", "/api/v1/auth/me", 401,
        "invalid_token"),
    row("visitor-token-as-owner", "visitor_a", "GET", "/api/v1/auth/me", 401, "invalid_token"),
    row("visitor-token-alg-none", "forged:visitor-alg-none", "GET",
        "/api/v1/widgets/{a_widget}/messages", 401, "invalid_token"),
    row("visitor-token-wrong-key", "forged:visitor-wrong-key", "GET",
        "/api/v1/widgets/{a_widget}/messages", 401, "invalid_token"),
    row("visitor-token-expired", "forged:visitor-expired", "GET",
        "/api/v1/widgets/{a_widget}/messages", 401, "token_expired"),
    row("visitor-token-wrong-audience", "forged:visitor-wrong-audience", "GET",
        "/api/v1/widgets/{a_widget}/messages", 401, "invalid_token"),
    row("no-token", "anonymous", "GET", "/api/v1/auth/me", 401, "unauthorized"),
    row("basic-auth", "anonymous", "GET", "/api/v1/auth/me", 401, "unauthorized",
        headers={"Authorization": "Basic YTpi"}),
    row("refresh-token-made-up", "anonymous", "POST", "/api/v1/auth/refresh-token", 401,
        "invalid_refresh_token", json={"refresh_token": "x" * 43}),
    # Logins say nothing about who has an account (f7: nor does registration).
    row("login-unknown-address", "anonymous", "POST", "/api/v1/auth/login", 401,
        "invalid_credentials", json={"email": "nobody@example.com", "password": PASSWORD},
        headers=via("198.51.100.20")),
    row("login-wrong-password", "anonymous", "POST", "/api/v1/auth/login", 401,
        "invalid_credentials", json={"email": "a@example.com", "password": "wrong " * 3},
        headers=via("198.51.100.21")),
    row("f7-register-a-taken-address", "anonymous", "POST", "/api/v1/auth/register", 202,
        json={"email": "a@example.com", "password": "another password 99"},
        headers=via("198.51.100.22"), then=same_answer_as_a_new_address),
]


@pytest.mark.parametrize("spec", API2)
def test_api2_authentication(world: World, spec: Row) -> None:
    before = world.events()
    check(world, spec)
    assert world.events() == before  # not even the taken address's registration


def test_api2_f1_parallel_guesses_are_counted_before_they_are_checked(world: World) -> None:
    guesses = [{"email": "b@example.com", "password": f"guess {n}"} for n in range(30)]
    responses = asyncio.run(logins(world.site.url, guesses, [via("203.0.113.77")] * 30))
    counted = statuses(responses)
    assert counted.get(401, 0) <= 5 and counted[429] >= 25, counted


def test_api2_f8_an_attacker_cannot_lock_the_owner_out(world: World) -> None:
    wrong = {"email": "b@example.com", "password": "not it at all"}
    answers = [world.http.post("/api/v1/auth/login", json=wrong,
                               headers=via("203.0.113.88")).status_code for _ in range(7)]
    assert answers == [401] * 5 + [429] * 2
    right = {"email": "b@example.com", "password": PASSWORD}
    assert world.http.post("/api/v1/auth/login", json=right,
                           headers=via("198.51.100.30")).status_code == 200


def test_api2_f13_the_visitor_token_stays_out_of_urls_and_logs(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    script = (Path(__file__).parent.parent / "loacl" / "static" / "widget.js").read_text()
    assert "stream?token" not in script and '"auth"' in script
    token = world.token("visitor_a")
    url = (f"{world.site.url.replace('http://', 'ws://')}/api/v1/widgets/{world.ids['a_widget']}"
           f"/stream?token={token}")

    async def old_widget() -> str:
        async with connect(url, origin=Origin(ORIGIN), open_timeout=WAIT) as ws:
            return str(json.loads(await asyncio.wait_for(ws.recv(), WAIT))["type"])

    caplog.set_level("INFO", logger="uvicorn.error")
    with capture_logs() as lines:
        assert asyncio.run(old_widget()) == "ready"
    assert [line["event"] for line in lines if line["event"] == "stream.token_in_url"]
    assert token not in repr(lines) + caplog.text
    assert "token=[redacted]" in caplog.text


# -- API3: broken object property level authorization (mass assignment, exposure) --------------


def no_secrets(*names: str) -> Callable[[World, httpx.Response], None]:
    def then(world: World, response: httpx.Response) -> None:
        text = response.text.lower()
        for name in names:
            assert name not in text, (name, response.text)

    return then


KNOWN_FIELDS = {*FULL_ASSISTANT, "assistant_id", "allowed_origins", "email", "password",
                "text"}

API3 = [
    # Fields a caller may not set are refused, never stored.
    row("assistant-with-an-owner", "owner_a", "POST", "/api/v1/assistants", 422,
        "validation_error", json={**ASSISTANT, "owner_id": "{b_user}"}),
    row("assistant-with-an-id", "owner_a", "POST", "/api/v1/assistants", 422,
        "validation_error", json={**ASSISTANT, "id": "{b_assistant}"}),
    row("assistant-with-a-version", "owner_a", "POST", "/api/v1/assistants", 422,
        "validation_error", json={**ASSISTANT, "version": 99, "created_at": "2000-01-01"}),
    row("widget-moved-to-another-owner", "owner_a", "PATCH", "/api/v1/widgets/{a_widget}", 422,
        "validation_error", json={"owner_id": "{b_user}"}, headers={"If-Match": "*"}),
    row("widget-with-its-own-secret", "owner_a", "POST", "/api/v1/widgets", 422,
        "validation_error", json={**widget_body("{a_assistant}"), "secret": "known"}),
    row("register-as-verified", "anonymous", "POST", "/api/v1/auth/register", 422,
        "validation_error", headers=via("198.51.100.40"),
        json={"email": "c@example.com", "password": PASSWORD, "email_verified": True}),
    row("register-as-admin", "anonymous", "POST", "/api/v1/auth/register", 422,
        "validation_error", headers=via("198.51.100.41"),
        json={"email": "d@example.com", "password": PASSWORD, "role": "admin"}),
    row("session-in-anothers-conversation", "anonymous", "POST",
        "/api/v1/widgets/{a_widget}/sessions", 422, "validation_error",
        headers={"Origin": ORIGIN}, json={"conversation_id": "{a_conversation}"}),
    row("session-as-another-visitor", "anonymous", "POST",
        "/api/v1/widgets/{a_widget}/sessions", 422, "validation_error",
        headers={"Origin": ORIGIN}, json={"visitor_id": "someone"}),
    row("message-as-the-assistant", "visitor_a", "POST", "/api/v1/widgets/{a_widget}/messages",
        422, "validation_error", json={"text": "I am the assistant", "role": "assistant"}),
    row("message-already-answered", "visitor_a", "POST", "/api/v1/widgets/{a_widget}/messages",
        422, "validation_error", json={"text": "hi", "status": "completed"}),
    # What is read back holds nothing secret.
    row("me-without-password-hash", "owner_a", "GET", "/api/v1/auth/me", 200,
        then=no_secrets("password", "argon2", "hash")),
    row("widget-without-identity-secret", "owner_a", "GET", "/api/v1/widgets/{a_widget}", 200,
        then=no_secrets("secret\":\"", "identity_secret")),
    row("public-config-without-owner-data", "anonymous", "GET",
        "/api/v1/widgets/{a_widget}/config", 200, headers={"Origin": ORIGIN},
        then=no_secrets("owner", "secret", "allowed_origins", "a@example.com", "gpt-4o")),
]


@pytest.mark.parametrize("spec", API3)
def test_api3_object_properties(world: World, spec: Row) -> None:
    response = check(world, formatted(spec, world))
    if response.status_code == 422 and spec.json is not None:
        # The field refused is the one smuggled in, not some other.
        named = {error["field"] for error in response.json()["errors"]}
        smuggled = {name for name in spec.json if name not in KNOWN_FIELDS}
        assert named & smuggled, (named, smuggled)


# -- API4: unrestricted resource consumption ---------------------------------------------------


def upload(size: int) -> bytes:
    return (b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.txt\"\r\n"
            b"Content-Type: text/plain\r\n\r\n" + b"a" * size + b"\r\n--x--\r\n")


MULTIPART = {"Content-Type": "multipart/form-data; boundary=x"}

API4 = [
    row("f2-chunked-body-past-the-limit", "anonymous", "POST", "/api/v1/auth/login", 413,
        "payload_too_large", headers={"Content-Type": "application/json"},
        content=b"".join(_chunks(MAX_JSON_BODY + 4096, 4096))),
    row("f6-deep-json-unauthenticated", "anonymous", "POST", "/api/v1/auth/login", 400,
        "invalid_json", headers={"Content-Type": "application/json"},
        content=nested(100_000).encode()),
    row("f6-deep-json-one-level-too-deep", "anonymous", "POST", "/api/v1/auth/register", 400,
        "invalid_json", headers={"Content-Type": "application/json"},
        content=('{"email": ' + nested(MAX_JSON_DEPTH) + ', "password": "x"}').encode()),
    row("f6-deep-json-visitor", "visitor_a", "POST", "/api/v1/widgets/{a_widget}/messages", 400,
        "invalid_json", headers={"Content-Type": "application/json"},
        content=('{"text": "hi", "file_ids": ' + nested(20_000) + "}").encode()),
    row("upload-over-the-size-limit", "visitor_a", "POST", "/api/v1/widgets/{a_widget}/files",
        413, "file_too_large", content=upload(MAX_UPLOAD + 1), headers=MULTIPART),
    row("message-too-long", "visitor_a", "POST", "/api/v1/widgets/{a_widget}/messages", 413,
        "message_too_long", json={"text": "x" * 100_000}),
    row("page-too-large", "owner_a", "GET", "/api/v1/assistants?limit=1000", 422,
        "validation_error"),
    row("usage-over-too-many-days", "owner_a", "GET",
        "/api/v1/usage?from=2020-01-01&to=2030-01-01", 422, "validation_error"),
]


@pytest.mark.parametrize("spec", API4)
def test_api4_resource_consumption(world: World, spec: Row) -> None:
    check(world, spec)


@contextlib.contextmanager
def tight(tmp_path: Path, root: str, **limits: Any) -> Iterator[tuple[Site, str]]:
    """A server of its own with the limits given (the shared world has them open), an owner
    and a widget of the test server's model."""
    with live(chat_settings(tmp_path, root, **limits)) as site:
        site.register()
        yield site, site.widget()


def refused(response: httpx.Response, code: str = "rate_limited") -> None:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == code
    assert int(response.headers["Retry-After"]) >= 1


def test_api4_f3_sessions_uploads_and_sockets_per_visitor_and_address(
    root: str, tmp_path: Path
) -> None:
    limits = {"sessions_per_ip_hour": 3, "uploads_per_visitor_day": 1, "sockets_per_visitor": 1}
    with tight(tmp_path, root, **limits) as (site, widget_id):
        first, _ = site.visitor(widget_id), site.visitor(widget_id)
        site.visitor(widget_id)
        before = site.http.post(f"/api/v1/widgets/{widget_id}/sessions", json={},
                                headers={"Origin": ORIGIN})
        refused(before)  # the fourth session from one address
        path = f"/api/v1/widgets/{widget_id}/files"
        assert site.http.post(path, content=upload(10), headers={**first.headers, **MULTIPART}
                              ).status_code == 201
        refused(site.http.post(path, content=upload(10), headers={**first.headers, **MULTIPART}))
        url = (f"{site.url.replace('http://', 'ws://')}/api/v1/widgets/{widget_id}/stream"
               f"?token={first.headers['Authorization'].removeprefix('Bearer ')}")

        async def two_tabs() -> int:
            async with connect(url, origin=Origin(ORIGIN), open_timeout=WAIT) as tab:
                await tab.recv()
                with pytest.raises(InvalidStatus) as second:
                    async with connect(url, origin=Origin(ORIGIN), open_timeout=WAIT):
                        pass
                return second.value.response.status_code

        assert asyncio.run(two_tabs()) == 429


def test_api4_f11_a_slow_client_is_dropped(root: str, tmp_path: Path) -> None:
    with tight(tmp_path, root, header_timeout_seconds=1) as (site, _):
        host, port = site.url.removeprefix("http://").split(":")
        with socket_to(host, int(port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            deadline = time.monotonic() + WAIT
            while True:  # a byte a while, never the end of the head
                assert time.monotonic() < deadline, "a slow client kept its connection"
                try:
                    sock.sendall(b"a")
                    sock.settimeout(0.3)
                    if sock.recv(1024) == b"":
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
        assert site.http.get("/healthz").status_code == 200


@contextlib.contextmanager
def socket_to(host: str, port: int) -> Iterator[Any]:
    import socket

    sock = socket.create_connection((host, port), timeout=WAIT)
    try:
        yield sock
    finally:
        sock.close()


# -- API5: broken function-level authorization --------------------------------------------------


API5 = [
    row("visitor-lists-assistants", "visitor_a", "GET", "/api/v1/assistants", 401,
        "invalid_token"),
    row("visitor-makes-a-widget", "visitor_a", "POST", "/api/v1/widgets", 401, "invalid_token",
        json={"name": "x", "assistant_id": "{a_assistant}"}),
    row("visitor-lists-conversations", "visitor_a", "GET",
        "/api/v1/widgets/{a_widget}/conversations", 401, "invalid_token"),
    row("visitor-rotates-the-secret", "visitor_a", "POST",
        "/api/v1/widgets/{a_widget}/rotate-secret", 401, "invalid_token"),
    row("visitor-reads-usage", "visitor_a", "GET", "/api/v1/usage", 401, "invalid_token"),
    row("visitor-logs-out-an-owner", "visitor_a", "POST", "/api/v1/auth/logout", 401,
        "invalid_token"),
    row("anonymous-deletes-a-widget", "anonymous", "DELETE", "/api/v1/widgets/{a_widget}", 401,
        "unauthorized", headers={"If-Match": "*"}),
    row("anonymous-reads-embed-code", "anonymous", "GET", "/api/v1/widgets/{a_widget}/embed-code",
        401, "unauthorized"),
    row("owner-posts-as-a-visitor", "owner_a", "POST", "/api/v1/widgets/{a_widget}/messages",
        401, "invalid_token", json={"text": "hi"}, headers={"Origin": ORIGIN}),
    row("owner-uploads-as-a-visitor", "owner_a", "POST", "/api/v1/widgets/{a_widget}/files",
        401, "invalid_token", content=upload(10), headers={**MULTIPART, "Origin": ORIGIN}),
]


@pytest.mark.parametrize("spec", API5)
def test_api5_function_level_authorization(world: World, spec: Row) -> None:
    check(world, formatted(spec, world))


# -- API6: unrestricted access to sensitive business flows --------------------------------------


def test_api6_f4_new_sessions_do_not_reset_what_an_address_may_ask(
    root: str, tmp_path: Path
) -> None:
    with tight(tmp_path, root, messages_per_ip_minute=2) as (site, widget_id):
        for _ in range(2):
            assert site.post(site.visitor(widget_id), "echo:hi").status_code == 201
        refused(site.post(site.visitor(widget_id), "echo:a new session, the same address"))
        with from_other_address(site) as other:
            session = other.post(f"/api/v1/widgets/{widget_id}/sessions", json={},
                                 headers={"Origin": ORIGIN})
            token = session.json()["visitor_token"]
            answered = other.post(f"/api/v1/widgets/{widget_id}/messages",
                                  json={"text": "echo:elsewhere"},
                                  headers={"Origin": ORIGIN, "Authorization": f"Bearer {token}"})
            assert answered.status_code == 201, (OTHER_ADDRESS, answered.text)


def test_api6_a_spent_budget_refuses_before_the_provider_is_asked(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    with tight(tmp_path, root) as (site, _):
        assistant = site.http.get("/api/v1/assistants", headers=site.owner).json()["data"][0]
        made = site.http.post("/api/v1/widgets", headers=site.owner, json={
            "name": "Budget", "assistant_id": assistant["id"], "allowed_origins": [ORIGIN],
            "budget": {"daily_tokens": 1}})
        assert made.status_code == 201, made.text
        visitor = site.visitor(made.json()["id"])
        assert site.post(visitor, "echo:the first answer spends the day").status_code == 201
        asked = len(server.requests)
        refused(site.post(visitor, "echo:one more"), "budget_exhausted")
        assert len(server.requests) == asked


def test_api6_f5_the_demo_widget_never_answers_on_the_operators_key(
    root: str, tmp_path: Path
) -> None:
    with_key = chat_settings(tmp_path, root, demo_widget=None)
    with live(with_key) as site:  # a real key, the demo left at its default: off
        assert site.app.state.demo.widget_id is None
        assert "LOACL_DEMO_WIDGET=true" in site.http.get("/").text
    turned_on = with_key.model_copy(update={"demo_widget": True})
    with live(turned_on) as site:  # on by the operator's choice: under a small budget
        assert site.app.state.demo.widget_id is not None
    [(_, definition)] = demo_rows(turned_on)
    budget = json.loads(definition)["budget"]
    assert 0 < budget["daily_tokens"] == turned_on.demo_daily_tokens


def test_api6_f7_registrations_are_limited_per_address(world: World) -> None:
    address = via("192.0.2.99")
    answers = [world.http.post("/api/v1/auth/register", headers=address, json={
        "email": f"flood{n}@example.com", "password": PASSWORD}).status_code for n in range(12)]
    assert answers == [202] * 10 + [429] * 2


# -- API7: server-side request forgery ----------------------------------------------------------

METADATA_URL = "http://169.254.169.254/latest/meta-data/"

API7 = [
    # No field makes the server fetch a URL: a provider's address is the operator's setting.
    row("assistant-with-a-base-url", "owner_a", "POST", "/api/v1/assistants", 422,
        "validation_error", json={**ASSISTANT, "base_url": METADATA_URL}),
    row("assistant-with-a-provider-url", "owner_a", "POST", "/api/v1/assistants", 422,
        "validation_error", json={**ASSISTANT, "provider": METADATA_URL}),
    row("vector-store-as-a-url", "owner_a", "POST", "/api/v1/assistants", 422,
        "validation_error",
        json={**ASSISTANT, "file_search": {"vector_store_ids": [METADATA_URL]}}),
    row("widget-with-a-webhook", "owner_a", "POST", "/api/v1/widgets", 422, "validation_error",
        json={**widget_body("{a_assistant}"), "webhook_url": METADATA_URL}),
    row("message-with-a-file-url", "visitor_a", "POST", "/api/v1/widgets/{a_widget}/messages",
        422, "validation_error", json={"text": "read this", "file_url": METADATA_URL}),
    row("attachment-as-a-url", "visitor_a", "POST", "/api/v1/widgets/{a_widget}/messages", 422,
        "unknown_file", json={"text": "read this", "file_ids": [METADATA_URL]}),
]


@pytest.mark.parametrize("spec", API7)
def test_api7_no_request_goes_where_a_caller_says(world: World, spec: Row) -> None:
    asked = len(world.openai.requests)
    check(world, formatted(spec, world))
    assert len(world.openai.requests) == asked


# -- API8: security misconfiguration ------------------------------------------------------------


def hardened(world: World, response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "traceback" not in response.text.lower()


def only_the_refusal_for(origin: str) -> Callable[[World, httpx.Response], None]:
    """A page of another site may read the refusal (so that a misconfigured widget can say
    why), and nothing else: no data, no credentials, no wildcard."""

    def then(world: World, response: httpx.Response) -> None:
        hardened(world, response)
        assert response.headers.get("access-control-allow-origin") in (None, origin)
        assert response.headers.get("access-control-allow-credentials") is None
        assert set(response.json()) <= {"type", "title", "status", "code", "detail",
                                         "request_id"}

    return then


def urls_from(base: str) -> Callable[[World, httpx.Response], None]:
    def then(world: World, response: httpx.Response) -> None:
        hardened(world, response)
        assert "evil.example" not in response.text
        assert response.json()["script_url"].startswith(world.site.url)

    return then


def stored_verbatim(field_name: str, value: str) -> Callable[[World, httpx.Response], None]:
    def then(world: World, response: httpx.Response) -> None:
        hardened(world, response)
        assert response.headers["content-type"] == "application/json"
        assert response.json()[field_name] == value
        # ... and the table it went into is still whole.
        listed = world.http.get("/api/v1/assistants", headers=world.headers["owner_a"])
        assert len(listed.json()["data"]) >= 1

    return then


SQLISH = "x'); DROP TABLE events; --"
HTMLISH = "<img src=x onerror=alert(1)><script>alert(2)</script>"

API8 = [
    row("f10-headers-on-an-api-error", "anonymous", "GET", "/api/v1/auth/me", 401,
        "unauthorized", then=hardened),
    row("f10-headers-on-the-docs", "anonymous", "GET", "/docs", 200, then=hardened),
    row("f10-headers-on-a-404", "anonymous", "GET", "/api/v1/nothing", 404, "not_found",
        then=hardened),
    row("malformed-json-is-a-problem-not-a-trace", "anonymous", "POST", "/api/v1/auth/login",
        400, "invalid_json", content=b'{"email": ', headers={"Content-Type": "application/json"},
        then=hardened),
    row("cors-config-from-an-unknown-site", "anonymous", "GET",
        "/api/v1/widgets/{a_widget}/config", 403, "origin_not_allowed",
        headers={"Origin": EVIL}, then=only_the_refusal_for(EVIL)),
    row("cors-visitor-token-from-an-unknown-site", "visitor_a", "GET",
        "/api/v1/widgets/{a_widget}/messages", 403, "origin_not_allowed",
        headers={"Origin": EVIL}, then=only_the_refusal_for(EVIL)),
    row("cors-session-without-an-origin", "anonymous", "POST",
        "/api/v1/widgets/{a_widget}/sessions", 403, "origin_not_allowed", json={}),
    row("f12-a-made-up-host", "anonymous", "GET", "/widget.json", 200,
        headers={"Host": "evil.example"}, then=urls_from("evil.example")),
    row("injection-sql-in-a-name", "owner_a", "POST", "/api/v1/assistants", 201,
        json={**ASSISTANT, "name": SQLISH}, then=stored_verbatim("name", SQLISH)),
    row("injection-html-in-instructions", "owner_a", "POST", "/api/v1/assistants", 201,
        json={**ASSISTANT, "instructions": HTMLISH},
        then=stored_verbatim("instructions", HTMLISH)),
    row("identity-hash-not-ascii", "anonymous", "POST", "/api/v1/widgets/{a_widget}/sessions",
        401, "invalid_identity", headers={"Origin": ORIGIN},
        json={"user_id": "u1", "user_hash": "\u0089\u001a"}),  # was a 500 (Schemathesis)
    row("injection-sql-in-a-cursor", "owner_a", "GET", "/api/v1/assistants?after=1%20OR%201=1",
        422, "validation_error"),
    row("injection-sql-in-an-id", "owner_a", "GET", "/api/v1/assistants/x'%20OR%20'1'='1", 404,
        "not_found"),
]


@pytest.mark.parametrize("spec", API8)
def test_api8_misconfiguration(world: World, spec: Row) -> None:
    check(world, formatted(spec, world))


def test_api8_f9_private_files(world: World) -> None:
    settings = world.site.settings
    db = settings.database_path
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    for path in (db, Path(f"{db}-wal"), settings.data_dir / "jwt_secret",
                 *(settings.data_dir / "outbox").glob("*.eml")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


AUDITS = [
    # (scenario, what pip-audit reported per service tried, exit code, a line that must be said)
    pytest.param([{"dependencies": [{"name": "a", "version": "1", "vulns": []},
                                    {"name": "b", "version": "2", "vulns": [
                                        {"id": "GHSA-x", "fix_versions": ["2.1"]}]}]}],
                 1, "VULNERABLE b 2: GHSA-x (fixed in 2.1)", id="a-known-vulnerability-fails"),
    pytest.param([{"dependencies": [{"name": "a", "version": "1", "vulns": []}]}], 0,
                 "1 packages audited against pypi, 0 skipped, 0 with", id="clean"),
    pytest.param([{"dependencies": [{"name": "a", "skip_reason": "not found"}]},
                  "ConnectionError: no route"], 0,
                 "NOT AUDITED, no vulnerability service could be reached", id="unreachable"),
]


@pytest.mark.parametrize(("reports", "code", "said"), AUDITS)
def test_api8_dependencies_with_known_vulnerabilities_fail_ci(
    reports: list[dict[str, Any] | str], code: int, said: str
) -> None:
    audits = [Audit(service, error=report) if isinstance(report, str)
              else read_report(service, report)
              for service, report in zip(("pypi", "osv"), reports, strict=False)]
    lines, exit_code = summary(audits)
    assert exit_code == code
    assert any(said in line for line in lines), lines


# -- API9: improper inventory management ----------------------------------------------------------


PAGES = {"/", "/docs", "/docs/try", "/docs/assets/{version}/{name}", "/healthz", "/readyz",
         "/widget.js", "/widget.json", "/widget/{name}", "/api/v1/openapi.json", "/console",
         "/console/{path:path}", "/console/assets/{name}", "/console/preview.html",
         "/metrics"}  # for Prometheus, behind its own token (404 without one set)


def test_api9_every_route_served_is_documented(world: World) -> None:
    spec = world.http.get("/api/v1/openapi.json").json()
    app_routes = world.site.app.routes
    served = {(method.lower(), route.path) for route in app_routes if isinstance(route, Route)
              for method in (route.methods or ()) if method != "HEAD"}
    served |= {("get", route.path) for route in app_routes if isinstance(route, WebSocketRoute)}
    documented = {(method, path) for path, methods in spec["paths"].items() for method in methods}
    undocumented = {(m, p) for m, p in served - documented
                    if p.startswith("/api/") and m != "options"}
    assert undocumented == set()
    assert {p for _, p in served if not p.startswith("/api/")} <= PAGES
    assert len(declared(app_routes)) >= len(documented)
    # What old clients still use is marked as such.
    stream = spec["paths"]["/api/v1/widgets/{id}/stream"]["get"]
    token = next(p for p in stream["parameters"] if p["name"] == "token")
    assert token["deprecated"] is True


API9 = [
    # f14: what the document says is what the server does.
    row("f14-a-cursor-is-a-whole-number", "owner_a", "GET", "/api/v1/assistants?after=abc", 422,
        "validation_error"),
    row("f14-an-empty-cursor-is-no-number", "owner_a", "GET", "/api/v1/assistants?limit=", 422,
        "validation_error"),
    row("f14-405-names-the-methods", "anonymous", "POST", "/api/v1/assistants/x", 405,
        "method_not_allowed",
        then=lambda world, r: assert_allow(r, {"GET", "HEAD", "PUT", "PATCH", "DELETE"})),
    row("f14-a-session-without-a-body", "anonymous", "POST",
        "/api/v1/widgets/{a_widget}/sessions", 201, headers={"Origin": ORIGIN}),
    row("f14-no-old-version-of-the-api", "owner_a", "GET", "/api/v0/assistants", 404,
        "not_found"),
]


def assert_allow(response: httpx.Response, methods: set[str]) -> None:
    assert {m.strip() for m in response.headers["allow"].split(",")} == methods


@pytest.mark.parametrize("spec", API9)
def test_api9_inventory(world: World, spec: Row) -> None:
    check(world, formatted(spec, world))


BODYLESS = {
    ("post", "/api/v1/auth/verify-email/resend"), ("post", "/api/v1/auth/reset-password"),
    ("get", "/api/v1/widgets/{id}/files/{file_id}"),  # the file itself, in its own type
    ("get", "/api/v1/conversations/{id}/files/{file_id}"),  # the same, for the owner
    ("get", "/api/v1/openapi.json"),  # this document
}


def test_api9_f14_every_json_body_documents_its_refusals(world: World) -> None:
    spec = world.http.get("/api/v1/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            if "application/json" in op.get("requestBody", {}).get("content", {}):
                assert "invalid_json" in op["responses"]["400"]["description"], (method, path)
            if {"visitorToken"} & {k for s in op.get("security", []) for k in s}:
                assert "origin_not_allowed" in op["responses"]["403"]["description"], path
            # Every JSON success body is described, so that its shape is checked too.
            ok = next(code for code in op["responses"] if code.startswith(("1", "2")))
            if ok in ("200", "201", "202") and (method, path) not in BODYLESS:
                content = op["responses"][ok]["content"]
                if "application/json" not in content:  # a stream of lines: described in words
                    assert content["application/x-ndjson"]["schema"]["description"], path
                    continue
                schema = content["application/json"]["schema"]
                assert schema["$ref"].removeprefix("#/components/schemas/") in (
                    spec["components"]["schemas"]), (method, path)


# -- API10: unsafe consumption of APIs (the model provider's answers) ---------------------------


def test_api10_the_providers_text_is_data(world: World) -> None:
    visitor = world.visitors["a2"]
    payload = HTMLISH + " " + SQLISH
    world.openai.script(payload)
    answer = world.site.post(visitor, "tell me something")
    assert answer.status_code == 201, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.json()["reply"]["text"] == payload
    stored = world.site.messages(visitor)["data"][-1]
    assert stored["text"] == payload


PROVIDER_FAULTS = [
    # (scenario, what the provider does, the visitor's answer)
    pytest.param([HttpError(status=500)] * 2, 503, "provider_unavailable",
                 id="provider-500-twice"),
    pytest.param([HttpError(status=401, message="Incorrect API key provided: sk-secret-123")],
                 502, "provider_error", id="provider-refuses-the-key"),
]


@pytest.mark.parametrize(("faults", "status", "code"), PROVIDER_FAULTS)
def test_api10_a_failing_provider_is_a_clean_refusal(
    world: World, faults: list[HttpError], status: int, code: str
) -> None:
    world.openai.script(faults=faults)
    answer = world.site.post(world.visitors["a2"], "are you there?")
    assert answer.status_code == status, answer.text
    assert answer.json()["code"] == code
    # The provider's own words (and any key they echo) are not passed on to the visitor.
    assert "sk-secret" not in answer.text and "traceback" not in answer.text.lower()
