"""``/api/v1/workspaces``: workspaces, their members, roles and invites; ``/api/v1/invites``.

These name the workspace in the path: an account that is no member of it gets 404, as for any
other workspace's thing. Everything else acts in the workspace the access token names; a member
of several switches with ``POST /api/v1/workspaces/{id}/switch`` (a new access token of the same
session) or by asking ``/api/v1/auth/refresh-token`` for one (``workspace_id``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loacl.domain.errors import LoaclError
from loacl.domain.workspaces import ADMIN, AGENT, MAX_NAME, OWNER
from loacl.http.auth import (
    base_url,
    current_member,
    current_owner,
    refuse_cross_site,
    set_refresh_cookie,
)
from loacl.http.common import accounts, metadata, workspaces
from loacl.http.routing import Endpoint
from loacl.http.shapes import invite_json, member_json, tokens_json, workspace_json
from loacl.http.validation import parse_body

Role = Literal["owner", "admin", "agent"]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkspaceBody(Body):
    name: str = Field(min_length=1, max_length=MAX_NAME, pattern=r"\S")


class InviteBody(Body):
    email: str = Field(max_length=320)
    role: Role = "agent"


class RoleBody(Body):
    role: Role


class AcceptBody(Body):
    token: str = Field(max_length=256)
    password: str | None = Field(
        None, max_length=1024,
        description="without a bearer token: the password of a new account made with the "
        "invited address (then logged in); with one, left out: the logged-in account joins",
    )
    name: str | None = Field(None, max_length=200, description="the new account's display name")
    session: Literal["token", "cookie"] = Field(
        "token", description="for a new account, as at login: token (default), its refresh "
        "token in the body; cookie, in the HttpOnly cookie `loacl_refresh` (the console)",
    )


def _id(request: Request) -> str:
    return str(request.path_params["id"])


async def list_workspaces(request: Request) -> Response:
    principal = await current_owner(request)
    found = await workspaces(request).of(principal.user_id)
    return JSONResponse({"data": [workspace_json(w) for w in found]})


async def create_workspace(request: Request) -> Response:
    principal = await current_owner(request, verified=True)
    body = await parse_body(request, WorkspaceBody)
    made = await workspaces(request).create(
        principal.user_id, body.name, metadata(request, principal.user_id))
    return JSONResponse(workspace_json(made), status_code=201)


async def get_workspace(request: Request) -> Response:
    member = await current_member(request, AGENT, workspace_id=_id(request))
    return JSONResponse(workspace_json(
        await workspaces(request).get(member.workspace_id, member.user_id)))


async def rename_workspace(request: Request) -> Response:
    member = await current_member(request, ADMIN, workspace_id=_id(request))
    body = await parse_body(request, WorkspaceBody)
    renamed = await workspaces(request).rename(
        member.workspace_id, member.user_id, body.name, metadata(request, member.user_id))
    return JSONResponse(workspace_json(renamed))


async def delete_workspace(request: Request) -> Response:
    member = await current_member(request, OWNER, workspace_id=_id(request))
    await workspaces(request).delete(member.workspace_id, metadata(request, member.user_id))
    return Response(status_code=204)


async def switch(request: Request) -> Response:
    member = await current_member(request, AGENT, workspace_id=_id(request))
    principal = await current_owner(request)
    pair = await accounts(request).switch(principal, member.workspace_id)
    body = tokens_json(pair)
    del body["refresh_token"]
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def list_members(request: Request) -> Response:
    member = await current_member(request, AGENT, workspace_id=_id(request))
    found = await workspaces(request).members(member.workspace_id)
    return JSONResponse({"data": [member_json(m) for m in found]})


async def change_role(request: Request) -> Response:
    member = await current_member(request, OWNER, workspace_id=_id(request))
    body = await parse_body(request, RoleBody)
    changed = await workspaces(request).change_role(
        member.workspace_id, request.path_params["account_id"], body.role,
        metadata(request, member.user_id))
    return JSONResponse(member_json(changed))


async def remove_member(request: Request) -> Response:
    """An owner removes anyone; any member removes themselves (leaves)."""
    workspace_id, account_id = _id(request), request.path_params["account_id"]
    member = await current_member(request, AGENT, workspace_id=workspace_id)
    leaving = account_id == member.user_id
    if not leaving:
        member = await current_member(request, OWNER, workspace_id=workspace_id)
    await workspaces(request).remove(
        workspace_id, account_id, "left" if leaving else "removed",
        metadata(request, member.user_id))
    return Response(status_code=204)


async def invite(request: Request) -> Response:
    member = await current_member(request, OWNER, verified=True, workspace_id=_id(request))
    body = await parse_body(request, InviteBody)
    made = await workspaces(request).invite(
        member.workspace_id, member.user_id, body.email, body.role, base_url(request),
        metadata(request, member.user_id))
    return JSONResponse(invite_json(made), status_code=201)


async def list_invites(request: Request) -> Response:
    member = await current_member(request, OWNER, workspace_id=_id(request))
    found = await workspaces(request).invites(member.workspace_id)
    return JSONResponse({"data": [invite_json(i) for i in found]})


async def revoke_invite(request: Request) -> Response:
    member = await current_member(request, OWNER, workspace_id=_id(request))
    await workspaces(request).revoke_invite(
        member.workspace_id, request.path_params["invite_id"], metadata(request, member.user_id))
    return Response(status_code=204)


async def accept(request: Request) -> Response:
    body = await parse_body(request, AcceptBody)
    service = workspaces(request)
    if "authorization" in request.headers:
        principal = await current_owner(request)
        workspace_id = await service.accept(
            body.token, principal.user_id, metadata(request, principal.user_id))
        return JSONResponse({"workspace_id": workspace_id})
    if body.password is None:
        raise LoaclError("validation_error", "password: required without a bearer token",
                         errors=[{"field": "password", "message": "required without a bearer "
                                  "token (or log in and accept as your account)"}])
    if body.session == "cookie":
        refuse_cross_site(request)
    workspace_id, pair = await service.accept_new(
        body.token, body.password, body.name, metadata(request))
    answer = {**tokens_json(pair), "workspace_id": workspace_id}
    if body.session == "token":
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})
    # As at login: the refresh token in the cookie only, so that a reload keeps the session.
    del answer["refresh_token"]
    response = JSONResponse(answer, headers={"Cache-Control": "no-store"})
    set_refresh_cookie(request, response, pair.refresh_token)
    return response


ROLES_TEXT = (
    "Roles: `owner` (delete the workspace, members, roles, invites), `admin` (assistants, "
    "widgets, webhooks, usage, settings), `agent` (conversations, transcripts, files, the "
    "live stream). No member of the workspace: 404."
)
W = "/api/v1/workspaces/{id}"
endpoints = [
    Endpoint("get", "/api/v1/workspaces", list_workspaces,
             "Your workspaces and your role in each (the personal one first)", "workspaces",
             auth="owner", returns="Workspaces"),
    Endpoint("post", "/api/v1/workspaces", create_workspace,
             "Create a workspace; you are its owner", "workspaces", auth="owner",
             body=WorkspaceBody, ok=201, returns="Workspace", codes=("email_not_verified",)),
    Endpoint("get", W, get_workspace, "A workspace of yours", "workspaces", auth="owner",
             returns="Workspace", description=ROLES_TEXT),
    Endpoint("patch", W, rename_workspace, "Rename a workspace (admin or owner)", "workspaces",
             auth="owner", body=WorkspaceBody, returns="Workspace",
             codes=("insufficient_role",)),
    Endpoint("delete", W, delete_workspace,
             "Delete a workspace (owner; only once it holds no widgets nor assistants)",
             "workspaces", auth="owner", ok=204,
             codes=("insufficient_role", "workspace_not_empty")),
    Endpoint("post", f"{W}/switch", switch,
             "An access token of this session acting in this workspace", "workspaces",
             auth="owner", returns="Tokens",
             description="The refresh token stays as it is; to keep the workspace across "
             "refreshes, send its id as `workspace_id` to /api/v1/auth/refresh-token."),
    Endpoint("get", f"{W}/members", list_members, "The workspace's members", "workspaces",
             auth="owner", returns="Members"),
    Endpoint("patch", f"{W}/members/{{account_id}}", change_role,
             "Change a member's role (owner; the last owner keeps the role)", "workspaces",
             auth="owner", body=RoleBody, returns="Member",
             codes=("insufficient_role", "last_owner")),
    Endpoint("delete", f"{W}/members/{{account_id}}", remove_member,
             "Remove a member (owner), or leave (your own id); their tokens for the workspace "
             "stop working at once", "workspaces", auth="owner", ok=204,
             codes=("insufficient_role", "last_owner")),
    Endpoint("post", f"{W}/invites", invite,
             "Invite someone by e-mail (owner): a one-time link, valid 7 days", "workspaces",
             auth="owner", body=InviteBody, ok=201, returns="Invite",
             codes=("insufficient_role", "email_not_verified")),
    Endpoint("get", f"{W}/invites", list_invites, "Open invites (owner)", "workspaces",
             auth="owner", returns="Invites", codes=("insufficient_role",)),
    Endpoint("delete", f"{W}/invites/{{invite_id}}", revoke_invite,
             "Revoke an open invite (owner)", "workspaces", auth="owner", ok=204,
             codes=("insufficient_role",)),
    Endpoint("post", "/api/v1/invites/accept", accept,
             "Accept an invite: as the logged-in account (bearer token), or as a new account "
             "with the invited address (password; answers with its tokens)", "workspaces",
             body=AcceptBody, returns="Accepted",
             codes=("invalid_invite", "already_member", "account_exists", "unauthorized",
                    "invalid_token", "cross_site_request")),
]
