"""Owner endpoints (assistants, widgets, embed code, rotate-secret): scenario tables that assert
the response and the events appended, read from the log with plain sqlite3."""

from __future__ import annotations

import email
import functools
import json
import re
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from html.parser import HTMLParser
from typing import Any, Protocol

import httpx
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from loacl.domain.widgets import (
    WidgetDefinition,
    WidgetSettings,
    WidgetUpdated,
    widget_stream,
)
from loacl.http.app import create_app
from loacl.http.validation import merge_patch
from loacl.openai_testserver import HttpError, ModelInfo, OpenAITestServer, running
from loacl.settings import Settings
from tests.live import serve
from tests.sealed import opened_rows

PASSWORD = "correct horse battery staple"
MISSING = object()  # a patch value that removes the key

# -- the log, read as an operator would ------------------------------------------------------


@dataclass(frozen=True)
class Row:
    seq: int
    stream: str
    version: int
    type: str
    payload: dict[str, Any]
    metadata: dict[str, Any]
    raw: str


def events(settings: Settings, after: int = 0) -> list[Row]:
    """The events after ``after``, sealed fields opened; ``raw`` is the row as stored."""
    rows = opened_rows(
        settings,
        "SELECT type, schema_version, payload, metadata, seq, stream, version, "
        "payload || metadata FROM events WHERE seq > ? ORDER BY seq",
        (after,),
    )
    return [
        Row(seq, stream, version, kind, json.loads(payload), json.loads(meta), raw)
        for kind, _, payload, meta, seq, stream, version, raw in rows
    ]


def head(settings: Settings) -> int:
    conn = sqlite3.connect(settings.database_path)
    try:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    finally:
        conn.close()


# -- owners ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    user_id: str
    email: str
    headers: dict[str, str]


def outbox_token(settings: Settings, address: str, timeout: float = 10.0) -> str:
    """The verification token of the mail the default mailer wrote for ``address``."""
    folder = settings.data_dir / "outbox"
    deadline = time.monotonic() + timeout
    while True:
        for path in sorted(folder.glob("*.eml")) if folder.exists() else []:
            message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
            assert isinstance(message, EmailMessage)
            if message["To"] != address or "Confirm" not in str(message["Subject"]):
                continue
            match = re.search(r"Your token:\s+(\S+)", message.get_content())
            if match:  # else the file is still being written
                return match.group(1)
        if time.monotonic() > deadline:
            raise AssertionError(f"no verification mail to {address} in {folder}")
        time.sleep(0.02)


def register_owner(
    client: TestClient | httpx.Client, settings: Settings, address: str, *, verify: bool = True
) -> Owner:
    registered = client.post(
        "/api/v1/auth/register", json={"email": address, "password": PASSWORD}
    )
    assert registered.status_code == 202, registered.text
    if verify:
        token = outbox_token(settings, address)
        verified = client.post("/api/v1/auth/verify-email", json={"token": token})
        assert verified.status_code == 200, verified.text
    login = client.post("/api/v1/auth/login", json={"email": address, "password": PASSWORD})
    assert login.status_code == 200, login.text
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    user_id = client.get("/api/v1/auth/me", headers=headers).json()["id"]
    return Owner(user_id, address, headers)


@dataclass
class World:
    app: Starlette
    client: TestClient
    settings: Settings
    a: Owner
    b: Owner

    def assistant(self, owner: Owner, **fields: Any) -> dict[str, Any]:
        response = self.client.post(
            "/api/v1/assistants", json={"name": "Helper", **fields}, headers=owner.headers
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def widget(self, owner: Owner, assistant_id: str, **fields: Any) -> dict[str, Any]:
        response = self.client.post(
            "/api/v1/widgets",
            json={"name": "Site", "assistant_id": assistant_id, **fields},
            headers=owner.headers,
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body


@contextmanager
def world_of(settings: Settings) -> Iterator[World]:
    app = create_app(settings)
    with TestClient(app) as client:
        yield World(
            app, client, settings,
            register_owner(client, settings, "a@example.com"),
            register_owner(client, settings, "b@example.com"),
        )


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    with world_of(settings) as built:
        yield built


def patched(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``patch`` merged in, nested dicts too; ``MISSING`` drops a key."""
    out = dict(base)
    for key, value in patch.items():
        if value is MISSING:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = patched(out[key], value)
        else:
            out[key] = value
    return out


class Answer(Protocol):
    """An HTTP response, from httpx or from Starlette's TestClient (httpx2)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def text(self) -> str: ...
    def json(self) -> Any: ...


def assert_problem(
    response: Answer, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    if field is not None:
        assert field in [e["field"] for e in body["errors"]], body
        if code == "validation_error":
            assert field in body["detail"], body  # the message names the field too
    return body


# -- assistants: scenario tables -----------------------------------------------------------------

ASSISTANT = {"name": "Helper", "provider": "demo", "model": "demo"}
# PUT replaces the whole thing: its body names every field.
ASSISTANT_PUT: dict[str, Any] = {
    **ASSISTANT, "instructions": "", "temperature": None, "top_p": None,
    "max_output_tokens": None, "file_search": None, "tools": [], "handoff": False}
WIDGET_PUT = {"allowed_origins": [], "settings": {}, "limits": {}, "budget": {}, "enabled": True,
              "require_identity": False, "retention_days": None, "office_hours": None}

VALID_ASSISTANTS = [
    pytest.param(
        {"name": "Helper"},
        {"provider": "demo", "model": "demo", "instructions": "", "temperature": None,
         "top_p": None, "max_output_tokens": None, "vector_store_ids": [], "tools": []},
        id="minimal-defaults-to-demo",
    ),
    pytest.param(
        {"name": "H" * 200, "provider": "demo", "model": "demo", "instructions": "i" * 32_000,
         "temperature": 2, "top_p": 0, "max_output_tokens": 16,
         "file_search": {"vector_store_ids": ["vs_abc", "vs_DEF-1_2"]}},
        {"provider": "demo", "model": "demo", "instructions": "i" * 32_000, "temperature": 2,
         "top_p": 0, "max_output_tokens": 16, "vector_store_ids": ["vs_abc", "vs_DEF-1_2"],
         "tools": []},
        id="every-field-at-its-limit",
    ),
    pytest.param(
        {"name": "Helper", "temperature": 0, "top_p": 1, "max_output_tokens": 200_000,
         "instructions": "Be kind <b>&</b>"},
        {"provider": "demo", "model": "demo", "instructions": "Be kind <b>&</b>",
         "temperature": 0, "top_p": 1, "max_output_tokens": 200_000, "vector_store_ids": [],
         "tools": []},
        id="other-limits",
    ),
]


@pytest.mark.parametrize(("body", "definition"), VALID_ASSISTANTS)
def test_create_assistant(world: World, body: dict[str, Any], definition: dict[str, Any]) -> None:
    before = head(world.settings)
    response = world.client.post("/api/v1/assistants", json=body, headers=world.a.headers)
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["etag"] == '"1"'
    assert created["version"] == 1
    assert created["name"] == body["name"]
    for key in ("provider", "model", "instructions", "temperature", "top_p",
                "max_output_tokens"):
        assert created[key] == definition[key]
    ids = definition["vector_store_ids"]
    assert created["file_search"] == ({"vector_store_ids": ids} if ids else None)

    appended = events(world.settings, before)
    assert [(r.stream, r.version, r.type) for r in appended] == [
        (f"assistant-{created['id']}", 1, "assistant.created")
    ]
    assert appended[0].payload == {
        "assistant_id": created["id"], "owner_id": world.a.user_id,
        "definition": {"name": body["name"], **definition},
    }
    assert appended[0].metadata["actor"] == world.a.user_id

    fetched = world.client.get(f"/api/v1/assistants/{created['id']}", headers=world.a.headers)
    assert fetched.status_code == 200
    assert fetched.json() == created
    assert fetched.headers["etag"] == '"1"'


INVALID_ASSISTANTS = [
    pytest.param({"name": MISSING}, "validation_error", "name", id="name-missing"),
    pytest.param({"name": ""}, "validation_error", "name", id="name-empty"),
    pytest.param({"name": "n" * 201}, "validation_error", "name", id="name-too-long"),
    pytest.param({"name": 5}, "validation_error", "name", id="name-not-text"),
    pytest.param({"provider": "anthropic"}, "validation_error", "provider", id="provider-unknown"),
    pytest.param({"model": ""}, "validation_error", "model", id="model-empty"),
    pytest.param({"model": "m" * 201}, "validation_error", "model", id="model-too-long"),
    pytest.param({"model": "gpt-4o"}, "unknown_model", "model", id="demo-knows-one-model"),
    pytest.param({"provider": "openai", "model": MISSING}, "validation_error", "model",
                 id="openai-needs-a-model"),
    pytest.param({"instructions": "i" * 32_001}, "validation_error", "instructions",
                 id="instructions-too-long"),
    pytest.param({"instructions": ["a"]}, "validation_error", "instructions",
                 id="instructions-not-text"),
    pytest.param({"temperature": -0.01}, "validation_error", "temperature", id="temperature-low"),
    pytest.param({"temperature": 2.01}, "validation_error", "temperature", id="temperature-high"),
    pytest.param({"temperature": "hot"}, "validation_error", "temperature",
                 id="temperature-not-number"),
    pytest.param({"top_p": 1.01}, "validation_error", "top_p", id="top-p-high"),
    pytest.param({"top_p": -0.5}, "validation_error", "top_p", id="top-p-low"),
    pytest.param({"max_output_tokens": 15}, "validation_error", "max_output_tokens",
                 id="max-tokens-low"),
    pytest.param({"max_output_tokens": 200_001}, "validation_error", "max_output_tokens",
                 id="max-tokens-high"),
    pytest.param({"max_output_tokens": 20.5}, "validation_error", "max_output_tokens",
                 id="max-tokens-fraction"),
    pytest.param({"file_search": {"vector_store_ids": []}}, "validation_error",
                 "file_search.vector_store_ids", id="vector-stores-empty"),
    pytest.param({"file_search": {}}, "validation_error",
                 "file_search.vector_store_ids", id="vector-stores-missing"),
    pytest.param({"file_search": {"vector_store_ids": ["store-1"]}}, "validation_error",
                 "file_search.vector_store_ids.0", id="vector-store-id-malformed"),
    pytest.param({"file_search": {"vector_store_ids": [f"vs_{i}" for i in range(11)]}},
                 "validation_error", "file_search.vector_store_ids", id="vector-stores-too-many"),
    pytest.param({"file_search": {"vector_store_ids": ["vs_1"], "max_results": 3}},
                 "validation_error", "file_search.max_results", id="file-search-extra-field"),
    pytest.param({"tools": {}}, "validation_error", "tools", id="tools-not-a-list"),
    pytest.param({"tools": [{"name": "a b", "url": "https://example.com/"}]},
                 "validation_error", "tools.0.name", id="tool-name-malformed"),
    pytest.param({"tools": [{"url": "https://example.com/"}]}, "validation_error",
                 "tools[0].name", id="tool-name-missing"),
    pytest.param({"tools": [{"name": "t", "url": "https://example.com/",
                             "parameters": {"type": "string"}}]},
                 "validation_error", "tools[0].parameters", id="tool-parameters-not-object"),
    pytest.param({"tools": [{"name": "t", "url": "https://example.com/",
                             "parameters": {"type": "object", "properties": 5}}]},
                 "validation_error", "tools[0].parameters", id="tool-parameters-not-a-schema"),
    pytest.param({"tools": [{"name": "t"}]}, "validation_error", "tools[0].url",
                 id="tool-enabled-without-url"),
    pytest.param({"tools": [{"name": "t", "url": "ftp://example.com/"}]},
                 "validation_error", "tools[0].url", id="tool-url-not-https"),
    pytest.param({"tools": [{"name": "t", "url": "https://example.com:70000/"}]},
                 "validation_error", "tools[0].url", id="tool-url-port-out-of-range"),
    pytest.param({"tools": [{"name": "t", "url": "https://u:p@example.com/"}]},
                 "validation_error", "tools[0].url", id="tool-url-with-password"),
    pytest.param({"tools": [{"name": "t", "url": "http://example.com/"}]},
                 "validation_error", "tools[0].url", id="tool-url-plain-http"),
    pytest.param({"tools": [{"name": "t", "url": "https://10.0.0.8/"}]},
                 "validation_error", "tools[0].url", id="tool-url-private-address"),
    pytest.param({"tools": [{"name": "t", "url": "https://example.com/", "timeout_ms": 99}]},
                 "validation_error", "tools.0.timeout_ms", id="tool-timeout-low"),
    pytest.param({"tools": [{"name": "t", "url": "https://a.example/"},
                            {"name": "t", "url": "https://b.example/"}]},
                 "validation_error", "tools[1].name", id="tool-named-twice"),
    pytest.param({"tools": [{"type": "web_search"}]}, "tool_not_supported", "tools[0].type",
                 id="web-search-needs-openai"),
    pytest.param({"tools": [{"type": "code_interpreter"}]}, "validation_error",
                 "tools.0.type", id="tool-type-unknown"),
    pytest.param({"tools": [{"name": "t", "url": "https://x.example/", "secret": "s"}]},
                 "validation_error", "tools.0.secret", id="tool-extra-field"),
]


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize(("patch", "code", "field"), INVALID_ASSISTANTS)
def test_assistant_refuses_a_bad_field(
    world: World, method: str, patch: dict[str, Any], code: str, field: str
) -> None:
    existing = world.assistant(world.a, **ASSISTANT)
    path = "/api/v1/assistants" + (f"/{existing['id']}" if method == "PUT" else "")
    before = head(world.settings)
    response = world.client.request(
        method, path, json=patched(ASSISTANT if method == "POST" else ASSISTANT_PUT, patch),
        headers=world.a.headers
    )
    assert_problem(response, 422, code, field)
    assert events(world.settings, before) == []
    assert world.client.get(
        f"/api/v1/assistants/{existing['id']}", headers=world.a.headers
    ).json() == existing


@pytest.mark.parametrize(
    ("content", "code"),
    [(b"{not json", "invalid_json"), (b"[1, 2]", "invalid_json"), (b'"text"', "invalid_json")],
)
def test_bodies_that_are_not_json_objects(world: World, content: bytes, code: str) -> None:
    before = head(world.settings)
    for path in ("/api/v1/assistants", "/api/v1/widgets"):
        response = world.client.post(
            path, content=content,
            headers={**world.a.headers, "Content-Type": "application/json"},
        )
        assert_problem(response, 400, code)
    assert events(world.settings, before) == []


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_numbers_that_are_not_numbers(world: World, number: str) -> None:
    before = head(world.settings)
    for field in ("temperature", "top_p"):
        response = world.client.post(
            "/api/v1/assistants", content=f'{{"name": "H", "{field}": {number}}}',
            headers={**world.a.headers, "Content-Type": "application/json"},
        )
        assert_problem(response, 422, "validation_error", field)
    assert events(world.settings, before) == []


def test_update_assistant_appends_only_changes(world: World) -> None:
    created = world.assistant(world.a, **ASSISTANT)
    path = f"/api/v1/assistants/{created['id']}"
    before = head(world.settings)
    changed = {**ASSISTANT_PUT, "name": "Renamed", "temperature": 0.5}
    response = world.client.put(path, json=changed, headers=world.a.headers)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"2"'
    assert response.json()["name"] == "Renamed"
    appended = events(world.settings, before)
    assert [(r.type, r.version) for r in appended] == [("assistant.updated", 2)]
    assert appended[0].payload["definition"]["temperature"] == 0.5

    # The same definition again changes nothing, and appends nothing.
    before = head(world.settings)
    again = world.client.put(path, json=changed, headers={**world.a.headers, "If-Match": '"2"'})
    assert again.status_code == 200
    assert again.headers["etag"] == '"2"'
    assert events(world.settings, before) == []


def test_delete_assistant(world: World) -> None:
    created = world.assistant(world.a)
    path = f"/api/v1/assistants/{created['id']}"
    before = head(world.settings)
    response = world.client.delete(path, headers={**world.a.headers, "If-Match": '"1"'})
    assert response.status_code == 204
    assert [(r.type, r.stream) for r in events(world.settings, before)] == [
        ("assistant.deleted", f"assistant-{created['id']}")
    ]
    before = head(world.settings)
    assert_problem(world.client.get(path, headers=world.a.headers), 404, "not_found")
    assert_problem(world.client.put(path, json=ASSISTANT_PUT, headers=world.a.headers), 404,
                   "not_found")
    assert_problem(world.client.delete(path, headers=world.a.headers), 404, "not_found")
    assert events(world.settings, before) == []
    listed = world.client.get("/api/v1/assistants", headers=world.a.headers).json()
    assert created["id"] not in [a["id"] for a in listed["data"]]


def test_an_assistant_in_use_is_not_deleted(world: World) -> None:
    assistant = world.assistant(world.a)
    widget = world.widget(world.a, assistant["id"])
    before = head(world.settings)
    path = f"/api/v1/assistants/{assistant['id']}"
    assert_problem(world.client.delete(path, headers=world.a.headers), 409, "assistant_in_use")
    assert events(world.settings, before) == []
    assert world.client.delete(
        f"/api/v1/widgets/{widget['id']}", headers=world.a.headers
    ).status_code == 204
    assert world.client.delete(path, headers=world.a.headers).status_code == 204


# -- widgets: scenario tables ------------------------------------------------------------------

DEFAULT_SETTINGS = {
    "title": "Chat with us", "greeting": "", "placeholder": "Type a message…", "theme": "auto",
    "position": "bottom-right", "accent_color": "#2563eb", "locale": "en", "feedback": True,
    "events_include_text": False, "title_blink": False, "proactive_greeting": "",
    "proactive_delay_seconds": 10, "prechat_fields": [],
}
FULL_SETTINGS = {
    "title": "T" * 100, "greeting": "g" * 2000, "placeholder": "p" * 200, "theme": "dark",
    "position": "bottom-left", "accent_color": "#ABC", "locale": "pt-BR", "feedback": False,
    "events_include_text": True, "title_blink": True, "proactive_greeting": "h" * 300,
    "proactive_delay_seconds": 3600, "prechat_fields": ["name", "email"],
}

# null: the server's default budget (settings); 0: no limit.
DEFAULT_BUDGET = {"daily_tokens": None, "monthly_tokens": None, "daily_cost": None,
                  "monthly_cost": None}

# Four windows on each of seven days (the most there may be), and most of a year closed.
FULL_HOURS = {
    "timezone": "America/Argentina/ComodRivadavia",
    "windows": [{"day": day, "opens": f"{h:02}:00", "closes": f"{h:02}:30" if h < 23 else "24:00"}
                for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
                for h in (0, 6, 12, 23)],
    "closed_dates": [f"2027-{m:02}-{d:02}" for m in range(1, 13) for d in range(1, 31)
                     if (m, d) != (2, 29) and (m, d) != (2, 30)][:366],
}
VALID_WIDGETS = [
    pytest.param(
        {},
        {"allowed_origins": [], "settings": DEFAULT_SETTINGS, "messages_per_minute": 10,
         "enabled": True, "require_identity": False, "budget": DEFAULT_BUDGET,
         "retention_days": None, "office_hours": None},
        id="minimal-defaults",
    ),
    pytest.param(
        {"budget": {"daily_tokens": 5000, "monthly_tokens": 0, "monthly_cost": 2.5}},
        {"allowed_origins": [], "settings": DEFAULT_SETTINGS, "messages_per_minute": 10,
         "enabled": True, "require_identity": False,
         "budget": {**DEFAULT_BUDGET, "daily_tokens": 5000, "monthly_tokens": 0,
                    "monthly_cost": 2.5}, "retention_days": None, "office_hours": None},
        id="own-budget",
    ),
    pytest.param(
        {"name": "W" * 200, "allowed_origins": ["https://shop.example.com"],
         "settings": FULL_SETTINGS, "limits": {"messages_per_minute": 600}, "enabled": False,
         "require_identity": True, "retention_days": 36_500, "office_hours": FULL_HOURS},
        {"allowed_origins": ["https://shop.example.com"], "settings": FULL_SETTINGS,
         "messages_per_minute": 600, "enabled": False, "require_identity": True,
         "budget": DEFAULT_BUDGET, "retention_days": 36_500, "office_hours": FULL_HOURS},
        id="every-field-at-its-limit",
    ),
    pytest.param(
        {"allowed_origins": ["HTTPS://Shop.Example.com:443/", "https://shop.example.com",
                             "https://*.Example.org", "http://localhost:3000"],
         "settings": {"theme": "light", "accent_color": "#0a0B0c", "locale": "fr"},
         "limits": {"messages_per_minute": 1}},
        {"allowed_origins": ["https://shop.example.com", "https://*.example.org",
                             "http://localhost:3000"],
         "settings": {**DEFAULT_SETTINGS, "theme": "light", "accent_color": "#0a0B0c",
                      "locale": "fr"},
         "messages_per_minute": 1, "enabled": True, "require_identity": False,
         "budget": DEFAULT_BUDGET, "retention_days": None, "office_hours": None},
        id="origins-normalised-and-deduplicated",
    ),
    pytest.param(
        {"allowed_origins": [f"https://s{i}.example.com" for i in range(50)]},
        {"allowed_origins": [f"https://s{i}.example.com" for i in range(50)],
         "settings": DEFAULT_SETTINGS, "messages_per_minute": 10, "enabled": True,
         "require_identity": False, "budget": DEFAULT_BUDGET, "retention_days": None,
         "office_hours": None},
        id="fifty-origins",
    ),
]


@pytest.mark.parametrize(("extra", "definition"), VALID_WIDGETS)
def test_create_widget(world: World, extra: dict[str, Any], definition: dict[str, Any]) -> None:
    assistant = world.assistant(world.a)
    body = {"name": "Site", "assistant_id": assistant["id"], **extra}
    before = head(world.settings)
    response = world.client.post("/api/v1/widgets", json=body, headers=world.a.headers)
    assert response.status_code == 201, response.text
    assert response.headers["etag"] == '"1"'
    created = response.json()
    secret = created.pop("identity_secret")
    assert re.fullmatch(r"whs_[0-9a-f]{64}", secret)
    assert created["assistant_id"] == assistant["id"]
    assert created["allowed_origins"] == definition["allowed_origins"]
    assert created["settings"] == definition["settings"]
    assert created["limits"] == {"messages_per_minute": definition["messages_per_minute"]}
    assert created["enabled"] is definition["enabled"]
    assert created["require_identity"] is definition["require_identity"]
    assert created["budget"] == definition["budget"]
    assert created["retention_days"] == definition["retention_days"]
    assert created["office_hours"] == definition["office_hours"]

    appended = events(world.settings, before)
    assert [(r.stream, r.version, r.type) for r in appended] == [
        (f"widget-{created['id']}", 1, "widget.created")
    ]
    assert appended[0].payload == {
        "widget_id": created["id"], "owner_id": world.a.user_id,
        "definition": {"name": body["name"], "assistant_id": assistant["id"], **definition},
    }
    assert appended[0].metadata["actor"] == world.a.user_id
    assert secret not in appended[0].raw  # secrets never enter the log

    fetched = world.client.get(f"/api/v1/widgets/{created['id']}", headers=world.a.headers)
    assert fetched.status_code == 200
    assert fetched.json() == created  # and the secret is shown only once
    assert fetched.headers["etag"] == '"1"'
    listed = world.client.get("/api/v1/widgets", headers=world.a.headers).json()
    assert listed["data"] == [created]


INVALID_WIDGETS = [
    pytest.param({"name": MISSING}, "validation_error", "name", id="name-missing"),
    pytest.param({"name": ""}, "validation_error", "name", id="name-empty"),
    pytest.param({"name": "n" * 201}, "validation_error", "name", id="name-too-long"),
    pytest.param({"assistant_id": MISSING}, "validation_error", "assistant_id",
                 id="assistant-missing"),
    pytest.param({"assistant_id": ""}, "validation_error", "assistant_id", id="assistant-empty"),
    pytest.param({"assistant_id": "nope"}, "unknown_assistant", "assistant_id",
                 id="assistant-unknown"),
    pytest.param({"assistant_id": "<B>"}, "unknown_assistant", "assistant_id",
                 id="assistant-of-another-owner"),
    pytest.param({"assistant_id": "<deleted>"}, "unknown_assistant", "assistant_id",
                 id="assistant-deleted"),
    pytest.param({"allowed_origins": "https://shop.example.com"}, "validation_error",
                 "allowed_origins", id="origins-not-a-list"),
    pytest.param({"allowed_origins": ["shop.example.com"]}, "validation_error",
                 "allowed_origins.0", id="origin-without-scheme"),
    pytest.param({"allowed_origins": ["https://ok.example.com", "ftp://shop.example.com"]},
                 "validation_error", "allowed_origins.1", id="origin-other-scheme"),
    pytest.param({"allowed_origins": ["https://shop.example.com/page"]}, "validation_error",
                 "allowed_origins.0", id="origin-with-path"),
    pytest.param({"allowed_origins": ["https://user@shop.example.com"]}, "validation_error",
                 "allowed_origins.0", id="origin-with-user"),
    pytest.param({"allowed_origins": ["https://*.com"]}, "validation_error",
                 "allowed_origins.0", id="origin-wildcard-tld"),
    pytest.param({"allowed_origins": ["https://*"]}, "validation_error",
                 "allowed_origins.0", id="origin-wildcard-everything"),
    pytest.param({"allowed_origins": ["*"]}, "validation_error", "allowed_origins.0",
                 id="origin-star"),
    pytest.param({"allowed_origins": ["null"]}, "validation_error", "allowed_origins.0",
                 id="origin-null"),
    pytest.param({"allowed_origins": [7]}, "validation_error", "allowed_origins.0",
                 id="origin-not-text"),
    pytest.param({"allowed_origins": [f"https://s{i}.example.com" for i in range(51)]},
                 "validation_error", "allowed_origins", id="origins-too-many"),
    pytest.param({"settings": {"title": ""}}, "validation_error", "settings.title",
                 id="title-empty"),
    pytest.param({"settings": {"title": "t" * 101}}, "validation_error", "settings.title",
                 id="title-too-long"),
    pytest.param({"settings": {"greeting": "g" * 2001}}, "validation_error",
                 "settings.greeting", id="greeting-too-long"),
    pytest.param({"settings": {"placeholder": "p" * 201}}, "validation_error",
                 "settings.placeholder", id="placeholder-too-long"),
    pytest.param({"settings": {"theme": "blue"}}, "validation_error", "settings.theme",
                 id="theme-unknown"),
    pytest.param({"settings": {"position": "top-left"}}, "validation_error",
                 "settings.position", id="position-unknown"),
    pytest.param({"settings": {"accent_color": "red"}}, "validation_error",
                 "settings.accent_color", id="colour-by-name"),
    pytest.param({"settings": {"accent_color": "#12345"}}, "validation_error",
                 "settings.accent_color", id="colour-five-digits"),
    pytest.param({"settings": {"accent_color": "#12345g"}}, "validation_error",
                 "settings.accent_color", id="colour-not-hex"),
    pytest.param({"settings": {"locale": "english"}}, "validation_error", "settings.locale",
                 id="locale-word"),
    pytest.param({"settings": {"locale": "EN"}}, "validation_error", "settings.locale",
                 id="locale-upper"),
    pytest.param({"settings": {"locale": "en_US"}}, "validation_error", "settings.locale",
                 id="locale-underscore"),
    pytest.param({"settings": {"font": "Comic Sans"}}, "validation_error", "settings.font",
                 id="settings-unknown-field"),
    pytest.param({"settings": {"proactive_greeting": "h" * 301}}, "validation_error",
                 "settings.proactive_greeting", id="proactive-greeting-too-long"),
    pytest.param({"settings": {"proactive_delay_seconds": -1}}, "validation_error",
                 "settings.proactive_delay_seconds", id="proactive-delay-negative"),
    pytest.param({"settings": {"prechat_fields": ["phone"]}}, "validation_error",
                 "settings.prechat_fields.0", id="prechat-field-unknown"),
    pytest.param({"settings": "dark"}, "validation_error", "settings", id="settings-not-object"),
    pytest.param({"limits": {"messages_per_minute": 0}}, "validation_error",
                 "limits.messages_per_minute", id="rate-zero"),
    pytest.param({"limits": {"messages_per_minute": 601}}, "validation_error",
                 "limits.messages_per_minute", id="rate-too-high"),
    pytest.param({"limits": {"messages_per_minute": "many"}}, "validation_error",
                 "limits.messages_per_minute", id="rate-not-number"),
    pytest.param({"limits": {"per_hour": 5}}, "validation_error", "limits.per_hour",
                 id="limits-unknown-field"),
    pytest.param({"budget": {"daily_tokens": -1}}, "validation_error", "budget.daily_tokens",
                 id="budget-negative"),
    pytest.param({"budget": {"monthly_cost": "lots"}}, "validation_error",
                 "budget.monthly_cost", id="budget-not-number"),
    pytest.param({"budget": {"weekly_tokens": 5}}, "validation_error", "budget.weekly_tokens",
                 id="budget-unknown-field"),
    pytest.param({"enabled": "maybe"}, "validation_error", "enabled", id="enabled-not-bool"),
    pytest.param({"require_identity": [1]}, "validation_error", "require_identity",
                 id="require-identity-not-bool"),
    pytest.param({"retention_days": 0}, "validation_error", "retention_days",
                 id="retention-zero"),
    pytest.param({"retention_days": 36_501}, "validation_error", "retention_days",
                 id="retention-too-long"),
    pytest.param({"color": "#fff"}, "validation_error", "color", id="unknown-field"),
]


@pytest.mark.parametrize("method", ["POST", "PUT"])
@pytest.mark.parametrize(("patch", "code", "field"), INVALID_WIDGETS)
def test_widget_refuses_a_bad_field(
    world: World, method: str, patch: dict[str, Any], code: str, field: str
) -> None:
    assistant = world.assistant(world.a)
    base = {"name": "Site", "assistant_id": assistant["id"], "allowed_origins": [],
            "settings": {"theme": "auto"}}
    existing = world.widget(world.a, assistant["id"])
    existing.pop("identity_secret")
    if patch.get("assistant_id") == "<B>":
        patch = {"assistant_id": world.assistant(world.b)["id"]}
    elif patch.get("assistant_id") == "<deleted>":
        gone = world.assistant(world.a)
        assert world.client.delete(
            f"/api/v1/assistants/{gone['id']}", headers=world.a.headers
        ).status_code == 204
        patch = {"assistant_id": gone["id"]}
    path = "/api/v1/widgets" + (f"/{existing['id']}" if method == "PUT" else "")
    if method == "PUT":
        base = {**WIDGET_PUT, **base}
    before = head(world.settings)
    response = world.client.request(
        method, path, json=patched(base, patch), headers=world.a.headers
    )
    assert_problem(response, 422, code, field)
    assert events(world.settings, before) == []
    assert world.client.get(
        f"/api/v1/widgets/{existing['id']}", headers=world.a.headers
    ).json() == existing


def test_update_widget(world: World) -> None:
    first, second = world.assistant(world.a), world.assistant(world.a, name="Second")
    widget = world.widget(world.a, first["id"])
    path = f"/api/v1/widgets/{widget['id']}"
    before = head(world.settings)
    body = {**WIDGET_PUT, "name": "Renamed", "assistant_id": second["id"],
            "allowed_origins": ["https://*.example.com"], "settings": {"theme": "dark"}}
    response = world.client.put(path, json=body, headers={**world.a.headers, "If-Match": '"1"'})
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"2"'
    updated = response.json()
    assert "identity_secret" not in updated
    assert (updated["name"], updated["assistant_id"], updated["settings"]["theme"]) == (
        "Renamed", second["id"], "dark"
    )
    appended = events(world.settings, before)
    assert [(r.type, r.version) for r in appended] == [("widget.updated", 2)]
    assert appended[0].payload["definition"]["allowed_origins"] == ["https://*.example.com"]

    before = head(world.settings)
    same = world.client.put(path, json=body, headers=world.a.headers)
    assert same.status_code == 200
    assert same.headers["etag"] == '"2"'
    assert events(world.settings, before) == []


def test_delete_widget(world: World) -> None:
    widget = world.widget(world.a, world.assistant(world.a)["id"])
    path = f"/api/v1/widgets/{widget['id']}"
    before = head(world.settings)
    assert world.client.delete(path, headers=world.a.headers).status_code == 204
    assert [r.type for r in events(world.settings, before)] == ["widget.deleted"]
    before = head(world.settings)
    body = {**WIDGET_PUT, "name": "Back", "assistant_id": widget["assistant_id"]}
    for method, sub, json_body in [("GET", "", None), ("PUT", "", body), ("DELETE", "", None),
                                   ("GET", "/embed-code", None),
                                   ("POST", "/rotate-secret", None)]:
        response = world.client.request(method, path + sub, json=json_body,
                                        headers=world.a.headers)
        assert_problem(response, 404, "not_found")
    assert events(world.settings, before) == []


def test_rotate_secret(world: World) -> None:
    created = world.widget(world.a, world.assistant(world.a)["id"])
    path = f"/api/v1/widgets/{created['id']}"
    before = head(world.settings)
    rotated = world.client.post(
        path + "/rotate-secret", headers={**world.a.headers, "If-Match": '"1"'}
    )
    assert rotated.status_code == 200, rotated.text
    assert rotated.headers["etag"] == '"2"'
    new_secret = rotated.json()["identity_secret"]
    assert re.fullmatch(r"whs_[0-9a-f]{64}", new_secret)
    assert new_secret != created["identity_secret"]
    appended = events(world.settings, before)
    assert [(r.type, r.payload) for r in appended] == [
        ("widget.secret_rotated", {"widget_id": created["id"], "generation": 2})
    ]
    everything = "".join(r.raw for r in events(world.settings))
    assert new_secret not in everything and created["identity_secret"] not in everything
    fetched = world.client.get(path, headers=world.a.headers).json()
    assert "identity_secret" not in fetched
    again = world.client.post(path + "/rotate-secret", headers=world.a.headers).json()
    assert again["identity_secret"] not in (new_secret, created["identity_secret"])


# -- who may do what -----------------------------------------------------------------------------


def owner_requests(assistant_id: str, widget_id: str, other_assistant: str) -> list[
    tuple[str, str, dict[str, Any] | None]
]:
    """Every owner endpoint that names a resource, with a body that would be valid."""
    widget_body = {**WIDGET_PUT, "name": "Mine now", "assistant_id": other_assistant}
    return [
        ("GET", f"/api/v1/assistants/{assistant_id}", None),
        ("PUT", f"/api/v1/assistants/{assistant_id}", {**ASSISTANT_PUT, "name": "Mine now"}),
        ("PATCH", f"/api/v1/assistants/{assistant_id}", {"name": "Mine now"}),
        ("DELETE", f"/api/v1/assistants/{assistant_id}", None),
        ("GET", f"/api/v1/widgets/{widget_id}", None),
        ("PUT", f"/api/v1/widgets/{widget_id}", widget_body),
        ("PATCH", f"/api/v1/widgets/{widget_id}", {"assistant_id": other_assistant}),
        ("DELETE", f"/api/v1/widgets/{widget_id}", None),
        ("GET", f"/api/v1/widgets/{widget_id}/embed-code", None),
        ("POST", f"/api/v1/widgets/{widget_id}/rotate-secret", None),
    ]


@pytest.mark.parametrize("if_match", [None, '"1"', '"9"'])
def test_another_owners_resources_answer_404(world: World, if_match: str | None) -> None:
    theirs = world.assistant(world.b)
    their_widget = world.widget(world.b, theirs["id"])
    their_widget.pop("identity_secret")
    mine = world.assistant(world.a)
    headers = {**world.a.headers, **({"If-Match": if_match} if if_match else {})}
    before = head(world.settings)
    for method, path, body in owner_requests(theirs["id"], their_widget["id"], mine["id"]):
        response = world.client.request(method, path, json=body, headers=headers)
        # Not 403, and not 412 either: nothing tells A that the resource exists.
        assert_problem(response, 404, "not_found")
        assert response.json()["detail"] in ("no such assistant", "no such widget")
    assert events(world.settings, before) == []

    # A's lists and A's widgets know nothing of B's.
    for path in ("/api/v1/assistants", "/api/v1/widgets"):
        listed = world.client.get(path, headers=world.a.headers).json()["data"]
        assert theirs["id"] not in [x["id"] for x in listed]
        assert their_widget["id"] not in [x["id"] for x in listed]
    assert_problem(
        world.client.post(
            "/api/v1/widgets", json={"name": "x", "assistant_id": theirs["id"]},
            headers=world.a.headers,
        ),
        422, "unknown_assistant", "assistant_id",
    )
    assert events(world.settings, before) == []

    # B still has everything as it was.
    assert world.client.get(
        f"/api/v1/assistants/{theirs['id']}", headers=world.b.headers
    ).json() == theirs
    assert world.client.get(
        f"/api/v1/widgets/{their_widget['id']}", headers=world.b.headers
    ).json() == their_widget


def test_an_unknown_id_answers_404(world: World) -> None:
    mine = world.assistant(world.a)
    before = head(world.settings)
    for method, path, body in owner_requests("nope", "nope", mine["id"]):
        response = world.client.request(method, path, json=body, headers=world.a.headers)
        assert_problem(response, 404, "not_found")
    assert events(world.settings, before) == []


def every_owner_request(world: World) -> list[tuple[str, str, dict[str, Any] | None]]:
    assistant = world.assistant(world.a)
    widget = world.widget(world.a, assistant["id"])
    return [
        ("GET", "/api/v1/assistants", None),
        ("POST", "/api/v1/assistants", ASSISTANT),
        ("GET", "/api/v1/widgets", None),
        ("POST", "/api/v1/widgets", {"name": "x", "assistant_id": assistant["id"]}),
        *owner_requests(assistant["id"], widget["id"], assistant["id"]),
    ]


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "unauthorized"),
        ({"Authorization": "Basic abc"}, "unauthorized"),
        ({"Authorization": "Bearer not-a-token"}, "invalid_token"),
    ],
)
def test_owner_endpoints_need_a_token(
    world: World, headers: dict[str, str], code: str
) -> None:
    requests = every_owner_request(world)
    before = head(world.settings)
    for method, path, body in requests:
        response = world.client.request(method, path, json=body, headers=headers)
        assert_problem(response, 401, code)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert events(world.settings, before) == []


def test_unverified_owners_are_refused(world: World) -> None:
    requests = every_owner_request(world)
    unverified = register_owner(
        world.client, world.settings, "new@example.com", verify=False
    )
    before = head(world.settings)
    create_assistant = world.client.post(
        "/api/v1/assistants", json=ASSISTANT, headers=unverified.headers
    )
    assert_problem(create_assistant, 403, "email_not_verified")
    create_widget = world.client.post(
        "/api/v1/widgets", json={"name": "x", "assistant_id": "whatever"},
        headers=unverified.headers,
    )
    assert_problem(create_widget, 403, "email_not_verified")
    for method, path, body in requests:
        response = world.client.request(method, path, json=body, headers=unverified.headers)
        assert_problem(response, 403, "email_not_verified")
    assert events(world.settings, before) == []


def test_unverified_owners_may_work_when_verification_is_off(settings: Settings) -> None:
    relaxed = settings.model_copy(update={"require_verified_email": False})
    with TestClient(create_app(relaxed)) as client:
        owner = register_owner(client, relaxed, "new@example.com", verify=False)
        me = client.get("/api/v1/auth/me", headers=owner.headers).json()
        assert me["email_verified"] is False
        assistant = client.post("/api/v1/assistants", json=ASSISTANT, headers=owner.headers)
        assert assistant.status_code == 201, assistant.text
        widget = client.post(
            "/api/v1/widgets", json={"name": "x", "assistant_id": assistant.json()["id"]},
            headers=owner.headers,
        )
        assert widget.status_code == 201, widget.text
        assert [r.type for r in events(relaxed)][-2:] == ["assistant.created", "widget.created"]


# -- versions: ETag and If-Match ---------------------------------------------------------------


@dataclass(frozen=True)
class Guarded:
    kind: str
    method: str
    suffix: str
    body: dict[str, Any] | None
    ok: int


GUARDED = [
    pytest.param(Guarded("assistant", "PUT", "", {**ASSISTANT_PUT, "name": "New"}, 200),
                 id="put-assistant"),
    pytest.param(Guarded("assistant", "DELETE", "", None, 204), id="delete-assistant"),
    pytest.param(Guarded("widget", "PUT", "", {**WIDGET_PUT, "name": "New"}, 200),
                 id="put-widget"),
    pytest.param(Guarded("assistant", "PATCH", "", {"name": "New"}, 200), id="patch-assistant"),
    pytest.param(Guarded("widget", "PATCH", "", {"name": "New"}, 200), id="patch-widget"),
    pytest.param(Guarded("widget", "DELETE", "", None, 204), id="delete-widget"),
    pytest.param(Guarded("widget", "POST", "/rotate-secret", None, 200), id="rotate-secret"),
]


@pytest.mark.parametrize("guarded", GUARDED)
@pytest.mark.parametrize("stale", ['"1"', 'W/"1"', '"3"', "banana"])
def test_a_stale_if_match_changes_nothing(world: World, guarded: Guarded, stale: str) -> None:
    assistant = world.assistant(world.a, **ASSISTANT)
    if guarded.kind == "assistant":
        path = f"/api/v1/assistants/{assistant['id']}"
        world.client.put(path, json={**ASSISTANT_PUT, "name": "v2"}, headers=world.a.headers)
    else:
        widget = world.widget(world.a, assistant["id"])
        path = f"/api/v1/widgets/{widget['id']}"
        world.client.put(path, json={**WIDGET_PUT, "name": "v2", "assistant_id": assistant["id"]},
                         headers=world.a.headers)
    current = world.client.get(path, headers=world.a.headers)
    assert current.headers["etag"] == '"2"'
    body = guarded.body
    if body is not None and guarded.kind == "widget":
        body = {**body, "assistant_id": assistant["id"]}

    before = head(world.settings)
    refused = world.client.request(
        guarded.method, path + guarded.suffix, json=body,
        headers={**world.a.headers, "If-Match": stale},
    )
    problem = assert_problem(refused, 412, "version_conflict")
    if stale != "banana":
        assert problem["current_version"] == 2
    assert events(world.settings, before) == []
    assert world.client.get(path, headers=world.a.headers).json() == current.json()

    accepted = world.client.request(
        guarded.method, path + guarded.suffix, json=body,
        headers={**world.a.headers, "If-Match": '"2"'},
    )
    assert accepted.status_code == guarded.ok, accepted.text
    assert [r.version for r in events(world.settings, before)] == [3]
    if guarded.method != "DELETE":
        assert accepted.headers["etag"] == '"3"'


@pytest.mark.parametrize("given_tag", ['"1"', 'W/"1"', " \"1\" ", "*"])
def test_if_match_forms_that_match(world: World, given_tag: str) -> None:
    created = world.assistant(world.a, **ASSISTANT)
    response = world.client.put(
        f"/api/v1/assistants/{created['id']}", json={**ASSISTANT_PUT, "name": "New"},
        headers={**world.a.headers, "If-Match": given_tag},
    )
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"2"'


# -- PATCH (JSON Merge Patch) and PUT as a full replacement --------------------------------------


def test_put_refuses_a_body_that_leaves_fields_out(world: World) -> None:
    """PUT replaces the whole thing: leaving a field out is refused, never read as blank."""
    created = world.assistant(world.a, **ASSISTANT, instructions="Be brief.")
    path = f"/api/v1/assistants/{created['id']}"
    before = head(world.settings)
    refused = world.client.put(path, json={"name": "Helper2"}, headers=world.a.headers)
    body = assert_problem(refused, 422, "validation_error", "instructions")
    missing = {e["field"] for e in body["errors"] if e["reason"] == "missing"}
    assert missing == {"provider", "model", "instructions", "temperature", "top_p",
                       "max_output_tokens", "file_search", "tools", "handoff"}
    widget = world.widget(world.a, created["id"])
    refused = world.client.put(f"/api/v1/widgets/{widget['id']}",
                               json={"name": "x", "assistant_id": created["id"]},
                               headers=world.a.headers)
    body = assert_problem(refused, 422, "validation_error", "allowed_origins")
    assert {e["field"] for e in body["errors"]} == set(WIDGET_PUT)
    assert [r.type for r in events(world.settings, before)] == ["widget.created"]
    assert world.client.get(path, headers=world.a.headers).json()["instructions"] == "Be brief."


@pytest.mark.parametrize("media", ["application/merge-patch+json", "application/json",
                                   "application/merge-patch+json; charset=utf-8"])
def test_patch_changes_only_the_fields_given(world: World, media: str) -> None:
    created = world.assistant(world.a, **ASSISTANT, instructions="Be brief.", temperature=0.5)
    path = f"/api/v1/assistants/{created['id']}"
    before = head(world.settings)
    response = world.client.patch(path, content=json.dumps({"name": "Helper2"}),
                                  headers={**world.a.headers, "Content-Type": media})
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"2"'
    changed = response.json()
    assert changed == {**created, "name": "Helper2", "version": 2,
                       "updated_at": changed["updated_at"]}
    [row] = events(world.settings, before)
    assert (row.type, row.version) == ("assistant.updated", 2)
    assert row.payload["definition"]["name"] == "Helper2"
    assert row.payload["definition"]["instructions"] == "Be brief."
    assert row.metadata["actor"] == world.a.user_id

    # null puts a field back to its default; the same values again append nothing.
    reset = world.client.patch(path, json={"temperature": None, "instructions": None},
                               headers={**world.a.headers, "If-Match": '"2"'})
    assert reset.status_code == 200, reset.text
    assert (reset.json()["temperature"], reset.json()["instructions"]) == (None, "")
    before = head(world.settings)
    same = world.client.patch(path, json={"name": "Helper2"}, headers=world.a.headers)
    assert same.status_code == 200 and same.headers["etag"] == '"3"'
    assert events(world.settings, before) == []


def test_patch_merges_a_widgets_nested_settings(world: World) -> None:
    assistant = world.assistant(world.a)
    widget = world.widget(world.a, assistant["id"], allowed_origins=["https://shop.example"],
                          settings={"title": "Ask us", "theme": "dark"},
                          budget={"daily_tokens": 1000, "monthly_tokens": 9000})
    path = f"/api/v1/widgets/{widget['id']}"
    response = world.client.patch(
        path, json={"settings": {"position": "bottom-left"}, "budget": {"daily_tokens": None}},
        headers={**world.a.headers, "Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text
    got = response.json()
    assert got["settings"] == {**widget["settings"], "position": "bottom-left"}
    assert got["settings"]["title"] == "Ask us" and got["settings"]["theme"] == "dark"
    assert got["budget"] == {**widget["budget"], "daily_tokens": None}
    assert got["allowed_origins"] == ["https://shop.example"]
    assert "identity_secret" not in got


def test_patch_refusals_name_the_field_and_change_nothing(world: World) -> None:
    created = world.assistant(world.a, **ASSISTANT)
    path = f"/api/v1/assistants/{created['id']}"
    before = head(world.settings)
    body = assert_problem(world.client.patch(path, json={"name": None}, headers=world.a.headers),
                          422, "validation_error", "name")
    assert body["errors"][0]["reason"] == "missing"
    body = assert_problem(world.client.patch(path, json={"instrucions": "x"},
                                             headers=world.a.headers),
                          422, "validation_error", "instrucions")
    assert body["errors"][0]["did_you_mean"] == "instructions"
    assert_problem(world.client.patch(path, json={"temperature": 9}, headers=world.a.headers),
                   422, "validation_error", "temperature")
    json_patch = world.client.patch(
        path, content=b'[{"op": "replace", "path": "/name", "value": "x"}]',
        headers={**world.a.headers, "Content-Type": "application/json-patch+json"})
    assert_problem(json_patch, 415, "unsupported_media_type")
    assert_problem(world.client.patch(path, content=b"[1]", headers={
        **world.a.headers, "Content-Type": "application/merge-patch+json"}), 400, "invalid_json")
    assert events(world.settings, before) == []
    assert world.client.get(path, headers=world.a.headers).json() == created


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [  # RFC 7396, Appendix A
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_follows_rfc_7396(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


@pytest.mark.parametrize("guarded", GUARDED)
def test_with_require_if_match_a_change_without_it_is_428(
    settings: Settings, guarded: Guarded
) -> None:
    strict = settings.model_copy(update={"require_if_match": True})
    with world_of(strict) as world:
        assistant = world.assistant(world.a, **ASSISTANT)
        if guarded.kind == "assistant":
            path = f"/api/v1/assistants/{assistant['id']}"
        else:
            path = f"/api/v1/widgets/{world.widget(world.a, assistant['id'])['id']}"
        body = guarded.body
        if body is not None and guarded.kind == "widget":
            body = {**body, "assistant_id": assistant["id"]}
        before = head(strict)
        refused = world.client.request(guarded.method, path + guarded.suffix, json=body,
                                       headers=world.a.headers)
        problem = assert_problem(refused, 428, "precondition_required")
        assert "If-Match" in problem["detail"]
        assert events(strict, before) == []
        accepted = world.client.request(guarded.method, path + guarded.suffix, json=body,
                                        headers={**world.a.headers, "If-Match": '"1"'})
        assert accepted.status_code == guarded.ok, accepted.text
        assert [r.version for r in events(strict, before)] == [2]


# -- lists ---------------------------------------------------------------------------------------


def walk(client: TestClient, path: str, headers: dict[str, str], limit: int) -> list[list[str]]:
    pages: list[list[str]] = []
    after: str | None = None
    for _ in range(100):  # bounded: a list that never ends is a failure, not a hang
        query = {"limit": str(limit), **({"after": after} if after else {})}
        response = client.get(path, params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([item["id"] for item in body["data"]])
        after = body["next_cursor"]
        if after is None:
            return pages
        assert isinstance(after, str)
    raise AssertionError("the list did not end")


@pytest.mark.parametrize("kind", ["assistants", "widgets"])
def test_pagination_walks_every_item_once(world: World, kind: str) -> None:
    mine: list[str] = []
    base = world.assistant(world.a)
    theirs = world.assistant(world.b)
    for i in range(7):
        if kind == "assistants":
            mine.append(world.assistant(world.a, name=f"a{i}")["id"])
            world.assistant(world.b, name=f"b{i}")
        else:
            mine.append(world.widget(world.a, base["id"], name=f"w{i}")["id"])
            world.widget(world.b, theirs["id"], name=f"b{i}")
    if kind == "assistants":
        mine.insert(0, base["id"])
    path = f"/api/v1/{kind}"
    for limit in (1, 2, 3, 4, 8, 100):
        pages = walk(world.client, path, world.a.headers, limit)
        assert [x for page in pages for x in page] == mine, limit
        assert all(len(page) == limit for page in pages[:-1])
        assert 1 <= len(pages[-1]) <= limit
    default = world.client.get(path, headers=world.a.headers).json()
    assert [x["id"] for x in default["data"]] == mine
    assert default["next_cursor"] is None


def test_pagination_survives_deletes_between_pages(world: World) -> None:
    ids = [world.assistant(world.a, name=f"a{i}")["id"] for i in range(6)]
    first = world.client.get(
        "/api/v1/assistants", params={"limit": "2"}, headers=world.a.headers
    ).json()
    assert [x["id"] for x in first["data"]] == ids[:2]
    for gone in (ids[1], ids[2]):  # one already seen, one not yet
        world.client.delete(f"/api/v1/assistants/{gone}", headers=world.a.headers)
    rest = walk_from(world.client, "/api/v1/assistants", world.a.headers, first["next_cursor"])
    assert rest == ids[3:]


def walk_from(
    client: TestClient, path: str, headers: dict[str, str], after: str | None
) -> list[str]:
    seen: list[str] = []
    for _ in range(100):
        if after is None:
            return seen
        body = client.get(path, params={"limit": "2", "after": after}, headers=headers).json()
        seen += [x["id"] for x in body["data"]]
        after = body["next_cursor"]
    raise AssertionError("the list did not end")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"after": "-1"}, "after"),
        ({"after": "abc"}, "after"),
        ({"after": "1.5"}, "after"),
    ],
)
def test_pagination_refuses_bad_parameters(
    world: World, query: dict[str, str], field: str
) -> None:
    for path in ("/api/v1/assistants", "/api/v1/widgets"):
        response = world.client.get(path, params=query, headers=world.a.headers)
        assert_problem(response, 422, "validation_error", field)


# -- embed code ----------------------------------------------------------------------------------


class Scripts(HTMLParser):
    """The <script> elements of a snippet, as a browser's tokenizer would split them."""

    def __init__(self, snippet: str) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.other_tags: list[str] = []
        self._open: dict[str, str | None] | None = None
        self._text = ""
        self.feed(snippet)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self._open, self._text = dict(attrs), ""
        else:
            self.other_tags.append(tag)

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._open is not None:
            self.scripts.append((self._open, self._text))
            self._open = None
        elif tag != "script":
            self.other_tags.append("/" + tag)


def read_snippet(snippet: str) -> tuple[dict[str, Any], str]:
    """The ``LOACL_WIDGET`` object and the loader's ``src`` of an embed snippet."""
    parsed = Scripts(snippet)
    assert parsed.other_tags == []
    assert len(parsed.scripts) == 2, parsed.scripts
    (inline_attrs, inline), (loader_attrs, loader_body) = parsed.scripts
    assert inline_attrs == {}
    match = re.fullmatch(r"\s*window\.LOACL_WIDGET = (\{.*\});\s*", inline, re.DOTALL)
    assert match, inline
    config: dict[str, Any] = json.loads(match.group(1))
    assert loader_body == ""
    assert set(loader_attrs) == {"src", "async"}
    src = loader_attrs["src"]
    assert src is not None
    return config, src


def test_embed_code(world: World) -> None:
    assistant = world.assistant(world.a)
    widget = world.widget(world.a, assistant["id"], settings={"theme": "dark",
                                                            "position": "bottom-left"})
    before = head(world.settings)
    response = world.client.get(
        f"/api/v1/widgets/{widget['id']}/embed-code", headers=world.a.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    config, src = read_snippet(body["html"])
    assert config == {"widgetId": widget["id"], "position": "bottom-left", "theme": "dark"}
    assert src == body["script_url"] == "http://testserver/widget.js"
    assert body["widget_id"] == widget["id"]
    manifest = world.client.get("/widget.json").json()
    assert body["versioned_script_url"] == manifest["versioned_url"]
    assert body["integrity"] == manifest["integrity"]
    pinned = world.client.get(body["versioned_script_url"])
    assert pinned.status_code == 200
    assert "immutable" in pinned.headers["cache-control"]
    assert events(world.settings, before) == []


def test_a_422_names_each_bad_field_its_accepted_values_and_the_field_meant(
    world: World,
) -> None:
    before = head(world.settings)
    refused = world.client.post("/api/v1/assistants", headers=world.a.headers, json={
        "name": "Helper", "provider": "anthropic", "temprature": 1})
    body = assert_problem(refused, 422, "validation_error", "temprature")
    [typo] = body["errors"]
    assert typo["did_you_mean"] == "temperature" and "temperature" in typo["accepted"]
    assert typo["reason"] == "extra_forbidden"
    assert "did you mean `temperature`?" in body["detail"]
    unknown = world.client.post("/api/v1/assistants", headers=world.a.headers,
                                json={"name": "Helper", "provider": "anthropic"})
    body = assert_problem(unknown, 422, "validation_error", "provider")
    assert body["errors"][0]["accepted"] == ["openai", "chat_completions", "demo"]
    assistant = world.assistant(world.a)
    widget = world.client.post("/api/v1/widgets", headers=world.a.headers, json={
        "name": "Site", "assistant_id": assistant["id"],
        "settings": {"theme": "blue", "positon": "bottom-left", "zzz": 1}})
    body = assert_problem(widget, 422, "validation_error", "settings.theme")
    by_field = {e["field"]: e for e in body["errors"]}
    assert by_field["settings.theme"]["accepted"] == ["light", "dark", "auto"]
    assert by_field["settings.theme"]["reason"] == "literal_error"
    assert by_field["settings.positon"]["did_you_mean"] == "position"
    assert "did_you_mean" not in by_field["settings.zzz"]
    assert "theme" in by_field["settings.zzz"]["accepted"]
    assert "known fields: title" in by_field["settings.zzz"]["message"]
    assert len(events(world.settings, before)) == 1  # the assistant made in between


@pytest.mark.parametrize(
    ("query", "accept"),
    [("?format=html", None), ("?format=html", "application/json"), ("", "text/html"),
     ("", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
     ("", "application/json;q=0.5, text/*")],
)
def test_embed_code_as_html_is_the_snippet_itself(
    world: World, query: str, accept: str | None
) -> None:
    widget = world.widget(world.a, world.assistant(world.a)["id"])
    path = f"/api/v1/widgets/{widget['id']}/embed-code"
    as_json = world.client.get(path, headers=world.a.headers).json()
    headers = {**world.a.headers, **({"accept": accept} if accept else {})}
    response = world.client.get(path + query, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text == as_json["html"]
    assert "sandbox" in response.headers["content-security-policy"]
    config, src = read_snippet(response.text)
    assert config["widgetId"] == widget["id"] and src == "http://testserver/widget.js"


@pytest.mark.parametrize(
    ("query", "accept"),
    [("", None), ("", "*/*"), ("?format=json", "text/html"), ("", "text/html;q=0.5, */*"),
     ("", "application/json, text/html")],
)
def test_embed_code_stays_json_unless_html_is_asked_for(
    world: World, query: str, accept: str | None
) -> None:
    widget = world.widget(world.a, world.assistant(world.a)["id"])
    headers = {**world.a.headers, **({"accept": accept} if accept else {})}
    response = world.client.get(
        f"/api/v1/widgets/{widget['id']}/embed-code{query}", headers=headers
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["widget_id"] == widget["id"]


def test_embed_code_refuses_an_unknown_format_naming_the_accepted_ones(world: World) -> None:
    widget = world.widget(world.a, world.assistant(world.a)["id"])
    response = world.client.get(
        f"/api/v1/widgets/{widget['id']}/embed-code?format=xml", headers=world.a.headers
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "validation_error"
    assert problem["errors"] == [{"field": "format", "message": "not an accepted value",
                                  "accepted": ["json", "html"]}]


@pytest.mark.parametrize(
    ("public_url", "script_url"),
    [
        ("https://chat.example.com", "https://chat.example.com/widget.js"),
        ("https://chat.example.com/", "https://chat.example.com/widget.js"),
        ("https://example.com/loacl/", "https://example.com/loacl/widget.js"),
        ('https://x.example.com/a"><script>alert(1)</script>&b=<!--',
         'https://x.example.com/a"><script>alert(1)</script>&b=<!--/widget.js'),
    ],
)
def test_embed_code_uses_the_public_url(
    settings: Settings, public_url: str, script_url: str
) -> None:
    with world_of(settings.model_copy(update={"public_url": public_url})) as world:
        widget = world.widget(world.a, world.assistant(world.a)["id"])
        body = world.client.get(
            f"/api/v1/widgets/{widget['id']}/embed-code", headers=world.a.headers
        ).json()
        config, src = read_snippet(body["html"])
        assert src == body["script_url"] == script_url
        assert config["widgetId"] == widget["id"]


@pytest.mark.parametrize(
    "hostile",
    [
        "</script><script>alert(1)</script>",
        "</SCRIPT ><img src=x onerror=alert(1)>",
        "<!--<script>",
        "\u2028\u2029'\"\\",
        "]]>--></script",
    ],
)
def test_embed_code_values_cannot_leave_the_script(world: World, hostile: str) -> None:
    """The API refuses such values; the snippet must hold even if one got into the log."""
    widget = world.widget(world.a, world.assistant(world.a)["id"])
    stored = world.client.get(f"/api/v1/widgets/{widget['id']}", headers=world.a.headers).json()
    definition = WidgetUpdated(
        widget_id=widget["id"],
        definition=_definition(stored, WidgetSettings(theme=hostile, position=hostile)),
    )
    portal = world.client.portal
    assert portal is not None
    store = world.app.state.store
    portal.call(functools.partial(
        store.append, widget_stream(widget["id"]), [definition], expected_version=1
    ))
    body = world.client.get(
        f"/api/v1/widgets/{widget['id']}/embed-code", headers=world.a.headers
    ).json()
    config, src = read_snippet(body["html"])
    assert config == {"widgetId": widget["id"], "position": hostile, "theme": hostile}
    assert src == "http://testserver/widget.js"


def _definition(stored: dict[str, Any], settings: WidgetSettings) -> WidgetDefinition:
    return WidgetDefinition(
        name=stored["name"], assistant_id=stored["assistant_id"],
        allowed_origins=tuple(stored["allowed_origins"]), settings=settings,
    )


# -- model validation against a real OpenAI-compatible server ---------------------------------


MODELS = (ModelInfo("gpt-4o-mini"), ModelInfo("org/local-model"), ModelInfo("gpt-5-mini"))


@pytest.fixture
def provider() -> Iterator[tuple[OpenAITestServer, str]]:
    server = OpenAITestServer(api_key="test", models=MODELS)
    with running(server) as url:
        yield server, url + "/v1"


def closed_port_url() -> str:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now: connections are refused at once
    return f"http://127.0.0.1:{port}/v1"


def model_paths(server: OpenAITestServer) -> list[str]:
    return [r.path for r in server.requests_to("models")]


@pytest.mark.parametrize(
    ("provider_name", "keys"),
    [
        ("openai", {"openai_api_key": "test"}),
        ("chat_completions", {"chat_completions_api_key": "test"}),
    ],
)
@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("gpt-4o-mini", 201, None),
        ("org/local-model", 201, None),
        ("gpt-nonexistent", 422, "unknown_model"),
        ("..", 422, "unknown_model"),
        ("gpt-4o-mini/../gpt-5-mini", 422, "unknown_model"),
    ],
)
def test_models_are_checked_with_the_provider(
    settings: Settings, provider: tuple[OpenAITestServer, str], provider_name: str,
    keys: dict[str, str], model: str, status: int, code: str | None,
) -> None:
    server, url = provider
    base = "openai_base_url" if provider_name == "openai" else "chat_completions_base_url"
    configured = settings.model_copy(update={base: url, **keys})
    with world_of(configured) as world:
        before = head(configured)
        response = world.client.post(
            "/api/v1/assistants", json={"name": "H", "provider": provider_name, "model": model},
            headers=world.a.headers,
        )
        if code is None:
            assert response.status_code == status, response.text
            assert response.json()["model"] == model
            assert [r.type for r in events(configured, before)] == ["assistant.created"]
            seen = server.requests_to("models")
            assert seen, "the model was not checked"
            assert seen[-1].headers["authorization"] == "Bearer test"
        else:
            assert_problem(response, status, code, "model")
            assert events(configured, before) == []


def test_a_changed_model_is_checked_again(
    settings: Settings, provider: tuple[OpenAITestServer, str]
) -> None:
    server, url = provider
    configured = settings.model_copy(update={"openai_base_url": url, "openai_api_key": "test"})
    with world_of(configured) as world:
        body = {**ASSISTANT_PUT, "name": "H", "provider": "openai", "model": "gpt-4o-mini"}
        created = world.assistant(world.a, **body)
        path = f"/api/v1/assistants/{created['id']}"
        assert model_paths(server) == ["/v1/models/gpt-4o-mini"]

        renamed = world.client.put(path, json={**body, "name": "H2"}, headers=world.a.headers)
        assert renamed.status_code == 200, renamed.text
        assert model_paths(server) == ["/v1/models/gpt-4o-mini"]  # same model: not asked again

        before = head(configured)
        refused = world.client.put(path, json={**body, "model": "gpt-unknown"},
                                   headers=world.a.headers)
        assert_problem(refused, 422, "unknown_model", "model")
        assert events(configured, before) == []
        moved = world.client.put(path, json={**body, "model": "gpt-5-mini"},
                                 headers=world.a.headers)
        assert moved.status_code == 200, moved.text
        assert model_paths(server)[-1] == "/v1/models/gpt-5-mini"
        assert [r.type for r in events(configured, before)] == ["assistant.updated"]


def test_a_failing_provider_is_unavailable(
    settings: Settings, provider: tuple[OpenAITestServer, str]
) -> None:
    server, url = provider
    configured = settings.model_copy(update={"openai_base_url": url, "openai_api_key": "test"})
    with world_of(configured) as world:
        server.script(faults=[HttpError(status=500, should_retry=False)], endpoint="models")
        before = head(configured)
        response = world.client.post(
            "/api/v1/assistants", json={"name": "H", "provider": "openai", "model": "gpt-4o-mini"},
            headers=world.a.headers,
        )
        assert_problem(response, 503, "provider_unavailable")
        assert events(configured, before) == []
        assert model_paths(server) == ["/v1/models/gpt-4o-mini"]


def test_an_unreachable_provider_is_unavailable(settings: Settings) -> None:
    configured = settings.model_copy(
        update={"openai_base_url": closed_port_url(), "openai_api_key": "test"}
    )
    with world_of(configured) as world:
        before = head(configured)
        for provider_name in ("openai", "chat_completions"):
            response = world.client.post(
                "/api/v1/assistants",
                json={"name": "H", "provider": provider_name, "model": "gpt-4o-mini"},
                headers=world.a.headers,
            )
            assert_problem(response, 503, "provider_unavailable")
        assert events(configured, before) == []


def test_a_provider_the_server_is_not_configured_for_is_the_requests_fault(
    settings: Settings,
) -> None:
    """No key for openai, no URL for chat_completions: 422 naming the provider field and what
    the operator must set, for a new assistant and for a change; nothing is written."""
    configured = settings.model_copy(update={
        "openai_api_key": None, "openai_base_url": None, "chat_completions_base_url": None,
    })
    with world_of(configured) as world:
        made = world.client.post("/api/v1/assistants", json={"name": "H"},
                                 headers=world.a.headers)
        assert made.status_code == 201, made.text
        before = head(configured)
        for provider_name, missing in (("openai", "OPENAI_API_KEY"),
                                       ("chat_completions", "OPENAI_BASE_URL")):
            created = world.client.post(
                "/api/v1/assistants",
                json={"name": "H", "provider": provider_name, "model": "gpt-4o-mini"},
                headers=world.a.headers,
            )
            changed = world.client.patch(
                f"/api/v1/assistants/{made.json()['id']}",
                json={"provider": provider_name, "model": "gpt-4o-mini"},
                headers=world.a.headers,
            )
            for response in (created, changed):
                body = assert_problem(response, 422, "provider_not_configured")
                assert missing in body["detail"]
                (error,) = body["errors"]
                assert error["field"] == "provider"
                assert error["accepted"] == ["demo"]
        assert events(configured, before) == []


def test_validate_models_off_does_not_need_the_provider(settings: Settings) -> None:
    configured = settings.model_copy(update={
        "openai_base_url": closed_port_url(), "openai_api_key": "test",
        "validate_models": False,
    })
    with world_of(configured) as world:
        before = head(configured)
        for provider_name in ("openai", "chat_completions"):
            world.assistant(world.a, provider=provider_name, model="gpt-4o-mini")
        assert [r.type for r in events(configured, before)] == ["assistant.created"] * 2


def test_validate_models_off_skips_the_check(
    settings: Settings, provider: tuple[OpenAITestServer, str]
) -> None:
    server, url = provider
    configured = settings.model_copy(update={
        "openai_base_url": url, "openai_api_key": "test", "validate_models": False,
    })
    with world_of(configured) as world:
        for provider_name in ("openai", "chat_completions"):
            created = world.assistant(world.a, provider=provider_name, model="anything-goes")
            assert created["model"] == "anything-goes"
        # The demo provider's single model is a local fact, checked all the same.
        assert_problem(
            world.client.post("/api/v1/assistants", json={**ASSISTANT, "model": "x"},
                              headers=world.a.headers),
            422, "unknown_model", "model",
        )
    assert server.requests == []


def test_a_key_makes_openai_the_default_provider(
    settings: Settings, provider: tuple[OpenAITestServer, str]
) -> None:
    server, url = provider
    configured = settings.model_copy(update={"openai_base_url": url, "openai_api_key": "test"})
    with world_of(configured) as world:
        created = world.assistant(world.a, model="gpt-4o-mini")
        assert created["provider"] == "openai"
        assert_problem(
            world.client.post("/api/v1/assistants", json={"name": "H"}, headers=world.a.headers),
            422, "validation_error", "model",
        )
    assert model_paths(server) == ["/v1/models/gpt-4o-mini"]


# -- end to end on a real server ---------------------------------------------------------------


@pytest.mark.e2e
def test_concurrent_writers_with_one_if_match_one_wins(settings: Settings) -> None:
    relaxed = settings.model_copy(update={"require_verified_email": False})
    with serve(create_app(relaxed)) as url, httpx.Client(base_url=url, timeout=20) as http:
        owner = register_owner(http, relaxed, "race@example.com", verify=False)
        created = http.post("/api/v1/assistants", json=ASSISTANT, headers=owner.headers)
        path = f"/api/v1/assistants/{created.json()['id']}"
        before = head(relaxed)

        def put(i: int) -> int:
            with httpx.Client(base_url=url, timeout=20) as own:
                return own.put(
                    path, json={**ASSISTANT_PUT, "name": f"writer {i}"},
                    headers={**owner.headers, "If-Match": '"1"'},
                ).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = sorted(pool.map(put, range(8)))
        assert statuses == [200] + [412] * 7
        appended = events(relaxed, before)
        assert [(r.type, r.version) for r in appended] == [("assistant.updated", 2)]
        final = http.get(path, headers=owner.headers)
        assert final.headers["etag"] == '"2"'
        assert final.json()["name"] == appended[0].payload["definition"]["name"]


@pytest.mark.e2e
def test_owner_flow_over_real_http(settings: Settings) -> None:
    configured = settings.model_copy(update={"public_url": "https://chat.example.com"})
    with serve(create_app(configured)) as url, httpx.Client(base_url=url, timeout=20) as http:
        owner = register_owner(http, configured, "e2e@example.com")
        assistant = http.post("/api/v1/assistants", json=ASSISTANT, headers=owner.headers)
        assert assistant.status_code == 201, assistant.text
        widget = http.post(
            "/api/v1/widgets",
            json={"name": "Site", "assistant_id": assistant.json()["id"],
                  "allowed_origins": ["https://shop.example.com"]},
            headers=owner.headers,
        )
        assert widget.status_code == 201, widget.text
        embed = http.get(f"/api/v1/widgets/{widget.json()['id']}/embed-code",
                         headers=owner.headers)
        config, src = read_snippet(embed.json()["html"])
        assert config["widgetId"] == widget.json()["id"]
        assert src == "https://chat.example.com/widget.js"
