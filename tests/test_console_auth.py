"""The console's refresh cookie, end to end on a real uvicorn: login with ``session: cookie``,
refresh with the cookie alone, reuse detection, the cross-site refusals and logout.

httpx keeps no ``Secure`` cookie for plain http, so the tests carry the cookie by hand, as the
browser does on ``http://127.0.0.1``."""

from __future__ import annotations

from collections.abc import Iterator
from http.cookies import SimpleCookie

import httpx
import pytest

from loacl.http.app import create_app
from loacl.settings import Settings
from tests.live import serve
from tests.test_owners import PASSWORD, events, register_owner

pytestmark = pytest.mark.e2e


@pytest.fixture
def site(settings: Settings) -> Iterator[tuple[httpx.Client, str]]:
    with serve(create_app(settings)) as base, httpx.Client(base_url=base, timeout=10) as http:
        register_owner(http, settings, "ada@example.com")
        yield http, base


def refresh_cookie(response: httpx.Response) -> tuple[str, dict[str, str]]:
    """The ``loacl_refresh`` cookie the response sets, and its attributes (lower-cased)."""
    headers = response.headers.get_list("set-cookie")
    assert len(headers) == 1, headers
    cookie = SimpleCookie()
    cookie.load(headers[0])
    morsel = cookie["loacl_refresh"]
    flags = {k: str(v) for k, v in morsel.items() if v}
    for word in ("httponly", "secure"):
        if word in headers[0].lower():
            flags[word] = "true"
    return morsel.value, flags


def login(http: httpx.Client, **extra: str) -> httpx.Response:
    return http.post("/api/v1/auth/login", json={
        "email": "ada@example.com", "password": PASSWORD, "session": "cookie"}, headers=extra)


SAME = {"Sec-Fetch-Site": "same-origin"}


def test_login_sets_the_cookie_and_leaves_the_token_out_of_the_body(
    site: tuple[httpx.Client, str],
) -> None:
    http, _ = site
    response = login(http, **SAME)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "workspace_id"}
    assert response.headers["cache-control"] == "no-store"
    token, flags = refresh_cookie(response)
    assert len(token) >= 40
    assert flags["path"] == "/api/v1/auth"
    assert flags["samesite"].lower() == "strict"
    assert flags["httponly"] and flags["secure"]
    assert int(flags["max-age"]) == 30 * 86400
    me = http.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.status_code == 200


def test_the_bearer_flow_is_unchanged(site: tuple[httpx.Client, str]) -> None:
    http, _ = site
    response = http.post("/api/v1/auth/login",
                         json={"email": "ada@example.com", "password": PASSWORD})
    assert "set-cookie" not in response.headers
    pair = response.json()
    rotated = http.post("/api/v1/auth/refresh-token",
                        json={"refresh_token": pair["refresh_token"]})
    assert rotated.status_code == 200 and "set-cookie" not in rotated.headers
    assert rotated.json()["refresh_token"] != pair["refresh_token"]


def test_refresh_with_the_cookie_rotates_it_and_a_reused_one_ends_the_session(
    site: tuple[httpx.Client, str], settings: Settings,
) -> None:
    http, base = site
    first, _ = refresh_cookie(login(http, **SAME))
    start = events(settings)[-1].seq
    bodies: list[dict[str, str] | None] = [None, {}]
    for body in bodies:
        refreshed = http.post("/api/v1/auth/refresh-token", json=body,
                              headers={**SAME, "Cookie": f"loacl_refresh={first}"})
        assert refreshed.status_code == 200, refreshed.text
        assert "refresh_token" not in refreshed.json()
        second, flags = refresh_cookie(refreshed)
        assert second != first and flags["path"] == "/api/v1/auth"
        first = second
        access = refreshed.json()["access_token"]
    # From the page itself: the Origin is the server's own.
    again = http.post("/api/v1/auth/refresh-token",
                      headers={"Origin": base, "Cookie": f"loacl_refresh={first}"})
    assert again.status_code == 200, again.text
    latest, _ = refresh_cookie(again)
    reused = http.post("/api/v1/auth/refresh-token", headers={
        **SAME, "Cookie": f"loacl_refresh={first}"})
    assert reused.status_code == 401 and reused.json()["code"] == "refresh_token_reused"
    _, cleared = refresh_cookie(reused)
    assert cleared["max-age"] == "0"
    # The whole session is over: the newest cookie and the access tokens too.
    late = http.post("/api/v1/auth/refresh-token", headers={
        **SAME, "Cookie": f"loacl_refresh={latest}"})
    assert late.json()["code"] == "invalid_refresh_token"
    assert http.get("/api/v1/auth/me",
                    headers={"Authorization": f"Bearer {access}"}).status_code == 401
    kinds = [(e.type, e.payload.get("reason")) for e in events(settings, start)]
    assert kinds == [("session.refreshed", None)] * 3 + [
        ("session.revoked", "refresh_token_reused")]


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1:1"},
])
def test_cookie_requests_from_another_site_are_refused(
    site: tuple[httpx.Client, str], settings: Settings, headers: dict[str, str],
) -> None:
    http, _ = site
    token, _ = refresh_cookie(login(http, **SAME))
    start = events(settings)[-1].seq
    refused = http.post("/api/v1/auth/refresh-token",
                        headers={**headers, "Cookie": f"loacl_refresh={token}"})
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "cross_site_request"
    assert login(http, **headers).json()["code"] == "cross_site_request"
    out = http.post("/api/v1/auth/logout", headers={**headers, "Cookie": f"loacl_refresh={token}"})
    assert out.json()["code"] == "cross_site_request"
    assert events(settings, start) == []
    # The cookie still works from the console's own page.
    ok = http.post("/api/v1/auth/refresh-token", headers={**SAME,
                                                          "Cookie": f"loacl_refresh={token}"})
    assert ok.status_code == 200


def test_refresh_without_a_token_or_cookie(site: tuple[httpx.Client, str]) -> None:
    http, _ = site
    refused = http.post("/api/v1/auth/refresh-token", json={})
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_refresh_token"


def test_logout_with_the_cookie_alone_ends_the_session_and_clears_it(
    site: tuple[httpx.Client, str], settings: Settings,
) -> None:
    http, _ = site
    response = login(http)
    token, _ = refresh_cookie(response)
    access = response.json()["access_token"]
    start = events(settings)[-1].seq
    out = http.post("/api/v1/auth/logout", headers={**SAME, "Cookie": f"loacl_refresh={token}"})
    assert out.status_code == 204
    _, cleared = refresh_cookie(out)
    assert cleared["max-age"] == "0" and cleared["path"] == "/api/v1/auth"
    assert [(e.type, e.payload["reason"]) for e in events(settings, start)] == [
        ("session.revoked", "logout")]
    assert http.get("/api/v1/auth/me",
                    headers={"Authorization": f"Bearer {access}"}).status_code == 401
    after = http.post("/api/v1/auth/refresh-token", headers={**SAME,
                                                             "Cookie": f"loacl_refresh={token}"})
    assert after.json()["code"] == "invalid_refresh_token"


def test_logout_with_the_bearer_token_clears_the_cookie_too(
    site: tuple[httpx.Client, str], settings: Settings,
) -> None:
    http, _ = site
    response = login(http)
    token, _ = refresh_cookie(response)
    bearer = {"Authorization": f"Bearer {response.json()['access_token']}"}
    start = events(settings)[-1].seq
    out = http.post("/api/v1/auth/logout", headers={**bearer, "Cookie": f"loacl_refresh={token}"})
    assert out.status_code == 204
    assert refresh_cookie(out)[1]["max-age"] == "0"
    # The cookie named the same session: revoked once.
    assert [e.type for e in events(settings, start)] == ["session.revoked"]
    assert http.post("/api/v1/auth/logout").status_code == 401
