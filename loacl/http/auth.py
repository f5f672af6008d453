"""``/api/v1/auth/*``: owner registration, e-mail verification, login, tokens, password reset."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loacl.domain.errors import LoaclError
from loacl.http.common import accounts, client_ip, metadata
from loacl.http.routing import Endpoint
from loacl.http.shapes import tokens_json, user_json
from loacl.http.validation import parse_body
from loacl.services.accounts import Principal


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterBody(Body):
    email: str = Field(max_length=320)
    password: str
    name: str | None = Field(None, max_length=200)


class TokenBody(Body):
    token: str = Field(max_length=4096)


class LoginBody(Body):
    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)


class RefreshBody(Body):
    refresh_token: str = Field(max_length=256)


class ResetBody(Body):
    email: str = Field(max_length=320)


class ResetConfirmBody(Body):
    token: str = Field(max_length=4096)
    password: str



def base_url(request: Request) -> str:
    """Where mail links point: the public URL, else the address the server listens on (as
    ``loacl serve --host/--port`` gave it, else as configured). Never the request's Host
    header: anyone may ask for a reset mail to anyone, naming any host."""
    settings = request.app.state.settings
    if settings.public_url:
        return str(settings.public_url).rstrip("/")
    host, port = getattr(request.app.state, "listening", (settings.host, settings.port))
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise LoaclError("unauthorized", "send an access token: Authorization: Bearer <token>")
    return token.strip()


async def current_owner(request: Request, *, verified: bool = False) -> Principal:
    """The owner behind the request's access token; with ``verified``, only a verified one."""
    principal = await accounts(request).authenticate(bearer_token(request))
    settings = request.app.state.settings
    if verified and settings.require_verified_email and not principal.verified:
        raise LoaclError(
            "email_not_verified", "verify your e-mail address first (see the mail we sent)"
        )
    return principal


async def register(request: Request) -> Response:
    """202 and the same body whether the address was free or not: the mail says which."""
    body = await parse_body(request, RegisterBody)
    email = await accounts(request).register(
        body.email, body.password, body.name, client_ip(request), base_url(request),
        metadata(request),
    )
    return JSONResponse({"email": email, "status": "mail_sent"}, status_code=202)


async def verify_email(request: Request) -> Response:
    body = await parse_body(request, TokenBody)
    user = await accounts(request).verify_email(body.token, metadata(request))
    return JSONResponse(user_json(user))


async def resend_verification(request: Request) -> Response:
    principal = await current_owner(request)
    await accounts(request).resend_verification(principal, base_url(request))
    return Response(status_code=202)


async def login(request: Request) -> Response:
    body = await parse_body(request, LoginBody)
    pair = await accounts(request).login(
        body.email, body.password, client_ip(request), metadata(request)
    )
    return JSONResponse(tokens_json(pair), headers={"Cache-Control": "no-store"})


async def refresh_token(request: Request) -> Response:
    body = await parse_body(request, RefreshBody)
    pair = await accounts(request).refresh(body.refresh_token, metadata(request))
    return JSONResponse(tokens_json(pair), headers={"Cache-Control": "no-store"})


async def logout(request: Request) -> Response:
    principal = await current_owner(request)
    await accounts(request).logout(principal, metadata(request, principal.user_id))
    return Response(status_code=204)


async def reset_password(request: Request) -> Response:
    body = await parse_body(request, ResetBody)
    await accounts(request).request_reset(body.email, client_ip(request), base_url(request))
    return Response(status_code=202)


async def reset_password_confirm(request: Request) -> Response:
    body = await parse_body(request, ResetConfirmBody)
    await accounts(request).confirm_reset(body.token, body.password, metadata(request))
    return Response(status_code=204)


async def me(request: Request) -> Response:
    principal = await current_owner(request)
    return JSONResponse(user_json(await accounts(request).user(principal.user_id)))


endpoints = [
    Endpoint("post", "/api/v1/auth/register", register,
             "Register an owner account; the mailed link verifies it (an address with an "
             "account already gets the same answer, and a mail saying so)", "auth",
             body=RegisterBody, ok=202, codes=("validation_error", "rate_limited"),
             returns="Registration"),
    Endpoint("post", "/api/v1/auth/verify-email", verify_email,
             "Verify an e-mail address with the mailed token", "auth", body=TokenBody,
             codes=("invalid_verification_token",), returns="User"),
    Endpoint("post", "/api/v1/auth/verify-email/resend", resend_verification,
             "Send the verification mail again", "auth", auth="owner", ok=202,
             codes=("rate_limited", "already_verified")),
    Endpoint("post", "/api/v1/auth/login", login, "Log in: access and refresh tokens", "auth",
             body=LoginBody, codes=("invalid_credentials", "rate_limited"), returns="Tokens"),
    Endpoint("post", "/api/v1/auth/refresh-token", refresh_token, "Rotate the refresh token",
             "auth", body=RefreshBody, codes=("invalid_refresh_token", "refresh_token_reused"),
             returns="Tokens"),
    Endpoint("post", "/api/v1/auth/logout", logout, "End this session", "auth", auth="owner",
             ok=204),
    Endpoint("post", "/api/v1/auth/reset-password", reset_password,
             "Mail a password reset link (202 whether the account exists or not)", "auth",
             body=ResetBody, ok=202, codes=("rate_limited",)),
    Endpoint("post", "/api/v1/auth/reset-password/confirm", reset_password_confirm,
             "Set a new password with the mailed token", "auth", body=ResetConfirmBody, ok=204,
             codes=("invalid_reset_token", "validation_error")),
    Endpoint("get", "/api/v1/auth/me", me, "The current owner", "auth", auth="owner",
             returns="User"),
]
