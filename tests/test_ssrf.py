"""The rules for requests LOACL makes to URLs owners give (loacl.services.egress, used by HTTP
tools and webhooks alike), against real sockets on loopback where a request is made."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from loacl.domain.errors import LoaclError
from loacl.services.egress import (
    CheckedResolver,
    Outbound,
    Policy,
    address_allowed,
    check_url,
)

STRICT = Policy()
OPEN = Policy(allow_private=True, allow_http=True, timeout=5, max_response_bytes=1000)


@pytest.mark.parametrize(("address", "strict", "open_"), [
    ("93.184.215.14", True, True),
    ("2606:4700:4700::1111", True, True),
    ("127.0.0.1", False, True),
    ("::1", False, True),
    ("10.1.2.3", False, True),
    ("172.16.0.1", False, True),
    ("192.168.0.1", False, True),
    ("fd00::1", False, True),
    ("169.254.169.254", False, False),  # the cloud's metadata service: never
    ("::ffff:169.254.169.254", False, False),
    ("169.254.1.1", False, True),
    ("fe80::1", False, True),
    ("100.64.0.1", False, True),
    ("0.0.0.0", False, False),
    ("224.0.0.1", False, False),
    ("::ffff:127.0.0.1", False, True),  # IPv4-mapped
    ("64:ff9b::7f00:1", False, True),  # NAT64 of 127.0.0.1
    ("2002:7f00:1::", False, True),  # 6to4 of 127.0.0.1
    ("198.18.0.1", False, True),
])
def test_addresses(address: str, strict: bool, open_: bool) -> None:
    ip = ipaddress.ip_address(address)
    assert address_allowed(ip, STRICT) is strict
    assert address_allowed(ip, OPEN) is open_


@pytest.mark.parametrize("url", [
    "http://example.com/", "ftp://example.com/", "https:///nohost", "https://u:p@example.com/",
    "https://127.0.0.1/", "https://localhost/", "https://db.internal/", "https://printer.local/",
    "https://example.com:99999/", "https://[::1]:8443/",
])
def test_urls_refused_by_default(url: str) -> None:
    with pytest.raises(LoaclError) as refused:
        check_url(url, STRICT)
    assert refused.value.code == "url_not_allowed"


def test_urls_allowed() -> None:
    assert check_url("https://hooks.example.com/x?y=1", STRICT)
    assert check_url("http://127.0.0.1:8080/x", OPEN)
    with pytest.raises(LoaclError):
        check_url("https://169.254.169.254/", OPEN)


async def test_the_resolver_refuses_a_name_of_a_private_address() -> None:
    with pytest.raises(LoaclError) as refused:
        await CheckedResolver(STRICT).resolve("localhost", 443)
    assert refused.value.code == "url_not_allowed"
    found = await CheckedResolver(OPEN).resolve("localhost", 443)
    assert found and all(address_allowed(ipaddress.ip_address(f["host"]), OPEN) for f in found)


class _Handler(BaseHTTPRequestHandler):
    hits = 0

    def do_POST(self) -> None:
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"x" * 100_000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def target() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_redirects_are_not_followed_and_bodies_are_capped(target: str) -> None:
    client = Outbound(OPEN)
    try:
        moved = await client.post(f"{target}/redirect", b"{}", {})
        assert moved.status == 302
        big = await client.post(f"{target}/big", b"{}", {})
        assert big.status == 200 and len(big.body) == 1000
    finally:
        await client.aclose()


async def test_a_private_target_is_refused_when_sending(target: str) -> None:
    client = Outbound(Policy(allow_http=True))
    try:
        with pytest.raises(LoaclError) as refused:
            await client.post(f"{target}/x", b"{}", {})
        assert refused.value.code == "url_not_allowed"
        named = target.replace("127.0.0.1", "localhost")
        with pytest.raises(LoaclError) as refused:
            await client.post(named, b"{}", {})
        assert refused.value.code == "url_not_allowed"
    finally:
        await client.aclose()


async def test_no_answer_is_outbound_failed() -> None:
    client = Outbound(OPEN)
    try:
        with pytest.raises(LoaclError) as failed:
            await client.post("http://127.0.0.1:1/x", b"{}", {})
        assert failed.value.code == "outbound_failed"
    finally:
        await client.aclose()


@pytest.mark.parametrize("url", [
    "https://127.1/", "https://0x7f.1/", "https://2130706433/", "https://0177.0.0.1/",
    "https://169.254.43518/latest",  # 169.254.169.254 in a short form
])
def test_numeric_hosts_are_read_as_the_addresses_they_stand_for(url: str) -> None:
    with pytest.raises(LoaclError) as refused:
        check_url(url, STRICT)
    assert refused.value.code == "url_not_allowed"


def _users(private: bool) -> dict[str, Outbound]:
    """The two users of the rules, as the app builds them from its settings."""
    from loacl.services.tools import Tools
    from loacl.services.webhooks import policy_of
    from loacl.settings import Settings

    settings = Settings(tools_allow_private_networks=private, outbound_allow_private=private,
                        outbound_allow_http=private)
    return {"tools": Tools(settings).outbound,
            "webhooks": Outbound(policy_of(settings), "LOACL-webhooks")}


@pytest.mark.parametrize("user", ["tools", "webhooks"])
async def test_both_users_refuse_private_targets_and_the_metadata_address(
    target: str, user: str
) -> None:
    strict, open_ = _users(False)[user], _users(True)[user]
    try:
        for url in (f"{target}/x", target.replace("http:", "https:") + "/x",
                    target.replace("127.0.0.1", "localhost").replace("http:", "https:")):
            with pytest.raises(LoaclError) as refused:
                await strict.post(url, b"{}", {})
            assert refused.value.code == "url_not_allowed", url
        with pytest.raises(LoaclError) as refused:
            await open_.post("http://169.254.169.254/latest/meta-data", b"{}", {})
        assert refused.value.code == "url_not_allowed"
        assert (await open_.post(f"{target}/redirect", b"{}", {})).status == 302
    finally:
        await strict.aclose()
        await open_.aclose()


@pytest.mark.parametrize("user", ["tools", "webhooks"])
async def test_a_name_that_resolves_to_loopback_is_refused_at_the_call(
    target: str, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A public-looking name whose DNS answer is private (rebinding) passes the URL check and
    is refused when it resolves, for tools and webhooks alike; nothing reaches the target."""
    real = socket.getaddrinfo
    port = int(target.rsplit(":", 1)[1])

    def rebinding(host: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "hooks.example.com" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    client = _users(False)[user]
    hits_before = _Handler.hits
    try:
        url = f"https://hooks.example.com:{port}/x"
        assert check_url(url, client.policy) == url
        with pytest.raises(LoaclError) as refused:
            await client.post(url, b"{}", {})
        assert refused.value.code == "url_not_allowed"
        assert "loopback" in refused.value.message
    finally:
        await client.aclose()
    assert _Handler.hits == hits_before


async def test_the_connected_address_is_checked_even_when_resolution_is_bypassed(
    target: str,
) -> None:
    """Defence in depth: were the resolver's answer not checked (a bug, a cache), the socket's
    peer address is, before the request is written."""

    class Unchecked(CheckedResolver):
        async def resolve(self, host: str, port: int = 0,
                          family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
            return await CheckedResolver(OPEN).resolve("127.0.0.1", port, family)

    client = Outbound(Policy(allow_http=True))
    session = client._client()
    session.connector._resolver = Unchecked(client.policy)  # type: ignore[union-attr]
    hits_before = _Handler.hits
    port = int(target.rsplit(":", 1)[1])
    try:
        with pytest.raises(LoaclError) as refused:
            await client.post(f"http://hooks.example.com:{port}/x", b"{}", {})
        assert refused.value.code == "url_not_allowed"
        assert "loopback" in refused.value.message
    finally:
        await client.aclose()
    assert _Handler.hits == hits_before
