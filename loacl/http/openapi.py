"""The API described as OpenAPI 3.1 (``/api/v1/openapi.json``) and rendered at ``/docs``: a
plain list, server-rendered, with no script (fast); it links to the interactive reference at
``/docs/try`` (``apidocs``), where requests can be sent.

Built from the app's own routes: each was declared once, as an ``Endpoint`` or ``Socket`` (see
``routing``), with what the document says about it. Request schemas are the pydantic models the
handlers validate with; error responses come from the codes each endpoint declares.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from loacl import __version__
from loacl.http.common import public_base
from loacl.http.csp import policy, style_hash
from loacl.http.errors import ERRORS, STATUS
from loacl.http.routing import Declaration, Endpoint, Socket, declared
from loacl.http.shapes import SCHEMAS

_PATH_PARAM = re.compile(r"{(\w+)}")


def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "title", "status", "code", "detail"],
        "properties": {
            "type": {"type": "string"}, "title": {"type": "string"},
            "status": {"type": "integer"},
            "code": {"type": "string", "enum": sorted(ERRORS), "x-codes": {
                code: {"status": error.status, "meaning": error.meaning}
                for code, error in sorted(ERRORS.items())}},
            "detail": {"type": "string"}, "request_id": {"type": ["string", "null"]},
            "errors": {"type": "array", "description": "With validation_error: each bad "
                       "field, why, and what it takes", "items": {
                "type": "object", "required": ["field", "message"], "properties": {
                    "field": {"type": "string", "description": "dotted path in the body, "
                              "or a query parameter"},
                    "message": {"type": "string"},
                    "reason": {"type": "string", "description": "the check that failed, "
                               "e.g. missing, extra_forbidden, literal_error"},
                    "accepted": {"type": "array", "description": "the values the field "
                                 "takes, or for an unknown field the known fields"},
                    "did_you_mean": {"type": "string", "description": "for an unknown "
                                     "field: the known one most likely meant"}}}},
        },
    }


# Any JSON body may be refused as unreadable or too large (see validation.parse_body).
BODY_CODES = ("invalid_json", "payload_too_large")

_PROBLEM = {"content": {"application/problem+json": {
    "schema": {"$ref": "#/components/schemas/Problem"}}}}


def _parameters(op: Declaration) -> list[dict[str, Any]]:
    params = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(op.path)
    ]
    params += [
        {"name": param.name, "in": "query", "required": False,
         "description": param.description, "schema": param.schema,
         **({"deprecated": True} if param.deprecated else {})}
        for param in op.query
    ]
    if isinstance(op, Endpoint):
        params += [
            {"name": param.name, "in": "header", "required": False,
             "description": param.description, "schema": param.schema}
            for param in op.headers
        ]
    return params


def _request_body(op: Endpoint, schemas: dict[str, Any]) -> dict[str, Any] | None:
    if op.multipart:
        return {"required": True, "content": {"multipart/form-data": {
            "schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary"}}}}}}
    if op.body is None:
        return None
    schema = op.body.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    schemas[op.body.__name__] = schema
    # An empty body reads as {}: a body whose every field is optional may be left out.
    required = bool(schema.get("required"))
    return {"required": required, "content": {
        media: {"schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}
        for media in op.body_types}}


def _responses(op: Declaration) -> dict[str, Any]:
    responses: dict[str, Any] = {str(op.ok): {"description": "success"}}
    if isinstance(op, Endpoint) and op.content:
        responses[str(op.ok)]["content"] = op.content
    elif isinstance(op, Endpoint) and op.returns is not None:
        responses[str(op.ok)]["content"] = {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{op.returns}"}}}
    codes = list(op.codes)
    if op.role is not None:
        codes += [c for c in ("insufficient_role", "not_a_member") if c not in codes]
    if op.auth in ("visitor", "visitor_or_owner") and "origin_not_allowed" not in codes:
        codes.append("origin_not_allowed")  # a visitor's page must be one the widget allows
    if isinstance(op, Endpoint) and op.body is not None:
        codes += [code for code in BODY_CODES if code not in codes]
    for code in codes:
        entry = responses.setdefault(str(STATUS[code]), {"description": "", **_PROBLEM})
        entry["description"] = ", ".join(filter(None, [entry["description"], code]))
    if op.auth != "none":
        responses.setdefault("401", {"description": "unauthorized, invalid_token", **_PROBLEM})
    if "{id}" in op.path:
        responses.setdefault("404", {"description": "not_found", **_PROBLEM})
    responses.setdefault("422", {"description": "validation_error", **_PROBLEM})
    return responses


def _operation(op: Declaration, schemas: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": op.summary, "tags": [op.tag],
        "operationId": f"{op.method}_{op.path.strip('/').replace('/', '_')}"
        .replace("{", "").replace("}", "").replace("-", "_").replace(".", "_"),
    }
    if params := _parameters(op):
        operation["parameters"] = params
    if op.auth != "none":
        operation["security"] = (
            [{"ownerToken": []}] if op.auth == "owner"
            else [{"visitorToken": []}] if op.auth == "visitor"
            else [{"visitorToken": []}, {"ownerToken": []}]
        )
    description = op.description
    if op.role is not None:
        operation["x-loacl-role"] = op.role
        description = (f"Role: `{op.role}` or higher, in the access token's workspace."
                       + (f"\n\n{description}" if description else ""))
    if description:
        operation["description"] = description
    if not isinstance(op, Socket) and (body := _request_body(op, schemas)) is not None:
        operation["requestBody"] = body
    operation["responses"] = _responses(op)
    return operation


def build_spec(
    declarations: Sequence[Declaration], base_url: str | None = None
) -> dict[str, Any]:
    """The document for ``declarations`` (those with ``documented=False`` left out)."""
    schemas: dict[str, Any] = {"Problem": _problem_schema(), **SCHEMAS}
    paths: dict[str, dict[str, Any]] = {}
    for op in declarations:
        if op.documented:
            paths.setdefault(op.path, {})[op.method] = _operation(op, schemas)
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
    return JSONResponse(build_spec(declared(request.app.routes), public_base(request)))


DOCS_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
    "li{margin:.6rem 0}code.m{font-weight:bold}pre{background:#f4f4f5;padding:.5rem;"
    "overflow:auto}small{color:#555}.d{white-space:pre-line}td{padding:0 .5rem}"
    ".try{background:#eef4ff;border:1px solid #c7d7f5;padding:.5rem .75rem}"
)
# The page has no script; its one inline style is allowed by its hash, nothing else by name.
DOCS_CSP = policy(scripts=(), styles=(style_hash(DOCS_STYLE),), images=(), connect=())


async def docs(request: Request) -> Response:
    """A self-contained page: no script or style from anywhere else."""
    spec = build_spec(declared(request.app.routes))
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
            note = (f"<p class=d>{html.escape(op['description'])}</p>" if "description" in op
                    else "")
            sections.setdefault(op["tags"][0], []).append(
                f"<li><code class=m>{method.upper()}</code> <code>{html.escape(path)}</code> "
                f"— {html.escape(op['summary'])}{note}<br><small>{codes}</small>{body}</li>"
            )
    parts = "".join(f"<h2>{tag}</h2><ul>{''.join(items)}</ul>" for tag, items in sections.items())
    errors = "".join(
        f"<tr><td><code>{code}</code><td>{error.status}<td>{html.escape(error.meaning)}"
        for code, error in sorted(ERRORS.items(), key=lambda item: (item[1].status, item[0]))
    )
    page = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>LOACL API</title>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<style>{DOCS_STYLE}</style>"
        f"<h1>LOACL API <small>{__version__}</small></h1>"
        "<p class=try>To send requests from the browser (log in, authorize with the token, "
        "try each endpoint), open the <a href='/docs/try'>interactive reference</a>. This page "
        "is the plain list: no script, quick to load.</p><p>The machine-readable description "
        "is at <a href='/api/v1/openapi.json'>/api/v1/openapi.json</a> (OpenAPI 3.1). Errors "
        "are <code>application/problem+json</code> with a stable <code>code</code>.</p>"
        f"{parts}<h2>Error codes</h2><table>{errors}</table></html>"
    )
    return HTMLResponse(page, headers={"Content-Security-Policy": DOCS_CSP})


endpoints = [
    Endpoint("get", "/api/v1/openapi.json", openapi_json, "This document (OpenAPI 3.1)", "meta"),
    Endpoint("get", "/docs", docs, "This document as a page: the plain list, no script",
             documented=False),
]
