"""The API document and the server agree: Schemathesis against a real uvicorn on loopback.

Schemathesis reads ``/api/v1/openapi.json`` from the running server and sends what the document
allows and what it forbids: its examples, the coverage phase's boundary and negative values, then
generated cases. Every response is checked: no server error, a documented status code and content
type, a body that fits its schema (each success body has one, ``shapes.SCHEMAS``; errors fit
``Problem``), headers as documented, 401 without the token, 405 with a right ``Allow``, no
request the document forbids accepted, and a deleted resource gone.

Requests carry what a real caller has: the owner's access token on owner endpoints, the visitor
token and an allowed ``Origin`` on visitor endpoints, and, for half of the generated cases, the
id of a real assistant, widget or file instead of a made-up one, so that the handlers behind the
404 are reached: the visitor's widget on visitor endpoints (it belongs to another owner, since
Schemathesis also reuses ids it reads in responses), the run's owner's own objects elsewhere, a
separate one each for reading, changing and deleting. Logging out (and any operation that ends
sessions or the account) gets an owner of its own, so the run's owner stays logged in.

Not checked: ``positive_data_acceptance``, which asks that every request the document allows be
accepted. The document cannot say which tokens are real (a reset or verification token is a
string to it), nor rules across fields ("model is required for this provider"), so such a
request is rightly refused; the negative check, that nothing the document forbids is accepted,
is on.

Bounded and deterministic: a fixed seed, derandomized generation, and ``MAX_EXAMPLES`` generated
cases per operation. The operations are run in ``PARTS`` (by the first segment of their path),
each against a server of its own, so that the parts can run side by side; a separate test checks
that every documented operation is in exactly one part.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.engine import events

from loacl.http.app import create_app
from tests.live import serve
from tests.test_security import EMAIL, ORIGIN, PASSWORD, WAIT, secure_settings

pytestmark = pytest.mark.e2e

MAX_EXAMPLES = 25
SEED = 14
LEAVING = 80  # owners made to log out (or leave) once each

# The operations, by the path after /api/v1/, in parts run separately; with each, the events
# that only real ids let its operations cause.
PARTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "assistants": (r"^/api/v1/(assistants|assistant-preview|models)\b",
                   ("assistant.updated", "assistant.deleted")),
    "widgets": (r"^/api/v1/widgets\b",
                ("widget.updated", "widget.deleted", "widget.secret_rotated", "message.posted",
                 "assistant.completed")),
    "accounts": (r"^/api/v1/(auth|invites|workspaces)\b", ("session.revoked",)),
    "conversations": (r"^/api/v1/(conversations|usage|owner|webhooks)\b", ()),
}
# The document itself takes nothing to vary: Schemathesis reads it, it does not test it.
UNTESTED = {"GET /api/v1/openapi.json"}

# Schemathesis sends many bad logins and registrations from one address: the throttles
# (tests/test_security.py tests them) would answer 429 to nearly all of them.
OPEN_THROTTLES: dict[str, int] = {
    "register_per_ip_hour": 100_000, "reset_per_ip_hour": 100_000,
    "login_ip_failures": 10_000, "login_account_failures": 1_000, "login_account_alarm": 1_000,
}

CONFIG: dict[str, Any] = {
    "seed": SEED,
    "generation": {"deterministic": True, "max-examples": MAX_EXAMPLES},
    "continue-on-failure": True,
    # Every check but one (see the module's docstring).
    "checks": {
        "enabled": True, "positive_data_acceptance": {"enabled": False},
        # A body the document forbids may be refused before it is read: for its size (413), or
        # for a stale If-Match, which RFC 9110 (13.2.1) has checked before the content (412).
        "negative_data_rejection": {"expected-statuses": [
            400, 401, 403, 404, 405, 406, 409, 412, 413, 415, 422, 428, 429, "5xx"]},
    },
    # The document has no links between operations for a stateful run to follow.
    "phases": {"stateful": {"enabled": False}},
}

# What a visitor's page calls without a token.
VISITOR_PAGES = {"/api/v1/widgets/{id}/config", "/api/v1/widgets/{id}/sessions"}
# Operations that end the caller's session or account: each call gets a new owner.
SESSION_ENDING = {("POST", "/api/v1/auth/logout"), ("DELETE", "/api/v1/auth/me"),
                  # The run's owner's session ids are in GET /auth/sessions, which Schemathesis
                  # reads and reuses; a password change ends the other sessions.
                  ("DELETE", "/api/v1/auth/sessions/{id}"), ("POST", "/api/v1/auth/password")}


@dataclass
class World:
    """What a real owner and visitor have: tokens and the ids of real objects."""

    url: str
    http: httpx.Client
    database: Path
    owner: str = ""
    visitor: str = ""
    asking_visitor: str = ""
    ids: dict[str, str] = field(default_factory=dict)
    leaving: list[str] = field(default_factory=list)

    def bearer(self, token: str, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", **headers}

    def login(self, email: str) -> str:
        registered = self.http.post("/api/v1/auth/register",
                                    json={"email": email, "password": PASSWORD})
        assert registered.status_code == 202, registered.text
        login = self.http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        token: str = login.json()["access_token"]
        return token

    def leaving_owner(self) -> str:
        """A logged-in owner of its own, made before the run: making one during the run
        would write a mail, whose MIME boundary comes from the ``random`` module, while
        Hypothesis draws a case (which it rightly refuses)."""
        if len(self.leaving) > 1:
            return self.leaving.pop()
        return self.leaving[0]  # the last one, logged out by now: 401, as documented

    def made(self, token: str, path: str, body: dict[str, Any]) -> str:
        created = self.http.post(path, json=body, headers=self.bearer(token))
        assert created.status_code == 201, created.text
        made_id: str = created.json()["id"]
        return made_id

    def furnish(self) -> None:
        assistant = {"name": "Helper", "provider": "demo", "model": "demo"}
        # The visitor's widget belongs to an owner the run never acts as: Schemathesis reuses
        # ids it reads in responses, so the run's owner could otherwise change or delete it.
        site = self.login("site@example.com")
        self.ids["site_assistant"] = self.made(site, "/api/v1/assistants", assistant)
        self.ids["site_widget"] = self.made(site, "/api/v1/widgets", {
            "name": "Site", "assistant_id": self.ids["site_assistant"],
            "allowed_origins": [ORIGIN]})
        session = self.http.post(f"/api/v1/widgets/{self.ids['site_widget']}/sessions",
                                 json={}, headers={"Origin": ORIGIN})
        assert session.status_code == 201, session.text
        self.visitor = session.json()["visitor_token"]
        # Asking for a person stops the assistant answering: a visitor of its own asks, so
        # that the run's visitor keeps getting replies.
        asking = self.http.post(f"/api/v1/widgets/{self.ids['site_widget']}/sessions",
                                json={}, headers={"Origin": ORIGIN})
        assert asking.status_code == 201, asking.text
        self.asking_visitor = asking.json()["visitor_token"]
        uploaded = self.http.post(
            f"/api/v1/widgets/{self.ids['site_widget']}/files",
            files={"file": ("notes.txt", b"opening hours: 9 to 5", "text/plain")},
            headers=self.bearer(self.visitor, Origin=ORIGIN))
        assert uploaded.status_code == 201, uploaded.text
        self.ids["file"] = uploaded.json()["id"]
        # The run's owner: what it reads, what it changes ("put"), what it deletes ("delete"),
        # each its own, so that each kind of call keeps reaching its handler.
        self.owner = self.login(EMAIL)
        for use in ("get", "put", "delete"):
            self.ids[f"{use}_assistant"] = self.made(self.owner, "/api/v1/assistants",
                                                     assistant)
            self.ids[f"{use}_widget"] = self.made(self.owner, "/api/v1/widgets", {
                "name": use, "assistant_id": self.ids["get_assistant"],
                "allowed_origins": [ORIGIN]})
        self.leaving = [self.login(f"leaving{n}@example.com") for n in range(LEAVING)]

    def real_ids(self, method: str, path: str, visitor: bool) -> dict[str, str]:
        """Real values for the path's parameters (none for paths without any): the visitor's
        widget on visitor endpoints, else the run's owner's objects."""
        use = {"PUT": "put", "DELETE": "delete"}.get(method, "get")
        if path.endswith("/rotate-secret"):
            use = "put"
        if path.startswith("/api/v1/assistants/{id}"):
            return {"id": self.ids[f"{use}_assistant"]}
        if path.startswith("/api/v1/widgets/{id}"):
            real = {"id": self.ids["site_widget" if visitor else f"{use}_widget"]}
            if "{file_id}" in path:
                real["file_id"] = self.ids["file"]
            return real
        return {}

    def headers_for(self, method: str, path: str, security: list[dict[str, Any]]) -> dict[str, str]:
        schemes = {name for requirement in security for name in requirement}
        headers: dict[str, str] = {}
        if path.startswith("/api/v1/widgets/{id}/"):
            headers["Origin"] = ORIGIN  # visitor endpoints answer only an allowed page
        if (method, path) in SESSION_ENDING:
            return self.bearer(self.leaving_owner(), **headers)
        if "visitorToken" in schemes:
            asking = method == "POST" and path.endswith("/handoff")
            return self.bearer(self.asking_visitor if asking else self.visitor, **headers)
        if "ownerToken" in schemes:
            return self.bearer(self.owner, **headers)
        return headers


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    settings = secure_settings(tmp_path, **OPEN_THROTTLES)
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=WAIT) as http:
        made = World(url, http, settings.database_path)
        made.furnish()
        yield made


@dataclass
class Outcome:
    cases: Counter[str] = field(default_factory=Counter)  # per operation
    phases: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def run(world: World, part: str) -> Outcome:
    config = schemathesis.Config.from_dict(CONFIG)
    schema = schemathesis.openapi.from_url(
        f"{world.url}/api/v1/openapi.json", config=config).include(path_regex=PARTS[part][0])

    @schema.auth(refresh_interval=None)
    class Credentials:
        """The caller's headers, by the operation's security and path."""

        def get(self, case: schemathesis.Case[Any], context: Any) -> dict[str, str]:
            operation = case.operation
            return world.headers_for(operation.method.upper(), operation.path,
                                     operation.definition.raw.get("security") or [])

        def set(self, case: schemathesis.Case[Any], data: dict[str, str], context: Any) -> None:
            case.headers.update(data)

    @schema.hook
    def flatmap_path_parameters(context: schemathesis.HookContext,
                                path_parameters: dict[str, Any]) -> Any:
        operation = context.operation
        assert operation is not None
        schemes = {name for requirement in operation.definition.raw.get("security") or []
                   for name in requirement}
        visitor = "visitorToken" in schemes or operation.path in VISITOR_PAGES
        real = world.real_ids(operation.method.upper(), operation.path, visitor)
        if not real or not path_parameters:
            return st.just(path_parameters)
        return st.sampled_from([path_parameters, {**path_parameters, **real}])

    outcome = Outcome()
    seen: set[tuple[str, str, str]] = set()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            outcome.cases[recorder.label] += len(recorder.cases)
            outcome.phases[event.phase.name] += len(recorder.cases)
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    info = check.failure_info
                    if info is None or (recorder.label, check.name, info.failure.title) in seen:
                        continue
                    seen.add((recorder.label, check.name, info.failure.title))
                    interaction = recorder.interactions.get(case_id)
                    response = interaction.response if interaction else None
                    got = (f"{response.status_code} {(response.content or b'')[:300]!r}"
                           if response is not None else "no response")
                    outcome.failures.append(
                        f"{recorder.label}: {check.name}: {info.failure.title}\n"
                        f"  {info.failure.message[:500]}\n  {info.code_sample}\n  got {got}")
        elif isinstance(event, events.NonFatalError):
            outcome.failures.append(f"{event.label}: error: {event.value!r}")
        elif isinstance(event, events.FatalError):
            outcome.failures.append(f"fatal: {event.exception!r}")
    return outcome


def documented(world: World) -> set[str]:
    spec = world.http.get("/api/v1/openapi.json").json()
    return {f"{method.upper()} {path}" for path, methods in spec["paths"].items()
            for method in methods} - UNTESTED


def in_part(part: str, operations: set[str]) -> set[str]:
    return {op for op in operations if re.search(PARTS[part][0], op.split(" ", 1)[1])}


def test_every_documented_operation_is_in_exactly_one_part(world: World) -> None:
    for op in sorted(documented(world)):
        assert [part for part in PARTS if in_part(part, {op})] in ([p] for p in PARTS), op


@pytest.mark.long
@pytest.mark.parametrize("part", list(PARTS))
def test_the_server_does_what_its_document_says(world: World, part: str) -> None:
    started = time.monotonic()
    outcome = run(world, part)
    elapsed = time.monotonic() - started
    print(f"schemathesis {part}: {sum(outcome.cases.values())} cases over "
          f"{len(outcome.cases)} operations in {elapsed:.1f} s, {dict(outcome.phases)}")
    assert outcome.failures == [], "\n\n".join(outcome.failures)
    # Every operation of the part was called, each many times: the run cannot pass empty.
    assert set(outcome.cases) == in_part(part, documented(world))
    assert min(outcome.cases.values()) >= 5, outcome.cases
    # The real ids took the cases past the 404s: the log holds what only they could do.
    done = Counter(kind for kind, in sqlite3.connect(world.database).execute(
        "SELECT type FROM events"))
    for kind in PARTS[part][1]:
        assert done[kind] >= 1, (kind, done)
