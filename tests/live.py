"""A real uvicorn server on a loopback port, in a thread, for end-to-end tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from loacl.http.serving import server_config
from loacl.settings import Settings

# Every test client calls from 127.0.0.1, so the per-address limits would count the whole suite
# as one visitor: test settings turn the visitor limits off, and tests/test_limits.py turns
# each one on.
OPEN_LIMITS: dict[str, int] = dict.fromkeys((
    "sessions_per_ip_hour", "messages_per_ip_minute", "messages_per_visitor_day",
    "messages_per_ip_day", "uploads_per_visitor_day", "upload_bytes_per_visitor_day",
    "uploads_per_ip_day", "upload_bytes_per_ip_day", "sockets_per_visitor", "sockets_per_ip",
    "replies_per_ip",
), 0)


@contextmanager
def serve(app: ASGIApp, http: str = "httptools") -> Iterator[str]:
    """Run ``app`` on 127.0.0.1 and an unused port; yield its base URL. An app made by
    ``create_app`` runs with the server configuration ``loacl serve`` uses (its client
    limits and timeouts), over ``http`` (httptools or h11)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = getattr(getattr(app, "state", None), "settings", None)
    config: uvicorn.Config
    if isinstance(settings, Settings):
        config = server_config(app, settings, host="127.0.0.1", port=port, http=http)
    else:
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on", ws="websockets-sansio"
        )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not start within 20 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
