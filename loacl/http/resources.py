"""Things an owner keeps (assistants, widgets, and more to come), served the same way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from loacl.domain.events import Metadata
from loacl.http.auth import current_owner
from loacl.http.common import if_match, metadata, page, page_response, with_etag
from loacl.http.validation import parse_body
from loacl.store.views import Page

V = TypeVar("V")
D = TypeVar("D")
D_contra = TypeVar("D_contra", contravariant=True)
B = TypeVar("B", bound=BaseModel)


class OwnerService(Protocol[V, D_contra]):
    """What the services of owned things (assistants, widgets) all offer."""

    async def list(self, owner_id: str, after: int, limit: int) -> Page[V]: ...
    async def create(self, owner_id: str, definition: D_contra, meta: Metadata) -> V: ...
    async def get(self, owner_id: str, item_id: str) -> V: ...
    async def update(
        self, owner_id: str, item_id: str, definition: D_contra, if_match: int | None,
        meta: Metadata,
    ) -> V: ...
    async def delete(
        self, owner_id: str, item_id: str, if_match: int | None, meta: Metadata
    ) -> None: ...


@dataclass(frozen=True)
class OwnedResource(Generic[V, D, B]):
    """One kind of thing an owner keeps: list, create, read, replace and delete it, each
    checked against the owner (another owner's answers 404), versions as ETags."""

    service: Callable[[Request], OwnerService[V, D]]
    body: type[B]
    definition: Callable[[Request, B], D]
    shown: Callable[[V], dict[str, Any]]
    # What a new one shows once, beyond what reading it shows (a widget's identity secret).
    created: Callable[[Request, V], dict[str, Any]] | None = None

    async def list(self, request: Request) -> Response:
        owner = await current_owner(request, verified=True)
        after, limit = page(request)
        found = await self.service(request).list(owner.user_id, after, limit)
        return page_response([self.shown(item) for item in found.items], found.next_cursor)

    async def create(self, request: Request) -> Response:
        owner = await current_owner(request, verified=True)
        body = await parse_body(request, self.body)
        made = await self.service(request).create(
            owner.user_id, self.definition(request, body), metadata(request, owner.user_id)
        )
        shown = self.created(request, made) if self.created else self.shown(made)
        return with_etag(shown, 201)

    async def get(self, request: Request) -> Response:
        owner = await current_owner(request, verified=True)
        found = await self.service(request).get(owner.user_id, request.path_params["id"])
        return with_etag(self.shown(found))

    async def put(self, request: Request) -> Response:
        owner = await current_owner(request, verified=True)
        body = await parse_body(request, self.body)
        updated = await self.service(request).update(
            owner.user_id, request.path_params["id"], self.definition(request, body),
            if_match(request), metadata(request, owner.user_id),
        )
        return with_etag(self.shown(updated))

    async def delete(self, request: Request) -> Response:
        owner = await current_owner(request, verified=True)
        await self.service(request).delete(
            owner.user_id, request.path_params["id"], if_match(request),
            metadata(request, owner.user_id),
        )
        return Response(status_code=204)
