"""HTTP function tools end to end: a real LOACL on uvicorn, the real ``openai`` SDK against the
project's test server scripting the model's function calls, and a real HTTP endpoint started
here that receives the calls, checks their Standard Webhooks signature and answers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loacl.admin import convert
from loacl.domain.assistants import ToolDefinition
from loacl.openai_testserver import FunctionCall, OpenAITestServer, Stall
from loacl.providers.base import ToolCall
from loacl.services.egress import CheckedResolver, refusal
from loacl.services.tools import Outcome, Tools
from loacl.settings import Settings
from tests.live import serve
from tests.test_chat import (
    WAIT,
    Gate,
    Site,
    Visitor,
    audit_ok,
    chat_settings,
    live,
    log_of,
    replay_matches,
    wait_until,
)

ORDER_SCHEMA = {
    "type": "object",
    "properties": {"order": {"type": "string", "pattern": "^A-[0-9]+$"}},
    "required": ["order"],
    "additionalProperties": False,
}


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check, written from the Standard Webhooks specification: HMAC-SHA256 of
    ``{id}.{timestamp}.{body}`` with the secret's base64 key, among the ``v1,`` signatures."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        version == "v1" and hmac.compare_digest(value, expected)
        for version, _, value in (s.partition(",") for s in headers["webhook-signature"].split())
    )


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


@dataclass
class Endpoint:
    """The owner's system: records each call; ``/order`` answers, ``/fail`` 500s, ``/slow``
    waits until released, ``/big`` answers too much, ``/pair`` answers once two calls are in
    (so two calls made one after the other would time out)."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    pair: asyncio.Event | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.received if path is None or r.path == path]

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        with self.lock:
            self.received.append(Received(path, dict(request.headers), body))
        arguments = json.loads(body)["arguments"]
        if path == "/fail":
            return JSONResponse({"detail": "down"}, status_code=500)
        if path == "/slow":
            await asyncio.to_thread(self.release.wait, 30)
        if path == "/big":
            return JSONResponse({"blob": "x" * 200_000})
        if path == "/moved":
            return Response(status_code=302, headers={"Location": "http://169.254.169.254/"})
        if path == "/pair":
            if self.pair is None:
                self.pair = asyncio.Event()
            if len(self.calls("/pair")) >= 2:
                self.pair.set()
            await asyncio.wait_for(self.pair.wait(), 20)
        return JSONResponse({"state": "shipped", "order": arguments.get("order")})


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    found = Endpoint()
    app = Starlette(routes=[Route("/{name}", found.handle, methods=["POST"])])
    with serve(app) as url:
        found.url = url
        yield found
        found.release.set()


def tool(endpoint: Endpoint, path: str = "/order", **fields: Any) -> dict[str, Any]:
    return {"type": "http", "name": "order_status", "description": "Where an order is",
            "parameters": ORDER_SCHEMA, "url": endpoint.url + path, "timeout_ms": 5000,
            "status_text": "Looking up your order…", **fields}


def tool_settings(tmp_path: Path, root: str, **overrides: Any) -> Settings:
    return chat_settings(tmp_path, root, tools_allow_private_networks=True, **overrides)


@dataclass
class Setup:
    site: Site
    visitor: Visitor
    assistant: dict[str, Any]


def setup(site: Site, tools: list[dict[str, Any]], provider: str = "openai") -> Setup:
    site.register()
    created = site.http.post(
        "/api/v1/assistants", headers=site.owner,
        json={"name": "Shop", "provider": provider, "tools": tools,
              "model": "demo" if provider == "demo" else "gpt-4o-mini"},
    )
    assert created.status_code == 201, created.text
    widget = site.http.post(
        "/api/v1/widgets", headers=site.owner,
        json={"name": "Site", "assistant_id": created.json()["id"],
              "allowed_origins": ["http://localhost:3000"]},
    )
    assert widget.status_code == 201, widget.text
    return Setup(site, site.visitor(widget.json()["id"]), created.json())


def ask(s: Setup, text: str = "Where is my order A-1?") -> dict[str, Any]:
    posted = s.site.post(s.visitor, text)
    assert posted.status_code in (200, 201), posted.text
    reply: dict[str, Any] = posted.json()["reply"]
    return reply


def tool_events(settings: Settings, conversation_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(r.type, r.payload) for r in log_of(settings, conversation_id)
            if r.type.startswith("tool.")]


def order(n: int = 1) -> FunctionCall:
    return FunctionCall(name="order_status", arguments=json.dumps({"order": f"A-{n}"}),
                        call_id=f"call_{n}")


# -- one call, both wire formats --------------------------------------------------------------


def test_a_call_reaches_the_endpoint_signed_and_its_answer_reaches_the_model(
    tmp_path: Path, server: OpenAITestServer, root: str, endpoint: Endpoint
) -> None:
    settings = tool_settings(tmp_path, root)
    server.script(calls=[order(1)])
    with live(settings) as site:
        s = setup(site, [tool(endpoint)])
        secret = s.assistant["tool_secret"]
        assert secret.startswith("whsec_")
        shown = site.http.get(f"/api/v1/assistants/{s.assistant['id']}", headers=site.owner)
        assert "tool_secret" not in shown.json()  # shown once
        assert shown.json()["tools"][0]["status_text"] == "Looking up your order…"
        reply = ask(s)
    assert reply["status"] == "completed"
    assert reply["text"] == 'The tool answered: {"state":"shipped","order":"A-1"}'
    (call,) = endpoint.calls()
    assert verify(secret, call.headers, call.body)
    assert not verify("whsec_" + base64.b64encode(b"x" * 32).decode(), call.headers, call.body)
    # And as a receiver using the Standard Webhooks library checks it (timestamp included).
    assert Webhook(secret).verify(call.body, call.headers)["call_id"] == "call_1"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(call.body.replace(b"A-1", b"A-2"), call.headers)
    assert call.json["arguments"] == {"order": "A-1"}
    assert call.json["conversation_id"] == s.visitor.conversation_id
    assert call.json["assistant_id"] == s.assistant["id"]
    assert call.json["user_id"] is None
    first, second = server.requests_to("responses")
    offered = first.json["tools"]
    assert offered == [{"type": "function", "name": "order_status",
                        "description": "Where an order is", "parameters": ORDER_SCHEMA,
                        "strict": False}]
    items = second.json["input"]
    assert items[-2] == {"type": "function_call", "call_id": "call_1", "name": "order_status",
                         "arguments": '{"order": "A-1"}'}
    assert items[-1] == {"type": "function_call_output", "call_id": "call_1",
                         "output": '{"state":"shipped","order":"A-1"}'}
    events = tool_events(settings, s.visitor.conversation_id)
    assert [kind for kind, _ in events] == ["tool.called", "tool.returned"]
    assert events[0][1]["arguments"] == '{"order": "A-1"}' and events[0][1]["round"] == 1
    returned = events[1][1]
    assert returned["status"] == "ok" and returned["http_status"] == 200
    assert returned["output"] == '{"state":"shipped","order":"A-1"}'
    assert returned["duration_ms"] >= 0
    audit_ok(settings)
    replay_matches(settings)


def test_chat_completions_sends_tools_and_tool_messages(
    tmp_path: Path, server: OpenAITestServer, root: str, endpoint: Endpoint
) -> None:
    settings = tool_settings(tmp_path, root, chat_completions_base_url=f"{root}/v1")
    server.script(calls=[order(7)], endpoint="chat")
    with live(settings) as site:
        s = setup(site, [tool(endpoint)], provider="chat_completions")
        reply = ask(s)
    assert reply["text"] == 'The tool answered: {"state":"shipped","order":"A-7"}'
    first, second = server.requests_to("chat")
    assert first.json["tools"][0]["function"]["name"] == "order_status"
    assistant, answer = second.json["messages"][-2:]
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"] == [{"id": "call_7", "type": "function", "function": {
        "name": "order_status", "arguments": '{"order": "A-7"}'}}]
    assert answer == {"role": "tool", "tool_call_id": "call_7",
                      "content": '{"state":"shipped","order":"A-7"}'}
    assert verify(s.assistant["tool_secret"], endpoint.calls()[0].headers,
                  endpoint.calls()[0].body)


def test_parallel_calls_run_at_once(
    tmp_path: Path, server: OpenAITestServer, root: str, endpoint: Endpoint
) -> None:
    # /pair answers only once both calls are in: made one after the other, the first would
    # wait for the second until its timeout.
    settings = tool_settings(tmp_path, root)
    server.script(calls=[order(1), order(2)])
    with live(settings) as site:
        s = setup(site, [tool(endpoint, "/pair", timeout_ms=20_000)])
        reply = ask(s)
    assert reply["text"] == ('The tool answered: {"state":"shipped","order":"A-1"}; '
                             '{"state":"shipped","order":"A-2"}')
    returned = [p for k, p in tool_events(settings, s.visitor.conversation_id)
                if k == "tool.returned"]
    assert [(p["call_id"], p["status"]) for p in returned] == [("call_1", "ok"), ("call_2", "ok")]


# -- what goes wrong goes back to the model ---------------------------------------------------


@pytest.mark.parametrize(("path", "arguments", "status", "http_status", "called"), [
    ("/order", '{"order": 5}', "invalid_arguments", None, False),
    ("/order", "not json", "invalid_arguments", None, False),
    ("/fail", '{"order": "A-1"}', "http_error", 500, True),
    ("/big", '{"order": "A-1"}', "too_large", None, True),
    ("/moved", '{"order": "A-1"}', "http_error", 302, True),
])
def test_a_failed_call_is_an_error_output_not_a_failed_reply(
    tmp_path: Path, server: OpenAITestServer, root: str, endpoint: Endpoint, path: str,
    arguments: str, status: str, http_status: int | None, called: bool,
) -> None:
    settings = tool_settings(tmp_path, root, tool_output_bytes=4096)
    server.script(calls=[FunctionCall(name="order_status", arguments=arguments,
                                      call_id="call_x")])
    with live(settings) as site:
        s = setup(site, [tool(endpoint, path)])
        reply = ask(s)
    assert reply["status"] == "completed"
    assert bool(endpoint.calls()) is called  # /moved's redirect is not followed
    output = server.requests_to("responses")[1].json["input"][-1]["output"]
    assert json.loads(output)["error"]["code"] == status
    assert reply["text"] == f"The tool answered: {output}"
    returned = tool_events(settings, s.visitor.conversation_id)[-1][1]
    assert (returned["status"], returned["http_status"]) == (status, http_status)


def test_a_slow_endpoint_times_out(
    tmp_path: Path, server: OpenAITestServer, root: str, endpoint: Endpoint
) -> None:
    settings = tool_settings(tmp_path, root)
    server.script(calls=[order(1)])
    with live(settings) as site:
        s = setup(site, [tool(endpoint, "/slow", timeout_ms=200)])
        reply = ask(s)
        endpoint.release.set()
    assert reply["status"] == "completed"
    assert "timeout" in reply["text"]
    returned = tool_events(settings, s.visitor.conversation_id)[-1][1]
    assert returned["status"] == "timeout"


def test_the_round_limit_ends_the_loop(
    tmp_path: Path, server: OpenAITestServer, root: str, endpoint: Endpoint
) -> None:
    settings = tool_settings(tmp_path, root, tool_rounds=2)
    server.script(calls=[order(1)])
    server.script(calls=[order(2)])
    server.script("I could not finish.", calls=[order(3)])
    with live(settings) as site:
        s = setup(site, [tool(endpoint)])
        reply = ask(s)
    assert reply["status"] == "completed"
    assert reply["text"] == "I could not finish."
    assert len(endpoint.calls()) == 2
    requests = server.requests_to("responses")
    assert len(requests) == 3
    assert "tool_choice" not in requests[1].json
    assert requests[2].json["tool_choice"] == "none"
    returned = [p for k, p in tool_events(settings, s.visitor.conversation_id)
                if k == "tool.returned"]
    assert [p["status"] for p in returned] == ["ok", "ok", "round_limit"]


# -- SSRF -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("address", "refused"), [
    ("127.0.0.1", True), ("10.1.2.3", True), ("172.16.0.1", True), ("192.168.1.1", True),
    ("169.254.169.254", True), ("100.64.0.1", True), ("0.0.0.0", True), ("224.0.0.1", True),
    ("::1", True), ("fe80::1", True), ("fc00::1", True), ("::ffff:127.0.0.1", True),
    ("::ffff:169.254.169.254", True), ("64:ff9b::a00:1", True), ("2002:a00:1::", True),
    ("93.184.215.14", False), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", False),
])
def test_internal_addresses_are_refused(address: str, refused: bool) -> None:
    assert (refusal(ipaddress.ip_address(address)) is not None) is refused


def test_a_schema_never_makes_the_server_fetch_a_reference() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/schema.json"
        definition = ToolDefinition(name="t", url="https://example.com/", parameters={
            "type": "object", "properties": {"a": {"$ref": url}}})
        checked = Tools(Settings()).arguments(definition, ToolCall("c", "t", '{"a": 1}'))
        assert isinstance(checked, Outcome) and checked.status == "invalid_arguments"
        # The call has returned: a fetch would have connected by now.
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()


def test_private_addresses_are_refused_without_the_setting(
    tmp_path: Path, server: OpenAITestServer, root: str, endpoint: Endpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = chat_settings(tmp_path, root)  # tools_allow_private_networks off
    port = endpoint.url.rsplit(":", 1)[1]
    real = CheckedResolver.resolve

    async def rebinding(self: CheckedResolver, host: str, *args: Any, **kwargs: Any) -> Any:
        # A public-looking name whose DNS answer is loopback (the server's loop may not
        # resolve through the socket module, so the answer is given at the resolver's door).
        return await real(self, "127.0.0.1" if host == "orders.example.com" else host, *args,
                          **kwargs)

    monkeypatch.setattr(CheckedResolver, "resolve", rebinding)
    with live(settings) as site:
        site.register()
        for url in (endpoint.url + "/order", f"https://127.0.0.1:{port}/order",
                    "https://[::ffff:169.254.169.254]/latest", f"https://localhost:{port}/o",
                    f"https://127.1:{port}/order"):
            refused = site.http.post("/api/v1/assistants", headers=site.owner, json={
                "name": "Shop", "provider": "openai", "model": "gpt-4o-mini",
                "tools": [{"name": "order_status", "url": url}]})
            assert refused.status_code == 422, refused.text
            assert refused.json()["code"] == "validation_error"
        # A name that resolves to loopback passes the form check, and is refused at the call.
        server.script(calls=[order(1)])
        created = site.http.post("/api/v1/assistants", headers=site.owner, json={
            "name": "Shop", "provider": "openai", "model": "gpt-4o-mini",
            "tools": [{"name": "order_status", "parameters": ORDER_SCHEMA,
                       "url": f"https://orders.example.com:{port}/order"}]})
        assert created.status_code == 201, created.text
        widget = site.http.post("/api/v1/widgets", headers=site.owner, json={
            "name": "Site", "assistant_id": created.json()["id"],
            "allowed_origins": ["http://localhost:3000"]})
        visitor = site.visitor(widget.json()["id"])
        posted = site.post(visitor, "Where is A-1?")
    assert posted.json()["reply"]["status"] == "completed"
    assert endpoint.calls() == []
    returned = tool_events(settings, visitor.conversation_id)[-1][1]
    assert returned["status"] == "refused"
    assert "loopback" in json.loads(returned["output"])["error"]["message"]


# -- the secret, built-in tools, imports, the demo -------------------------------------------


def test_a_rotated_secret_signs_the_next_calls(
    tmp_path: Path, server: OpenAITestServer, root: str, endpoint: Endpoint
) -> None:
    settings = tool_settings(tmp_path, root)
    with live(settings) as site:
        s = setup(site, [tool(endpoint)])
        assistant_id = s.assistant["id"]
        current = site.http.get(f"/api/v1/assistants/{assistant_id}", headers=site.owner)
        stale = site.http.post(f"/api/v1/assistants/{assistant_id}/rotate-tool-secret",
                               headers={**site.owner, "If-Match": '"1"'})
        assert stale.status_code == 412
        rotated = site.http.post(f"/api/v1/assistants/{assistant_id}/rotate-tool-secret",
                                 headers={**site.owner, "If-Match": current.headers["etag"]})
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["tool_secret"]
        assert new_secret != s.assistant["tool_secret"]
        server.script(calls=[order(1)])
        ask(s)
    (call,) = endpoint.calls()
    assert verify(new_secret, call.headers, call.body)
    assert not verify(s.assistant["tool_secret"], call.headers, call.body)


def test_web_search_passes_through_for_openai_only(
    tmp_path: Path, server: OpenAITestServer, root: str
) -> None:
    settings = chat_settings(tmp_path, root, chat_completions_base_url=f"{root}/v1")
    with live(settings) as site:
        site.register()
        for provider in ("chat_completions", "demo"):
            refused = site.http.post("/api/v1/assistants", headers=site.owner, json={
                "name": "Search", "provider": provider,
                "model": "demo" if provider == "demo" else "gpt-4o-mini",
                "tools": [{"type": "web_search"}]})
            assert refused.status_code == 422, refused.text
            assert refused.json()["code"] == "tool_not_supported"
        widget_id = site.widget(tools=[{"type": "web_search"}])
        visitor = site.visitor(widget_id)
        posted = site.post(visitor, "echo:found it")
        assert posted.json()["reply"]["text"] == "found it"
    assert server.requests_to("responses")[-1].json["tools"] == [{"type": "web_search"}]


def test_the_demo_explains_tools_without_calling_them(
    tmp_path: Path, endpoint: Endpoint
) -> None:
    settings = chat_settings(tmp_path, None, tools_allow_private_networks=True)
    with live(settings) as site:
        s = setup(site, [tool(endpoint)], provider="demo")
        reply = ask(s)
    assert "`order_status`" in reply["text"] and "does not call them" in reply["text"]
    assert endpoint.calls() == []


def test_imported_function_tools_wait_for_a_url() -> None:
    definition, dropped = convert({
        "id": "asst_1", "model": "gpt-4o", "name": "Orders",
        "tools": [{"type": "function", "function": {
            "name": "order_status", "description": "Look an order up",
            "parameters": ORDER_SCHEMA}}],
    })
    assert dropped == []
    (imported,) = definition.tools
    assert (imported.type, imported.name, imported.url, imported.enabled) == (
        "http", "order_status", "", False)
    assert imported.parameters == ORDER_SCHEMA
    assert definition.http_tools() == ()  # offered to the model once a URL is set


def test_an_imported_function_tool_is_called_once_the_owner_gives_it_a_url(
    tmp_path: Path, server: OpenAITestServer, root: str, endpoint: Endpoint,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An Assistants-API export end to end: ``loacl assistants import`` carries the function
    tool over without a URL (not offered to the model); the owner sets the URL and enables it
    through the API, takes the tool secret, and a visitor's question has the model call it:
    the owner's endpoint gets the arguments signed with that secret, and its answer reaches
    the model."""
    from loacl import admin
    from loacl.openai_testserver import ModelInfo
    from loacl.store import migrations
    from loacl.store.sqlite import connect

    monkeypatch.setitem(server.models, "gpt-4o", ModelInfo("gpt-4o"))  # the export's model
    settings = tool_settings(tmp_path, root)
    conn = connect(settings.database_path)
    migrations.up(conn)
    conn.close()
    asyncio.run(admin.create_user(settings, "owner@example.com", "a long enough secret",
                                  name=None, verified=True))
    export = Path(__file__).parent / "data" / "openai_assistants_export.json"
    results = asyncio.run(admin.import_assistants(settings, export, "owner@example.com",
                                                  validate=False))
    (sales,) = [r for r in results if r.source_id == "asst_sales02"]
    assert sales.assistant_id is not None
    price = FunctionCall(name="lookup_price", arguments=json.dumps({"plan": "team"}),
                         call_id="call_price")
    with live(settings) as site:
        login = site.http.post("/api/v1/auth/login", json={
            "email": "owner@example.com", "password": "a long enough secret"})
        assert login.status_code == 200, login.text
        owner = {"Authorization": f"Bearer {login.json()['access_token']}"}
        path = f"/api/v1/assistants/{sales.assistant_id}"
        imported = site.http.get(path, headers=owner).json()
        (waiting,) = imported["tools"]
        assert waiting["name"] == "lookup_price" and not waiting["url"]
        assert waiting["enabled"] is False
        changed = site.http.patch(path, headers=owner, json={"tools": [
            waiting | {"url": endpoint.url + "/price", "enabled": True}]})
        assert changed.status_code == 200, changed.text
        secret = changed.json().get("tool_secret") or site.http.post(
            f"{path}/rotate-tool-secret", headers=owner).json()["tool_secret"]
        widget = site.http.post("/api/v1/widgets", headers=owner, json={
            "name": "Site", "assistant_id": sales.assistant_id,
            "allowed_origins": ["http://localhost:3000"]})
        assert widget.status_code == 201, widget.text
        server.script(calls=[price])
        posted = site.post(site.visitor(widget.json()["id"]), "What does the team plan cost?")
        assert posted.status_code in (200, 201), posted.text
        reply = posted.json()["reply"]
    assert reply["status"] == "completed"
    (call,) = endpoint.calls("/price")
    assert json.loads(call.body)["arguments"] == {"plan": "team"}
    assert verify(secret, call.headers, call.body)
    offered = server.requests_to("responses")[0].json["tools"]
    assert [t["name"] for t in offered if t["type"] == "function"] == ["lookup_price"]
    assert reply["text"] == 'The tool answered: {"state":"shipped","order":null}'


# -- streaming across a tool round -------------------------------------------------------------


def test_a_disabled_tool_is_not_offered(
    tmp_path: Path, server: OpenAITestServer, root: str, endpoint: Endpoint
) -> None:
    settings = tool_settings(tmp_path, root)
    with live(settings) as site:
        s = setup(site, [tool(endpoint, enabled=False)])
        assert "tool_secret" in s.assistant
        reply = ask(s, "echo:plain")
    assert reply["text"] == "plain"
    assert "tools" not in server.requests_to("responses")[0].json


async def test_a_stream_resumes_across_a_tool_round(
    tmp_path: Path, server: OpenAITestServer, root: str, endpoint: Endpoint
) -> None:
    from tests.test_stream import Live, Log, Session

    settings = tool_settings(tmp_path, root, provider_max_retries=0)
    after = "Your order A-1 has shipped and arrives tomorrow, well packed and on time."
    server.script("Let me check.", calls=[order(1)])
    server.script(after, [Stall(seconds=1.5, after_deltas=4)])
    with live(settings) as site:
        s = setup(site, [tool(endpoint, "/slow")])
        socket = Live(site.url, settings, server, site.http, site.owner,
                      s.visitor.widget_id, Log(settings))
        token = s.visitor.headers["Authorization"].split()[1]
        session = Session(token, s.visitor.conversation_id)
        async with socket.tab(session) as tab:
            ack = await socket.ask(tab, "Where is A-1?")
            reply_id = ack["reply_id"]
            status = await tab.until(lambda f: f["type"] == "status")
            assert status == {"type": "status", "message_id": reply_id, "state": "tool",
                              "tool": "order_status", "text": "Looking up your order…"}
            endpoint.release.set()
            before = await tab.follow(reply_id, stop_after=len("Let me check.\n\n") + 5)
        offset = len(before.text)
        async with socket.tab(session, ready=False) as again:
            await again.send({"type": "resume", "message_id": reply_id, "offset": offset})
            assert (await again.recv())["type"] == "ready"
            rest = await again.follow(reply_id, start=offset)
        await socket.log.finished(reply_id)
    assert before.text + rest.text == "Let me check.\n\n" + after
    assert rest.done is not None and rest.done["status"] == "completed"
    rows = log_of(settings, s.visitor.conversation_id)
    kinds = [r.type for r in rows]
    assert kinds.index("tool.called") < kinds.index("tool.returned") < len(kinds) - 1
    assert rows[-1].payload["text"] == "Let me check.\n\n" + after
    replay_matches(settings)


# -- the log's order across a tool round, and a log that refuses the calls ---------------------


def test_the_log_keeps_text_calls_results_and_the_next_rounds_text_in_order(
    tmp_path: Path, server: OpenAITestServer, root: str, endpoint: Endpoint
) -> None:
    # Every delta flushed at once: the next round's text is appended while the round's
    # results may still be committing, and must land after them all the same.
    settings = tool_settings(tmp_path, root, flush_interval_ms=0)
    before = "Let me check both orders."
    after = "Order A-1 and order A-2 have both shipped and arrive tomorrow."
    server.script(before, calls=[order(1), order(2)])
    server.script(after)
    with live(settings) as site:
        s = setup(site, [tool(endpoint)])
        reply = ask(s)
    assert reply["status"] == "completed"
    assert reply["text"] == before + "\n\n" + after
    assert len(endpoint.calls()) == 2
    rows = [r for r in log_of(settings, s.visitor.conversation_id)
            if r.payload.get("message_id") == reply["id"]]
    kinds = [r.type for r in rows]
    called = [i for i, k in enumerate(kinds) if k == "tool.called"]
    returned = [i for i, k in enumerate(kinds) if k == "tool.returned"]
    assert len(called) == len(returned) == 2
    assert max(called) < min(returned)
    deltas = [(i, r.payload) for i, r in enumerate(rows) if r.type == "assistant.delta"]
    # The text before the calls is in the log before them; the next round's after the results.
    assert all(p["offset"] + len(p["text"]) <= len(before) for i, p in deltas if i < min(called))
    assert all(p["offset"] >= len(before) for i, p in deltas if i > max(returned))
    assert not [i for i, _ in deltas if min(called) < i < max(returned)]
    assert "".join(p["text"] for _, p in deltas) == reply["text"]
    assert kinds[-1] == "assistant.completed"
    # The next request carries the round as the model wrote it: its text, calls and outputs.
    _, second = server.requests_to("responses")
    assert {"role": "assistant", "content": [{"type": "output_text", "text": before}]} \
        in second.json["input"]
    audit_ok(settings)
    replay_matches(settings)


async def test_a_round_the_log_cannot_take_fails_the_reply_and_asks_the_model_nothing_more(
    server: OpenAITestServer, root: str, tmp_path: Path, endpoint: Endpoint
) -> None:
    settings = tool_settings(tmp_path, root, flush_interval_ms=5000)
    gate = Gate()
    server.script(calls=[order(1)])
    server.script("Never asked for.")
    with live(settings) as site:
        gate.install(site.app)
        s = setup(site, [tool(endpoint)])
        async with httpx.AsyncClient(base_url=site.url, timeout=WAIT) as client:
            posting = asyncio.create_task(client.post(
                f"/api/v1/widgets/{s.visitor.widget_id}/messages", json={"text": "A-1?"},
                headers=s.visitor.headers,
            ))
            deadline = time.monotonic() + WAIT
            while gate.waiting < 1:
                assert time.monotonic() < deadline, "the reply never reached the provider"
                await asyncio.sleep(0.01)
            # Another process holds the write lock while the model calls the tool.
            holder = sqlite3.connect(settings.database_path, timeout=0, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            try:
                gate.opened.set()
                response = await posting
            finally:
                holder.execute("ROLLBACK")
                holder.close()
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["code"] == "store_unavailable"
        reply_id = body["reply"]["id"]
        wait_until(
            lambda: any(r.type == "assistant.failed" and r.payload["message_id"] == reply_id
                        for r in log_of(settings, s.visitor.conversation_id)),
            "the reply's end to reach the log",
        )
    rows = log_of(settings, s.visitor.conversation_id)
    # Neither the call nor a result the log never took, and no answer the model was given.
    assert not [r for r in rows if r.type.startswith("tool.")]
    assert len(server.requests_to("responses")) == 1
    [end] = [r for r in rows if r.type == "assistant.failed"]
    assert end.payload["code"] == "store_unavailable"
    # The call may have gone out while the append waited (it is made alongside): at most once.
    assert len(endpoint.calls()) <= 1
    audit_ok(settings)
    replay_matches(settings)
