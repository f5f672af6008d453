"""Requests to URLs that owners name (tool endpoints; outgoing webhooks can share it), made safe
for the server's own network.

- Only ``https`` unless private networks are allowed (then plain ``http`` too).
- Every address a host name resolves to is checked, and the connection goes to a checked
  address (the resolver is LOACL's: a name that resolves differently a moment later, DNS
  rebinding, cannot slip past the check). Refused: loopback, private, link-local (the cloud
  metadata address 169.254.169.254 among them), carrier-grade NAT, multicast, reserved and
  unspecified ranges, and the IPv4-mapped, NAT64 and 6to4 IPv6 forms of these.
- No redirect is followed; no proxy from the environment is used (it would connect for us).
- The answer's time and size are capped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_6TO4 = ipaddress.ip_network("2002::/16")


class OutboundError(Exception):
    """Why a request was not made or not answered usably: ``code`` is one of ``refused``
    (the URL or its address is not allowed), ``timeout``, ``unreachable``, ``too_large``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    return None


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` must not be called, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_v4(address)
        if inner is not None:
            return refusal(inner)
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (the cloud metadata service among them)"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        # Carrier-grade NAT (100.64/10), reserved and documentation ranges.
        return "an address that is not public"
    return None


def _checked(address: IPAddress, host: str, allow_private: bool) -> None:
    why = None if allow_private else refusal(address)
    if why is not None:
        raise OutboundError("refused", f"{host} is {why} ({address}); not called")


class CheckedResolver(AbstractResolver):
    """Resolves with the system's resolver and keeps only allowed addresses; the connector
    connects to what this returns, so the checked address is the one called."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, family=family, flags=socket.AI_ADDRCONFIG
            )
        except socket.gaierror as exc:
            raise OutboundError("unreachable", f"{host} does not resolve ({exc.strerror})") \
                from None
        found: list[ResolveResult] = []
        for fam, _, proto, _, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            # Every address must pass: a name with one public and one private address is
            # refused, not half-trusted.
            _checked(address, host, self.allow_private)
            found.append(ResolveResult(
                hostname=host, host=str(address), port=int(sockaddr[1]), family=fam,
                proto=proto, flags=socket.AI_NUMERICHOST,
            ))
        if not found:
            raise OutboundError("unreachable", f"{host} has no address")
        return found

    async def close(self) -> None:
        return None


def check_url(url: str, allow_private: bool) -> None:
    """Refuse a URL before any connection: its scheme, and its host when it is an address."""
    parts = urlsplit(url)
    allowed = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in allowed:
        raise OutboundError("refused", f"only {' or '.join(allowed)} URLs are called")
    host = parts.hostname or ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not host:
            raise OutboundError("refused", "the URL has no host") from None
        return  # a name: its addresses are checked as it resolves
    _checked(address, host, allow_private)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str


class Outbound:
    """One connection pool for owner-named URLs. ``aclose`` when done."""

    def __init__(self, *, allow_private: bool = False, user_agent: str = "LOACL") -> None:
        self.allow_private = allow_private
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=CheckedResolver(self.allow_private), limit=100, ttl_dns_cache=10,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, auto_decompress=True,
                headers={"User-Agent": self.user_agent},
            )
        return self._session

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], *, seconds: float,
        max_bytes: int,
    ) -> Answer:
        """POST ``body``; the answer (any status; a redirect is an answer, not followed), or
        :class:`OutboundError`."""
        check_url(url, self.allow_private)
        session = self._client()
        options: dict[str, Any] = {
            "data": body, "headers": headers, "allow_redirects": False,
            "timeout": aiohttp.ClientTimeout(total=seconds),
        }
        try:
            async with session.post(url, **options) as response:
                declared = response.content_length
                if declared is not None and declared > max_bytes:
                    raise OutboundError(
                        "too_large", f"the answer is {declared} bytes; at most {max_bytes}"
                    )
                data = bytearray()
                async for chunk in response.content.iter_chunked(16384):
                    data += chunk
                    if len(data) > max_bytes:
                        raise OutboundError(
                            "too_large", f"the answer is over {max_bytes} bytes"
                        )
                return Answer(response.status, bytes(data),
                              response.headers.get("Content-Type", ""))
        except OutboundError:
            raise
        except TimeoutError:
            raise OutboundError("timeout", f"no whole answer within {seconds:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, OutboundError):
                raise cause from None
            raise OutboundError("unreachable", f"could not connect ({exc.strerror})") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise OutboundError("unreachable", f"the request failed ({type(exc).__name__})") \
                from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
