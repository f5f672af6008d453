"""The one place where error codes become HTTP statuses, as application/problem+json.

Every error a client can see has a stable ``code``; ``ERRORS`` below gives each its status and
meaning (the README's table is generated from it). Where the codes come from::

    * LoaclError(code, message, **extra)   the one error type, raised anywhere in loacl/
      + ConflictError                      version_conflict, with the stream's versions
    * ProviderError(code, message)         an AI provider failed: provider_rate_limited,
                                           provider_unavailable, provider_error,
                                           unsupported_file_for_provider
    * starlette HTTPException              routing and parsing: invalid_request,
                                           unauthorized, forbidden, not_found,
                                           method_not_allowed, payload_too_large,
                                           unsupported_media_type, http_error
    * problem(status, code, ...)           written directly: not_ready, internal_error
    * the stream's error frames            invalid_frame; interrupted for a reply cut short
    * anything else                        internal_error: a 500, logged with the request id
    * a code missing from ERRORS           a 500 too, logged as http.unmapped_error_code

And by status::

    400 invalid_request, invalid_json, invalid_verification_token, invalid_reset_token,
        invalid_invite, invalid_frame, http_error
    401 unauthorized, invalid_credentials, invalid_token, token_expired,
        invalid_refresh_token, refresh_token_reused, invalid_identity
    403 email_not_verified, origin_not_allowed, identity_required, forbidden,
        cross_site_request, insufficient_role, not_a_member
    404 not_found, widget_not_found, user_not_found, event_not_found, file_not_found,
        backup_not_found, document_not_found
    405 method_not_allowed
    409 email_taken, account_exists, already_member, last_owner, workspace_not_empty,
        already_verified, assistant_in_use, reply_in_progress, conversation_taken,
        conversation_closed, conflict,
        conversation_exists, migration_refused, file_exists, events_would_be_lost,
        copy_target_not_empty
    410 subject_erased
    412 version_conflict
    413 message_too_long, file_too_large, payload_too_large
    415 unsupported_file_type, unsupported_media_type, unsupported_document_type
    422 validation_error, invalid_email, unknown_model, provider_not_configured, unknown_assistant,
        unknown_file, unknown_member, empty_file, unsupported_file_for_provider, tool_not_supported,
        invalid_export, invalid_migration_target, not_resettable, invalid_timestamp,
        replica_not_configured, url_not_allowed, knowledge_store_not_supported, invalid_copy
    426 upgrade_required
    428 precondition_required
    429 rate_limited, budget_exhausted, provider_rate_limited
    500 internal_error, store_error, log_damaged, unknown_event_type, unknown_schema_version,
        migration_failed, backup_corrupt, invalid_database_url, duplicate_subscriber,
        database_damaged, chain_broken, database_unreadable, master_key_missing,
        data_key_missing, keys_unavailable, copy_not_verified, instance_database_diverged
    502 provider_error, outbound_failed
    503 provider_unavailable, store_unavailable, database_unavailable, store_closed,
        not_ready, interrupted, schema_out_of_date, schema_too_new, database_in_use,
        database_not_found, replica_unavailable, replica_empty, backup_unavailable
"""

from __future__ import annotations

from typing import Any, NamedTuple

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from loacl.domain.errors import LoaclError
from loacl.http.middleware import SECURITY_HEADERS

log = structlog.get_logger(__name__)


class ErrorCode(NamedTuple):
    status: int
    meaning: str


# Client mistakes are 4xx; faults of the server, its database or its provider are 5xx. Codes
# only the CLI raises are mapped too: they share the code space and may one day reach HTTP.
ERRORS: dict[str, ErrorCode] = {
    # 400
    "invalid_request": ErrorCode(400, "the request could not be read"),
    "invalid_json": ErrorCode(400, "the body (or an imported file) is not valid JSON"),
    "invalid_verification_token": ErrorCode(400, "the e-mail verification token is wrong or "
                                                 "expired"),
    "invalid_reset_token": ErrorCode(400, "the password reset token is wrong, used or expired"),
    "invalid_invite": ErrorCode(400, "the invite is wrong, used, revoked or expired"),
    "invalid_frame": ErrorCode(400, "WebSocket only: a frame was not understood"),
    "http_error": ErrorCode(400, "another HTTP error; the status says which"),
    # 401
    "unauthorized": ErrorCode(401, "no bearer token was sent"),
    "invalid_credentials": ErrorCode(401, "wrong e-mail address or password"),
    "invalid_token": ErrorCode(401, "the access or visitor token is not valid"),
    "token_expired": ErrorCode(401, "the access or visitor token has expired"),
    "invalid_refresh_token": ErrorCode(401, "the refresh token is not valid"),
    "refresh_token_reused": ErrorCode(401, "a rotated refresh token came back: the session "
                                           "is ended"),
    "invalid_identity": ErrorCode(401, "the signed user identity (user_hash) does not match"),
    # 403
    "email_not_verified": ErrorCode(403, "verify the e-mail address first"),
    "origin_not_allowed": ErrorCode(403, "the page's Origin is not one the widget allows"),
    "identity_required": ErrorCode(403, "the widget requires a signed user identity"),
    "forbidden": ErrorCode(403, "not allowed"),
    "cross_site_request": ErrorCode(403, "a cookie-authenticated request came from another "
                                         "site (Sec-Fetch-Site or Origin)"),
    "insufficient_role": ErrorCode(403, "your role in the workspace does not allow this "
                                        "(`role`: yours, `needed`: the least that does)"),
    "not_a_member": ErrorCode(403, "the access token's workspace is not (any more) one you "
                                   "are a member of: refresh or switch workspace"),
    # 404
    "not_found": ErrorCode(404, "no such resource (or not yours)"),
    "widget_not_found": ErrorCode(404, "no such widget"),
    "document_not_found": ErrorCode(404, "no such knowledge document"),
    "user_not_found": ErrorCode(404, "no such user"),
    "event_not_found": ErrorCode(404, "CLI: no event at that position in the log"),
    "file_not_found": ErrorCode(404, "CLI: the file to import does not exist"),
    "backup_not_found": ErrorCode(404, "CLI: no backup at that path"),
    # 405
    "method_not_allowed": ErrorCode(405, "the path does not take that method"),
    # 426
    "upgrade_required": ErrorCode(426, "a WebSocket's URL was asked for as plain HTTP"),
    # 409
    "email_taken": ErrorCode(409, "an account with that e-mail address exists"),
    "account_exists": ErrorCode(409, "an account has the invited address: log in and accept "
                                     "as it"),
    "already_member": ErrorCode(409, "the account is a member of the workspace already"),
    "last_owner": ErrorCode(409, "a workspace keeps at least one owner"),
    "workspace_not_empty": ErrorCode(409, "delete the workspace's widgets and assistants "
                                          "first"),
    "already_verified": ErrorCode(409, "the e-mail address is verified already"),
    "assistant_in_use": ErrorCode(409, "a widget still uses the assistant"),
    "reply_in_progress": ErrorCode(409, "wait for the reply being written before asking again"),
    "conversation_taken": ErrorCode(
        409, "another member answers the conversation (send force: true to take it over)"
    ),
    "conversation_closed": ErrorCode(409, "the conversation is closed (take it over to reopen)"),
    "conflict": ErrorCode(409, "the change conflicts with the current state"),
    "conversation_exists": ErrorCode(
        409, "the signed-in user has a conversation with the widget already (handled inside)"
    ),
    "migration_refused": ErrorCode(409, "CLI: the downgrade would drop tables that hold data"),
    "events_would_be_lost": ErrorCode(409, "CLI restore: the database holds events the backup "
                                           "does not (--force)"),
    "file_exists": ErrorCode(409, "CLI: the output file exists; repair never overwrites one"),
    "copy_target_not_empty": ErrorCode(409, "CLI copy: the target already holds an event log; "
                                            "copy into a new file or an empty database"),
    # 410
    "subject_erased": ErrorCode(410, "the conversation (or account) was erased: nothing of it "
                                     "is kept or taken any more"),
    # 412
    "version_conflict": ErrorCode(412, "If-Match names an old version: read it again"),
    # 413
    "message_too_long": ErrorCode(413, "the message is longer than max_message_chars"),
    "file_too_large": ErrorCode(413, "the file is larger than max_upload_size"),
    "payload_too_large": ErrorCode(413, "the request body is too large"),
    # 415
    "unsupported_file_type": ErrorCode(415, "that file type may not be uploaded"),
    "unsupported_document_type": ErrorCode(415, "knowledge takes PDF, Word (.docx), Markdown, "
                                           "HTML and text documents whose content matches "
                                           "their name"),
    "unsupported_media_type": ErrorCode(415, "send application/json"),
    # 422
    "validation_error": ErrorCode(422, "a field is missing or invalid; `errors` says which"),
    "invalid_email": ErrorCode(422, "not an e-mail address that mail can be sent to; "
                               "`errors` says why"),
    "unknown_model": ErrorCode(422, "the provider has no such model"),
    "url_not_allowed": ErrorCode(422, "LOACL may not call that URL: https:// and a public "
                                      "address only, unless the server allows more"),
    "provider_not_configured": ErrorCode(422, "the server lacks the key or URL of the provider "
                                              "named; `errors` says what the operator must set"),
    "unknown_assistant": ErrorCode(422, "no such assistant of yours"),
    "unknown_file": ErrorCode(422, "a file_id is not an upload of this conversation"),
    "unknown_member": ErrorCode(422, "assignee_id names no member who may answer"),
    "empty_file": ErrorCode(422, "the file is empty"),
    "unsupported_file_for_provider": ErrorCode(422, "the assistant's provider cannot read "
                                                    "that kind of file"),
    "tool_not_supported": ErrorCode(422, "the assistant's provider cannot run that built-in "
                                         "tool (web_search runs with the openai provider only)"),
    "knowledge_store_not_supported": ErrorCode(422, "knowledge kept in OpenAI vector stores "
                                                    "needs the openai provider"),
    "invalid_export": ErrorCode(422, "CLI: the import file is not an assistant export"),
    "invalid_migration_target": ErrorCode(422, "CLI: --to must be 0 or more"),
    "invalid_copy": ErrorCode(422, "CLI copy: --from and --to must be one sqlite:/// and one "
                                   "postgresql:// URL"),
    "not_resettable": ErrorCode(
        422, "CLI: only a subscriber that keeps its own tables can be reset"
    ),
    "invalid_timestamp": ErrorCode(422, "CLI: --timestamp is not an ISO-8601 time with a time "
                                        "zone"),
    "replica_not_configured": ErrorCode(422, "CLI: no replica_url is set"),
    # 428
    "precondition_required": ErrorCode(
        428, "send If-Match with the ETag you read (require_if_match is on)"
    ),
    # 429
    "rate_limited": ErrorCode(429, "too many requests; Retry-After says when to try again"),
    "budget_exhausted": ErrorCode(429, "the widget's token or cost budget for the day or the "
                                       "month is used up; Retry-After says when it starts "
                                       "again"),
    "provider_rate_limited": ErrorCode(429, "the AI provider is rate limiting; try again "
                                            "shortly"),
    # 500
    "internal_error": ErrorCode(500, "an unexpected failure, logged with the request id"),
    "store_error": ErrorCode(500, "the event store could not write the events"),
    "duplicate_subscriber": ErrorCode(500, "two subscribers of the log share one name"),
    "log_damaged": ErrorCode(500, "the event log's pages are damaged or it holds one stream "
                                  "version twice: loacl repair"),
    "database_damaged": ErrorCode(500, "a read table or index is damaged: loacl replay "
                                       "rebuilds it"),
    "chain_broken": ErrorCode(500, "the event log fails its hash-chain check: loacl audit "
                                   "verify names where"),
    "unknown_event_type": ErrorCode(500, "the log holds an event type this LOACL does not "
                                         "know"),
    "unknown_schema_version": ErrorCode(500, "the log holds an event version newer than this "
                                             "LOACL knows"),
    "migration_failed": ErrorCode(500, "a schema migration failed and was rolled back"),
    "backup_corrupt": ErrorCode(500, "the backup fails its integrity check or audit"),
    "database_unreadable": ErrorCode(500, "restore: the current database cannot be read, so "
                                          "what it would lose is unknown (--force)"),
    "invalid_database_url": ErrorCode(500, "DATABASE_URL is not a sqlite:/// URL"),
    "master_key_missing": ErrorCode(500, "the data keys are sealed with a master key this "
                                         "LOACL does not have (master_key)"),
    "data_key_missing": ErrorCode(500, "an event names a data key the key table lacks"),
    "keys_unavailable": ErrorCode(500, "sealed fields were read without the database's keys"),
    "copy_not_verified": ErrorCode(500, "CLI copy: the copied log fails its hash-chain check or "
                                        "ends elsewhere than the source; nothing was kept"),
    "instance_database_diverged": ErrorCode(500, "this instance's SQLite file is not a copy "
                                            "of the PostgreSQL log it is to follow"),
    # 502
    "provider_error": ErrorCode(502, "the AI provider failed or refused the request"),
    "outbound_failed": ErrorCode(502, "a request LOACL made (a webhook) got no answer"),
    # 503
    "provider_unavailable": ErrorCode(503, "the AI provider cannot be reached or is not "
                                           "configured"),
    "store_unavailable": ErrorCode(503, "the event store could not commit; try again"),
    "database_unavailable": ErrorCode(503, "the database is locked or cannot be opened"),
    "store_closed": ErrorCode(503, "the server is shutting down"),
    "not_ready": ErrorCode(503, "/readyz: a check failed (store, disk or integrity); the body "
                                "names it"),
    "interrupted": ErrorCode(503, "the reply was cut short by a server restart; ask again"),
    "schema_out_of_date": ErrorCode(503, "the database needs migrations: loacl migrate up"),
    "schema_too_new": ErrorCode(503, "the database was migrated by a newer LOACL"),
    "database_in_use": ErrorCode(503, "another LOACL server uses the database"),
    "database_not_found": ErrorCode(503, "no database file at the configured path"),
    "replica_unavailable": ErrorCode(503, "CLI: Litestream is missing, or cannot read or "
                                          "restore the replica; the message says why"),
    "replica_empty": ErrorCode(503, "CLI: the replica holds no backup yet"),
    "backup_unavailable": ErrorCode(503, "CLI backup of a PostgreSQL log: pg_dump is missing or "
                                         "failed; the message says why"),
}

STATUS: dict[str, int] = {code: error.status for code, error in ERRORS.items()}

# Starlette raises HTTPException with a status only: the code it stands for.
HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def status_for(code: str) -> int:
    """The code's status; a code missing from ``ERRORS`` is a bug on our side: 500, logged."""
    status = STATUS.get(code)
    if status is None:
        log.error("http.unmapped_error_code", code=code)
        return 500
    return status


def error_table() -> str:
    """``ERRORS`` as the README's Markdown table, by status."""
    rows = sorted(ERRORS.items(), key=lambda item: (item[1].status, item[0]))
    lines = ["| Code | HTTP status | Meaning |", "| --- | --- | --- |"]
    lines += [f"| `{code}` | {error.status} | {error.meaning} |" for code, error in rows]
    return "\n".join(lines)


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
    if status == 413:
        # The rest of the body is not read: end the connection rather than drain it.
        headers["Connection"] = "close"

    return ProblemResponse(body, status_code=status, headers=headers)


async def loacl_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoaclError)
    extra = exc.extra
    if exc.code == "validation_error" and not extra.get("errors"):
        # Every 422 lists its fields; a refusal that names none is about the body as a whole.
        extra = {**extra, "errors": [{"field": "body", "message": exc.message}]}
    return problem(status_for(exc.code), exc.code, exc.message, request, **extra)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    response = problem(exc.status_code, code, str(exc.detail), request)
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:
        # Starlette names the methods of the first route that matched the path; a path is
        # declared once per method, so gather them all.
        response.headers["Allow"] = ", ".join(allowed_methods(request))
    return response


def allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at the request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.match(
            request.url.path
        ):
            methods |= route.methods
    return sorted(methods)


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client went away while sending its body (an aborted upload, a dropped slow
    client): one line at info level, and nothing to answer."""
    assert isinstance(exc, ClientDisconnect)
    log.info("http.body_aborted", method=request.method, path=request.url.path)
    return Response(status_code=499)  # nginx's "client closed request"; never sent


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("http.unexpected_error", path=request.url.path)
    response = problem(
        500, "internal_error", "something went wrong on our side; the request id says where",
        request,
    )
    # This handler runs outside the middleware, so it sets their headers itself.
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        response.headers["X-Request-ID"] = request_id
    for name, value in SECURITY_HEADERS:
        response.headers[name.decode()] = value.decode()
    return response


EXCEPTION_HANDLERS: dict[Any, Any] = {
    LoaclError: loacl_error,
    HTTPException: http_error,
    ClientDisconnect: client_gone,
    Exception: unexpected_error,
}
