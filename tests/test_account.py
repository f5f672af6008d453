"""The owner's account on a real uvicorn: change the password (the other sessions end), list the
active sessions, end one; each change is in the event log."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from loacl.http.app import create_app
from loacl.settings import Settings
from tests.live import serve
from tests.test_owners import PASSWORD, Owner, events, register_owner

pytestmark = pytest.mark.e2e

NEW = "an entirely new passphrase"


@pytest.fixture
def site(settings: Settings) -> Iterator[tuple[httpx.Client, Owner]]:
    with serve(create_app(settings)) as base, httpx.Client(base_url=base, timeout=10) as http:
        yield http, register_owner(http, settings, "ada@example.com")


def login(http: httpx.Client, password: str = PASSWORD) -> dict[str, str]:
    response = http.post("/api/v1/auth/login", json={"email": "ada@example.com",
                                                     "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}",
            "refresh": response.json()["refresh_token"]}


def bearer(session: dict[str, str]) -> dict[str, str]:
    return {"Authorization": session["Authorization"]}


def test_sessions_are_listed_and_one_can_be_ended(
    site: tuple[httpx.Client, Owner], settings: Settings,
) -> None:
    http, owner = site
    laptop, phone = login(http), login(http)
    listed = http.get("/api/v1/auth/sessions", headers=bearer(laptop))
    assert listed.status_code == 200 and listed.headers["cache-control"] == "no-store"
    sessions = listed.json()["data"]
    assert len(sessions) == 3  # the fixture's login, the laptop's and the phone's
    assert [s["current"] for s in sessions].count(True) == 1
    assert all(s["ip"] == "127.0.0.1" for s in sessions)
    assert all(s["last_used_at"] >= s["created_at"] for s in sessions)
    current = next(s for s in sessions if s["current"])

    # The phone refreshes: it is the last used.
    refreshed = http.post("/api/v1/auth/refresh-token",
                          json={"refresh_token": phone["refresh"]})
    assert refreshed.status_code == 200
    from_phone = http.get("/api/v1/auth/sessions",
                          headers={"Authorization": f"Bearer "
                                                    f"{refreshed.json()['access_token']}"})
    phone_id = next(s["id"] for s in from_phone.json()["data"] if s["current"])
    assert from_phone.json()["data"][0]["id"] == phone_id

    start = events(settings)[-1].seq
    ended = http.delete(f"/api/v1/auth/sessions/{phone_id}", headers=bearer(laptop))
    assert ended.status_code == 204
    assert [(e.type, e.stream, e.payload["reason"]) for e in events(settings, start)] == [
        ("session.revoked", f"session-{phone_id}", "revoked")]
    assert http.get("/api/v1/auth/me", headers={
        "Authorization": f"Bearer {refreshed.json()['access_token']}"}).status_code == 401
    assert phone_id not in [s["id"] for s in http.get(
        "/api/v1/auth/sessions", headers=bearer(laptop)).json()["data"]]
    again = http.delete(f"/api/v1/auth/sessions/{phone_id}", headers=bearer(laptop))
    assert again.status_code == 404 and again.json()["code"] == "not_found"

    # Another owner's session is not found, and stays.
    assert http.post("/api/v1/auth/register", json={
        "email": "bob@example.com", "password": PASSWORD}).status_code == 202
    bob = http.post("/api/v1/auth/login", json={"email": "bob@example.com",
                                                "password": PASSWORD}).json()
    bob_headers = {"Authorization": f"Bearer {bob['access_token']}"}
    bob_session = http.get("/api/v1/auth/sessions", headers=bob_headers).json()["data"][0]["id"]
    assert http.delete(f"/api/v1/auth/sessions/{bob_session}",
                       headers=bearer(laptop)).status_code == 404
    assert http.get("/api/v1/auth/me", headers=bob_headers).status_code == 200

    # Ending its own session is a logout.
    own = http.delete(f"/api/v1/auth/sessions/{current['id']}", headers=bearer(laptop))
    assert own.status_code == 204
    assert http.get("/api/v1/auth/me", headers=bearer(laptop)).status_code == 401
    assert http.get("/api/v1/auth/sessions", headers=owner.headers).status_code == 200


def test_changing_the_password_ends_the_other_sessions(
    site: tuple[httpx.Client, Owner], settings: Settings,
) -> None:
    http, owner = site
    other = login(http)
    here = login(http)
    start = events(settings)[-1].seq
    wrong = http.post("/api/v1/auth/password", headers=bearer(here),
                      json={"current_password": "not it", "new_password": NEW})
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_credentials"
    weak = http.post("/api/v1/auth/password", headers=bearer(here),
                     json={"current_password": PASSWORD, "new_password": "short"})
    assert weak.status_code == 422 and weak.json()["code"] == "validation_error"
    assert events(settings, start) == []

    changed = http.post("/api/v1/auth/password", headers=bearer(here),
                        json={"current_password": PASSWORD, "new_password": NEW})
    assert changed.status_code == 204, changed.text
    written = events(settings, start)
    assert [(e.type, e.payload.get("reason")) for e in written] == [
        ("user.password_changed", "change"),
        ("session.revoked", "password_changed"), ("session.revoked", "password_changed")]
    assert NEW not in "".join(e.raw for e in written)
    assert http.get("/api/v1/auth/me", headers=bearer(here)).status_code == 200
    for ended in (bearer(other), owner.headers):
        assert http.get("/api/v1/auth/me", headers=ended).status_code == 401
    assert http.post("/api/v1/auth/refresh-token",
                     json={"refresh_token": other["refresh"]}).status_code == 401
    assert http.post("/api/v1/auth/login", json={"email": "ada@example.com",
                                                 "password": PASSWORD}).status_code == 401
    login(http, NEW)
    assert len(http.get("/api/v1/auth/sessions", headers=bearer(here)).json()["data"]) == 2


def test_account_endpoints_need_a_token(site: tuple[httpx.Client, Owner]) -> None:
    http, _ = site
    for method, path in (("POST", "/api/v1/auth/password"), ("GET", "/api/v1/auth/sessions"),
                         ("DELETE", "/api/v1/auth/sessions/x")):
        response = http.request(method, path, json={} if method == "POST" else None)
        assert response.status_code == 401, (method, path)
