"""The API described as OpenAPI 3.1 (``/api/v1/openapi.json``) and rendered at ``/docs``.

Request schemas come from the same pydantic models the routes validate with; a test checks that
every API route is described here and nothing else is.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from loacl import __version__
from loacl.http.auth import (
    LoginBody,
    RefreshBody,
    RegisterBody,
    ResetBody,
    ResetConfirmBody,
    TokenBody,
)
from loacl.http.chat import MessageBody
from loacl.http.errors import STATUS
from loacl.http.owners import AssistantBody, WidgetBody
from loacl.http.visitors import SessionBody


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    summary: str
    tag: str
    auth: str = "none"  # none | owner | visitor | visitor_or_owner
    body: type[BaseModel] | None = None
    ok: int = 200
    multipart: bool = False
    query: tuple[tuple[str, str], ...] = ()
    codes: tuple[str, ...] = field(default_factory=tuple)


PAGE = (("after", "cursor: next_cursor of the previous page"), ("limit", "1 to 100, default 20"))
OPS: list[Op] = [
    Op("post", "/api/v1/auth/register", "Register an owner account", "auth", body=RegisterBody,
       ok=201, codes=("validation_error", "email_taken")),
    Op("post", "/api/v1/auth/verify-email", "Verify an e-mail address with the mailed token",
       "auth", body=TokenBody, codes=("invalid_verification_token",)),
    Op("post", "/api/v1/auth/verify-email/resend", "Send the verification mail again", "auth",
       auth="owner", ok=202, codes=("rate_limited", "already_verified")),
    Op("post", "/api/v1/auth/login", "Log in: access and refresh tokens", "auth",
       body=LoginBody, codes=("invalid_credentials", "rate_limited")),
    Op("post", "/api/v1/auth/refresh-token", "Rotate the refresh token", "auth",
       body=RefreshBody, codes=("invalid_refresh_token", "refresh_token_reused")),
    Op("post", "/api/v1/auth/logout", "End this session", "auth", auth="owner", ok=204),
    Op("post", "/api/v1/auth/reset-password", "Mail a password reset link (always 202)", "auth",
       body=ResetBody, ok=202),
    Op("post", "/api/v1/auth/reset-password/confirm", "Set a new password with the mailed token",
       "auth", body=ResetConfirmBody, ok=204, codes=("invalid_reset_token", "validation_error")),
    Op("get", "/api/v1/auth/me", "The current owner", "auth", auth="owner"),
    Op("get", "/api/v1/assistants", "List your assistants", "assistants", auth="owner",
       query=PAGE),
    Op("post", "/api/v1/assistants", "Create an assistant", "assistants", auth="owner",
       body=AssistantBody, ok=201,
       codes=("email_not_verified", "unknown_model", "provider_unavailable")),
    Op("get", "/api/v1/assistants/{id}", "An assistant (ETag)", "assistants", auth="owner"),
    Op("put", "/api/v1/assistants/{id}", "Replace an assistant (If-Match)", "assistants",
       auth="owner", body=AssistantBody, codes=("version_conflict", "unknown_model")),
    Op("delete", "/api/v1/assistants/{id}", "Delete an assistant (If-Match)", "assistants",
       auth="owner", ok=204, codes=("version_conflict", "assistant_in_use")),
    Op("get", "/api/v1/widgets", "List your widgets", "widgets", auth="owner", query=PAGE),
    Op("post", "/api/v1/widgets", "Create a widget; the identity secret is shown once",
       "widgets", auth="owner", body=WidgetBody, ok=201,
       codes=("email_not_verified", "unknown_assistant")),
    Op("get", "/api/v1/widgets/{id}", "A widget (ETag)", "widgets", auth="owner"),
    Op("put", "/api/v1/widgets/{id}", "Replace a widget (If-Match)", "widgets", auth="owner",
       body=WidgetBody, codes=("version_conflict", "unknown_assistant")),
    Op("delete", "/api/v1/widgets/{id}", "Delete a widget (If-Match)", "widgets", auth="owner",
       ok=204, codes=("version_conflict",)),
    Op("get", "/api/v1/widgets/{id}/embed-code", "The HTML to paste into a site", "widgets",
       auth="owner"),
    Op("post", "/api/v1/widgets/{id}/rotate-secret", "A new identity secret, shown once",
       "widgets", auth="owner"),
    Op("get", "/api/v1/widgets/{id}/conversations", "A widget's conversations", "widgets",
       auth="owner", query=PAGE),
    Op("get", "/api/v1/widgets/{id}/config", "Public settings for the embed script (Origin "
       "checked)", "visitors", codes=("origin_not_allowed", "widget_not_found")),
    Op("post", "/api/v1/widgets/{id}/sessions", "A visitor token and conversation (Origin "
       "checked; optional signed identity)", "visitors", body=SessionBody, ok=201,
       codes=("origin_not_allowed", "widget_not_found", "invalid_identity")),
    Op("get", "/api/v1/widgets/{id}/messages", "Messages of a conversation, by cursor", "chat",
       auth="visitor_or_owner",
       query=(("before", "cursor: messages before it"), ("after", "cursor: messages after it"),
              ("limit", "1 to 100, default 50"),
              ("conversation_id", "owners: which conversation"))),
    Op("post", "/api/v1/widgets/{id}/messages", "Ask, and get the whole reply (not streamed)",
       "chat", auth="visitor", body=MessageBody, ok=201,
       codes=("rate_limited", "reply_in_progress", "message_too_long", "provider_rate_limited",
              "provider_unavailable", "provider_error")),
    Op("post", "/api/v1/widgets/{id}/files", "Upload a file (multipart field `file`)", "chat",
       auth="visitor", ok=201, multipart=True,
       codes=("file_too_large", "unsupported_file_type", "empty_file")),
    Op("get", "/api/v1/widgets/{id}/files/{file_id}", "Download a file (uploader or owner)",
       "chat", auth="visitor_or_owner"),
    Op("get", "/api/v1/widgets/{id}/stream", "WebSocket: streamed replies, resumable (see the "
       "description)", "chat", auth="visitor", ok=101),
]

STREAM_NOTE = (
    "Connect with `?token=<visitor token>` from an allowed Origin. Client frames: `message` "
    "{text, file_ids?, client_message_id?}, `resume` {message_id, offset}, `pong`. Server "
    "frames: `ready`, `ack`, `started`, `delta` {message_id, offset, text}, `done` "
    "{message_id, status, usage}, `error` {code, text}, `ping`. Close codes: 4401 token, 4408 "
    "idle, 4008 too slow (resume), 1009 frame too big."
)


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "title", "status", "code", "detail"],
        "properties": {
            "type": {"type": "string"}, "title": {"type": "string"},
            "status": {"type": "integer"}, "code": {"type": "string", "enum": sorted(STATUS)},
            "detail": {"type": "string"}, "request_id": {"type": ["string", "null"]},
            "errors": {"type": "array", "items": {"type": "object", "properties": {
                "field": {"type": "string"}, "message": {"type": "string"}}}},
        },
    }


def build_spec(base_url: str | None = None) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Problem": _problem_schema()}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPS:
        operation: dict[str, Any] = {
            "summary": op.summary, "tags": [op.tag],
            "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_')}"
            .replace("{", "").replace("}", "").replace("-", "_"),
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ("id", "file_id") if "{" + name + "}" in op.path
        ]
        params += [
            {"name": name, "in": "query", "required": False, "description": text,
             "schema": {"type": "string"}}
            for name, text in op.query
        ]
        if params:
            operation["parameters"] = params
        if op.auth != "none":
            operation["security"] = (
                [{"ownerToken": []}] if op.auth == "owner"
                else [{"visitorToken": []}] if op.auth == "visitor"
                else [{"visitorToken": []}, {"ownerToken": []}]
            )
        if op.body is not None:
            schema = op.body.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                schemas[name] = sub
            schemas[op.body.__name__] = schema
            operation["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}}}
        if op.multipart:
            operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": {
                    "file": {"type": "string", "format": "binary"}}}}}}
        if op.ok == 101:
            operation["description"] = STREAM_NOTE
        responses: dict[str, Any] = {str(op.ok): {"description": "success"}}
        problem = {"content": {"application/problem+json": {
            "schema": {"$ref": "#/components/schemas/Problem"}}}}
        for code in op.codes:
            status = str(STATUS[code])
            entry = responses.setdefault(status, {"description": "", **problem})
            entry["description"] = ", ".join(filter(None, [entry["description"], code]))
        if op.auth != "none":
            responses.setdefault("401", {"description": "unauthorized, invalid_token", **problem})
        if "{id}" in op.path:
            responses.setdefault("404", {"description": "not_found", **problem})
        responses.setdefault("422", {"description": "validation_error", **problem})
        operation["responses"] = responses
        paths.setdefault(op.path, {})[op.method] = operation
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "LOACL API", "version": __version__,
            "description": "Owners manage assistants and widgets; visitors chat through a "
            "widget. Errors are application/problem+json with a stable `code`.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ownerToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                               "description": "Access token from /api/v1/auth/login"},
                "visitorToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                 "description": "Visitor token from .../sessions; the request "
                                 "must come from an allowed Origin"},
            },
        },
    }
    if base_url:
        spec["servers"] = [{"url": base_url}]
    return spec


async def openapi_json(request: Request) -> Response:
    return JSONResponse(build_spec(str(request.base_url).rstrip("/")))


async def docs(request: Request) -> Response:
    """A self-contained page: no script or style from anywhere else."""
    spec = build_spec()
    sections: dict[str, list[str]] = {}
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            body = ""
            ref = (op.get("requestBody", {}).get("content", {}).get("application/json", {})
                   .get("schema", {}).get("$ref"))
            if ref:
                name = ref.rsplit("/", 1)[-1]
                body = (f"<details><summary>{name}</summary><pre>"
                        f"{html.escape(json.dumps(spec['components']['schemas'][name], indent=2))}"
                        "</pre></details>")
            codes = ", ".join(f"{s}: {html.escape(r['description'])}"
                              for s, r in op["responses"].items())
            note = f"<p>{html.escape(op.get('description', ''))}</p>" if "description" in op else ""
            sections.setdefault(op["tags"][0], []).append(
                f"<li><code class=m>{method.upper()}</code> <code>{html.escape(path)}</code> "
                f"— {html.escape(op['summary'])}{note}<br><small>{codes}</small>{body}</li>"
            )
    parts = "".join(f"<h2>{tag}</h2><ul>{''.join(items)}</ul>" for tag, items in sections.items())
    page = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>LOACL API</title>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem}li{margin:.6rem 0}code.m{font-weight:bold}pre{background:#f4f4f5;"
        "padding:.5rem;overflow:auto}small{color:#555}</style>"
        f"<h1>LOACL API <small>{__version__}</small></h1><p>The machine-readable description "
        "is at <a href='/api/v1/openapi.json'>/api/v1/openapi.json</a> (OpenAPI 3.1). Errors "
        "are <code>application/problem+json</code> with a stable <code>code</code>.</p>"
        f"{parts}</html>"
    )
    return HTMLResponse(page)


routes = [Route("/api/v1/openapi.json", openapi_json), Route("/docs", docs)]
