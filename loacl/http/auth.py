"""``/api/v1/auth/*``: owner registration, e-mail verification, login, tokens, password reset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from loacl.domain.errors import LoaclError
from loacl.domain.origins import normalize_origin
from loacl.domain.workspaces import AGENT, at_least
from loacl.http.common import accounts, client_ip, metadata, public_base
from loacl.http.errors import problem, status_for
from loacl.http.routing import Endpoint
from loacl.http.shapes import session_json, tokens_json, user_json
from loacl.http.validation import parse_body
from loacl.services.accounts import Principal, TokenPair
from loacl.store.views.workspaces import role_of


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
    session: Literal["token", "cookie"] = Field(
        "token", description="token (default): the refresh token in the body, for API "
        "clients; cookie: in the HttpOnly cookie `loacl_refresh` (the console), not in the body",
    )


class RefreshBody(Body):
    refresh_token: str | None = Field(
        None, max_length=256,
        description="left out (or the body empty): the `loacl_refresh` cookie is used, and "
        "rotated in the answer's Set-Cookie",
    )
    workspace_id: str | None = Field(
        None, max_length=64,
        description="the workspace the new access token acts in (left out, or one you are no "
        "member of: your personal workspace, else the first you joined)",
    )


class AccountBody(Body):
    name: str | None = Field(
        None, max_length=200,
        description="your display name (shown to visitors as an agent's name); null: the "
        "e-mail address's local part",
    )


class PasswordBody(Body):
    current_password: str = Field(max_length=1024)
    new_password: str


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


# The console's refresh token: readable by no script, sent only to the auth endpoints, never on a
# request another site starts.
REFRESH_COOKIE = "loacl_refresh"
COOKIE_PATH = "/api/v1/auth"


def set_refresh_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        REFRESH_COOKIE, token, max_age=request.app.state.settings.refresh_token_days * 86400,
        path=COOKIE_PATH, secure=True, httponly=True, samesite="strict",
    )


def clear_refresh_cookie(response: Response) -> None:
    response.delete_cookie(
        REFRESH_COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="strict"
    )


def refuse_cross_site(request: HTTPConnection) -> None:
    """403 cross_site_request unless a browser says the request comes from this server's own
    pages: ``Sec-Fetch-Site`` (set by the browser alone) same-origin or none (typed in, not
    started by a page), and an ``Origin``, when sent, that is this server's."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise LoaclError("cross_site_request", "this request must come from LOACL's own pages")
    origin = request.headers.get("origin")
    if origin is None:
        return
    try:
        own = normalize_origin(public_base(request))
        given = normalize_origin(origin)
    except LoaclError:
        given, own = "", "-"
    if given != own:
        raise LoaclError("cross_site_request", "this request must come from LOACL's own pages")


def bearer_token(request: HTTPConnection) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise LoaclError("unauthorized", "send an access token: Authorization: Bearer <token>")
    return token.strip()


@dataclass(frozen=True)
class Member:
    """Who acts, where, and as what: the account, the workspace every service call of the
    request is scoped by (``workspace_id``: what services and read tables call ``owner_id``),
    and the account's role in it."""

    user_id: str
    session_id: str
    workspace_id: str
    role: str
    email: str
    verified: bool


async def current_member(
    request: HTTPConnection, role: str = AGENT, *, verified: bool = False,
    workspace_id: str | None = None, token: str | None = None,
) -> Member:
    """The member behind the request's access token, in the workspace the token names (or
    ``workspace_id``, one named by the path), holding at least ``role``.

    Every endpoint acting on a workspace's things calls this and passes ``workspace_id`` to the
    services as the scope. No member (any more) of the token's workspace: 403 not_a_member; of
    a workspace named in the path: 404, as another workspace's things answer. A lower role:
    403 insufficient_role. ``token``: one given otherwise than as the bearer (a socket's
    auth frame)."""
    principal = await accounts(request).authenticate(token or bearer_token(request))
    settings = request.app.state.settings
    if verified and settings.require_verified_email and not principal.verified:
        raise LoaclError(
            "email_not_verified", "verify your e-mail address first (see the mail we sent)"
        )
    where = workspace_id or principal.workspace_id
    held = await role_of(request.app.state.store, where, principal.user_id)
    if held is None:
        if workspace_id is not None:
            raise LoaclError("not_found", "no such workspace")
        raise LoaclError("not_a_member", "you are no member of this workspace (any more); "
                         "refresh the token or switch to another workspace")
    if not at_least(held, role):
        raise LoaclError("insufficient_role", f"this needs the role {role} or higher in the "
                         f"workspace; yours is {held}", role=held, needed=role)
    return Member(principal.user_id, principal.session_id, where, held, principal.email,
                  principal.verified)


async def current_owner(request: Request, *, verified: bool = False) -> Principal:
    """The account behind the request's access token, whatever its workspace (what an
    account's own endpoints need: sessions, password, display name); with ``verified``, only a
    verified one."""
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
    if body.session == "cookie":
        refuse_cross_site(request)
    pair = await accounts(request).login(
        body.email, body.password, client_ip(request), metadata(request)
    )
    return _tokens(request, pair, cookie=body.session == "cookie")


def _tokens(request: Request, pair: TokenPair, *, cookie: bool) -> Response:
    body = tokens_json(pair)
    if not cookie:
        return JSONResponse(body, headers={"Cache-Control": "no-store"})
    del body["refresh_token"]
    response = JSONResponse(body, headers={"Cache-Control": "no-store"})
    set_refresh_cookie(request, response, pair.refresh_token)
    return response


async def refresh_token(request: Request) -> Response:
    body = await parse_body(request, RefreshBody)
    if body.refresh_token is not None:
        pair = await accounts(request).refresh(
            body.refresh_token, metadata(request), body.workspace_id)
        return _tokens(request, pair, cookie=False)
    refuse_cross_site(request)
    token = request.cookies.get(REFRESH_COOKIE)
    try:
        if not token:
            raise LoaclError(
                "invalid_refresh_token",
                "send a refresh token, in the body or in the loacl_refresh cookie (log in)",
            )
        pair = await accounts(request).refresh(token, metadata(request), body.workspace_id)
    except LoaclError as exc:
        if exc.code not in ("invalid_refresh_token", "refresh_token_reused"):
            raise
        # A cookie that will never work again is dropped, so that the console shows its login.
        refused = problem(status_for(exc.code), exc.code, exc.message, request, **exc.extra)
        clear_refresh_cookie(refused)
        return refused
    return _tokens(request, pair, cookie=True)


async def logout(request: Request) -> Response:
    """Ends the session of the bearer token and that of the ``loacl_refresh`` cookie (the
    console, whose access token may be gone after a reload), and clears the cookie."""
    token = request.cookies.get(REFRESH_COOKIE)
    service = accounts(request)
    if token and "authorization" not in request.headers:
        refuse_cross_site(request)
        await service.logout_by_refresh_token(token, None, metadata(request))
    else:
        principal = await current_owner(request)
        meta = metadata(request, principal.user_id)
        await service.logout(principal, meta)
        if token:
            await service.logout_by_refresh_token(token, principal.user_id, meta)
    response = Response(status_code=204)
    if token:
        clear_refresh_cookie(response)
    return response


async def reset_password(request: Request) -> Response:
    body = await parse_body(request, ResetBody)
    await accounts(request).request_reset(body.email, client_ip(request), base_url(request))
    return Response(status_code=202)


async def reset_password_confirm(request: Request) -> Response:
    body = await parse_body(request, ResetConfirmBody)
    await accounts(request).confirm_reset(body.token, body.password, metadata(request))
    return Response(status_code=204)


async def change_password(request: Request) -> Response:
    principal = await current_owner(request)
    body = await parse_body(request, PasswordBody)
    await accounts(request).change_password(
        principal, body.current_password, body.new_password, client_ip(request),
        metadata(request, principal.user_id),
    )
    return Response(status_code=204)


async def list_sessions(request: Request) -> Response:
    principal = await current_owner(request)
    found = await accounts(request).sessions(principal)
    return JSONResponse({"data": [session_json(s, principal.session_id) for s in found]},
                        headers={"Cache-Control": "no-store"})


async def end_session(request: Request) -> Response:
    principal = await current_owner(request)
    await accounts(request).end_session(
        principal, request.path_params["id"], metadata(request, principal.user_id)
    )
    return Response(status_code=204)


async def me(request: Request) -> Response:
    principal = await current_owner(request)
    return JSONResponse(user_json(await accounts(request).user(principal.user_id)))


async def update_me(request: Request) -> Response:
    principal = await current_owner(request)
    body = await parse_body(request, AccountBody)
    user = await accounts(request).rename(
        principal.user_id, body.name, metadata(request, principal.user_id))
    return JSONResponse(user_json(user))


COOKIE_FLOW = (
    "Two ways to hold the refresh token. API clients (`session: token`, the default) get it "
    "in the body and send it back as `refresh_token`. The console (`session: cookie` at "
    "login) gets it in the cookie `loacl_refresh` (HttpOnly, Secure, SameSite=Strict, "
    "Path=/api/v1/auth) and no `refresh_token` in the body; it refreshes with an empty body, "
    "and the answer sets the rotated cookie. Cookie requests from another site (a "
    "`Sec-Fetch-Site` other than same-origin or none, or an `Origin` not this server's) are "
    "refused with 403 cross_site_request. A rotated token presented again ends the session "
    "(refresh_token_reused)."
)

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
             body=LoginBody, codes=("invalid_credentials", "rate_limited", "cross_site_request"),
             returns="Tokens", description=COOKIE_FLOW),
    Endpoint("post", "/api/v1/auth/refresh-token", refresh_token, "Rotate the refresh token",
             "auth", body=RefreshBody,
             codes=("invalid_refresh_token", "refresh_token_reused", "cross_site_request"),
             returns="Tokens", description=COOKIE_FLOW),
    Endpoint("post", "/api/v1/auth/logout", logout, "End this session", "auth", auth="owner",
             ok=204, codes=("cross_site_request",),
             description="With the bearer token, or (the console) with the `loacl_refresh` "
             "cookie alone; either way the cookie is cleared and its session ended too."),
    Endpoint("post", "/api/v1/auth/reset-password", reset_password,
             "Mail a password reset link (202 whether the account exists or not)", "auth",
             body=ResetBody, ok=202, codes=("rate_limited",)),
    Endpoint("post", "/api/v1/auth/reset-password/confirm", reset_password_confirm,
             "Set a new password with the mailed token", "auth", body=ResetConfirmBody, ok=204,
             codes=("invalid_reset_token", "validation_error")),
    Endpoint("get", "/api/v1/auth/me", me, "The current account", "auth", auth="owner",
             returns="User"),
    Endpoint("patch", "/api/v1/auth/me", update_me, "Change your display name", "auth",
             auth="owner", body=AccountBody, returns="User"),
    Endpoint("post", "/api/v1/auth/password", change_password,
             "Change your password (the current one given); your other sessions end", "auth",
             auth="owner", body=PasswordBody, ok=204,
             codes=("invalid_credentials", "validation_error", "rate_limited")),
    Endpoint("get", "/api/v1/auth/sessions", list_sessions,
             "Your active sessions (current: the one making this request)", "auth",
             auth="owner", returns="Sessions"),
    Endpoint("delete", "/api/v1/auth/sessions/{id}", end_session,
             "End one of your sessions (its refresh token and access tokens stop working)",
             "auth", auth="owner", ok=204),
]
