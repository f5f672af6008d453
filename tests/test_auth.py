"""Owner accounts over HTTP: scenario tables that assert the response and the events appended."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import OctKey
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from loacl.domain.events import Metadata
from loacl.http.app import create_app
from loacl.http.auth import current_owner
from loacl.services.accounts import normalize_email
from loacl.services.mail import Mailer
from loacl.services.passwords import Passwords
from loacl.settings import Settings
from tests.sealed import opened_rows

if TYPE_CHECKING:
    import httpx2  # what starlette's TestClient speaks

SECRET = "test-jwt-secret-" + "k" * 40
OTHER_SECRET = "another-jwt-secret-" + "q" * 40
EMAIL = "owner@example.com"
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a brand new passphrase"


class Clock:
    """The app's clock, moved by the tests."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


class Mailbox:
    """A mail transport that keeps what it is given (as an SMTP server would)."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self._changed = threading.Condition()

    def deliver(self, message: EmailMessage) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"expected {count} mails, got {len(self.messages)}")
            return list(self.messages)

    def token(self, subject_word: str, to: str = EMAIL) -> str:
        """The token of the newest mail to ``to`` whose subject has ``subject_word``."""
        for message in reversed(self.wait(1)):
            if subject_word in str(message["Subject"]) and message["To"] == to:
                return mail_token(message.get_content())
        raise AssertionError(f"no {subject_word!r} mail to {to}")


def mail_token(body: str) -> str:
    match = re.search(r"Your token:\s+(\S+)", body)
    assert match, body
    return match.group(1)


def auth_settings(settings: Settings, **update: Any) -> Settings:
    return settings.model_copy(update={"jwt_secret_key": SECRET, **update})


def make_client(
    settings: Settings, clock: Clock | None = None, mailbox: Mailbox | None = None
) -> TestClient:
    mailer = Mailer(
        mailbox or Mailbox(), settings.mail_from, settings.data_dir / "outbox",
        attempts=1, backoff=0,
    )
    app = create_app(settings, clock=clock or Clock(), mailer=mailer)
    return TestClient(app)


def event_rows(settings: Settings, after: int = 0) -> list[tuple[str, str, str]]:
    """(type, payload, metadata) of each event after ``after``, sealed fields opened."""
    rows = opened_rows(
        settings,
        "SELECT type, schema_version, payload, metadata FROM events WHERE seq > ? ORDER BY seq",
        (after,),
    )
    return [(kind, payload, metadata) for kind, _, payload, metadata in rows]


def event_types(settings: Settings, after: int = 0) -> list[str]:
    return [row[0] for row in event_rows(settings, after)]


def head(settings: Settings) -> int:
    conn = sqlite3.connect(settings.database_path)
    try:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    finally:
        conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def login(client: TestClient, email: str = EMAIL, password: str = PASSWORD) -> dict[str, Any]:
    response = client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def register(client: TestClient, email: str = EMAIL, password: str = PASSWORD) -> dict[str, Any]:
    response = client.post("/api/v1/auth/register", json={"email": email, "password": password})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def me(client: TestClient, access: str) -> dict[str, Any]:
    response = client.get("/api/v1/auth/me", headers=bearer(access))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# -- the world every scenario starts from ------------------------------------------------------


@dataclass
class World:
    """One unverified owner with three sessions (A fresh, B refreshed once, C logged out), a
    verification mail, a reset mail, and forged tokens that each differ from a good one in one
    way."""

    settings: Settings
    client: TestClient
    clock: Clock
    mailbox: Mailbox
    user_id: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    closed: bool = False

    def close(self) -> None:
        """Shut the app down; that waits for queued mail."""
        if not self.closed:
            self.closed = True
            self.client.__exit__(None, None, None)

    def access_claims(self, **change: Any) -> dict[str, Any]:
        now = int(self.clock().timestamp())
        claims: dict[str, Any] = {
            "iss": "loacl", "aud": "loacl-api", "sub": self.user_id, "sid": self.tokens["sid_a"],
            "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex,
        }
        claims.update(change)
        return {k: v for k, v in claims.items() if v is not None}

    def forge(self, key: str = SECRET, alg: str = "HS256", **change: Any) -> str:
        return jwt.encode(
            {"alg": alg}, self.access_claims(**change), OctKey.import_key(key), algorithms=[alg]
        )

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return re.sub(r"<(\w+)>", lambda m: self.tokens[m.group(1)], value)
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        return value


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    clock, mailbox = Clock(), Mailbox()
    settings = auth_settings(settings)
    client = make_client(settings, clock, mailbox).__enter__()
    w = World(settings, client, clock, mailbox)
    try:
        register(client)
        w.tokens["verify"] = mailbox.token("Confirm")
        a, b, c = login(client), login(client), login(client)
        w.user_id = me(client, a["access_token"])["id"]
        w.tokens.update(access_a=a["access_token"], refresh_a=a["refresh_token"])
        w.tokens["sid_a"] = str(jwt.decode(a["access_token"], OctKey.import_key(SECRET))
                                .claims["sid"])
        refreshed = client.post(
            "/api/v1/auth/refresh-token", json={"refresh_token": b["refresh_token"]}
        )
        assert refreshed.status_code == 200
        w.tokens.update(
            refresh_b0=b["refresh_token"], refresh_b1=refreshed.json()["refresh_token"],
            access_b1=refreshed.json()["access_token"],
        )
        assert client.post("/api/v1/auth/logout", headers=bearer(c["access_token"])).status_code
        w.tokens.update(access_c=c["access_token"], refresh_c=c["refresh_token"])
        assert client.post("/api/v1/auth/reset-password", json={"email": EMAIL}).status_code == 202
        mailbox.wait(2)
        w.tokens["reset"] = mailbox.token("Reset")
        header = b64({"alg": "none", "typ": "JWT"})
        w.tokens.update(
            forged_ok=w.forge(),
            other_key=w.forge(key=OTHER_SECRET),
            hs512=w.forge(alg="HS512"),
            alg_none=f"{header}.{b64(w.access_claims())}.",
            wrong_aud=w.forge(aud="loacl-verify-email"),
            wrong_iss=w.forge(iss="someone-else"),
            no_sid=w.forge(sid=None),
            no_exp=w.forge(exp=None),
            future_iat=w.forge(iat=int(clock().timestamp()) + 3600),
            other_user=w.forge(sub=uuid.uuid4().hex),
            garbage="not-a-token",
            verify_unknown=w.forge(aud="loacl-verify-email", sub=uuid.uuid4().hex, sid=None,
                                   email=EMAIL),
            verify_other_email=w.forge(aud="loacl-verify-email", sid=None,
                                       email="someone@example.com"),
            verify_forged_ok=w.forge(aud="loacl-verify-email", sid=None, email=EMAIL),
        )
        yield w
    finally:
        w.close()


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    body: Any = None
    auth: str | None = None  # the Authorization header, "<name>" standing for a token
    advance: timedelta = timedelta(0)  # moves the clock before the request
    content: bytes | None = None

    def send(self, world: World) -> httpx2.Response:
        world.clock.advance(self.advance)
        headers = {} if self.auth is None else {"Authorization": world.fill(self.auth)}
        url = f"/api/v1/auth/{self.path}"
        if self.content is not None:
            headers["Content-Type"] = "application/json"
            return world.client.request(self.method, url, content=self.content, headers=headers)
        return world.client.request(self.method, url, json=world.fill(self.body), headers=headers)


def check(world: World, req: Req, status: int, code: str | None, events: list[str]) -> Any:
    before = head(world.settings)
    response = req.send(world)
    assert response.status_code == status, response.text
    if code is None:
        assert not response.content or response.headers["content-type"] == "application/json"
    else:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == code
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert event_types(world.settings, before) == events
    return response.json() if response.content else None


def post(path: str, body: Any = None, **kw: Any) -> Req:
    return Req("POST", path, body, **kw)


MINUTE, HOUR = timedelta(minutes=1), timedelta(hours=1)

REGISTER = [
    pytest.param(post("register", {"email": "new@example.com", "password": PASSWORD}),
                 202, None, ["user.registered"], id="ok"),
    pytest.param(post("register", {"email": "new@example.com", "password": "8charsok",
                                   "name": "Ada"}), 202, None, ["user.registered"], id="min-len"),
    pytest.param(post("register", {"email": "new@example.com", "password": "x" * 256}),
                 202, None, ["user.registered"], id="max-len"),
    # A taken address: the same answer, no account; the owner is told by mail.
    pytest.param(post("register", {"email": EMAIL, "password": PASSWORD}),
                 202, None, [], id="taken"),
    pytest.param(post("register", {"email": "owner@Example.COM", "password": PASSWORD}),
                 202, None, [], id="taken-other-case"),
    pytest.param(post("register", {"email": " owner@example.com", "password": PASSWORD}),
                 422, "validation_error", [], id="email-leading-space"),
    pytest.param(post("register", {"email": "not-an-email", "password": PASSWORD}),
                 422, "validation_error", [], id="bad-email"),
    pytest.param(post("register", {"email": "a@b", "password": PASSWORD}),
                 422, "validation_error", [], id="no-tld"),
    pytest.param(post("register", {"email": "new@example.com", "password": "7 chars"}),
                 422, "validation_error", [], id="too-short"),
    pytest.param(post("register", {"email": "new@example.com", "password": "x" * 257}),
                 422, "validation_error", [], id="too-long"),
    pytest.param(post("register", {"email": "new@example.com", "password": "password123"}),
                 422, "validation_error", [], id="common"),
    pytest.param(post("register", {"email": "new@example.com", "password": "PassWord123"}),
                 422, "validation_error", [], id="common-other-case"),
    pytest.param(post("register", {"email": "new@example.com"}),
                 422, "validation_error", [], id="no-password"),
    pytest.param(post("register", {"email": "new@example.com", "password": 12345678}),
                 422, "validation_error", [], id="password-not-text"),
    pytest.param(post("register", {"email": "new@example.com", "password": PASSWORD,
                                   "admin": True}),
                 422, "validation_error", [], id="extra-field"),
    pytest.param(Req("POST", "register", content=b"{nope"), 400, "invalid_json", [],
                 id="not-json"),
    pytest.param(Req("POST", "register", content=b"[1]"), 400, "invalid_json", [],
                 id="not-object"),
]


@pytest.mark.parametrize(("req", "status", "code", "events"), REGISTER)
def test_register(world: World, req: Req, status: int, code: str | None,
                  events: list[str]) -> None:
    mails = len(world.mailbox.wait(2))
    body = check(world, req, status, code, events)
    if status == 202:
        address = normalize_email(req.body["email"])
        assert body == {"email": address, "status": "mail_sent"}
        world.close()  # shutting down waits for queued mail
        [mail] = world.mailbox.messages[mails:]
        assert mail["To"] == address
        if events:
            assert "Confirm" in str(mail["Subject"])
        else:
            assert "tried to register" in str(mail["Subject"])
            assert "Your token" not in mail.get_content()


def test_register_answers_the_user_and_never_a_hash(settings: Settings) -> None:
    settings = auth_settings(settings)
    with make_client(settings) as client:
        response = client.post(
            "/api/v1/auth/register",
            json={"email": "Ada@EXAMPLE.Com", "password": PASSWORD, "name": "Ada"},
        )
        assert response.status_code == 202
        # The domain is normalised, the local part kept.
        assert response.json() == {"email": "Ada@example.com", "status": "mail_sent"}
        assert "argon2" not in response.text and PASSWORD not in response.text
        user = me(client, login(client, "ada@example.com")["access_token"])
        assert user["email"] == "Ada@example.com" and user["name"] == "Ada"
        assert user["email_verified"] is False
        assert "argon2" not in json.dumps(user)
    payload = json.loads(event_rows(settings)[0][1])
    assert payload["password_hash"].startswith("$argon2id$")


LOGIN = [
    pytest.param(post("login", {"email": EMAIL, "password": PASSWORD}),
                 200, None, ["session.started"], id="ok"),
    pytest.param(post("login", {"email": "OWNER@EXAMPLE.COM", "password": PASSWORD}),
                 200, None, ["session.started"], id="ok-other-case"),
    pytest.param(post("login", {"email": EMAIL, "password": PASSWORD.upper()}),
                 401, "invalid_credentials", [], id="wrong-password"),
    pytest.param(post("login", {"email": "nobody@example.com", "password": PASSWORD}),
                 401, "invalid_credentials", [], id="unknown-email"),
    pytest.param(post("login", {"email": "not an address", "password": PASSWORD}),
                 401, "invalid_credentials", [], id="malformed-email"),
    pytest.param(post("login", {"email": EMAIL}), 422, "validation_error", [], id="no-password"),
    pytest.param(post("login", {"email": EMAIL, "password": PASSWORD}, advance=30 * MINUTE),
                 200, None, ["session.started"], id="ok-later"),
]


@pytest.mark.parametrize(("req", "status", "code", "events"), LOGIN)
def test_login(world: World, req: Req, status: int, code: str | None,
               events: list[str]) -> None:
    body = check(world, req, status, code, events)
    if status == 200:
        assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token",
                             "workspace_id"}
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == world.settings.access_token_expire_minutes * 60
        claims = jwt.decode(body["access_token"], OctKey.import_key(SECRET)).claims
        assert {"sub", "sid", "iat", "exp", "jti", "iss", "aud"} <= set(claims)
        assert claims["sub"] == world.user_id
        assert claims["exp"] - claims["iat"] == body["expires_in"]
        assert claims["iat"] == int(world.clock().timestamp())
        # 256 random bits, URL-safe base64: 43 characters.
        assert len(base64.urlsafe_b64decode(body["refresh_token"] + "=")) == 32


def test_wrong_password_and_unknown_email_look_the_same(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str | None] = []
    verify = Passwords.verify

    async def spy(self: Passwords, stored: str | None, password: str) -> bool:
        result = await verify(self, stored, password)
        calls.append(stored)
        assert result is False
        return result

    monkeypatch.setattr(Passwords, "verify", spy)
    wrong = world.client.post("/api/v1/auth/login", json={"email": EMAIL, "password": "nope1234"})
    unknown = world.client.post(
        "/api/v1/auth/login", json={"email": "ghost@example.com", "password": "nope1234"}
    )
    assert wrong.status_code == unknown.status_code == 401
    strip = ("request_id",)
    assert {k: v for k, v in wrong.json().items() if k not in strip} == {
        k: v for k, v in unknown.json().items() if k not in strip
    }
    # Both ran the hasher: the unknown address against the dummy hash.
    assert len(calls) == 2
    assert calls[0] is not None and calls[1] is None


ME = [
    pytest.param(Req("GET", "me", auth="Bearer <access_a>"), 200, None, [], id="ok"),
    pytest.param(Req("GET", "me", auth="bearer <access_b1>"), 200, None, [], id="refreshed"),
    pytest.param(Req("GET", "me", auth="Bearer <forged_ok>"), 200, None, [], id="forged-ok"),
    pytest.param(Req("GET", "me"), 401, "unauthorized", [], id="no-header"),
    pytest.param(Req("GET", "me", auth="Basic <access_a>"), 401, "unauthorized", [], id="basic"),
    pytest.param(Req("GET", "me", auth="Bearer "), 401, "unauthorized", [], id="empty"),
    pytest.param(Req("GET", "me", auth="Bearer <garbage>"), 401, "invalid_token", [],
                 id="garbage"),
    pytest.param(Req("GET", "me", auth="Bearer <other_key>"), 401, "invalid_token", [],
                 id="other-key"),
    pytest.param(Req("GET", "me", auth="Bearer <hs512>"), 401, "invalid_token", [],
                 id="other-algorithm"),
    pytest.param(Req("GET", "me", auth="Bearer <alg_none>"), 401, "invalid_token", [],
                 id="alg-none"),
    pytest.param(Req("GET", "me", auth="Bearer <wrong_aud>"), 401, "invalid_token", [],
                 id="wrong-audience"),
    pytest.param(Req("GET", "me", auth="Bearer <wrong_iss>"), 401, "invalid_token", [],
                 id="wrong-issuer"),
    pytest.param(Req("GET", "me", auth="Bearer <no_sid>"), 401, "invalid_token", [],
                 id="no-sid"),
    pytest.param(Req("GET", "me", auth="Bearer <no_exp>"), 401, "invalid_token", [],
                 id="no-exp"),
    pytest.param(Req("GET", "me", auth="Bearer <future_iat>"), 401, "invalid_token", [],
                 id="issued-in-future"),
    pytest.param(Req("GET", "me", auth="Bearer <other_user>"), 401, "invalid_token", [],
                 id="session-of-another-user"),
    pytest.param(Req("GET", "me", auth="Bearer <verify>"), 401, "invalid_token", [],
                 id="verification-link-token"),
    pytest.param(Req("GET", "me", auth="Bearer <reset>"), 401, "invalid_token", [],
                 id="reset-link-token"),
    pytest.param(Req("GET", "me", auth="Bearer <refresh_a>"), 401, "invalid_token", [],
                 id="refresh-token"),
    pytest.param(Req("GET", "me", auth="Bearer <access_c>"), 401, "invalid_token", [],
                 id="logged-out-session"),
    pytest.param(Req("GET", "me", auth="Bearer <access_a>", advance=29 * MINUTE), 200, None, [],
                 id="nearly-expired"),
    pytest.param(Req("GET", "me", auth="Bearer <access_a>", advance=30 * MINUTE), 401,
                 "token_expired", [], id="expired"),
]


@pytest.mark.parametrize(("req", "status", "code", "events"), ME)
def test_me(world: World, req: Req, status: int, code: str | None, events: list[str]) -> None:
    body = check(world, req, status, code, events)
    if status == 200:
        assert body["id"] == world.user_id and body["email"] == EMAIL
        assert not body["email_verified"]


VERIFY = [
    pytest.param(post("verify-email", {"token": "<verify>"}), 200, None,
                 ["user.email_verified"], id="ok"),
    pytest.param(post("verify-email", {"token": "<verify>"}, advance=23 * HOUR + 59 * MINUTE),
                 200, None, ["user.email_verified"], id="nearly-expired"),
    pytest.param(post("verify-email", {"token": "<verify>"}, advance=24 * HOUR), 400,
                 "invalid_verification_token", [], id="expired"),
    pytest.param(post("verify-email", {"token": "<reset>"}), 400,
                 "invalid_verification_token", [], id="reset-token"),
    pytest.param(post("verify-email", {"token": "<access_a>"}), 400,
                 "invalid_verification_token", [], id="access-token"),
    pytest.param(post("verify-email", {"token": "<garbage>"}), 400,
                 "invalid_verification_token", [], id="garbage"),
    pytest.param(post("verify-email", {"token": "<verify_forged_ok>"}), 200, None,
                 ["user.email_verified"], id="forged-ok"),
    pytest.param(post("verify-email", {"token": "<verify_unknown>"}), 400,
                 "invalid_verification_token", [], id="unknown-user"),
    pytest.param(post("verify-email", {"token": "<verify_other_email>"}), 400,
                 "invalid_verification_token", [], id="other-email"),
    pytest.param(post("verify-email", {}), 422, "validation_error", [], id="no-token"),
]


@pytest.mark.parametrize(("req", "status", "code", "events"), VERIFY)
def test_verify_email(world: World, req: Req, status: int, code: str | None,
                      events: list[str]) -> None:
    body = check(world, req, status, code, events)
    me = world.client.get("/api/v1/auth/me", headers=bearer(world.tokens["access_b1"]))
    if status == 200:
        assert body["email_verified"] is True and body["email_verified_at"]
    # "expired" moved the clock past the access token too; only check when it still works.
    if me.status_code == 200:
        assert me.json()["email_verified"] is (status == 200)


def test_verification_token_is_single_use_and_signed(world: World) -> None:
    token = world.tokens["verify"]
    claims = jwt.decode(token, OctKey.import_key(SECRET)).claims
    assert claims["exp"] - claims["iat"] == 24 * 3600
    other = jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(OTHER_SECRET))
    check(world, post("verify-email", {"token": other}), 400, "invalid_verification_token", [])
    check(world, post("verify-email", {"token": token}), 200, None, ["user.email_verified"])
    check(world, post("verify-email", {"token": token}), 400, "invalid_verification_token", [])


REFRESH = [
    pytest.param(post("refresh-token", {"refresh_token": "<refresh_a>"}), 200, None,
                 ["session.refreshed"], id="ok"),
    pytest.param(post("refresh-token", {"refresh_token": "<refresh_b1>"}), 200, None,
                 ["session.refreshed"], id="ok-rotated"),
    pytest.param(post("refresh-token", {"refresh_token": "<refresh_a>"},
                      advance=timedelta(days=29)), 200, None, ["session.refreshed"],
                 id="nearly-expired"),
    pytest.param(post("refresh-token", {"refresh_token": "<refresh_a>"},
                      advance=timedelta(days=30)), 401, "invalid_refresh_token", [],
                 id="expired"),
    pytest.param(post("refresh-token", {"refresh_token": "<refresh_b0>"}), 401,
                 "refresh_token_reused", ["session.revoked"], id="reused"),
    pytest.param(post("refresh-token", {"refresh_token": "<refresh_c>"}), 401,
                 "invalid_refresh_token", [], id="logged-out"),
    pytest.param(post("refresh-token", {"refresh_token": "<garbage>"}), 401,
                 "invalid_refresh_token", [], id="garbage"),
    pytest.param(post("refresh-token", {"refresh_token": "<access_a>"}), 422,
                 "validation_error", [], id="access-token"),
    # No token in the body: the console's cookie is looked for, and there is none.
    pytest.param(post("refresh-token", {}), 401, "invalid_refresh_token", [], id="missing"),
]


@pytest.mark.parametrize(("req", "status", "code", "events"), REFRESH)
def test_refresh(world: World, req: Req, status: int, code: str | None,
                 events: list[str]) -> None:
    body = check(world, req, status, code, events)
    if status == 200:
        presented = world.fill(req.body)["refresh_token"]
        assert body["token_type"] == "bearer"
        assert body["refresh_token"] != presented
        me = world.client.get("/api/v1/auth/me", headers=bearer(body["access_token"]))
        assert me.status_code == 200


def test_reused_refresh_token_revokes_the_session(world: World) -> None:
    check(world, post("refresh-token", {"refresh_token": "<refresh_b0>"}), 401,
          "refresh_token_reused", ["session.revoked"])
    # The thief's and the owner's copies of the session stop working alike.
    check(world, Req("GET", "me", auth="Bearer <access_b1>"), 401, "invalid_token", [])
    check(world, post("refresh-token", {"refresh_token": "<refresh_b1>"}), 401,
          "invalid_refresh_token", [])
    check(world, post("refresh-token", {"refresh_token": "<refresh_b0>"}), 401,
          "invalid_refresh_token", [])
    # Another session of the same owner is not touched.
    check(world, Req("GET", "me", auth="Bearer <access_a>"), 200, None, [])
    payload = json.loads(event_rows(world.settings)[-1][1])
    assert payload["reason"] == "refresh_token_reused"


def test_refresh_rotates_each_time(world: World) -> None:
    token = world.tokens["refresh_a"]
    seen = {token}
    for _ in range(3):
        body = check(world, post("refresh-token", {"refresh_token": token}), 200, None,
                     ["session.refreshed"])
        token = body["refresh_token"]
        assert token not in seen
        seen.add(token)


LOGOUT = [
    pytest.param(post("logout", auth="Bearer <access_a>"), 204, None, ["session.revoked"],
                 id="ok"),
    pytest.param(post("logout", auth="Bearer <access_c>"), 401, "invalid_token", [],
                 id="already-out"),
    pytest.param(post("logout"), 401, "unauthorized", [], id="no-token"),
    pytest.param(post("logout", auth="Bearer <other_key>"), 401, "invalid_token", [],
                 id="other-key"),
    pytest.param(post("logout", auth="Bearer <access_a>", advance=30 * MINUTE), 401,
                 "token_expired", [], id="expired"),
]


@pytest.mark.parametrize(("req", "status", "code", "events"), LOGOUT)
def test_logout(world: World, req: Req, status: int, code: str | None,
                events: list[str]) -> None:
    check(world, req, status, code, events)
    if status == 204:
        check(world, Req("GET", "me", auth="Bearer <access_a>"), 401, "invalid_token", [])
        check(world, post("refresh-token", {"refresh_token": "<refresh_a>"}), 401,
              "invalid_refresh_token", [])
        check(world, Req("GET", "me", auth="Bearer <access_b1>"), 200, None, [])
        check(world, post("logout", auth="Bearer <access_a>"), 401, "invalid_token", [])


RESET = [
    pytest.param(post("reset-password", {"email": EMAIL}), 202, None, [], id="known"),
    pytest.param(post("reset-password", {"email": "Owner@EXAMPLE.com"}), 202, None, [],
                 id="known-other-case"),
    pytest.param(post("reset-password", {"email": "ghost@example.com"}), 202, None, [],
                 id="unknown"),
    pytest.param(post("reset-password", {"email": "not an address"}), 202, None, [],
                 id="malformed"),
    pytest.param(post("reset-password", {}), 422, "validation_error", [], id="missing"),
]


@pytest.mark.parametrize(("req", "status", "code", "events"), RESET)
def test_reset_request(world: World, req: Req, status: int, code: str | None,
                       events: list[str]) -> None:
    mails = len(world.mailbox.wait(2))
    check(world, req, status, code, events)
    world.close()  # shutting down waits for queued mail
    sent = world.mailbox.messages[mails:]
    if req.body.get("email", "").lower() == EMAIL:
        assert [m["To"] for m in sent] == [EMAIL]
        assert "Reset" in str(sent[0]["Subject"])
    else:
        assert sent == []


def test_reset_mails_are_rate_limited_silently(world: World) -> None:
    for _ in range(2):  # the world asked once already
        check(world, post("reset-password", {"email": EMAIL}), 202, None, [])
    world.mailbox.wait(4)
    check(world, post("reset-password", {"email": EMAIL}), 202, None, [])
    world.clock.advance(HOUR)
    check(world, post("reset-password", {"email": EMAIL}), 202, None, [])
    world.close()
    resets = [m for m in world.mailbox.messages if "Reset" in str(m["Subject"])]
    assert len(resets) == 4


RESET_CONFIRM = [
    pytest.param(post("reset-password/confirm", {"token": "<reset>", "password": NEW_PASSWORD}),
                 204, None, ["user.password_changed", "session.revoked", "session.revoked"],
                 id="ok"),
    pytest.param(post("reset-password/confirm", {"token": "<reset>", "password": NEW_PASSWORD},
                      advance=59 * MINUTE),
                 204, None, ["user.password_changed", "session.revoked", "session.revoked"],
                 id="nearly-expired"),
    pytest.param(post("reset-password/confirm", {"token": "<reset>", "password": NEW_PASSWORD},
                      advance=HOUR), 400, "invalid_reset_token", [], id="expired"),
    pytest.param(post("reset-password/confirm", {"token": "<verify>", "password": NEW_PASSWORD}),
                 400, "invalid_reset_token", [], id="verification-token"),
    pytest.param(post("reset-password/confirm",
                      {"token": "<access_a>", "password": NEW_PASSWORD}),
                 400, "invalid_reset_token", [], id="access-token"),
    pytest.param(post("reset-password/confirm",
                      {"token": "<garbage>", "password": NEW_PASSWORD}),
                 400, "invalid_reset_token", [], id="garbage"),
    pytest.param(post("reset-password/confirm", {"token": "<reset>", "password": "password1"}),
                 422, "validation_error", [], id="common-password"),
    pytest.param(post("reset-password/confirm", {"token": "<reset>", "password": "short"}),
                 422, "validation_error", [], id="short-password"),
    pytest.param(post("reset-password/confirm", {"token": "<reset>"}),
                 422, "validation_error", [], id="no-password"),
]


@pytest.mark.parametrize(("req", "status", "code", "events"), RESET_CONFIRM)
def test_reset_confirm(world: World, req: Req, status: int, code: str | None,
                       events: list[str]) -> None:
    check(world, req, status, code, events)
    if status == 204:
        rows = event_rows(world.settings)
        assert json.loads(rows[-3][1])["reason"] == "reset"
        assert {json.loads(r[1])["reason"] for r in rows[-2:]} == {"password_reset"}
        # Every session of the user ended, access and refresh tokens alike.
        ended = "invalid_token" if req.advance < 30 * MINUTE else "token_expired"
        for access in ("access_a", "access_b1"):
            check(world, Req("GET", "me", auth=f"Bearer <{access}>"), 401, ended, [])
        for refresh in ("refresh_a", "refresh_b1"):
            check(world, post("refresh-token", {"refresh_token": f"<{refresh}>"}), 401,
                  "invalid_refresh_token", [])
        check(world, post("login", {"email": EMAIL, "password": PASSWORD}), 401,
              "invalid_credentials", [])
        check(world, post("login", {"email": EMAIL, "password": NEW_PASSWORD}), 200, None,
              ["session.started"])
        # Single use.
        check(world, req, 400, "invalid_reset_token", [])


def test_reset_token_is_void_once_the_password_changes(world: World) -> None:
    first = world.tokens["reset"]
    claims = jwt.decode(first, OctKey.import_key(SECRET)).claims
    assert claims["exp"] - claims["iat"] == 3600
    assert world.client.post("/api/v1/auth/reset-password", json={"email": EMAIL}).status_code
    second = world.mailbox.wait(3) and world.mailbox.token("Reset")
    assert second != first
    check(world, post("reset-password/confirm", {"token": second, "password": NEW_PASSWORD}),
          204, None, ["user.password_changed", "session.revoked", "session.revoked"])
    check(world, post("reset-password/confirm", {"token": first, "password": PASSWORD}),
          400, "invalid_reset_token", [])


RESEND = [
    pytest.param(post("verify-email/resend", auth="Bearer <access_a>"), 202, None, [], id="ok"),
    pytest.param(post("verify-email/resend"), 401, "unauthorized", [], id="no-token"),
    pytest.param(post("verify-email/resend", auth="Bearer <access_c>"), 401, "invalid_token",
                 [], id="logged-out"),
]


@pytest.mark.parametrize(("req", "status", "code", "events"), RESEND)
def test_resend_verification(world: World, req: Req, status: int, code: str | None,
                             events: list[str]) -> None:
    check(world, req, status, code, events)
    world.close()
    confirms = [m for m in world.mailbox.messages if "Confirm" in str(m["Subject"])]
    assert len(confirms) == (2 if status == 202 else 1)


def test_resend_is_rate_limited_then_allowed_again(world: World) -> None:
    for _ in range(3):
        check(world, post("verify-email/resend", auth="Bearer <access_a>"), 202, None, [])
    before = head(world.settings)
    refused = post("verify-email/resend", auth="Bearer <access_a>").send(world)
    assert refused.status_code == 429
    assert refused.json()["code"] == "rate_limited"
    assert 0 < int(refused.headers["retry-after"]) <= 3600
    assert head(world.settings) == before
    world.clock.advance(HOUR)
    access = login(world.client)["access_token"]
    check(world, post("verify-email/resend", auth=f"Bearer {access}"), 202, None, [])
    # The newest token verifies.
    world.mailbox.wait(6)
    token = world.mailbox.token("Confirm")
    check(world, post("verify-email", {"token": token}), 200, None, ["user.email_verified"])
    world.close()
    assert len([m for m in world.mailbox.messages if "Confirm" in str(m["Subject"])]) == 5


def test_resend_after_verification_is_refused(world: World) -> None:
    check(world, post("verify-email", {"token": "<verify>"}), 200, None, ["user.email_verified"])
    check(world, post("verify-email/resend", auth="Bearer <access_a>"), 409, "already_verified",
          [])


def test_five_failures_lock_that_address_out_of_the_account_for_fifteen_minutes(
    world: World,
) -> None:
    wrong = {"email": EMAIL, "password": "wrong password"}
    for _ in range(5):
        check(world, post("login", wrong), 401, "invalid_credentials", [])
    for body in (wrong, {"email": EMAIL, "password": PASSWORD},
                 {"email": "OWNER@example.com", "password": PASSWORD}):
        response = post("login", body).send(world)
        assert response.status_code == 429
        assert response.json()["code"] == "rate_limited"
        assert 0 < int(response.headers["retry-after"]) <= 15 * 60
    # Another account from the same address is not locked.
    register(world.client, "second@example.com")
    check(world, post("login", {"email": "second@example.com", "password": PASSWORD}), 200,
          None, ["session.started"])
    world.clock.advance(15 * MINUTE)
    check(world, post("login", {"email": EMAIL, "password": PASSWORD}), 200, None,
          ["session.started"])


def test_a_success_resets_the_account_count(world: World) -> None:
    wrong = {"email": EMAIL, "password": "wrong password"}
    for _ in range(4):
        check(world, post("login", wrong), 401, "invalid_credentials", [])
    login(world.client)
    for _ in range(4):
        check(world, post("login", wrong), 401, "invalid_credentials", [])
    login(world.client)


def test_twenty_failures_from_one_address_lock_it(world: World) -> None:
    for n in range(20):
        check(world, post("login", {"email": f"ghost{n}@example.com", "password": "whatever1"}),
              401, "invalid_credentials", [])
    response = post("login", {"email": EMAIL, "password": PASSWORD}).send(world)
    assert response.status_code == 429
    assert 0 < int(response.headers["retry-after"]) <= 15 * 60
    world.clock.advance(15 * MINUTE)
    check(world, post("login", {"email": EMAIL, "password": PASSWORD}), 200, None,
          ["session.started"])


def test_login_rehashes_when_the_parameters_change(settings: Settings) -> None:
    settings = auth_settings(settings)
    with make_client(settings) as client:
        register(client)
    stronger = settings.model_copy(update={"argon2_time_cost": 2, "argon2_memory_kib": 128})
    with make_client(stronger) as client:
        before = head(settings)
        login(client)
        rows = event_rows(settings, before)
        assert [r[0] for r in rows] == ["user.password_changed", "session.started"]
        payload = json.loads(rows[0][1])
        assert payload["reason"] == "rehash"
        assert "m=128,t=2,p=1" in payload["password_hash"]
        before = head(settings)
        login(client)
        assert event_types(settings, before) == ["session.started"]


def _verified_only_app(settings: Settings) -> TestClient:
    async def guarded(request: Request) -> Response:
        owner = await current_owner(request, verified=True)
        return JSONResponse({"user_id": owner.user_id})

    client = make_client(settings)
    client.app.router.routes.append(  # type: ignore[attr-defined]
        Route("/guarded", guarded, methods=["GET"])
    )
    return client


def test_unverified_owner_is_refused_where_verification_is_required(
    settings: Settings,
) -> None:
    settings = auth_settings(settings)
    mailbox = Mailbox()
    with make_client(settings, mailbox=mailbox) as client:
        register(client)
        access = login(client)["access_token"]
        user = me(client, access)
    with _verified_only_app(settings) as client:
        response = client.get("/guarded", headers=bearer(access))
        assert response.status_code == 403
        assert response.json()["code"] == "email_not_verified"
        assert client.get("/guarded").status_code == 401
        token = mailbox.token("Confirm")
        assert client.post("/api/v1/auth/verify-email", json={"token": token}).status_code == 200
        response = client.get("/guarded", headers=bearer(access))
        assert response.status_code == 200
        assert response.json() == {"user_id": user["id"]}


def test_verification_not_required_when_switched_off(settings: Settings) -> None:
    settings = auth_settings(settings, require_verified_email=False)
    with _verified_only_app(settings) as client:
        register(client)
        access = login(client)["access_token"]
        user = me(client, access)
        response = client.get("/guarded", headers=bearer(access))
        assert response.status_code == 200
        assert response.json() == {"user_id": user["id"]}


# -- e-mail normalisation ------------------------------------------------------------------------


def _mixed_case(text: str, mask: list[bool]) -> str:
    return "".join(
        c.upper() if mask[i % len(mask)] else c.lower() for i, c in enumerate(text)
    )


@given(st.emails())
def test_normalised_email_is_idempotent(email: str) -> None:
    once = normalize_email(email)
    assert normalize_email(once) == once


@given(st.emails(), st.lists(st.booleans(), min_size=1, max_size=8))
def test_domain_case_never_changes_the_normalised_form(email: str, mask: list[bool]) -> None:
    local, _, domain = email.rpartition("@")
    assert normalize_email(f"{local}@{_mixed_case(domain, mask)}") == normalize_email(email)


ascii_local = st.from_regex(r"\A[a-z0-9][a-z0-9._+-]{0,20}[a-z0-9]\Z").filter(
    lambda s: ".." not in s
)


def test_case_never_matters_for_uniqueness(settings: Settings) -> None:
    # Fifty registrations from one test client: more than one address may ask for in an hour.
    settings = auth_settings(settings, register_per_ip_hour=1000)
    seen: set[str] = set()
    with make_client(settings) as client:

        @hypothesis_settings(max_examples=25, deadline=None)
        @given(ascii_local, st.emails(), st.lists(st.booleans(), min_size=1, max_size=8))
        def run(local: str, address: str, mask: list[bool]) -> None:
            domain = address.rpartition("@")[2]
            first = f"{local}@{domain.lower()}"
            if normalize_email(first).lower() in seen:
                return
            seen.add(normalize_email(first).lower())
            register(client, first)
            before = head(settings)
            again = client.post(
                "/api/v1/auth/register",
                json={"email": f"{_mixed_case(local, mask[::-1])}@{_mixed_case(domain, mask)}",
                      "password": PASSWORD},
            )
            assert again.status_code == 202, again.text
            assert head(settings) == before, "no second account"

        run()


# -- races and mail links --------------------------------------------------------------------


def _race_two(client: TestClient, monkeypatch: pytest.MonkeyPatch,
              first: Any, second: Any, loader: str = "_load_session") -> list[Any]:
    """Run two use cases at once, both having read the stream before either appends."""
    accounts = client.app.state.accounts  # type: ignore[attr-defined]
    load = getattr(accounts, loader)
    both_read = asyncio.Event()
    waiting = [0]

    async def load_then_wait(session_id: str) -> Any:
        loaded = await load(session_id)
        if waiting[0] < 2:
            waiting[0] += 1
            if waiting[0] == 2:
                both_read.set()
            await asyncio.wait_for(both_read.wait(), 10)
        return loaded

    monkeypatch.setattr(accounts, loader, load_then_wait)

    async def run() -> list[Any]:
        return list(await asyncio.gather(first(accounts), second(accounts),
                                         return_exceptions=True))

    results: list[Any] = client.portal.call(run)  # type: ignore[union-attr]
    return results


def test_one_refresh_token_used_twice_at_once_is_a_reuse(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = head(world.settings)
    token = world.tokens["refresh_a"]
    results = _race_two(world.client, monkeypatch,
                        lambda a: a.refresh(token, Metadata()),
                        lambda a: a.refresh(token, Metadata()))
    codes = sorted(getattr(r, "code", "ok") for r in results)
    assert codes == ["ok", "refresh_token_reused"]
    assert event_types(world.settings, before) == ["session.refreshed", "session.revoked"]
    check(world, Req("GET", "me", auth="Bearer <access_a>"), 401, "invalid_token", [])


def test_logout_racing_a_refresh_still_ends_the_session(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = head(world.settings)
    principal = world.client.portal.call(  # type: ignore[union-attr]
        world.client.app.state.accounts.authenticate,  # type: ignore[attr-defined]
        world.tokens["access_a"],
    )
    token = world.tokens["refresh_a"]
    results = _race_two(world.client, monkeypatch,
                        lambda a: a.refresh(token, Metadata()),
                        lambda a: a.logout(principal, Metadata()))
    # Whichever comes first, the session ends, and no one sees a version conflict.
    refreshed, logged_out = results
    assert logged_out is None
    assert sorted(event_types(world.settings, before)) in (
        ["session.refreshed", "session.revoked"], ["session.revoked"]
    )
    if isinstance(refreshed, BaseException):
        assert getattr(refreshed, "code", None) == "invalid_refresh_token"
    else:
        check(world, Req("GET", "me", auth=f"Bearer {refreshed.access_token}"), 401,
              "invalid_token", [])
    check(world, Req("GET", "me", auth="Bearer <access_a>"), 401, "invalid_token", [])


def test_two_logins_rehashing_at_once_both_succeed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = auth_settings(settings)
    with make_client(settings) as client:
        register(client)
    stronger = settings.model_copy(update={"argon2_time_cost": 2})
    with make_client(stronger) as client:
        before = head(settings)
        results = _race_two(
            client, monkeypatch,
            lambda a: a.login(EMAIL, PASSWORD, "127.0.0.1", Metadata()),
            lambda a: a.login(EMAIL, PASSWORD, "127.0.0.1", Metadata()),
            loader="_load_user",
        )
        assert [type(r).__name__ for r in results] == ["TokenPair", "TokenPair"]
        assert sorted(event_types(settings, before)) == [
            "session.started", "session.started", "user.password_changed"
        ]
        before = head(settings)
        login(client)
        assert event_types(settings, before) == ["session.started"]


@pytest.mark.parametrize("path", ["reset-password", "verify-email/resend"])
def test_mail_links_ignore_the_host_header(world: World, path: str) -> None:
    """Anyone may ask for a reset mail to anyone: its link must not point where they say."""
    count = len(world.mailbox.wait(2))
    response = world.client.post(
        f"/api/v1/auth/{path}", json={"email": EMAIL},
        headers={"Host": "evil.example", **bearer(world.tokens["access_a"])},
    )
    assert response.status_code == 202
    [mail] = world.mailbox.wait(count + 1)[count:]
    body = mail.get_content()
    assert "evil.example" not in body
    assert "http://127.0.0.1:8000/api/v1/auth/" in body


def test_mail_links_use_the_public_url(settings: Settings) -> None:
    mailbox = Mailbox()
    settings = auth_settings(settings, public_url="https://chat.example.org/")
    with make_client(settings, mailbox=mailbox) as client:
        register(client)
        [mail] = mailbox.wait(1)
    assert "https://chat.example.org/api/v1/auth/verify-email " in mail.get_content()
