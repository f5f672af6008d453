"""Requests LOACL makes to URLs its owners name (HTTP tools and outgoing webhooks), bounded so
that no owner can aim them at LOACL's own network (server-side request forgery).

The rules, in one place, for both:

- ``https://`` only, unless ``allow_http``;
- no user or password in the URL, a port that is a number, and a host that is a name or a
  canonical address (``127.1`` and ``2130706433`` are read as the addresses they stand for);
- every address a host resolves to must be public: loopback, private (RFC 1918, fc00::/7),
  link-local (with the cloud metadata address 169.254.169.254), carrier-grade NAT, "this
  network", multicast, reserved, benchmarking and documentation ranges, and the IPv4-mapped,
  NAT64 and 6to4 forms of them are refused, unless ``allow_private``; ``localhost`` and names
  under ``.localhost``, ``.local`` and ``.internal`` are refused before any lookup. A name with
  one public and one private address is refused, not half-trusted;
- the metadata address is refused whatever the policy;
- the name is resolved by LOACL's own resolver, which checks every address, and the connection
  goes to an address it returned (a name that answers differently a moment later, DNS
  rebinding, reaches nothing new); the connected socket's peer address is checked again
  before a byte is sent, so no path to a connection (a resolver bypassed, a cached answer)
  escapes the rules;
- redirects are never followed (a 3xx is an answer like any other), and no proxy from the
  environment is used (it would connect on LOACL's behalf);
- the whole exchange has a deadline and the answer's body a size cap (read up to it, the rest
  left unread; ``Answer.truncated`` says so).

``check_url`` is for when a URL is given (an owner saving a tool or a webhook);
``Outbound.post`` checks again on every request, since names move. A refusal or a failure is
an :class:`OutboundError`, a ``LoaclError`` whose ``reason`` says which.
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

# Python's is_global/is_private miss a few that must never be reached from here.
_NOT_PUBLIC = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "192.0.0.0/24", "198.18.0.0/15",
    "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32", "::/128", "fe80::/10", "ff00::/8",
)]
_METADATA = ipaddress.ip_address("169.254.169.254")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_PRIVATE_NAMES = (".localhost", ".local", ".internal")


@dataclass(frozen=True, slots=True)
class Policy:
    """What one kind of request may reach. ``timeout`` and ``max_response_bytes`` are the
    defaults of ``Outbound.post``'s ``seconds`` and ``max_bytes``; a call may give its own."""

    allow_private: bool = False
    allow_http: bool = False
    timeout: float = 10.0
    max_response_bytes: int = 64 * 1024


STRICT = Policy()


class OutboundError(LoaclError):
    """Why a request was not made, or not answered. ``reason`` is ``refused`` (the rules; code
    ``url_not_allowed``), ``timeout`` or ``unreachable`` (code ``outbound_failed``)."""

    def __init__(self, reason: str, message: str) -> None:
        extra: dict[str, Any] = {}
        if reason == "refused":
            extra["errors"] = [{"field": "url", "message": message}]
        super().__init__("url_not_allowed" if reason == "refused" else "outbound_failed",
                         message, **extra)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str
    seconds: float
    truncated: bool = False  # the answer was longer than the cap; ``body`` is its start


def _unwrapped(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one stands for (mapped, NAT64, 6to4), or itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def refusal(address: IPAddress, policy: Policy = STRICT) -> str | None:
    """Why ``address`` must not be called under ``policy``, or None when it may."""
    plain = _unwrapped(address)
    if plain == _METADATA:
        return "the cloud metadata address"
    if plain.is_multicast:
        return "a multicast address"
    if plain.is_unspecified:
        return "the unspecified address"
    if policy.allow_private:
        return None
    if plain.is_loopback:
        return "a loopback address"
    if plain.is_link_local:
        return "a link-local address"
    if plain.is_private:
        return "a private address"
    if any(plain.version == net.version and plain in net for net in _NOT_PUBLIC) or \
            not plain.is_global or plain.is_reserved:
        # Carrier-grade NAT, "this network", benchmarking, reserved, documentation ranges.
        return "an address that is not public"
    return None


def address_allowed(address: IPAddress, policy: Policy = STRICT) -> bool:
    return refusal(address, policy) is None


def _refused(host: str, why: str, address: IPAddress | None = None) -> OutboundError:
    shown = f" ({address})" if address is not None and str(address) != host else ""
    return OutboundError("refused", f"{host} is {why}{shown}; LOACL does not call it")


def _check_address(address: IPAddress, host: str, policy: Policy) -> None:
    why = refusal(address, policy)
    if why is not None:
        raise _refused(host, why, address)


def _literal(host: str) -> IPAddress | None:
    """The address ``host`` is, canonical or not (``127.1``, ``0x7f.1``, ``2130706433`` are
    what the C resolver reads them as), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if host.replace(".", "").replace("x", "").replace("X", "").isalnum() and \
            host.split(".")[-1][:1].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def check_url(url: str, policy: Policy = STRICT) -> str:
    """The URL, if its form is one LOACL may call; :class:`OutboundError` ``refused``
    otherwise. A host that is an address is checked here; a name each time it resolves."""
    parts = urlsplit(url)
    schemes = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in schemes:
        raise OutboundError("refused", "the URL must start with https://" if not
                            policy.allow_http else "the URL must start with https:// or http://")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise OutboundError("refused", "the URL must name a host, and no user or password")
    try:
        _ = parts.port
    except ValueError:
        raise OutboundError("refused", "the URL's port is not a number from 0 to 65535") \
            from None
    host = parts.hostname.rstrip(".")
    literal = _literal(host)
    if literal is not None:
        _check_address(literal, host, policy)
    elif not policy.allow_private and (host == "localhost" or host.endswith(_PRIVATE_NAMES)):
        raise _refused(host, "a name of this machine or a private network")
    return url


class CheckedResolver(AbstractResolver):
    """Resolves with the system's resolver, then refuses the name unless every address it
    gave is allowed: the connector connects only to what this returns."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

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
            _check_address(address, host, self.policy)
            found.append(ResolveResult(
                hostname=host, host=str(address), port=int(sockaddr[1]), family=fam,
                proto=proto, flags=socket.AI_NUMERICHOST,
            ))
        if not found:
            raise OutboundError("unreachable", f"{host} has no address")
        return found

    async def close(self) -> None:
        return None


class _CheckedConnector(aiohttp.TCPConnector):
    """A connector that checks the peer of every socket it opens before handing it on."""

    def __init__(self, policy: Policy, **options: Any) -> None:
        super().__init__(resolver=CheckedResolver(policy), **options)
        self._policy = policy

    async def _wrap_create_connection(self, *args: Any, **kwargs: Any) -> Any:
        transport, protocol = await super()._wrap_create_connection(*args, **kwargs)
        peer = transport.get_extra_info("peername")
        try:
            address = ipaddress.ip_address(str(peer[0]).split("%")[0])
        except (TypeError, IndexError, ValueError):
            transport.close()
            raise OutboundError("refused", "the connection has no address to check") from None
        why = refusal(address, self._policy)
        if why is not None:
            transport.close()
            raise _refused(str(address), why)
        return transport, protocol


class Outbound:
    """One connection pool for the requests of one kind (tool calls, webhook deliveries),
    held for the app's life; ``aclose`` at shutdown."""

    def __init__(self, policy: Policy, user_agent: str = "LOACL") -> None:
        self.policy = policy
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No DNS cache: each request resolves and checks afresh.
            connector = _CheckedConnector(self.policy, limit=100, use_dns_cache=False)
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, headers={"User-Agent": self.user_agent},
            )
        return self._session

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], *, seconds: float | None = None,
        max_bytes: int | None = None,
    ) -> Answer:
        """POST ``body`` (JSON unless ``headers`` say otherwise); the answer (any status: a
        3xx is not followed), or :class:`OutboundError`."""
        check_url(url, self.policy)
        seconds = self.policy.timeout if seconds is None else seconds
        cap = self.policy.max_response_bytes if max_bytes is None else max_bytes
        started = time.perf_counter()
        try:
            async with self._client().post(
                url, data=body, headers={"Content-Type": "application/json", **headers},
                allow_redirects=False, timeout=aiohttp.ClientTimeout(total=seconds),
            ) as response:
                declared = response.content_length
                data = bytearray()
                async for chunk in response.content.iter_chunked(16384):
                    data += chunk
                    if len(data) > cap:
                        break
                truncated = len(data) > cap or (declared is not None and declared > cap)
                return Answer(response.status, bytes(data[:cap]),
                              response.headers.get("Content-Type", ""),
                              time.perf_counter() - started, truncated)
        except OutboundError:
            raise
        except TimeoutError:
            raise OutboundError("timeout", f"no whole answer within {seconds:g} s") from None
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error if isinstance(exc.os_error, OutboundError) else (
                exc.__cause__ or exc.__context__)
            if isinstance(cause, OutboundError):
                raise cause from None
            raise OutboundError("unreachable", f"could not connect ({exc.strerror})") from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise OutboundError("unreachable", f"the request failed ({type(exc).__name__}: "
                                f"{exc})") from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
