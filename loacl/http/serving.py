"""``loacl serve``: uvicorn, with a shutdown that ends what is in flight first.

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
from types import FrameType
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette

from loacl.http.stream import open_connections

log = structlog.get_logger(__name__)

SOCKETS_SECONDS = 2.0  # the most a socket gets to send its last frames before the close


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
        "api_docs": f"{base}docs",
        "next": f"open {base} to try the demo widget; create the first owner with `loacl users "
                "create --email you@example.org --verified` (or POST /api/v1/auth/register), "
                "then an assistant and a widget (see README.md)",
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
