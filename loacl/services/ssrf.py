"""Requests LOACL makes to addresses its users give (webhooks now, HTTP tools later), bounded
so that no user can aim them at LOACL's own network (server-side request forgery).

The rules, in one place:

- ``https://`` only, unless ``allow_http``;
- the host's addresses, every one, must be public: loopback, private (RFC 1918, fc00::/7),
  link-local (with the cloud metadata address 169.254.169.254), carrier-grade NAT, "this
  network", multicast, reserved and documentation ranges, and the IPv4-mapped and 6to4/NAT64
  forms of them are refused, unless ``allow_private``;
- the name is resolved once and the connection goes to the address that was checked (the
  resolver below is the client's own), so a name that answers differently a moment later (DNS
  rebinding) reaches nothing new;
- redirects are never followed (a 3xx is an answer like any other);
- the whole exchange has a deadline and the answer's body a size cap (read up to it, the rest
  left unread).

``check_url`` is for when a URL is given (a 422 then); ``Outbound.post`` checks again on every
request, since names move.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from loacl.domain.errors import LoaclError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Python's is_global misses a few that must never be reached from here.
_ALWAYS_REFUSED = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "192.0.0.0/24", "198.18.0.0/15",
    "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32", "::/128", "fe80::/10", "ff00::/8",
)]
_METADATA = ipaddress.ip_address("169.254.169.254")


@dataclass(frozen=True, slots=True)
class Policy:
    allow_private: bool = False
    allow_http: bool = False
    timeout: float = 10.0
    max_response_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    seconds: float


def _unwrapped(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), or itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in ipaddress.ip_network("64:ff9b::/96"):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def address_allowed(address: IPAddress, policy: Policy) -> bool:
    plain = _unwrapped(address)
    if plain == _METADATA:
        return False  # the cloud's metadata service, whatever the policy
    if policy.allow_private:
        return not plain.is_multicast and not plain.is_unspecified
    if any(plain.version == net.version and plain in net for net in _ALWAYS_REFUSED):
        return False
    return plain.is_global and not (plain.is_private or plain.is_loopback or
                                    plain.is_link_local or plain.is_reserved)


def refused(message: str) -> LoaclError:
    return LoaclError("url_not_allowed", message,
                      errors=[{"field": "url", "message": message}])


def check_url(url: str, policy: Policy) -> str:
    """The URL, if its form is one LOACL may call; ``url_not_allowed`` otherwise. A host that
    is an address is checked here; a name is checked each time it is resolved."""
    parts = urlsplit(url)
    if parts.scheme not in (("https", "http") if policy.allow_http else ("https",)):
        raise refused("the URL must start with https://" if not policy.allow_http
                      else "the URL must start with https:// or http://")
    if not parts.hostname or parts.username or parts.password:
        raise refused("the URL must name a host, and no user or password")
    try:
        _ = parts.port
    except ValueError:
        raise refused("the URL's port is not a number from 0 to 65535") from None
    host = parts.hostname.rstrip(".")
    literal = _literal(host)
    if literal is not None and not address_allowed(literal, policy):
        raise refused(f"{host} is not a public address")
    if literal is None and not policy.allow_private and (
        host == "localhost" or host.endswith((".localhost", ".local", ".internal"))
    ):
        raise refused(f"{host} names this machine or a private network")
    return url


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class GuardedResolver(AbstractResolver):
    """Resolves with the system's resolver, then refuses the name unless every address it
    gave is allowed: the connection can only go to an address checked here."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except socket.gaierror as exc:
            raise OSError(f"{host} does not resolve: {exc.strerror}") from exc
        found: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            if not address_allowed(address, self.policy):
                raise refused(f"{host} resolves to {address}, not a public address")
            found.append(ResolveResult(hostname=host, host=str(address), port=port,
                                       family=fam, proto=proto, flags=socket.AI_NUMERICHOST))
        if not found:
            raise OSError(f"{host} has no address")
        return found

    async def close(self) -> None:
        return None


class Outbound:
    """One pooled client for the requests of one kind (webhook deliveries), held for the
    app's life; ``aclose`` at shutdown."""

    def __init__(self, policy: Policy, user_agent: str = "LOACL") -> None:
        self.policy = policy
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self.policy), limit=64, ttl_dns_cache=None,
                use_dns_cache=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": self.user_agent},
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout),
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        """POST ``body``; the answer (any status: a 3xx is not followed), or ``LoaclError``
        ``url_not_allowed`` (the rules refused it) or ``outbound_failed`` (no answer)."""
        check_url(url, self.policy)
        started = time.perf_counter()
        try:
            async with self._client().post(
                url, data=body, headers={"Content-Type": "application/json", **headers},
                allow_redirects=False,
            ) as response:
                data = await response.content.read(self.policy.max_response_bytes)
                return Answer(response.status, data, time.perf_counter() - started)
        except aiohttp.ClientConnectorError as exc:
            cause: Any = exc.os_error
            if isinstance(cause, LoaclError):
                raise cause from None
            raise LoaclError("outbound_failed", f"could not connect: {cause}") from None
        except LoaclError:
            raise
        except TimeoutError:
            raise LoaclError(
                "outbound_failed", f"no answer within {self.policy.timeout:g} s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise LoaclError("outbound_failed", f"{type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
