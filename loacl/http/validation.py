"""Request bodies parsed into pydantic models; every refusal names the field.

A body is counted as it arrives, whatever its transfer encoding (a chunked body declares no
length): reading stops with 413 as soon as it passes the limit, so no body larger than the limit
is ever held. JSON nested deeper than ``MAX_JSON_DEPTH`` is refused as ``invalid_json``, here and
in WebSocket frames, before anything walks it recursively.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from loacl.domain.errors import LoaclError

M = TypeVar("M", bound=BaseModel)
MAX_JSON_BODY = 1024 * 1024
MAX_JSON_DEPTH = 64  # the API's own bodies nest a few levels; tool schemas a few more


def validation_error(exc: ValidationError) -> LoaclError:
    errors = [
        {
            "field": ".".join(str(part) for part in error["loc"]) or "body",
            "message": error["msg"].removeprefix("Value error, "),
        }
        for error in exc.errors(include_url=False)
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return LoaclError("validation_error", summary, errors=errors)


async def read_body(request: Request, limit: int, too_large: LoaclError) -> bytes:
    """The body, refused with ``too_large`` once it is longer than ``limit``: before reading
    when ``Content-Length`` says so, else as soon as the bytes received pass it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def nesting(value: Any) -> int:
    """How deep lists and objects nest in a decoded JSON value (a scalar is 0), walked without
    recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children)
    return deepest


def decode_json(raw: bytes | str, what: str = "the request body") -> Any:
    """``raw`` as JSON, or ``invalid_json``: not JSON, or nested past ``MAX_JSON_DEPTH``."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LoaclError("invalid_json", f"{what} is not valid JSON") from None
    except RecursionError:
        data = None  # deeper than the interpreter's stack: certainly too deep
    else:
        if nesting(data) <= MAX_JSON_DEPTH:
            return data
    raise LoaclError("invalid_json", f"{what} nests deeper than {MAX_JSON_DEPTH} levels")


async def parse_body(request: Request, model: type[M]) -> M:
    raw = await read_body(
        request, MAX_JSON_BODY,
        LoaclError("payload_too_large", f"the request body is larger than {MAX_JSON_BODY} bytes"),
    )
    data: Any = decode_json(raw) if raw else {}
    if not isinstance(data, dict):
        raise LoaclError("invalid_json", "the request body must be a JSON object")
    return validated(model, data)


def validated(model: type[M], data: dict[str, Any]) -> M:
    """``data`` as ``model``, or the ``validation_error`` naming each bad field: the same
    refusal for a request body and a WebSocket frame."""
    try:
        # Strict: JSON's types as the API document declares them; no false read as 0, no
        # "20" read as 20 (the document says number, so a client sending those is wrong).
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise validation_error(exc) from None
