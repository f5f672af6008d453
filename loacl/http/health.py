"""Liveness and readiness."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loacl.domain.errors import LoaclError
from loacl.http.errors import problem
from loacl.http.routing import Endpoint


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when the database takes a write transaction (checked without changing anything)."""
    store = request.app.state.store
    try:
        await store.check_writable()
    except LoaclError as exc:
        return problem(503, "not_ready", exc.message, request)
    return JSONResponse({"status": "ready", "events": await store.head()})


# Probes for the machine that runs LOACL, not part of the API.
endpoints = [
    Endpoint("get", "/healthz", healthz, "Liveness", documented=False),
    Endpoint("get", "/readyz", readyz, "Readiness: the database takes writes", documented=False),
]
