"""``GET /api/v1/models``: what an assistant's ``model`` may be, per configured provider."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loacl.domain.workspaces import ADMIN
from loacl.http.auth import current_member
from loacl.http.routing import Endpoint

if TYPE_CHECKING:
    from loacl.services.models import Models


async def list_models(request: Request) -> Response:
    await current_member(request, ADMIN)
    offered = await cast("Models", request.app.state.models).offered()
    return JSONResponse({
        "data": [{"id": model, "provider": p.provider} for p in offered for model in p.models],
        "providers": [{"name": p.provider, "ok": p.ok, "error": p.error} for p in offered],
    }, headers={"Cache-Control": "private, max-age=60"})


endpoints = [
    Endpoint("get", "/api/v1/models", list_models,
             "The models each configured provider offers (for an assistant's model)",
             "assistants", auth="owner", role=ADMIN, returns="Models",
             description="Each provider's model list (`models.list`), kept for a minute. A "
             "provider that cannot be reached is listed in `providers` with `ok: false` and "
             "why, and offers no model here; the others' lists are still given."),
]
