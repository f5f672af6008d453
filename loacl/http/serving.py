"""``loacl serve``: uvicorn, with a shutdown that ends what is in flight first.

On SIGTERM uvicorn would close every WebSocket (1012) and then wait for HTTP requests, such as a
post whose reply waits on a stalled provider, for as long as they take. LOACL first ends every
reply in flight as interrupted, so that each visitor following one gets its ``done`` (with the
saved length) and each waiting post its answer, gives the sockets a moment to send that, and
then lets uvicorn close what is left within ``shutdown_seconds``.
"""

from __future__ import annotations

import asyncio
import socket
import time

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
