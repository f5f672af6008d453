"""Request bodies parsed into pydantic models; every refusal names the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from loacl.domain.errors import LoaclError

M = TypeVar("M", bound=BaseModel)
MAX_JSON_BODY = 1024 * 1024


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


async def parse_body(request: Request, model: type[M]) -> M:
    if int(request.headers.get("content-length") or 0) > MAX_JSON_BODY:
        raise LoaclError("payload_too_large", "the request body is too large")
    raw = await request.body()
    if len(raw) > MAX_JSON_BODY:
        raise LoaclError("payload_too_large", "the request body is too large")
    try:
        data: Any = json.loads(raw) if raw else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LoaclError("invalid_json", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise LoaclError("invalid_json", "the request body must be a JSON object")
    return validated(model, data)


def validated(model: type[M], data: dict[str, Any]) -> M:
    """``data`` as ``model``, or the ``validation_error`` naming each bad field: the same
    refusal for a request body and a WebSocket frame."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
