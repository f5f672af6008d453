"""Each request measured (metrics) and traced (a span), and ``/metrics`` for Prometheus.

``/metrics`` is never public by default. With ``metrics_token`` set it answers a request that
brings ``Authorization: Bearer <token>`` and 401 any other; without one it answers 404, as if it
were not there (the metrics may then be served on ``metrics_listen``, an address of their own).
"""

from __future__ import annotations

import hmac
import time

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loacl import tracing
from loacl.domain.errors import LoaclError
from loacl.http.routing import Endpoint
from loacl.telemetry.metrics import CONTENT_TYPE, UNMATCHED, Metrics


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class TelemetryMiddleware:
    """Inside ``RequestIdMiddleware`` (the request id is set): counts each HTTP request by
    route template, method and status, with its time to the end of the body; counts open
    WebSockets; and, when traces are on, wraps each in a span named by its route."""

    def __init__(self, app: ASGIApp, metrics: Metrics | None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if tracing.enabled():
            await self._traced(scope, receive, send)
        elif kind == "http":
            await self._counted(scope, receive, send)
        else:
            await self._socket(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = self.metrics
        if metrics is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            metrics.request(_route(scope), scope["method"], status,
                            time.perf_counter() - started)

    async def _socket(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = self.metrics
        if metrics is None:
            await self.app(scope, receive, send)
            return
        accepted = False

        async def sending(message: Message) -> None:
            nonlocal accepted
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                metrics.websockets.inc()
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if accepted:
                metrics.websockets.dec()

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "GET")
        request_id = scope.get("state", {}).get("request_id", "")
        with tracing.span(f"{method} {scope['type']}", **{
            "http.request.method": method, "url.path": scope["path"],
            "loacl.request_id": request_id,
        }) as span:
            ids = {"trace_id": tracing.trace_id(span)}
            scope.setdefault("state", {})["trace_id"] = ids["trace_id"]
            status = 0

            async def sending(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            with structlog.contextvars.bound_contextvars(**ids):
                try:
                    if scope["type"] == "http":
                        await self._counted(scope, receive, sending)
                    else:
                        await self._socket(scope, receive, sending)
                finally:
                    route = _route(scope)
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                    if status:
                        span.set_attribute("http.response.status_code", status)
                        if status >= 500:
                            from opentelemetry.trace import Status, StatusCode

                            span.set_status(Status(StatusCode.ERROR))


async def metrics_page(request: Request) -> Response:
    settings = request.app.state.settings
    metrics: Metrics | None = request.app.state.metrics
    token = settings.metrics_token
    if metrics is None or not token:
        raise LoaclError("not_found", "no such page")
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                              token.encode()):
        raise LoaclError("unauthorized", "/metrics wants the metrics token as a bearer token")
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)


# For Prometheus, not part of the API.
endpoints = [
    Endpoint("get", "/metrics", metrics_page, "Prometheus metrics (bearer token)",
             documented=False),
]
