"""``loacl serve``: uvicorn, with bounded clients and a shutdown that ends what is in flight first.

Clients are bounded by the settings (``server_config``): at most ``max_connections`` open
connections (uvicorn's ``limit_concurrency``: past it, 503 at once), a request head of at most
``max_header_bytes``, sent within ``header_timeout_seconds``, and its body within
``body_timeout_seconds``; a client too slow for either is disconnected (``Deadlines``), so that
slow-header and slow-body clients cannot hold connections open. uvicorn itself has no header or
body timeout: it only closes idle keep-alive connections (``keep_alive_seconds``).

On SIGTERM uvicorn would close every WebSocket (1012) and then wait for HTTP requests, such as a
post whose reply waits on a stalled provider, for as long as they take. LOACL first ends every
reply in flight as interrupted, so that each visitor following one gets its ``done`` (with the
saved length) and each waiting post its answer, gives the sockets a moment to send that, and
then lets uvicorn close what is left within ``shutdown_seconds``.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any, cast

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp
from uvicorn.protocols.http import h11_impl, httptools_impl

from loacl.http.stream import open_connections
from loacl.logs import redact_server_logs
from loacl.settings import Settings

log = structlog.get_logger(__name__)

SOCKETS_SECONDS = 2.0  # the most a socket gets to send its last frames before the close
WS_MAX_BYTES = 1024 * 1024  # largest WebSocket message uvicorn takes (frames are smaller still)


@dataclass(frozen=True)
class Limits:
    header_seconds: float
    body_seconds: float
    header_bytes: int

    @property
    def tick(self) -> float:
        """How often a connection looks at its deadlines: a client is dropped at most this
        long after its time is up."""
        return min(1.0, max(0.05, min(self.header_seconds, self.body_seconds) / 4))


class Config(uvicorn.Config):
    """uvicorn's configuration, carrying LOACL's client limits to the protocol."""

    def __init__(self, app: ASGIApp, *, limits: Limits, **options: Any) -> None:
        super().__init__(app, **options)
        self.limits = limits


class Deadlines(asyncio.Protocol):
    """For an HTTP/1.1 protocol of uvicorn (httptools or h11): drop a client that takes longer
    than ``header_seconds`` to send a request head (after connecting, or after the previous
    response), or longer than ``body_seconds`` to send a body the app is reading; refuse a head
    larger than ``header_bytes`` with 431.

    Relies on what both protocols keep: ``cycle`` (replaced when a request's head is complete;
    ``more_body`` while its body is still coming, ``response_complete`` once answered) and
    ``transport``. A connection upgraded to a WebSocket is its WebSocket protocol's business."""

    config: uvicorn.Config
    cycle: Any
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._limits = cast(Config, self.config).limits
        self._seen: Any = None
        self._since = time.monotonic()
        self._head_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._waiting_for_head() and self.cycle is self._seen:
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.header_bytes and not self.transport.is_closing():
                log.info("http.head_too_large", bytes=self._head_bytes)
                self.transport.write(
                    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
                    b"connection: close\r\n\r\n"
                )
                self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]  # the protocol's, next in line
        # The next request's head is due from now on.
        self._since = time.monotonic()
        self._head_bytes = 0

    def handle_websocket_upgrade(self, *event: Any) -> None:
        # uvicorn checks limit_concurrency for HTTP requests only, after it has let upgrades
        # through: sockets count against the same cap.
        limit = self.config.limit_concurrency
        if limit is not None and len(cast(Any, self).connections) >= limit:
            log.info("http.connection_cap", limit=limit)
            self.transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n"
                b"connection: close\r\n\r\n"
            )
            self.transport.close()
            return
        super().handle_websocket_upgrade(*event)  # type: ignore[misc]

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or bool(self.cycle.response_complete)

    def _watch(self) -> None:
        self._timer = None
        transport = self.transport
        if transport.is_closing() or transport.get_protocol() is not cast(Any, self):
            return  # closed, or now a WebSocket
        now = time.monotonic()
        if self.cycle is not self._seen:  # a new request's head arrived: its body is due
            self._seen, self._since, self._head_bytes = self.cycle, now, 0
        phase = None
        if self._waiting_for_head():
            if now - self._since > self._limits.header_seconds:
                phase = "headers"
        elif self.cycle.more_body and now - self._since > self._limits.body_seconds:
            phase = "body"
        if phase is not None:
            log.info("http.client_too_slow", phase=phase)
            transport.close()
            return
        self._timer = asyncio.get_running_loop().call_later(self._limits.tick, self._watch)


class HttpToolsProtocol(Deadlines, httptools_impl.HttpToolsProtocol):
    pass


class H11Protocol(Deadlines, h11_impl.H11Protocol):
    pass


def server_config(
    app: ASGIApp, settings: Settings, *, host: str | None = None,
    port: int | None = None, http: str = "httptools",
) -> Config:
    """The uvicorn configuration ``loacl serve`` runs with (tests run the same)."""
    redact_server_logs()
    limits = Limits(settings.header_timeout_seconds, settings.body_timeout_seconds,
                    settings.max_header_bytes)
    host = host or settings.host
    port = settings.port if port is None else port
    state = getattr(app, "state", None)
    if state is not None:
        # Where mail links point without ``public_url`` (``http.auth.base_url``): the address
        # given here (``loacl serve --host/--port``), not the one configured.
        state.listening = (host, port)
    return Config(
        app,
        limits=limits,
        host=host,
        port=port,
        http=H11Protocol if http == "h11" else HttpToolsProtocol,
        log_config=None,
        access_log=False,
        # Client addresses and HTTPS behind a proxy are the app's decision, in one place
        # (``trusted_proxies``, see create_app), for HTTP and WebSocket alike.
        proxy_headers=False,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_seconds,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        ws="websockets-sansio",
        # Replies go out as many small JSON frames: compressing each costs about a quarter of
        # the server's CPU per token (scripts/bench/streaming.py) and saves little.
        ws_per_message_deflate=False,
        ws_max_size=WS_MAX_BYTES,
    )


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: Starlette, bound: float) -> None:
        super().__init__(config)
        self.app = app
        self.bound = bound

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            # uvicorn raises a caught signal again once it has shut down, so the process dies
            # of it (exit 143). SIGTERM is the orderly stop a container or service manager
            # asks for: once the shutdown it asked for is done, the process exits 0.
            self._captured_signals.remove(sig)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            bound = [s.getsockname() for server in self.servers for s in server.sockets]
            if bound:  # the port really bound (port 0 picks one)
                self.app.state.listening = (self.config.host, bound[0][1])
            log.info("loacl.listening", **welcome(bound, self.app.state.settings.public_url))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started = time.monotonic()
        log.info("loacl.stopping")
        try:
            # Half the bound at most: a store that cannot write its end events must not hold
            # the exit (start-up recovery closes those replies).
            await asyncio.wait_for(self.app.state.chat.interrupt_replies(), self.bound / 2)
        except TimeoutError:
            log.warning("loacl.replies_not_ended")
        await told(self.app, min(SOCKETS_SECONDS, self.bound / 4))
        left = self.bound - (time.monotonic() - started)
        self.config.timeout_graceful_shutdown = max(1, int(left))
        await super().shutdown(sockets)
        log.info("loacl.stopped", seconds=round(time.monotonic() - started, 2))


def welcome(bound: list[Any], public_url: str | None) -> dict[str, str]:
    """Where the server answers, and what a newcomer does next."""
    urls = []
    for address in bound:
        host, port = address[0], address[1]
        shown = "127.0.0.1" if host == "0.0.0.0" else ("::1" if host == "::" else host)
        urls.append(f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/")
    base = (public_url.rstrip("/") + "/") if public_url else urls[0]
    return {
        "url": base,
        **({"listening_on": " ".join(urls)} if public_url or len(urls) > 1 else {}),
        "console": f"{base}console/",
        "api_docs": f"{base}docs",
        "next": f"open {base}console/ to sign up and set up an assistant and a widget, or "
                f"{base} to try the demo widget; from a shell, `loacl users create --email "
                "you@example.org --verified` makes the first owner (see README.md)",
    }


async def told(app: Starlette, within: float) -> None:
    """Wait (at most ``within`` seconds) until every open socket has sent the end of each reply
    it followed."""
    deadline = time.monotonic() + within
    while any(c.followers or c.outbox.frames for c in open_connections(app)):
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.02)


def serve(app: Starlette, config: uvicorn.Config, bound: float) -> None:
    Server(config, app, bound).run()
