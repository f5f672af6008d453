"""Things an owner keeps (assistants, widgets, and more to come), served the same way.

``PUT`` replaces the whole thing: its body names every field (``replacement``), so that nothing
is blanked by leaving it out. ``PATCH`` changes some: a JSON Merge Patch (RFC 7396) applied to
what ``PUT`` would take, the result checked as a ``PUT`` body is. Both take ``If-Match``.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, create_model
from pydantic_core import PydanticUndefined
from starlette.requests import Request
from starlette.responses import Response

from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.domain.workspaces import ADMIN
from loacl.http.auth import current_member
from loacl.http.common import if_match, metadata, page, page_response, with_etag
from loacl.http.validation import json_object, merge_patch, parse_body, validated
from loacl.store.views import Page

PATCH_TYPES = ("application/merge-patch+json", "application/json")
PATCH_TRIES = 3  # reads and writes a PATCH without If-Match makes before a race is reported

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


def replacement(model: type[B]) -> type[B]:
    """``model`` with every top-level field required (null where null is allowed): the body of
    a ``PUT``."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        required = copy.copy(info)
        required.default, required.default_factory = PydanticUndefined, None
        fields[name] = (info.annotation, required)
    made: type[B] = create_model(
        model.__name__.removesuffix("Body") + "Replacement", __base__=model,
        __doc__=f"Every field of {model.__name__}, each required.", **fields,
    )
    return made


def patch_of(model: type[BaseModel]) -> type[BaseModel]:
    """What a ``PATCH`` body may hold, for the API document: any field of ``model`` (an object
    field as a patch of its own), or null to put a field back to its default."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        inner: Any = info.annotation
        nested = inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
        optional = copy.copy(info)  # its checks stay; only the default changes
        optional.default, optional.default_factory = None, None
        fields[name] = ((patch_of(nested) if nested else inner) | None,
                        optional if nested is None else None)
    made: type[BaseModel] = create_model(
        model.__name__.removesuffix("Body") + "Patch", __config__=model.model_config,
        __doc__=f"A JSON Merge Patch (RFC 7396) of {model.__name__}: null resets a field.",
        **fields,
    )
    return made


@dataclass(frozen=True)
class OwnedResource(Generic[V, D, B]):
    """One kind of thing an owner keeps: list, create, read, replace, patch and delete it, each
    checked against the owner (another owner's answers 404), versions as ETags."""

    service: Callable[[Request], OwnerService[V, D]]
    body: type[B]
    definition: Callable[[Request, B], D]
    shown: Callable[[V], dict[str, Any]]
    # What a new one shows once, beyond what reading it shows (a widget's identity secret).
    created: Callable[[Request, V], dict[str, Any]] | None = None
    replacement: type[B] = field(init=False)
    patch_body: type[BaseModel] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "replacement", replacement(self.body))
        object.__setattr__(self, "patch_body", patch_of(self.body))

    async def list(self, request: Request) -> Response:
        owner = await current_member(request, ADMIN, verified=True)
        after, limit = page(request)
        found = await self.service(request).list(owner.workspace_id, after, limit)
        return page_response([self.shown(item) for item in found.items], found.next_cursor)

    async def create(self, request: Request) -> Response:
        owner = await current_member(request, ADMIN, verified=True)
        body = await parse_body(request, self.body)
        made = await self.service(request).create(
            owner.workspace_id, self.definition(request, body), metadata(request, owner.user_id)
        )
        shown = self.created(request, made) if self.created else self.shown(made)
        return with_etag(shown, 201)

    async def get(self, request: Request) -> Response:
        owner = await current_member(request, ADMIN, verified=True)
        found = await self.service(request).get(owner.workspace_id, request.path_params["id"])
        return with_etag(self.shown(found))

    async def put(self, request: Request) -> Response:
        owner = await current_member(request, ADMIN, verified=True)
        expected = if_match(request)
        body = await parse_body(request, self.replacement)
        updated = await self.service(request).update(
            owner.workspace_id, request.path_params["id"], self.definition(request, body),
            expected, metadata(request, owner.user_id),
        )
        return with_etag(self.shown(updated))

    async def patch(self, request: Request) -> Response:
        owner = await current_member(request, ADMIN, verified=True)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind and kind not in PATCH_TYPES:
            raise LoaclError(
                "unsupported_media_type",
                f"send a JSON Merge Patch as {' or '.join(PATCH_TYPES)}, not {kind}",
            )
        expected = if_match(request)
        patch = await json_object(request)
        service, item_id = self.service(request), request.path_params["id"]
        for attempt in range(PATCH_TRIES):
            current = self.shown(await service.get(owner.workspace_id, item_id))
            body = validated(self.body, merge_patch(
                {name: current[name] for name in self.body.model_fields if name in current},
                patch,
            ))
            try:
                updated = await service.update(
                    owner.workspace_id, item_id, self.definition(request, body),
                    current["version"] if expected is None else expected,
                    metadata(request, owner.user_id),
                )
            except LoaclError as exc:
                # Without If-Match the patch applies to whatever is current: another change
                # between the read and the write is read again; with it, it is the client's.
                if (exc.code != "version_conflict" or expected is not None
                        or attempt == PATCH_TRIES - 1):
                    raise
                continue
            return with_etag(self.shown(updated))
        raise AssertionError("unreachable")  # pragma: no cover

    async def delete(self, request: Request) -> Response:
        owner = await current_member(request, ADMIN, verified=True)
        await self.service(request).delete(
            owner.workspace_id, request.path_params["id"], if_match(request),
            metadata(request, owner.user_id),
        )
        return Response(status_code=204)


async def rotated(
    request: Request, rotate: Callable[..., Awaitable[V]], shown: Callable[[V], dict[str, Any]]
) -> Response:
    """A new secret for the item at ``{id}`` by ``rotate(workspace_id, id, expected_version,
    metadata)`` (If-Match honoured), answered once with ``shown``."""
    owner = await current_member(request, ADMIN, verified=True)
    made = await rotate(owner.workspace_id, request.path_params["id"], if_match(request),
                        metadata(request, owner.user_id))
    return with_etag(shown(made))

