"""Owner endpoints: ``/api/v1/webhooks`` (CRUD, secret rotation, a test event) and each
endpoint's delivery log with manual redelivery."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from loacl.domain.errors import LoaclError
from loacl.domain.webhooks import ALL_KINDS, KINDS, MAX_URL, RESERVED_KINDS, WebhookDefinition
from loacl.domain.workspaces import ADMIN
from loacl.http.auth import current_member
from loacl.http.common import page, page_response
from loacl.http.resources import PATCH_TYPES, OwnedResource, rotated
from loacl.http.routing import IF_MATCH, PAGE, Endpoint
from loacl.http.shapes import delivery_json, webhook_json
from loacl.services.webhooks import Webhooks
from loacl.store.views.webhooks import WebhookView

EventType = Literal[
    "conversation.started", "message.posted", "reply.completed", "reply.failed",
    "budget.reached", "handoff.requested", "conversation.closed", "member.changed",
]
assert set(EventType.__args__) == set(ALL_KINDS)  # type: ignore[attr-defined]


class WebhookBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_URL,
                     description="Where events are POSTed: https:// (a public address)")
    event_types: list[EventType] = Field(min_length=1, max_length=len(ALL_KINDS))
    personal_data: bool = Field(False, description="Send message texts and visitor ids; "
                                "otherwise payloads carry ids only")
    enabled: bool = True
    description: str = Field("", max_length=500)


def webhooks(conn: HTTPConnection) -> Webhooks:
    found: Webhooks = conn.app.state.webhooks
    return found


def _definition(_request: Request, body: WebhookBody) -> WebhookDefinition:
    return WebhookDefinition(url=body.url, event_types=tuple(body.event_types),
                             personal_data=body.personal_data, enabled=body.enabled,
                             description=body.description)


def _with_secret(request: Request, view: WebhookView) -> dict[str, Any]:
    """The endpoint with its signing secret: shown when it is made or rotated, never again."""
    return webhook_json(view) | {
        "secret": webhooks(request).secret(view.webhook_id, view.secret_generation)
    }


WEBHOOKS = OwnedResource(webhooks, WebhookBody, _definition, webhook_json, _with_secret)


async def rotate_secret(request: Request) -> Response:
    return await rotated(request, webhooks(request).rotate_secret,
                         lambda made: _with_secret(request, made))


async def send_test(request: Request) -> Response:
    owner = await current_member(request, ADMIN, verified=True)
    made = await webhooks(request).send_test(owner.workspace_id, request.path_params["id"])
    return JSONResponse(delivery_json(made), status_code=202)


def _delivery_id(request: Request) -> int:
    raw = request.path_params["delivery_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise LoaclError("not_found", "no such delivery")
    return int(raw)


async def deliveries(request: Request) -> Response:
    owner = await current_member(request, ADMIN, verified=True)
    after, limit = page(request)
    found = await webhooks(request).deliveries(
        owner.workspace_id, request.path_params["id"], after, limit)
    return page_response([delivery_json(d) for d in found.items], found.next_cursor)


async def delivery(request: Request) -> Response:
    owner = await current_member(request, ADMIN, verified=True)
    found = await webhooks(request).delivery(
        owner.workspace_id, request.path_params["id"], _delivery_id(request))
    return JSONResponse(delivery_json(found))


async def redeliver(request: Request) -> Response:
    owner = await current_member(request, ADMIN, verified=True)
    found = await webhooks(request).redeliver(
        owner.workspace_id, request.path_params["id"], _delivery_id(request))
    return JSONResponse(delivery_json(found), status_code=202)


ABOUT = (
    "Events are POSTed as JSON (`{\"type\", \"timestamp\", \"data\"}`) and signed as the "
    "Standard Webhooks specification says: headers `webhook-id` (the same on every retry: "
    "de-duplicate by it), `webhook-timestamp` and `webhook-signature` (`v1,<base64 "
    "HMAC-SHA256>` of `id.timestamp.body` with the secret after `whsec_`; for a day after a "
    "rotation the old secret signs too). Any 2xx answer counts as received; anything else is "
    "retried with exponential backoff for up to `webhook_retry_hours`. Events of one "
    "conversation arrive in order.\n\nEvent types: "
    + "; ".join(f"`{k}`: {v}" for k, v in {**KINDS, **RESERVED_KINDS}.items())
)
CODES = ("version_conflict", "precondition_required", "url_not_allowed")

endpoints = [
    Endpoint("get", "/api/v1/webhooks", WEBHOOKS.list, "List your webhook endpoints",
             "webhooks", auth="owner", role=ADMIN, query=PAGE, returns="WebhookPage"),
    Endpoint("post", "/api/v1/webhooks", WEBHOOKS.create,
             "Register a webhook endpoint; its signing secret is shown once", "webhooks",
             auth="owner", role=ADMIN, body=WebhookBody, ok=201,
             codes=("email_not_verified", "url_not_allowed"), description=ABOUT,
             returns="WebhookWithSecret"),
    Endpoint("get", "/api/v1/webhooks/{id}", WEBHOOKS.get, "A webhook endpoint (ETag)",
             "webhooks", auth="owner", role=ADMIN, returns="Webhook"),
    Endpoint("put", "/api/v1/webhooks/{id}", WEBHOOKS.put,
             "Replace a webhook endpoint (If-Match)", "webhooks", auth="owner", role=ADMIN,
             body=WEBHOOKS.replacement, headers=IF_MATCH, codes=CODES, returns="Webhook"),
    Endpoint("patch", "/api/v1/webhooks/{id}", WEBHOOKS.patch,
             "Change some of a webhook endpoint (JSON Merge Patch, If-Match); "
             "`{\"enabled\": true}` turns a disabled one on again", "webhooks", auth="owner",
             role=ADMIN, body=WEBHOOKS.patch_body, body_types=PATCH_TYPES, headers=IF_MATCH,
             codes=(*CODES, "unsupported_media_type"), returns="Webhook"),
    Endpoint("delete", "/api/v1/webhooks/{id}", WEBHOOKS.delete,
             "Delete a webhook endpoint (If-Match)", "webhooks", auth="owner", role=ADMIN, ok=204,
             headers=IF_MATCH, codes=("version_conflict", "precondition_required")),
    Endpoint("post", "/api/v1/webhooks/{id}/rotate-secret", rotate_secret,
             "A new signing secret, shown once (the old one signs too for a day)", "webhooks",
             auth="owner", role=ADMIN, headers=IF_MATCH,
             codes=("version_conflict", "precondition_required"),
             returns="WebhookWithSecret"),
    Endpoint("post", "/api/v1/webhooks/{id}/test", send_test,
             "Send a test event (`webhook.test`) to the endpoint", "webhooks", auth="owner",
             role=ADMIN, ok=202, returns="Delivery"),
    Endpoint("get", "/api/v1/webhooks/{id}/deliveries", deliveries,
             "The endpoint's delivery log, newest first", "webhooks", auth="owner", role=ADMIN,
             query=PAGE, returns="DeliveryPage"),
    Endpoint("get", "/api/v1/webhooks/{id}/deliveries/{delivery_id}", delivery,
             "One delivery: status, attempts, response code, latency", "webhooks",
             auth="owner", role=ADMIN, returns="Delivery"),
    Endpoint("post", "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", redeliver,
             "Send a delivery again (same webhook-id, a new retry window)", "webhooks",
             auth="owner", role=ADMIN, ok=202, returns="Delivery"),
]
