"""Visitor endpoints (public config, sessions, CORS, preflight, signed identity): scenario tables
that assert the response, the CORS headers and the events appended."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from loacl.http.app import create_app
from loacl.settings import Settings
from tests.live import serve
from tests.test_owners import (
    ASSISTANT,
    Answer,
    Owner,
    assert_problem,
    events,
    head,
    register_owner,
)

ORIGINS = ["https://shop.example.com", "https://*.example.org", "http://localhost:3000"]
SHOP = "https://shop.example.com"


def sign(secret: str, user_id: str) -> str:
    """What the site's back end computes for a signed-in user."""
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()


@dataclass
class Site:
    client: TestClient
    settings: Settings
    owner: Owner
    assistant_id: str
    widget_id: str
    secret: str

    def widget(self, **fields: Any) -> dict[str, Any]:
        response = self.client.post(
            "/api/v1/widgets",
            json={"name": "Other", "assistant_id": self.assistant_id,
                  "allowed_origins": ORIGINS, **fields},
            headers=self.owner.headers,
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def edit(self, widget_id: str | None = None, **fields: Any) -> None:
        response = self.client.put(
            f"/api/v1/widgets/{widget_id or self.widget_id}",
            json={"name": "Shop", "assistant_id": self.assistant_id,
                  "allowed_origins": ORIGINS, "settings": {}, "limits": {}, "budget": {},
                  "enabled": True, "require_identity": False, "retention_days": None,
                  "office_hours": None,
                  **fields},
            headers=self.owner.headers,
        )
        assert response.status_code == 200, response.text

    def config(self, origin: str | None, widget_id: str | None = None) -> Answer:
        headers = {"Origin": origin} if origin is not None else {}
        return self.client.get(
            f"/api/v1/widgets/{widget_id or self.widget_id}/config", headers=headers
        )

    def session(
        self, origin: str | None = SHOP, widget_id: str | None = None, **body: Any
    ) -> Answer:
        headers = {"Origin": origin} if origin is not None else {}
        return self.client.post(
            f"/api/v1/widgets/{widget_id or self.widget_id}/sessions", json=body,
            headers=headers,
        )

    def started(self, response: Answer) -> dict[str, Any]:
        assert response.status_code == 201, response.text
        assert response.headers["cache-control"] == "no-store"
        body: dict[str, Any] = response.json()
        return body


@contextmanager
def site_of(settings: Settings, **widget_fields: Any) -> Iterator[Site]:
    relaxed = settings.model_copy(update={"require_verified_email": False})
    with TestClient(create_app(relaxed)) as client:
        owner = register_owner(client, relaxed, "owner@example.com", verify=False)
        assistant = client.post("/api/v1/assistants", json=ASSISTANT, headers=owner.headers)
        assert assistant.status_code == 201, assistant.text
        widget = client.post(
            "/api/v1/widgets",
            json={"name": "Shop", "assistant_id": assistant.json()["id"],
                  "allowed_origins": ORIGINS, **widget_fields},
            headers=owner.headers,
        )
        assert widget.status_code == 201, widget.text
        yield Site(client, relaxed, owner, assistant.json()["id"], widget.json()["id"],
                   widget.json()["identity_secret"])


@pytest.fixture
def site(settings: Settings) -> Iterator[Site]:
    with site_of(settings) as built:
        yield built


def assert_cors(response: Answer, origin: str | None) -> None:
    """CORS names ``origin`` (or nobody, when None) and no other."""
    assert "Origin" in response.headers.get("vary", "")
    assert response.headers.get("access-control-allow-origin") == origin
    assert "access-control-allow-credentials" not in response.headers


# -- origins ------------------------------------------------------------------------------------

# (Origin header, allowed, what Access-Control-Allow-Origin may name)
ORIGIN_CASES = [
    pytest.param(SHOP, True, SHOP, id="exact"),
    pytest.param("http://localhost:3000", True, "http://localhost:3000", id="exact-with-port"),
    pytest.param("https://a.example.org", True, "https://a.example.org", id="wildcard-sub"),
    pytest.param("https://deep.a.example.org", True, "https://deep.a.example.org",
                 id="wildcard-deep-sub"),
    pytest.param("https://example.org", False, "https://example.org", id="wildcard-apex"),
    pytest.param("http://a.example.org", False, "http://a.example.org",
                 id="wildcard-other-scheme"),
    pytest.param("https://evilexample.org", False, "https://evilexample.org",
                 id="suffix-lookalike"),
    pytest.param("https://a.example.org.evil.net", False, "https://a.example.org.evil.net",
                 id="prefix-lookalike"),
    pytest.param("http://shop.example.com", False, "http://shop.example.com",
                 id="exact-other-scheme"),
    pytest.param("https://shop.example.com:8443", False, "https://shop.example.com:8443",
                 id="exact-other-port"),
    pytest.param("https://www.shop.example.com", False, "https://www.shop.example.com",
                 id="exact-is-not-wildcard"),
    pytest.param("http://localhost:3001", False, "http://localhost:3001", id="other-port"),
    pytest.param(None, False, None, id="missing"),
    pytest.param("null", False, None, id="null"),
    pytest.param("*", False, None, id="star"),
    pytest.param("not an origin", False, None, id="junk"),
    pytest.param("https://*.example.org", False, None, id="a-pattern"),
]


@pytest.mark.parametrize(("origin", "allowed", "named"), ORIGIN_CASES)
def test_config_answers_allowed_origins_only(
    site: Site, origin: str | None, allowed: bool, named: str | None
) -> None:
    before = head(site.settings)
    response = site.config(origin)
    assert_cors(response, named)
    if allowed:
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"widget_id", "settings", "require_identity", "uploads", "limits",
                             "handoff", "availability"}
        assert body["handoff"] is False
        assert body["availability"] == {"office_hours": False, "open": True,
                                        "next_opening": None, "timezone": None}
        assert body["widget_id"] == site.widget_id
        assert body["settings"]["theme"] == "auto"
        assert body["require_identity"] is False
        assert body["limits"] == {"messages_per_minute": 10, "max_message_chars": 4000}
        assert body["uploads"]["max_size"] == site.settings.max_upload_size
        assert site.secret not in response.text
        assert "ETag" in response.headers["access-control-expose-headers"]
    else:
        problem = assert_problem(response, 403, "origin_not_allowed")
        assert set(problem) >= {"code", "detail"}
        assert site.widget_id not in response.text
    assert events(site.settings, before) == []


@pytest.mark.parametrize(("origin", "allowed", "named"), ORIGIN_CASES)
def test_sessions_start_for_allowed_origins_only(
    site: Site, origin: str | None, allowed: bool, named: str | None
) -> None:
    before = head(site.settings)
    response = site.session(origin)
    assert_cors(response, named)
    if not allowed:
        assert_problem(response, 403, "origin_not_allowed")
        assert events(site.settings, before) == []
        return
    body = site.started(response)
    assert body["token_type"] == "bearer"
    assert body["user_id"] is None
    assert body["expires_in"] == 30 * 24 * 3600
    assert body["visitor_token"]
    appended = events(site.settings, before)
    assert [(r.stream, r.version, r.type) for r in appended] == [
        (f"conversation-{body['conversation_id']}", 1, "conversation.started")
    ]
    assert appended[0].payload == {
        "conversation_id": body["conversation_id"], "widget_id": site.widget_id,
        "visitor_id": body["visitor_id"], "external_user_id": None,
    }
    assert body["visitor_token"] not in appended[0].raw


def test_a_foreign_origin_learns_nothing_from_the_body(site: Site) -> None:
    before = head(site.settings)
    refused = site.session("https://evil.example.net", user_id="", surprise=True)
    assert_problem(refused, 403, "origin_not_allowed")
    allowed = site.session(SHOP, user_id="", surprise=True)
    assert_problem(allowed, 422, "validation_error", "user_id")
    assert "surprise" in [e["field"] for e in allowed.json()["errors"]]
    assert events(site.settings, before) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": ""}, "user_id"),
        ({"user_id": "u" * 257, "user_hash": "00"}, "user_id"),
        ({"user_id": "u", "user_hash": "0" * 129}, "user_hash"),
        ({"visitor_token": "t" * 4097}, "visitor_token"),
        ({"visitor_token": 5}, "visitor_token"),
        ({"name": "Ann"}, "name"),
    ],
)
def test_session_bodies_are_validated(site: Site, body: dict[str, Any], field: str) -> None:
    before = head(site.settings)
    response = site.session(SHOP, **body)
    assert_problem(response, 422, "validation_error", field)
    assert_cors(response, SHOP)
    assert events(site.settings, before) == []


# -- preflight ----------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["config", "sessions"])
@pytest.mark.parametrize(("origin", "allowed", "named"), ORIGIN_CASES)
def test_preflight(
    site: Site, endpoint: str, origin: str | None, allowed: bool, named: str | None
) -> None:
    headers = {"Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "content-type, authorization"}
    if origin is not None:
        headers["Origin"] = origin
    before = head(site.settings)
    response = site.client.options(
        f"/api/v1/widgets/{site.widget_id}/{endpoint}", headers=headers
    )
    assert response.status_code == 204
    assert "Origin" in response.headers["vary"]
    if allowed:
        assert response.headers["access-control-allow-origin"] == origin
        methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
        assert {"GET", "POST"} <= methods
        allowed_headers = response.headers["access-control-allow-headers"].lower()
        assert "content-type" in allowed_headers and "authorization" in allowed_headers
        assert int(response.headers["access-control-max-age"]) > 0
    else:
        assert "access-control-allow-origin" not in response.headers
        assert "access-control-allow-methods" not in response.headers
    assert events(site.settings, before) == []


def test_preflight_for_a_missing_or_disabled_widget_grants_nothing(site: Site) -> None:
    headers = {"Origin": SHOP, "Access-Control-Request-Method": "POST"}
    unknown = site.client.options("/api/v1/widgets/nope/sessions", headers=headers)
    assert unknown.status_code == 204
    assert "access-control-allow-origin" not in unknown.headers
    site.edit(enabled=False)
    disabled = site.client.options(f"/api/v1/widgets/{site.widget_id}/sessions",
                                   headers=headers)
    assert "access-control-allow-origin" not in disabled.headers


# -- disabled and deleted widgets ---------------------------------------------------------------


def assert_gone(site: Site, widget_id: str) -> None:
    before = head(site.settings)
    for response in (site.config(SHOP, widget_id), site.session(SHOP, widget_id),
                     site.session(SHOP, widget_id, visitor_token="x", surprise=1)):
        assert_problem(response, 404, "widget_not_found")
        assert_cors(response, SHOP)
    assert events(site.settings, before) == []


def test_a_disabled_widget_is_not_found(site: Site) -> None:
    started = site.started(site.session(SHOP))
    site.edit(enabled=False)
    assert_gone(site, site.widget_id)
    # A visitor who already has a token is turned away too.
    response = site.session(SHOP, visitor_token=started["visitor_token"])
    assert_problem(response, 404, "widget_not_found")
    site.edit(enabled=True)
    assert site.config(SHOP).status_code == 200
    again = site.started(site.session(SHOP, visitor_token=started["visitor_token"]))
    assert again["conversation_id"] == started["conversation_id"]


def test_a_deleted_widget_is_not_found(site: Site) -> None:
    started = site.started(site.session(SHOP))
    deleted = site.client.delete(f"/api/v1/widgets/{site.widget_id}",
                                 headers=site.owner.headers)
    assert deleted.status_code == 204
    assert_gone(site, site.widget_id)
    response = site.session(SHOP, visitor_token=started["visitor_token"])
    assert_problem(response, 404, "widget_not_found")


def test_an_unknown_widget_is_not_found(site: Site) -> None:
    assert_gone(site, "0" * 32)


# -- signed identity ----------------------------------------------------------------------------


def test_a_signed_user_has_one_conversation_on_every_device(site: Site) -> None:
    before = head(site.settings)
    phone = site.started(site.session(SHOP, user_id="user-42",
                                      user_hash=sign(site.secret, "user-42")))
    laptop = site.started(site.session("https://a.example.org", user_id="user-42",
                                       user_hash=sign(site.secret, "user-42").upper()))
    assert phone["user_id"] == laptop["user_id"] == "user-42"
    assert phone["conversation_id"] == laptop["conversation_id"]
    assert phone["visitor_id"] == laptop["visitor_id"]
    appended = events(site.settings, before)
    assert [r.type for r in appended] == ["conversation.started"]
    assert appended[0].payload["external_user_id"] == "user-42"

    # Another user is another conversation.
    other = site.started(site.session(SHOP, user_id="user-43",
                                      user_hash=sign(site.secret, "user-43")))
    assert other["conversation_id"] != phone["conversation_id"]
    assert len(events(site.settings, before)) == 2


def forged_identities(secret: str) -> list[dict[str, Any]]:
    good = sign(secret, "user-42")
    return [
        {"user_id": "user-42", "user_hash": sign("whs_" + "0" * 64, "user-42")},
        {"user_id": "user-42", "user_hash": sign(secret, "user-43")},
        {"user_id": "user-42", "user_hash": good[:-1]},
        {"user_id": "user-42", "user_hash": good[:-1] + ("0" if good[-1] != "0" else "1")},
        {"user_id": "user-42", "user_hash": ""},
        {"user_id": "user-42"},
        {"user_hash": good},
        {"user_id": "user-42", "user_hash": hashlib.sha256(b"user-42").hexdigest()},
        {"user_id": "user-42", "user_hash": hmac.new(
            b"user-42", secret.encode(), hashlib.sha256).hexdigest()},
    ]


def test_forged_identities_are_refused(site: Site) -> None:
    real = site.started(site.session(SHOP, user_id="user-42",
                                     user_hash=sign(site.secret, "user-42")))
    before = head(site.settings)
    for body in forged_identities(site.secret):
        response = site.session(SHOP, **body)
        assert_problem(response, 401, "invalid_identity")
        assert_cors(response, SHOP)
        assert real["conversation_id"] not in response.text
    assert events(site.settings, before) == []


def test_one_widgets_secret_does_not_sign_for_another(site: Site) -> None:
    other = site.widget()
    before = head(site.settings)
    response = site.session(SHOP, other["id"], user_id="user-42",
                            user_hash=sign(site.secret, "user-42"))
    assert_problem(response, 401, "invalid_identity")
    assert events(site.settings, before) == []
    mine = site.started(site.session(SHOP, user_id="user-42",
                                     user_hash=sign(site.secret, "user-42")))
    theirs = site.started(site.session(SHOP, other["id"], user_id="user-42",
                                       user_hash=sign(other["identity_secret"], "user-42")))
    assert mine["conversation_id"] != theirs["conversation_id"]


def test_a_rotated_secret_stops_old_hashes(site: Site) -> None:
    old_hash = sign(site.secret, "user-42")
    first = site.started(site.session(SHOP, user_id="user-42", user_hash=old_hash))
    rotated = site.client.post(f"/api/v1/widgets/{site.widget_id}/rotate-secret",
                               headers=site.owner.headers)
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["identity_secret"]
    assert new_secret != site.secret

    before = head(site.settings)
    assert_problem(site.session(SHOP, user_id="user-42", user_hash=old_hash), 401,
                   "invalid_identity")
    assert events(site.settings, before) == []
    again = site.started(site.session(SHOP, user_id="user-42",
                                      user_hash=sign(new_secret, "user-42")))
    assert again["conversation_id"] == first["conversation_id"]  # the user keeps the thread
    assert events(site.settings, before) == []


def test_require_identity(settings: Settings) -> None:
    with site_of(settings, require_identity=True) as site:
        config = site.config(SHOP)
        assert config.json()["require_identity"] is True
        before = head(site.settings)
        assert_problem(site.session(SHOP), 403, "identity_required")
        assert_problem(site.session(SHOP, visitor_token="anything"), 403, "identity_required")
        assert_problem(site.session(SHOP, user_id="u1"), 401, "invalid_identity")
        assert events(site.settings, before) == []
        signed = site.started(site.session(SHOP, user_id="u1",
                                           user_hash=sign(site.secret, "u1")))
        assert signed["user_id"] == "u1"
        # A token of a signed-in user does not stand in for the signature.
        assert_problem(site.session(SHOP, visitor_token=signed["visitor_token"]), 403,
                       "identity_required")


# -- visitor tokens -----------------------------------------------------------------------------


def test_a_visitor_token_returns_to_its_conversation(site: Site) -> None:
    first = site.started(site.session(SHOP))
    before = head(site.settings)
    again = site.started(site.session("https://a.example.org",
                                      visitor_token=first["visitor_token"]))
    assert (again["conversation_id"], again["visitor_id"]) == (
        first["conversation_id"], first["visitor_id"]
    )
    assert events(site.settings, before) == []


def test_tokens_that_do_not_fit_start_afresh(site: Site) -> None:
    other = site.widget()
    elsewhere = site.started(site.session(SHOP, other["id"]))
    signed = site.started(site.session(SHOP, user_id="u1", user_hash=sign(site.secret, "u1")))
    seen = {elsewhere["conversation_id"], signed["conversation_id"]}
    for token in (elsewhere["visitor_token"], signed["visitor_token"], "garbage", "a.b.c"):
        before = head(site.settings)
        fresh = site.started(site.session(SHOP, visitor_token=token))
        assert fresh["conversation_id"] not in seen
        assert fresh["user_id"] is None
        seen.add(fresh["conversation_id"])
        assert [r.type for r in events(site.settings, before)] == ["conversation.started"]


# -- end to end on a real server ---------------------------------------------------------------


@pytest.mark.e2e
def test_one_user_on_many_devices_at_once_gets_one_conversation(settings: Settings) -> None:
    relaxed = settings.model_copy(update={"require_verified_email": False})
    with serve(create_app(relaxed)) as url, httpx.Client(base_url=url, timeout=20) as http:
        owner = register_owner(http, relaxed, "many@example.com", verify=False)
        assistant = http.post("/api/v1/assistants", json=ASSISTANT, headers=owner.headers)
        widget = http.post(
            "/api/v1/widgets",
            json={"name": "Shop", "assistant_id": assistant.json()["id"],
                  "allowed_origins": [SHOP]},
            headers=owner.headers,
        ).json()
        body = {"user_id": "user-7", "user_hash": sign(widget["identity_secret"], "user-7")}
        before = head(relaxed)

        def start(_: int) -> str:
            with httpx.Client(base_url=url, timeout=20) as device:
                response = device.post(f"/api/v1/widgets/{widget['id']}/sessions", json=body,
                                       headers={"Origin": SHOP})
                assert response.status_code == 201, response.text
                conversation: str = response.json()["conversation_id"]
                return conversation

        with ThreadPoolExecutor(8) as pool:
            conversations = set(pool.map(start, range(8)))
        assert len(conversations) == 1
        appended = events(relaxed, before)
        assert [r.type for r in appended] == ["conversation.started"]
        assert appended[0].payload["conversation_id"] in conversations


@pytest.mark.e2e
def test_visitor_flow_over_real_http(settings: Settings) -> None:
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=20) as http:
        owner = register_owner(http, settings, "e2e@example.com")
        assistant = http.post("/api/v1/assistants", json=ASSISTANT, headers=owner.headers)
        assert assistant.status_code == 201, assistant.text
        widget = http.post(
            "/api/v1/widgets",
            json={"name": "Shop", "assistant_id": assistant.json()["id"],
                  "allowed_origins": ["https://*.example.org", SHOP]},
            headers=owner.headers,
        )
        assert widget.status_code == 201, widget.text
        widget_id = widget.json()["id"]
        origin = "https://blog.example.org"

        preflight = http.options(
            f"/api/v1/widgets/{widget_id}/sessions",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == origin

        config = http.get(f"/api/v1/widgets/{widget_id}/config", headers={"Origin": origin})
        assert config.status_code == 200, config.text
        assert_cors(config, origin)
        assert config.json()["widget_id"] == widget_id

        before = head(settings)
        session = http.post(f"/api/v1/widgets/{widget_id}/sessions", json={},
                            headers={"Origin": origin})
        assert session.status_code == 201, session.text
        assert_cors(session, origin)
        again = http.post(
            f"/api/v1/widgets/{widget_id}/sessions",
            json={"visitor_token": session.json()["visitor_token"]}, headers={"Origin": SHOP},
        )
        assert again.json()["conversation_id"] == session.json()["conversation_id"]
        assert [r.type for r in events(settings, before)] == ["conversation.started"]

        refused = http.get(f"/api/v1/widgets/{widget_id}/config",
                           headers={"Origin": "https://example.org"})
        assert_problem(refused, 403, "origin_not_allowed")


@pytest.mark.parametrize("path", ["embed-code", "rotate-secret", "conversations", ""])
def test_no_preflight_for_owner_paths(site: Site, path: str) -> None:
    """An embedding page may call the visitor endpoints, never the owner ones."""
    response = site.client.options(
        f"/api/v1/widgets/{site.widget_id}/{path}",
        headers={"Origin": SHOP, "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers


def _messages(site: Site, token: str) -> Answer:
    return site.client.get(
        f"/api/v1/widgets/{site.widget_id}/messages",
        headers={"Origin": SHOP, "Authorization": f"Bearer {token}"},
    )


def test_requiring_identity_ends_anonymous_tokens(site: Site) -> None:
    anonymous = site.started(site.session())["visitor_token"]
    assert _messages(site, anonymous).status_code == 200
    site.edit(require_identity=True)
    refused = _messages(site, anonymous)
    assert refused.status_code == 401
    assert refused.json()["code"] == "invalid_token"


def test_rotating_the_secret_ends_signed_in_tokens(site: Site) -> None:
    signed = site.started(site.session(user_id="u-7", user_hash=sign(site.secret, "u-7")))
    assert _messages(site, signed["visitor_token"]).status_code == 200
    rotated = site.client.post(f"/api/v1/widgets/{site.widget_id}/rotate-secret",
                               headers=site.owner.headers)
    assert rotated.status_code == 200, rotated.text
    assert _messages(site, signed["visitor_token"]).status_code == 401
    again = site.started(site.session(
        user_id="u-7", user_hash=sign(rotated.json()["identity_secret"], "u-7")
    ))
    assert again["conversation_id"] == signed["conversation_id"]
    assert _messages(site, again["visitor_token"]).status_code == 200
