"""The security findings of issue 14, each as scenarios against a real uvicorn on loopback with
real clients: parallel logins (``asyncio.gather``), chunked bodies, raw sockets for slow and
aborting clients, WebSocket frames, file modes on disk, headers, and the API document.

One section per finding; each starts with the table of its scenarios where it has several.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send
from structlog.testing import capture_logs
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from loacl.http.app import create_app
from loacl.http.validation import MAX_JSON_BODY, MAX_JSON_DEPTH
from loacl.settings import Settings
from loacl.store.backup import backup
from tests.live import OPEN_LIMITS, serve
from tests.sealed import opened_rows

pytestmark = pytest.mark.e2e

ORIGIN = "http://localhost:3000"
EMAIL = "owner@example.com"
PASSWORD = "correct horse battery staple"
WRONG = "not the password at all"
WAIT = 30.0  # the bound on any single wait; a healthy run needs a small part of it


def secure_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'data' / 'loacl.db'}",
        "data_dir": tmp_path / "data",
        "log_format": "console",
        "argon2_time_cost": 1,
        "argon2_memory_kib": 64,
        "argon2_parallelism": 1,
        "require_verified_email": False,
        "demo_widget": False,
        "demo_delay": 0,
        # The visitor limits (tests/test_limits.py) would refuse before what is tested here.
        **OPEN_LIMITS,
    }
    return Settings(**(values | overrides))


@dataclass
class World:
    url: str
    settings: Settings
    http: httpx.Client
    owner: dict[str, str]
    widget_id: str
    visitor: dict[str, str]

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """(type, metadata) of each event, the client address opened with the master key."""
        rows = opened_rows(
            self.settings,
            "SELECT type, schema_version, payload, metadata FROM events ORDER BY seq",
        )
        return [(kind, json.loads(meta)) for kind, _, _, meta in rows]

    def session(self, **headers: str) -> httpx.Response:
        return self.http.post(f"/api/v1/widgets/{self.widget_id}/sessions", json={},
                              headers={"Origin": ORIGIN, **headers})


class ByteCounter:
    """Between uvicorn and the app: counts the request body bytes the app took in."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.state  # so that tests.live.serve finds the settings
        self.received = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@contextlib.contextmanager
def running(settings: Settings, *, wrap: Callable[[Any], Any] = lambda app: app,
            http: str = "httptools") -> Iterator[World]:
    """LOACL on uvicorn with an owner, a demo assistant, a widget and a visitor."""
    with serve(wrap(create_app(settings)), http=http) as url, httpx.Client(
        base_url=url, timeout=WAIT
    ) as client:
        assert client.post("/api/v1/auth/register",
                           json={"email": EMAIL, "password": PASSWORD}).status_code == 202
        login = client.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
        assert login.status_code == 200, login.text
        owner = {"Authorization": f"Bearer {login.json()['access_token']}"}
        assistant = client.post("/api/v1/assistants", headers=owner,
                                json={"name": "Helper", "provider": "demo", "model": "demo"})
        assert assistant.status_code == 201, assistant.text
        widget = client.post("/api/v1/widgets", headers=owner, json={
            "name": "Site", "assistant_id": assistant.json()["id"], "allowed_origins": [ORIGIN]})
        assert widget.status_code == 201, widget.text
        world = World(url, settings, client, owner, widget.json()["id"], {})
        session = world.session()
        assert session.status_code == 201, session.text
        world.visitor = {"Origin": ORIGIN,
                         "Authorization": f"Bearer {session.json()['visitor_token']}"}
        yield world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with running(secure_settings(tmp_path)) as made:
        yield made


def statuses(responses: list[httpx.Response]) -> dict[int, int]:
    counted: dict[int, int] = {}
    for response in responses:
        counted[response.status_code] = counted.get(response.status_code, 0) + 1
    return counted


async def logins(url: str, bodies: list[dict[str, str]],
                 headers: list[dict[str, str]] | None = None) -> list[httpx.Response]:
    """Every login at once, each on its own connection."""
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=WAIT, limits=limits) as client:
        return list(await asyncio.gather(*(
            client.post("/api/v1/auth/login", json=body,
                        headers=headers[i] if headers else None)
            for i, body in enumerate(bodies)
        )))


def via(address: str) -> dict[str, str]:
    """Headers of a request a trusted proxy forwards for ``address``."""
    return {"X-Forwarded-For": address}


# -- finding 1: parallel tries get past the login throttle --------------------------------------


PARALLEL = [
    # (scenario, tries, the most that may reach the password check)
    pytest.param([{"email": EMAIL, "password": f"{WRONG} {i}"} for i in range(60)], 5,
                 id="60-wrong-passwords-one-account"),
    pytest.param([{"email": EMAIL, "password": f"{WRONG} {i}"} for i in range(39)]
                 + [{"email": EMAIL, "password": PASSWORD}], 5,
                 id="40-guesses-the-right-one-last"),
    pytest.param([{"email": f"ghost{i}@example.com", "password": WRONG} for i in range(60)], 20,
                 id="60-accounts-one-address"),
]


@pytest.mark.parametrize(("tries", "checked"), PARALLEL)
def test_parallel_logins_are_counted_before_they_are_checked(
    world: World, tries: list[dict[str, str]], checked: int
) -> None:
    responses = asyncio.run(logins(world.url, tries))
    counted = statuses(responses)
    assert set(counted) <= {200, 401, 429}, counted
    assert counted.get(401, 0) + counted.get(200, 0) <= checked, counted
    assert counted[429] >= len(tries) - checked, counted
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.json()["code"] == "rate_limited" for r in refused)
    assert all(0 < int(r.headers["Retry-After"]) <= 15 * 60 for r in refused)


# -- finding 8: anyone can lock an owner out ----------------------------------------------------


ATTACKER, OWNER_HOME, OWNER_PHONE = "203.0.113.7", "198.51.100.2", "2001:db8:1:2::5"


def test_failures_from_one_address_never_lock_the_owner_out(world: World) -> None:
    wrong = {"email": EMAIL, "password": WRONG}
    tries = [world.http.post("/api/v1/auth/login", json=wrong, headers=via(ATTACKER))
             for _ in range(8)]
    assert [r.status_code for r in tries] == [401] * 5 + [429] * 3
    # The attacker's address is refused even with the right password ...
    right = {"email": EMAIL, "password": PASSWORD}
    assert world.http.post("/api/v1/auth/login", json=right,
                           headers=via(ATTACKER)).status_code == 429
    # ... and the owner, anywhere else, logs in as usual.
    for address in (OWNER_HOME, OWNER_PHONE):
        response = world.http.post("/api/v1/auth/login", json=right, headers=via(address))
        assert response.status_code == 200, (address, response.text)
    # The log names the owner's own address, as the trusted proxy said.
    started = [meta for kind, meta in world.events() if kind == "session.started"]
    assert started[-2]["client_ip"] == OWNER_HOME and started[-1]["client_ip"] == OWNER_PHONE


def test_an_account_under_attack_hears_each_address_once(tmp_path: Path) -> None:
    with running(secure_settings(tmp_path, login_account_alarm=10)) as world:
        wrong = {"email": EMAIL, "password": WRONG}
        botnet = [f"203.0.113.{n}" for n in range(1, 11)]
        responses = asyncio.run(logins(world.url, [wrong] * 10, [via(a) for a in botnet]))
        assert statuses(responses) == {401: 10}
        # Past the alarm, an address that failed once is refused on the account ...
        assert world.http.post("/api/v1/auth/login", json=wrong,
                               headers=via(botnet[0])).status_code == 429
        # ... a new address is still heard: a wrong password is checked (and counted) ...
        assert world.http.post("/api/v1/auth/login", json=wrong,
                               headers=via("192.0.2.50")).status_code == 401
        assert world.http.post("/api/v1/auth/login", json=wrong,
                               headers=via("192.0.2.50")).status_code == 429
        # ... and the owner's right password goes through.
        right = {"email": EMAIL, "password": PASSWORD}
        assert world.http.post("/api/v1/auth/login", json=right,
                               headers=via(OWNER_HOME)).status_code == 200


def test_an_untrusted_peer_cannot_choose_its_address(tmp_path: Path) -> None:
    with running(secure_settings(tmp_path, trusted_proxies=[])) as world:
        wrong = {"email": EMAIL, "password": WRONG}
        codes = [world.http.post("/api/v1/auth/login", json=wrong,
                                 headers=via(f"203.0.113.{n}")).status_code for n in range(6)]
        assert codes == [401] * 5 + [429]
        assert world.events()[-1][1]["client_ip"] == "127.0.0.1"


# -- finding 7: registration floods and who has an account --------------------------------------


def test_registration_is_limited_per_address(world: World) -> None:
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=world.url, timeout=WAIT) as client:
            return list(await asyncio.gather(*(
                client.post("/api/v1/auth/register",
                            json={"email": f"new{i}@example.com", "password": PASSWORD})
                for i in range(30)
            )))

    counted = statuses(asyncio.run(flood()))
    # The world's own registration came from this address too.
    assert counted == {202: 9, 429: 21}, counted
    registered = [kind for kind, _ in world.events() if kind == "user.registered"]
    assert len(registered) == 10
    # Another address may still register.
    other = world.http.post("/api/v1/auth/register", headers=via(OWNER_HOME),
                            json={"email": "late@example.com", "password": PASSWORD})
    assert other.status_code == 202


def test_reset_requests_are_limited_per_address(world: World) -> None:
    answers = [world.http.post("/api/v1/auth/reset-password",
                               json={"email": f"someone{i}@example.com"}).status_code
               for i in range(12)]
    assert answers == [202] * 10 + [429] * 2
    elsewhere = world.http.post("/api/v1/auth/reset-password", json={"email": EMAIL},
                                headers=via(OWNER_HOME))
    assert elsewhere.status_code == 202


def test_a_taken_address_gets_the_same_answer_and_its_owner_a_mail(world: World) -> None:
    fresh = world.http.post("/api/v1/auth/register",
                            json={"email": "fresh@example.com", "password": PASSWORD})
    taken = world.http.post("/api/v1/auth/register",
                            json={"email": "Owner@EXAMPLE.com", "password": "another one 123"})
    assert (fresh.status_code, taken.status_code) == (202, 202)
    assert set(fresh.json()) == set(taken.json()) == {"email", "status"}
    assert fresh.headers["content-type"] == taken.headers["content-type"]
    registered = [kind for kind, _ in world.events() if kind == "user.registered"]
    assert len(registered) == 2  # the world's owner and fresh@: no second owner@
    # The old password still works; the new one made nothing.
    assert world.http.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD}
                           ).status_code == 200
    outbox = world.settings.data_dir / "outbox"
    deadline = time.monotonic() + WAIT
    while not any("tried to register" in p.read_text() for p in outbox.glob("*.eml")):
        assert time.monotonic() < deadline, "no mail to the owner"
        time.sleep(0.05)


# -- finding 2: bodies counted as they arrive ---------------------------------------------------


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b" " * piece


BODY_LIMITS = [
    # (scenario, path, content type, headers, limit the app may take in)
    pytest.param("/api/v1/auth/login", "application/json", False, MAX_JSON_BODY,
                 id="chunked-json-no-login"),
    pytest.param("/api/v1/widgets/{widget}/sessions", "application/json", False, MAX_JSON_BODY,
                 id="chunked-json-visitor"),
    pytest.param("/api/v1/widgets/{widget}/files", "multipart/form-data; boundary=x", True,
                 5 * 1024 * 1024 + 64 * 1024, id="chunked-upload"),
]


@pytest.mark.parametrize(("path", "content_type", "as_visitor", "limit"), BODY_LIMITS)
def test_a_chunked_body_stops_at_the_limit(tmp_path: Path, path: str, content_type: str,
                                           as_visitor: bool, limit: int) -> None:
    counter: list[ByteCounter] = []

    def wrap(app: Any) -> ByteCounter:
        counter.append(ByteCounter(app))
        return counter[0]

    with running(secure_settings(tmp_path), wrap=wrap) as world:
        counter[0].received = 0
        headers = {"Content-Type": content_type, "Origin": ORIGIN}
        if as_visitor:
            headers |= world.visitor
        answer: httpx.Response | None = None
        # 40 MB that declare no length: the server must stop reading, not hold it all.
        with contextlib.suppress(httpx.TransportError):
            answer = world.http.post(path.format(widget=world.widget_id), headers=headers,
                                     content=_chunks(40 * 1024 * 1024))
        if answer is not None:
            assert answer.status_code == 413, answer.text
            assert answer.json()["code"] in ("payload_too_large", "file_too_large")
        assert counter[0].received <= limit + 256 * 1024, counter[0].received
        assert world.http.get("/healthz").status_code == 200


def test_a_chunked_body_just_over_the_limit_is_answered_413(world: World) -> None:
    response = world.http.post(
        "/api/v1/auth/login", headers={"Content-Type": "application/json"},
        content=_chunks(MAX_JSON_BODY + 10, 4096),
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert response.headers["connection"] == "close"


# -- finding 6: deep JSON -------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


DEEP_BODIES = [
    pytest.param("/api/v1/auth/login", nested(100_000), id="login-100k-deep"),
    pytest.param("/api/v1/auth/register",
                 '{"email": ' + nested(MAX_JSON_DEPTH) + ', "password": "x"}',
                 id="register-one-level-too-deep"),
    pytest.param("/api/v1/auth/login",
                 '{"email": ' + "{\"a\": " * MAX_JSON_DEPTH + "1" + "}" * MAX_JSON_DEPTH
                 + ', "password": "x"}', id="deep-field"),
    pytest.param("/api/v1/widgets/{widget}/sessions", nested(50_000), id="sessions"),
    pytest.param("/api/v1/widgets/{widget}/messages",
                 '{"text": "hi", "file_ids": ' + nested(20_000) + "}", id="messages"),
]


@pytest.mark.parametrize(("path", "body"), DEEP_BODIES)
def test_deep_json_is_invalid_json_not_a_server_error(world: World, path: str,
                                                      body: str) -> None:
    with capture_logs() as logs:
        response = world.http.post(path.format(widget=world.widget_id), content=body,
                                   headers={"Content-Type": "application/json", **world.visitor})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_json"
    assert not [line for line in logs if line["log_level"] in ("error", "critical")], logs


def test_json_at_the_depth_limit_is_read(world: World) -> None:
    depth = MAX_JSON_DEPTH - 1  # the body object itself is one level
    body = '{"email": ' + "[" * depth + "]" * depth + ', "password": "x"}'
    response = world.http.post("/api/v1/auth/login", content=body,
                               headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")


def _ws_url(world: World, token: str | None = None) -> str:
    url = f"{world.url.replace('http://', 'ws://')}/api/v1/widgets/{world.widget_id}/stream"
    return url if token is None else f"{url}?token={token}"


async def _close_code(ws: Any) -> int | None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), WAIT)
    return ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None


def test_a_deep_first_frame_closes_with_a_close_frame(world: World) -> None:
    async def go() -> int | None:
        async with connect(_ws_url(world), origin=Origin(ORIGIN), open_timeout=WAIT) as ws:
            await ws.send(nested(100_000))
            return await _close_code(ws)

    with capture_logs() as logs:
        code = asyncio.run(go())
    assert code == 4401
    assert not [line for line in logs if line["log_level"] == "error"], logs


def test_a_deep_frame_is_refused_and_the_socket_stays_usable(world: World) -> None:
    token = world.visitor["Authorization"].removeprefix("Bearer ")

    async def go() -> list[dict[str, Any]]:
        frames = []
        async with connect(_ws_url(world, token), origin=Origin(ORIGIN),
                           open_timeout=WAIT) as ws:
            frames.append(json.loads(await ws.recv()))  # ready
            await ws.send(nested(100_000))
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), WAIT)))
            await ws.send(json.dumps({"type": "ping"}))
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), WAIT)))
        return frames

    with capture_logs() as logs:
        ready, error, pong = asyncio.run(go())
    assert ready["type"] == "ready"
    assert error["type"] == "error" and error["code"] == "invalid_frame"
    assert "deeper" in error["text"]
    assert pong == {"type": "pong"}
    assert not [line for line in logs if line["log_level"] == "error"], logs


# -- finding 11: slow clients and aborted bodies ------------------------------------------------


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=WAIT)
    return sock


def _dropped(sock: socket.socket, within: float = WAIT) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds, while it sends nothing
    more; anything the server sends meanwhile is read and ignored."""
    deadline = time.monotonic() + within
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionError:
            return True
    return False


SLOW = [
    # (scenario, what the client sends first, what it then sends now and then)
    pytest.param(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a",
                 id="slow-headers"),
    pytest.param(b"", b"", id="connects-and-says-nothing"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\n", b"",
                 id="keep-alive-then-half-a-head"),
    pytest.param(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/json\r\nContent-Length: 100000\r\n\r\n{\"email\": ", b"a",
                 id="slow-body"),
    pytest.param(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/json\r\nTransfer-Encoding: chunked\r\n\r\nffff\r\n", b"a",
                 id="slow-chunked-body"),
]


@pytest.mark.parametrize("http", ["httptools", "h11"])
@pytest.mark.parametrize(("start", "trickle"), SLOW)
def test_slow_clients_are_dropped(tmp_path: Path, start: bytes, trickle: bytes,
                                  http: str) -> None:
    settings = secure_settings(tmp_path, header_timeout_seconds=1, body_timeout_seconds=2)
    with capture_logs() as logs, running(settings, http=http) as world:
        socks = [_raw(world.url) for _ in range(20)]
        for sock in socks:
            sock.sendall(start)
        # Each keeps sending a byte now and then, never finishing.
        deadline = time.monotonic() + WAIT
        open_socks = list(socks)
        while open_socks and time.monotonic() < deadline:
            for sock in list(open_socks):
                try:
                    sock.send(trickle)
                except OSError:
                    open_socks.remove(sock)
                    continue
                if _dropped(sock, 0.05):
                    open_socks.remove(sock)
            time.sleep(0.3)
        assert open_socks == [], f"{len(open_socks)} slow clients still connected"
        for sock in socks:
            sock.close()
        assert world.http.get("/healthz").status_code == 200
    assert [line for line in logs if line["event"] == "http.client_too_slow"]
    assert not [line for line in logs if line["log_level"] == "error"], logs


def test_a_head_too_large_is_refused(world: World) -> None:
    sock = _raw(world.url)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    with contextlib.suppress(OSError):
        for i in range(200):
            sock.sendall(f"X-Filler-{i}: {'y' * 1000}\r\n".encode())
    answer = b""
    with contextlib.suppress(OSError):
        sock.settimeout(WAIT)
        while chunk := sock.recv(65536):
            answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431") or answer.startswith(b"HTTP/1.1 400"), answer[:80]


def test_the_connection_cap_answers_503_then_recovers(tmp_path: Path) -> None:
    settings = secure_settings(tmp_path, max_connections=40, header_timeout_seconds=120)
    with running(settings) as world:
        world.http.close()  # its kept-alive connection would count too
        idle = [_raw(world.url) for _ in range(40)]
        try:
            with httpx.Client(base_url=world.url, timeout=WAIT) as fresh:
                assert fresh.get("/healthz").status_code == 503
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + WAIT
        while True:
            with httpx.Client(base_url=world.url, timeout=WAIT) as fresh:
                if fresh.get("/healthz").status_code == 200:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_sockets_count_against_the_connection_cap(tmp_path: Path) -> None:
    settings = secure_settings(tmp_path, max_connections=10)
    with running(settings) as world:
        token = world.visitor["Authorization"].removeprefix("Bearer ")

        async def go() -> tuple[int, list[int]]:
            opened, refused = [], []
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(15):
                    try:
                        ws = await stack.enter_async_context(connect(
                            _ws_url(world, token), origin=Origin(ORIGIN), open_timeout=WAIT))
                    except InvalidStatus as exc:
                        refused.append(exc.response.status_code)
                    else:
                        await ws.recv()  # ready
                        opened.append(ws)
            return len(opened), refused

        opened, refused = asyncio.run(go())
    # The world's client keeps one connection open; each refused socket was answered 503.
    assert opened < 10 and refused == [503] * (15 - opened), (opened, refused)


ABORTED = [
    pytest.param("/api/v1/auth/login", "application/json", False, id="json-body"),
    pytest.param("/api/v1/widgets/{widget}/files", "multipart/form-data; boundary=x", True,
                 id="upload"),
]


@pytest.mark.parametrize(("path", "content_type", "as_visitor"), ABORTED)
def test_an_aborted_body_is_one_info_line(tmp_path: Path, path: str, content_type: str,
                                          as_visitor: bool,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with running(secure_settings(tmp_path)) as world, capture_logs() as logs:
        headers = {"Content-Type": content_type, "Content-Length": "100000", "Host": "x",
                   **(world.visitor if as_visitor else {})}
        head = f"POST {path.format(widget=world.widget_id)} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock = _raw(world.url)
        sock.sendall(head.encode() + b"x" * 5000)
        sock.close()
        deadline = time.monotonic() + WAIT
        while not [line for line in logs if line["event"] == "http.body_aborted"]:
            assert time.monotonic() < deadline, logs
            time.sleep(0.05)
        assert world.http.get("/healthz").status_code == 200
    aborted = [line for line in logs if line["event"] == "http.body_aborted"]
    assert len(aborted) == 1 and aborted[0]["log_level"] == "info"
    assert not [line for line in logs if line["log_level"] in ("error", "critical")], logs
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text


# -- finding 9: file permissions -----------------------------------------------------------------


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o000])
def test_private_files_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    settings = secure_settings(tmp_path)
    with umask(mask):
        with running(settings) as world:
            db = settings.database_path
            assert world.http.post("/api/v1/auth/reset-password",
                                   json={"email": EMAIL}).status_code == 202
            wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
            assert wal.exists() and shm.exists()
            files = [db, wal, shm, settings.data_dir / "jwt_secret"]
            assert {p: oct(mode(p)) for p in files} == {p: "0o600" for p in files}
            copy = tmp_path / "backups" / "copy.db"
            backup(db, copy)
        mails = list((settings.data_dir / "outbox").glob("*.eml"))
        assert len(mails) == 2  # verification and reset: both hold live tokens
    assert mode(settings.data_dir) == 0o700
    assert mode(tmp_path / "backups") == 0o700
    for path in [copy, *mails]:
        assert mode(path) == 0o600, (path, oct(mode(path)))


def test_wider_files_are_named_at_start(tmp_path: Path) -> None:
    settings = secure_settings(tmp_path)
    with running(settings):
        pass
    os.chmod(settings.data_dir, 0o755)
    os.chmod(settings.database_path, 0o644)
    with capture_logs() as logs, running(settings.model_copy(update={})):
        pass
    warned = {line["path"]: line["mode"] for line in logs if line["event"] == "files.too_open"}
    assert warned == {str(settings.data_dir): "0o755", str(settings.database_path): "0o644"}


# -- findings 10 and 12: headers, HSTS, Host ------------------------------------------------------


BASE_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}

EVERY_RESPONSE = [
    pytest.param("GET", "/healthz", {}, id="probe"),
    pytest.param("GET", "/api/v1/openapi.json", {}, id="spec"),
    pytest.param("GET", "/docs", {}, id="docs"),
    pytest.param("GET", "/docs/try", {}, id="docs-try"),
    pytest.param("GET", "/docs/assets/0/try.js", {}, id="docs-asset-404"),
    pytest.param("GET", "/", {}, id="home"),
    pytest.param("GET", "/widget.js", {}, id="script"),
    pytest.param("GET", "/api/v1/auth/me", {}, id="401"),
    pytest.param("GET", "/api/v1/nothing-here", {}, id="404"),
    pytest.param("DELETE", "/api/v1/auth/login", {}, id="405"),
    pytest.param("POST", "/api/v1/auth/login", {"content": b"{nope"}, id="400"),
    pytest.param("GET", "/api/v1/widgets/{widget}/config", {"origin": True}, id="visitor"),
    pytest.param("OPTIONS", "/api/v1/widgets/{widget}/sessions", {"origin": True},
                 id="preflight"),
    pytest.param("GET", "/api/v1/assistants", {"owner": True}, id="owner"),
]


@pytest.mark.parametrize(("method", "path", "how"), EVERY_RESPONSE)
def test_security_headers_on_every_response(world: World, method: str, path: str,
                                            how: dict[str, Any]) -> None:
    headers: dict[str, str] = {}
    if how.get("origin"):
        headers["Origin"] = ORIGIN
    if how.get("owner"):
        headers |= world.owner
    response = world.http.request(method, path.format(widget=world.widget_id), headers=headers,
                                  content=how.get("content"))
    for name, value in BASE_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.headers)
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, csp
    assert "strict-transport-security" not in response.headers  # plain HTTP


def test_the_docs_page_allows_only_its_own_style(world: World) -> None:
    csp = world.http.get("/docs").headers["content-security-policy"]
    assert "script-src" not in csp and "'unsafe-inline'" not in csp
    assert "style-src 'sha256-" in csp


HSTS = [
    # (scenario, trusted proxies, forwarded proto, HSTS expected)
    pytest.param(["127.0.0.1", "::1"], "https", True, id="https-through-a-trusted-proxy"),
    pytest.param(["127.0.0.0/8"], "https", True, id="trusted-network"),
    pytest.param(["127.0.0.1", "::1"], None, False, id="plain-http"),
    pytest.param([], "https", False, id="untrusted-peer-claims-https"),
    pytest.param(["10.0.0.1"], "https", False, id="another-proxy-is-trusted"),
]


@pytest.mark.parametrize(("proxies", "proto", "expected"), HSTS)
def test_hsts_when_the_request_came_over_https(tmp_path: Path, proxies: list[str],
                                               proto: str | None, expected: bool) -> None:
    with running(secure_settings(tmp_path, trusted_proxies=proxies)) as world:
        headers = {"X-Forwarded-Proto": proto} if proto else {}
        for path in ("/healthz", "/api/v1/auth/me", "/docs"):
            got = world.http.get(path, headers=headers).headers
            assert ("strict-transport-security" in got) is expected, path
            if expected:
                assert got["strict-transport-security"] == "max-age=31536000"


HOSTS = [
    # (scenario, settings, Host header, base the URLs must use; None: the server's address)
    pytest.param({}, "evil.example", None, id="made-up-host"),
    pytest.param({}, "evil.example:80", None, id="made-up-host-and-port"),
    pytest.param({"allowed_hosts": ["chat.example.com"]}, "chat.example.com",
                 "http://chat.example.com", id="allowed-host"),
    pytest.param({"allowed_hosts": ["chat.example.com"]}, "evil.example", None,
                 id="not-the-allowed-host"),
    pytest.param({"public_url": "https://chat.example.org/"}, "evil.example",
                 "https://chat.example.org", id="public-url-wins"),
]


@pytest.mark.parametrize(("overrides", "host", "base"), HOSTS)
def test_urls_never_come_from_a_made_up_host(tmp_path: Path, overrides: dict[str, Any],
                                             host: str, base: str | None) -> None:
    with running(secure_settings(tmp_path, **overrides)) as world:
        expected = base or world.url
        manifest = world.http.get("/widget.json", headers={"Host": host}).json()
        assert manifest["script_url"] == f"{expected}/widget.js"
        embed = world.http.get(f"/api/v1/widgets/{world.widget_id}/embed-code",
                               headers={"Host": host, **world.owner})
        assert embed.status_code == 200, embed.text
        assert "evil.example" not in embed.text and f"{expected}/widget" in embed.text
        spec = world.http.get("/api/v1/openapi.json", headers={"Host": host}).json()
        assert spec["servers"] == [{"url": expected}]


def test_the_docs_and_home_pages_work_under_their_csp(world: World) -> None:
    from tests.test_widget import _launch, _need_chromium

    _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = _launch(pw)
        try:
            page = browser.new_page()
            messages: list[str] = []
            page.on("console", lambda m: messages.append(m.text))
            # Injected by the browser itself, outside the page's policy.
            page.add_init_script(
                "window.__violations = [];"
                "document.addEventListener('securitypolicyviolation',"
                " (e) => window.__violations.push(e.violatedDirective));"
            )
            for path in ("/docs", "/"):
                response = page.goto(f"{world.url}{path}")
                assert response is not None and "content-security-policy" in response.headers
                page.wait_for_load_state("load")
                # The styles applied: the one inline <style> is allowed by its hash.
                assert page.evaluate(
                    "getComputedStyle(document.body).fontFamily").startswith("system-ui"), path
                assert page.evaluate("window.__violations") == [], path
        finally:
            browser.close()
    assert not [m for m in messages if "Content Security Policy" in m], messages


# -- finding 14: the spec and the behaviour agree ------------------------------------------------


ALLOW = [
    # (scenario, method, path, the methods Allow must name)
    pytest.param("POST", "/api/v1/assistants/a1", {"GET", "HEAD", "PUT", "PATCH", "DELETE"},
                 id="item"),
    pytest.param("DELETE", "/api/v1/assistants", {"GET", "HEAD", "POST"}, id="collection"),
    pytest.param("PUT", "/api/v1/widgets/w1/sessions", {"POST", "OPTIONS"}, id="sessions"),
    pytest.param("GET", "/api/v1/auth/login", {"POST"}, id="login"),
]


@pytest.mark.parametrize(("method", "path", "allowed"), ALLOW)
def test_405_names_every_method_of_the_path(world: World, method: str, path: str,
                                            allowed: set[str]) -> None:
    response = world.http.request(method, path)
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


def test_the_document_says_what_the_handlers_do(world: World) -> None:
    spec = world.http.get("/api/v1/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            if "requestBody" in op and "application/json" in op["requestBody"]["content"]:
                assert "invalid_json" in op["responses"]["400"]["description"], (method, path)
                assert "payload_too_large" in op["responses"]["413"]["description"]
            for param in op.get("parameters", []):
                if param["name"] in ("after", "before", "limit"):
                    assert param["schema"]["type"] == "integer", (method, path, param)
    sessions = spec["paths"]["/api/v1/widgets/{id}/sessions"]["post"]
    assert sessions["requestBody"]["required"] is False
    login = spec["paths"]["/api/v1/auth/login"]["post"]
    assert login["requestBody"]["required"] is True
    # Behaviour as documented: a session without a body, a cursor that is not a whole number.
    bare = world.http.post(f"/api/v1/widgets/{world.widget_id}/sessions",
                           headers={"Origin": ORIGIN})
    assert bare.status_code == 201, bare.text
    bad = world.http.get("/api/v1/assistants?after=abc", headers=world.owner)
    assert (bad.status_code, bad.json()["code"]) == (422, "validation_error")

