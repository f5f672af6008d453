"""Visitor abuse limits (issue 14, findings 3 and 4): sessions, messages, uploads and sockets per
visitor and per client address, and a widget's reply slots shared fairly between addresses.

The counters first, with an injected clock; then each limit end to end on a real uvicorn server
with real HTTP and WebSocket clients, a second loopback address (127.0.0.2) standing for another
visitor's network. Every refusal is a 429 ``rate_limited`` with ``Retry-After`` and writes
nothing to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from loacl.domain.errors import LoaclError
from loacl.services.limits import VisitorLimits
from loacl.services.ratelimit import Slots, WeightedLimiter
from loacl.settings import Settings
from tests.live import OPEN_LIMITS
from tests.test_chat import (
    ORIGIN,
    WAIT,
    Gate,
    Site,
    Visitor,
    audit_ok,
    chat_settings,
    live,
    log_of,
    wait_until,
)

OTHER_ADDRESS = "127.0.0.2"  # loopback too: another visitor's network, as the server sees it


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused(error: pytest.ExceptionInfo[LoaclError]) -> int:
    assert error.value.code == "rate_limited"
    wait = error.value.extra["retry_after"]
    assert isinstance(wait, int) and wait >= 1
    return wait


# -- the counters ------------------------------------------------------------------------------


def test_a_weighted_window_counts_amounts_and_says_when_more_fits() -> None:
    clock = Clock()
    bytes_a_day = WeightedLimiter(1000, 100, clock)
    assert bytes_a_day.retry_after("a", 600) == 0
    bytes_a_day.hit("a", 600)
    clock.now += 30
    bytes_a_day.hit("a", 300)
    assert bytes_a_day.retry_after("a", 100) == 0
    # 200 more fits once the first 600 leave the window, 70 s from now.
    assert bytes_a_day.retry_after("a", 200) == 70
    assert bytes_a_day.retry_after("b", 1000) == 0  # keys are apart
    assert bytes_a_day.retry_after("b", 1001) == 100  # never fits: the whole window
    clock.now += 70
    assert bytes_a_day.retry_after("a", 200) == 0
    clock.now += 30
    assert bytes_a_day.retry_after("a", 1000) == 0
    assert bytes_a_day._hits == {} and bytes_a_day._totals == {}  # idle keys are forgotten


def test_slots_count_what_is_held_and_forget_what_is_given_back() -> None:
    slots = Slots(2)
    slots.take("a")
    slots.take("a")
    assert slots.full("a") and not slots.full("b")
    slots.give_back("a")
    assert slots.held("a") == 1
    slots.give_back("a")
    assert slots._held == {}


def _limits(clock: Clock, **values: int) -> VisitorLimits:
    return VisitorLimits(Settings(**(OPEN_LIMITS | values)), clock)


def test_an_address_is_counted_over_all_its_visitors() -> None:
    clock = Clock()
    limits = _limits(clock, messages_per_ip_minute=3, messages_per_visitor_day=4)
    for visitor in ("v1", "v2", "v3"):
        limits.message(visitor, "10.0.0.1", per_minute=10)
    with pytest.raises(LoaclError) as error:
        limits.message("v4", "10.0.0.1", per_minute=10)  # a new session changes nothing
    assert refused(error) == 60
    limits.message("v4", "10.0.0.2", per_minute=10)  # another address is not held back
    clock.now += 60
    limits.message("v1", "10.0.0.1", per_minute=10)


def test_a_refusal_counts_nothing_and_the_minute_speaks_before_the_day() -> None:
    clock = Clock()
    limits = _limits(clock, messages_per_visitor_day=2)
    limits.message("v1", "10.0.0.1", per_minute=1)
    with pytest.raises(LoaclError) as error:
        limits.message("v1", "10.0.0.1", per_minute=1)
    assert refused(error) == 60 and "too fast" in error.value.message
    clock.now += 60
    limits.message("v1", "10.0.0.1", per_minute=1)  # the refused one did not count a day
    clock.now += 60
    with pytest.raises(LoaclError) as error:
        limits.message("v1", "10.0.0.1", per_minute=1)
    assert "today" in error.value.message
    assert refused(error) == 24 * 3600 - 120
    # Refused for the day, the minute was not spent either.
    assert limits._per_minute[1].retry_after("visitor:v1") == 0


def test_uploads_count_files_and_bytes_and_a_refusal_counts_neither() -> None:
    clock = Clock()
    limits = _limits(clock, uploads_per_visitor_day=3, upload_bytes_per_visitor_day=1000,
                     uploads_per_ip_day=4, upload_bytes_per_ip_day=10_000)
    limits.upload("v1", "10.0.0.1", 600)
    with pytest.raises(LoaclError) as error:
        limits.upload("v1", "10.0.0.1", 500)
    refused(error)
    limits.upload("v1", "10.0.0.1", 400)
    with pytest.raises(LoaclError):
        limits.upload("v1", "10.0.0.1", 1)  # 1000 bytes used: not one more
    limits.upload("v2", "10.0.0.1", 10)
    limits.upload("v3", "10.0.0.1", 10)
    with pytest.raises(LoaclError):
        limits.upload("v4", "10.0.0.1", 10)  # the address's fifth file of the day


def test_addresses_that_never_come_back_are_swept_from_memory() -> None:
    clock = Clock()
    limits = _limits(clock, messages_per_ip_minute=5, messages_per_ip_day=100,
                     uploads_per_ip_day=5, upload_bytes_per_ip_day=1000)
    for n in range(50):
        limits.message(f"v{n}", f"10.0.{n}.1", per_minute=10)
        limits.upload(f"v{n}", f"10.0.{n}.1", 10)
    assert len(limits.ip_day._hits) == 50
    clock.now += 24 * 3600  # a day later, one new visitor: every window is swept
    limits.message("new", "10.9.9.9", per_minute=10)
    windows = [limits.ip_minute, limits.ip_day, limits.uploads_ip, limits._per_minute[10]]
    assert [len(w._hits) for w in windows] == [1, 1, 0, 1]
    assert limits.bytes_ip._hits == {} and limits.bytes_ip._totals == {}


def test_reply_slots_are_shared_between_addresses_and_given_back_once() -> None:
    limits = _limits(Clock(), replies_per_ip=2)
    assert limits.replies_widget.limit == 64  # provider_concurrency
    held = [limits.reply("w", "10.0.0.1"), limits.reply("w", "10.0.0.1")]
    with pytest.raises(LoaclError) as error:
        limits.reply("w", "10.0.0.1")
    assert refused(error) == 2 and "your network" in error.value.message
    other = limits.reply("w", "10.0.0.2")
    limits.reply("other-widget", "10.0.0.1").release()
    held[0].release()
    held[0].release()  # a second release gives nothing back twice
    assert limits.replies_widget.held("w") == 2
    limits.reply("w", "10.0.0.1").release()
    for lease in (held[1], other):
        lease.release()
    assert limits.replies_widget._held == {} and limits.replies_ip._held == {}


def test_a_widget_full_of_replies_refuses_whoever_asks() -> None:
    limits = VisitorLimits(Settings(**OPEN_LIMITS, provider_concurrency=1), Clock())
    lease = limits.reply("w", "10.0.0.1")
    with pytest.raises(LoaclError) as error:
        limits.reply("w", "10.0.0.2")
    assert "many visitors" in error.value.message
    lease.release()


def test_a_socket_lease_holds_its_address_and_visitor_until_released() -> None:
    limits = _limits(Clock(), sockets_per_ip=3, sockets_per_visitor=1)
    first = limits.socket("10.0.0.1", "v1")
    second = limits.socket("10.0.0.1")
    with pytest.raises(LoaclError):
        limits.socket_visitor(second, "v1")  # v1 holds its one socket
    assert limits.sockets_ip.held("ip:10.0.0.1") == 1, "the refused lease gave its address back"
    first.release()
    third = limits.socket("10.0.0.1")
    limits.socket_visitor(third, "v1")
    third.release()
    assert limits.sockets_ip._held == {} and limits.sockets_visitor._held == {}


# -- end to end ----------------------------------------------------------------------------------


def from_other_address(site: Site) -> httpx.Client:
    return httpx.Client(
        base_url=site.url, timeout=WAIT,
        transport=httpx.HTTPTransport(local_address=OTHER_ADDRESS),
    )


def session(http: httpx.Client, widget_id: str, **body: Any) -> httpx.Response:
    return http.post(f"/api/v1/widgets/{widget_id}/sessions", json=body,
                     headers={"Origin": ORIGIN})


def visitor_of(widget_id: str, response: httpx.Response) -> Visitor:
    assert response.status_code == 201, response.text
    body = response.json()
    return Visitor(widget_id, body["visitor_id"], body["conversation_id"],
                   {"Origin": ORIGIN, "Authorization": f"Bearer {body['visitor_token']}"})


def assert_rate_limited(response: httpx.Response, within: int | None = None) -> int:
    """A 429 rate_limited whose Retry-After header and body agree; returns the wait."""
    assert response.status_code == 429, response.text
    body = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert body["code"] == "rate_limited"
    wait = int(response.headers["Retry-After"])
    assert body["retry_after"] == wait >= 1
    if within is not None:
        assert wait <= within
    return wait


def kinds(settings: Settings) -> list[str]:
    return [row.type for row in log_of(settings)]


@contextlib.contextmanager
def site_with(tmp_path: Path, root: str, **limits: Any) -> Iterator[Site]:
    with live(chat_settings(tmp_path, root, **limits)) as site:
        site.register()
        yield site
    audit_ok(site.settings)


def test_one_address_may_start_only_so_many_new_sessions(root: str, tmp_path: Path) -> None:
    with site_with(tmp_path, root, sessions_per_ip_hour=3) as site:
        widget_id = site.widget()
        first = visitor_of(widget_id, session(site.http, widget_id))
        tokens = [session(site.http, widget_id) for _ in range(2)]
        assert all(r.status_code == 201 for r in tokens)
        before = kinds(site.settings)
        fourth = session(site.http, widget_id)
        wait = assert_rate_limited(fourth, within=3600)
        assert wait > 3000  # an hour's window, just started
        assert fourth.headers["access-control-allow-origin"] == ORIGIN  # the widget can say why
        assert kinds(site.settings) == before  # nothing written
        # A returning visitor brings its token: the same conversation, not a new session.
        token = first.headers["Authorization"].removeprefix("Bearer ")
        again = session(site.http, widget_id, visitor_token=token)
        assert again.status_code == 201, again.text
        assert again.json()["conversation_id"] == first.conversation_id
        # Another network is not held back by this one.
        with from_other_address(site) as other:
            assert session(other, widget_id).status_code == 201
        assert kinds(site.settings).count("conversation.started") == 4


def test_new_sessions_do_not_reset_what_one_address_may_send(root: str, tmp_path: Path) -> None:
    """Finding 4: ten messages, then 429 on one token, but every new session sent ten more."""
    with site_with(tmp_path, root, messages_per_ip_minute=4) as site:
        widget_id = site.widget(per_minute=2)
        first = visitor_of(widget_id, session(site.http, widget_id))
        assert [site.post(first, f"echo:{n}").status_code for n in range(2)] == [201, 201]
        assert_rate_limited(site.post(first, "echo:third"), within=60)  # the widget's rate
        second = visitor_of(widget_id, session(site.http, widget_id))
        assert [site.post(second, f"echo:{n}").status_code for n in range(2)] == [201, 201]
        before = log_of(site.settings)
        third = visitor_of(widget_id, session(site.http, widget_id))
        assert_rate_limited(site.post(third, "echo:a new session"), within=60)
        assert_rate_limited(site.post(second, "echo:once more"), within=60)
        assert [r.type for r in log_of(site.settings)] == [r.type for r in before] + [
            "conversation.started"  # the session; neither refused message left a trace
        ]
        with from_other_address(site) as other:
            elsewhere = visitor_of(widget_id, session(other, widget_id))
            answered = other.post(f"/api/v1/widgets/{widget_id}/messages",
                                  json={"text": "echo:hello"}, headers=elsewhere.headers)
            assert answered.status_code == 201, answered.text
        log = kinds(site.settings)
        assert log.count("message.posted") == 5
        assert log.count("assistant.started") == log.count("assistant.completed") == 5


def test_a_day_of_messages_is_counted_per_visitor_and_per_address(
    root: str, tmp_path: Path
) -> None:
    with site_with(tmp_path, root, messages_per_visitor_day=2, messages_per_ip_day=3) as site:
        widget_id = site.widget()
        first = visitor_of(widget_id, session(site.http, widget_id))
        assert [site.post(first, f"echo:{n}").status_code for n in range(2)] == [201, 201]
        response = site.post(first, "echo:third today")
        assert assert_rate_limited(response, within=24 * 3600) > 3600
        assert "today" in response.json()["detail"]
        second = visitor_of(widget_id, session(site.http, widget_id))
        assert site.post(second, "echo:one").status_code == 201
        assert_rate_limited(site.post(second, "echo:two"))  # the address's fourth
        assert kinds(site.settings).count("message.posted") == 3


def test_uploads_are_limited_in_files_and_bytes_per_visitor_and_address(
    root: str, tmp_path: Path
) -> None:
    """Finding 3: forty distinct 5 MB uploads in 2.2 s, kept in the database for good."""
    with site_with(tmp_path, root, max_upload_size=2000, uploads_per_visitor_day=3,
                   upload_bytes_per_visitor_day=2500, uploads_per_ip_day=4) as site:
        widget_id = site.widget()

        def upload(visitor: Visitor, n: int, size: int) -> httpx.Response:
            data = f"file {n} ".encode().ljust(size, b".")
            return site.http.post(f"/api/v1/widgets/{widget_id}/files",
                                  headers=visitor.headers,
                                  files={"file": (f"notes{n}.txt", data, "text/plain")})

        first = visitor_of(widget_id, session(site.http, widget_id))
        assert upload(first, 1, 1000).status_code == 201
        assert upload(first, 2, 1000).status_code == 201
        assert_rate_limited(upload(first, 3, 1000))  # 3000 bytes: over the visitor's 2500
        assert upload(first, 4, 400).status_code == 201  # a refusal counted no bytes
        assert_rate_limited(upload(first, 5, 10))  # the visitor's fourth file
        second = visitor_of(widget_id, session(site.http, widget_id))
        assert upload(second, 6, 10).status_code == 201  # the address's fourth file
        assert_rate_limited(upload(second, 7, 10))  # the address's fifth
        with from_other_address(site) as other:
            elsewhere = visitor_of(widget_id, session(other, widget_id))
            response = other.post(f"/api/v1/widgets/{widget_id}/files",
                                  headers=elsewhere.headers,
                                  files={"file": ("x.txt", b"from elsewhere", "text/plain")})
            assert response.status_code == 201, response.text
        conn = sqlite3.connect(site.settings.database_path)
        try:
            (stored,) = conn.execute("SELECT count(*) FROM blobs").fetchone()
        finally:
            conn.close()
        assert stored == 5
        assert kinds(site.settings).count("file.uploaded") == 5


# -- sockets -------------------------------------------------------------------------------------


def ws_url(site: Site, widget_id: str, token: str | None) -> str:
    url = f"{site.url.replace('http://', 'ws://', 1)}/api/v1/widgets/{widget_id}/stream"
    return url if token is None else f"{url}?token={token}"


def token_of(visitor: Visitor) -> str:
    return visitor.headers["Authorization"].removeprefix("Bearer ")


async def open_tab(
    stack: contextlib.AsyncExitStack, url: str, address: str = "127.0.0.1"
) -> ClientConnection:
    ws = await stack.enter_async_context(connect(
        url, origin=Origin(ORIGIN), open_timeout=WAIT, close_timeout=5,
        local_addr=(address, 0),
    ))
    frame = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert frame["type"] == "ready", frame
    return ws


async def refused_handshake(url: str) -> int:
    """The handshake answered with a 429 problem; returns its Retry-After."""
    with pytest.raises(InvalidStatus) as error:
        async with connect(url, origin=Origin(ORIGIN), open_timeout=WAIT):
            pass
    response = error.value.response
    assert response.status_code == 429
    body = json.loads(response.body or b"{}")
    assert body["code"] == "rate_limited"
    wait = int(response.headers["Retry-After"])
    assert body["retry_after"] == wait >= 1
    return wait


async def test_sockets_are_capped_per_visitor_token_and_per_address(
    root: str, tmp_path: Path
) -> None:
    """Finding 3: a thousand WebSockets on one token."""
    with site_with(tmp_path, root, sockets_per_visitor=2, sockets_per_ip=3) as site:
        widget_id = site.widget()
        first = visitor_of(widget_id, session(site.http, widget_id))
        second = visitor_of(widget_id, session(site.http, widget_id))
        async with contextlib.AsyncExitStack() as stack:
            tabs = [await open_tab(stack, ws_url(site, widget_id, token_of(first)))
                    for _ in range(2)]
            await refused_handshake(ws_url(site, widget_id, token_of(first)))
            # The token in the first frame instead: the socket is accepted, then refused with
            # an error frame that says when to try again, and close code 4429.
            async with connect(ws_url(site, widget_id, None), origin=Origin(ORIGIN),
                               open_timeout=WAIT) as late:
                await late.send(json.dumps({"type": "auth", "token": token_of(first)}))
                frame = json.loads(await asyncio.wait_for(late.recv(), WAIT))
                assert frame["type"] == "error" and frame["code"] == "rate_limited"
                assert frame["retry_after"] >= 1
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(late.recv(), WAIT)
                assert late.close_code == 4429
            await open_tab(stack, ws_url(site, widget_id, token_of(second)))  # the third
            await refused_handshake(ws_url(site, widget_id, token_of(second)))  # address full
            # Another network is not held back.
            with from_other_address(site) as other:
                elsewhere = visitor_of(widget_id, session(other, widget_id))
            await open_tab(stack, ws_url(site, widget_id, token_of(elsewhere)), OTHER_ADDRESS)
            # A closed tab gives its place back.
            await tabs[0].close()
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    await open_tab(stack, ws_url(site, widget_id, token_of(second)))
                    break
                except InvalidStatus:
                    # The server lets go of the socket a moment after the close handshake.
                    assert time.monotonic() < deadline, "the closed tab's place never freed"
                    await asyncio.sleep(0.05)
        limits: VisitorLimits = site.app.state.limits
        wait_until(lambda: not limits.sockets_ip._held and not limits.sockets_visitor._held,
                   "every socket's place given back")


# -- reply slots ---------------------------------------------------------------------------------


async def test_one_address_cannot_take_every_reply_slot_of_a_widget(
    root: str, tmp_path: Path
) -> None:
    """Finding 4: a few sessions took all of a widget's concurrent replies."""
    with site_with(tmp_path, root, provider_concurrency=4, replies_per_ip=2) as site:
        gate = Gate()
        gate.install(site.app)
        widget_id = site.widget()
        mine = [visitor_of(widget_id, session(site.http, widget_id)) for _ in range(3)]
        with from_other_address(site) as other:
            theirs = visitor_of(widget_id, session(other, widget_id))
        path = f"/api/v1/widgets/{widget_id}/messages"
        async with httpx.AsyncClient(base_url=site.url, timeout=WAIT) as client, \
                httpx.AsyncClient(base_url=site.url, timeout=WAIT,
                                  transport=httpx.AsyncHTTPTransport(
                                      local_address=OTHER_ADDRESS)) as elsewhere:
            held = [asyncio.create_task(client.post(path, json={"text": f"echo:{n}"},
                                                    headers=v.headers))
                    for n, v in enumerate(mine[:2])]
            try:
                deadline = time.monotonic() + WAIT
                while gate.waiting < 2:
                    assert time.monotonic() < deadline, "the replies did not start"
                    await asyncio.sleep(0.01)
                before = log_of(site.settings)
                third = await client.post(path, json={"text": "echo:3"}, headers=mine[2].headers)
                assert_rate_limited(third, within=5)
                assert "your network" in third.json()["detail"]
                assert log_of(site.settings) == before  # refused whole: no half reply
                # Someone else still gets an answer: two of four slots are free for them.
                answered = asyncio.create_task(elsewhere.post(
                    path, json={"text": "echo:mine"}, headers=theirs.headers))
                while gate.waiting < 3:
                    assert time.monotonic() < deadline, "the other address was locked out"
                    await asyncio.sleep(0.01)
            finally:
                gate.opened.set()
            done = await asyncio.gather(*held, answered)
        assert [r.status_code for r in done] == [201, 201, 201]
        assert done[2].json()["reply"]["text"] == "mine"
        # The slots are back once the replies end.
        assert site.post(mine[2], "echo:now").status_code == 201
        limits: VisitorLimits = site.app.state.limits
        wait_until(lambda: not limits.replies_widget._held, "every reply slot given back")
