"""The one place where error codes become HTTP statuses, as application/problem+json."""

from __future__ import annotations

from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loacl.domain.errors import LoaclError

log = structlog.get_logger(__name__)

STATUS: dict[str, int] = {
    "invalid_request": 400,
    "invalid_json": 400,
    "validation_error": 422,
    "unauthorized": 401,
    "invalid_credentials": 401,
    "invalid_token": 401,
    "token_expired": 401,
    "invalid_refresh_token": 401,
    "refresh_token_reused": 401,
    "email_not_verified": 403,
    "invalid_verification_token": 400,
    "invalid_reset_token": 400,
    "already_verified": 409,
    "unknown_model": 422,
    "unknown_assistant": 422,
    "provider_unavailable": 503,
    "assistant_in_use": 409,
    "widget_not_found": 404,
    "origin_not_allowed": 403,
    "invalid_identity": 401,
    "identity_required": 403,
    "reply_in_progress": 409,
    "message_too_long": 413,
    "unknown_file": 422,
    "empty_file": 422,
    "file_too_large": 413,
    "unsupported_file_type": 415,
    "provider_rate_limited": 429,
    "provider_error": 502,
    "unsupported_file_for_provider": 422,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "email_taken": 409,
    "conflict": 409,
    "version_conflict": 412,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limited": 429,
    "store_unavailable": 503,
    "database_unavailable": 503,
    "store_closed": 503,
}

_HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


class ProblemResponse(JSONResponse):
    media_type = "application/problem+json"


def problem(
    status: int, code: str, detail: str, request: Request | None = None, **extra: Any
) -> Response:
    body: dict[str, Any] = {
        "type": f"urn:loacl:problem:{code}",
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if request is not None:
        body["request_id"] = getattr(request.state, "request_id", None)
    body.update(extra)
    headers = {}
    if "retry_after" in extra:
        headers["Retry-After"] = str(extra["retry_after"])
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="loacl"'

    return ProblemResponse(body, status_code=status, headers=headers)


async def loacl_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoaclError)
    status = STATUS.get(exc.code, 400)
    return problem(status, exc.code, exc.message, request, **exc.extra)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    response = problem(exc.status_code, code, str(exc.detail), request)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("http.unexpected_error", path=request.url.path)
    response = problem(
        500, "internal_error", "something went wrong on our side; the request id says where",
        request,
    )
    # This handler runs outside the request-id middleware, so it sets the header itself.
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        response.headers["X-Request-ID"] = request_id
    return response


EXCEPTION_HANDLERS: dict[Any, Any] = {
    LoaclError: loacl_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}
