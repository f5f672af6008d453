"""Each route declared once: an ``Endpoint`` (or ``Socket``) is both a Starlette route and,
unless ``documented=False``, an operation in the OpenAPI document.

Every http module ends with its ``endpoints`` table; ``create_app`` turns the tables into routes
with ``routes(...)``, and ``/api/v1/openapi.json`` reads the declarations back from the app's
routes with ``declared(...)``, so the document describes exactly what is served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

Handler = Callable[[Request], Awaitable[Response]]
SocketHandler = Callable[[WebSocket], Awaitable[None]]
Method = Literal["get", "post", "put", "patch", "delete", "options"]
# Who may call: nobody in particular, an owner's access token, a visitor token (from an allowed
# Origin), or either of the two.
Auth = Literal["none", "owner", "visitor", "visitor_or_owner"]


class Param(NamedTuple):
    """A query parameter: its name, what it means, and its JSON schema as the handler parses
    it (``int_param`` takes whole numbers only)."""

    name: str
    description: str
    schema: dict[str, Any] = {"type": "string"}  # noqa: RUF012 (never mutated)
    deprecated: bool = False  # kept for old clients; new ones must not use it


def integer(low: int, high: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


Query = tuple[Param, ...]

CURSOR = integer(0, 2**62)
PAGE: Query = (Param("after", "cursor: next_cursor of the previous page", CURSOR),
               Param("limit", "1 to 100, default 20", integer(1, 100)))
# The ETag read, for a change or a deletion: 412 version_conflict when it is no longer current;
# with the setting require_if_match, 428 precondition_required when it is left out.
IF_MATCH: Query = (Param(
    "If-Match", "the ETag of the version read (from GET); refused with 412 once the thing has "
    "changed since; `*` or absent: any version, unless the server's `require_if_match` is on "
    "(then 428)"),)


@dataclass(frozen=True)
class Endpoint:
    method: Method
    path: str
    handler: Handler
    summary: str
    tag: str = ""
    auth: Auth = "none"
    body: type[BaseModel] | None = None  # the JSON body, as the handler validates it
    ok: int = 200
    query: Query = ()
    headers: Query = ()  # request headers the operation reads (IF_MATCH)
    codes: tuple[str, ...] = ()  # error codes beyond the usual 401/404/422
    body_types: tuple[str, ...] = ("application/json",)  # the body's media types
    multipart: bool = False  # a multipart/form-data upload, field ``file``
    documented: bool = True  # pages, assets, probes and CORS preflights are not API
    description: str = ""  # what the summary leaves out (Markdown)
    # The success response's media types and their schemas, when the document shows them.
    content: dict[str, Any] | None = None
    returns: str | None = None  # the success body's schema: a name in shapes.SCHEMAS
    # The least workspace role the caller needs (owner, admin, agent), when it acts in one.
    role: str | None = None

    def route(self) -> BaseRoute:
        return DeclaredRoute(self)


@dataclass(frozen=True)
class Socket:
    """A WebSocket route; documented as the GET that upgrades (101)."""

    path: str
    handler: SocketHandler
    summary: str
    description: str
    tag: str = ""
    auth: Auth = "none"
    query: Query = ()
    codes: tuple[str, ...] = ()  # the handshake's refusals, as problem responses
    method: Literal["get"] = "get"
    ok: int = 101
    documented: bool = True
    role: str | None = None

    def route(self) -> BaseRoute:
        return DeclaredSocket(self)


Declaration = Endpoint | Socket


class DeclaredRoute(Route):
    def __init__(self, declaration: Endpoint) -> None:
        super().__init__(declaration.path, declaration.handler,
                         methods=[declaration.method.upper()])
        self.declaration = declaration


class DeclaredSocket(WebSocketRoute):
    def __init__(self, declaration: Socket) -> None:
        super().__init__(declaration.path, declaration.handler)
        self.declaration = declaration


def routes(*tables: Sequence[Declaration]) -> list[BaseRoute]:
    """Starlette's routes, in the order given (the first that matches a request wins)."""
    return [declaration.route() for table in tables for declaration in table]


def declared(app_routes: Iterable[BaseRoute]) -> list[Declaration]:
    """The declarations behind an app's routes; routes added any other way have none."""
    return [r.declaration for r in app_routes if isinstance(r, DeclaredRoute | DeclaredSocket)]
