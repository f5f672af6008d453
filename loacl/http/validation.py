"""Request bodies parsed into pydantic models; every refusal names the field.

A body is counted as it arrives, whatever its transfer encoding (a chunked body declares no
length): reading stops with 413 as soon as it passes the limit, so no body larger than the limit
is ever held. JSON nested deeper than ``MAX_JSON_DEPTH`` is refused as ``invalid_json``, here and
in WebSocket frames, before anything walks it recursively.
"""

from __future__ import annotations

import difflib
import json
from enum import Enum
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from loacl.domain.errors import LoaclError

M = TypeVar("M", bound=BaseModel)
MAX_JSON_BODY = 1024 * 1024
MAX_JSON_DEPTH = 64  # the API's own bodies nest a few levels; tool schemas a few more


def validation_error(exc: ValidationError, model: type[BaseModel] | None = None) -> LoaclError:
    """The refusal naming each bad field: what is wrong with it (``message``, and pydantic's
    ``reason``), the values it accepts where they are a closed set (``accepted``), and for a
    field ``model`` does not know, the known ones and the closest (``did_you_mean``)."""
    found = exc.errors(include_url=False)
    # A field left out beside one the model does not know is most likely the one meant
    # (``content`` sent for ``text``): per parent, the fields missing from it.
    missing: dict[tuple[Any, ...], list[str]] = {}
    for error in found:
        loc = tuple(error["loc"])
        if error["type"] == "missing" and loc and isinstance(loc[-1], str):
            missing.setdefault(loc[:-1], []).append(loc[-1])
    errors = [_described(error, model, missing) for error in found]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return LoaclError("validation_error", summary, errors=errors)


def _described(
    error: Any, model: type[BaseModel] | None, missing: dict[tuple[Any, ...], list[str]]
) -> dict[str, Any]:
    loc = tuple(error["loc"])
    entry: dict[str, Any] = {
        "field": ".".join(str(part) for part in loc) or "body",
        "message": error["msg"].removeprefix("Value error, "),
        "reason": error["type"],
    }
    if model is None:
        return entry
    if error["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
        known = _known_fields(_model_in(_annotation_at(model, loc[:-1])))
        if known:
            entry["accepted"] = known
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
            if not close and len(missing.get(loc[:-1], [])) == 1:
                close = missing[loc[:-1]]
            if close:
                entry["did_you_mean"] = close[0]
                entry["message"] = f"unknown field; did you mean `{close[0]}`?"
            else:
                entry["message"] = "unknown field; known fields: " + ", ".join(known)
        return entry
    accepted = _accepted(model, loc)
    if accepted:
        entry["accepted"] = accepted
        if error["type"] not in ("missing", "literal_error", "enum"):
            entry["message"] += " (accepted: " + ", ".join(map(str, accepted)) + ")"
    return entry


def _unwrapped(annotation: Any) -> list[Any]:
    """The types inside ``annotation``: through Optional, unions, Annotated and lists."""
    found: list[Any] = []
    stack = [annotation]
    while stack:
        item = stack.pop()
        origin = get_origin(item)
        if origin is Annotated:
            stack.append(get_args(item)[0])
        elif origin in (Union, UnionType, list, tuple, set, frozenset):
            stack.extend(reversed(get_args(item)))
        else:
            found.append(item)
    return found


def _model_in(annotation: Any) -> type[BaseModel] | None:
    for item in _unwrapped(annotation):
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _known_fields(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _annotation_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The type declared at ``loc`` inside ``model`` (list indices pass through), or None."""
    annotation: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        inner = _model_in(annotation)
        if inner is None or part not in inner.model_fields:
            return None
        annotation = inner.model_fields[part].annotation
    return annotation


def _accepted(model: type[BaseModel], loc: tuple[Any, ...]) -> list[Any]:
    """The closed set of values the field at ``loc`` takes (a Literal, an Enum, or an ``enum``
    its schema declares), else []."""
    names = [part for part in loc if isinstance(part, str)]
    if not names:
        return []
    parent = _model_in(_annotation_at(model, loc[: max(i for i, p in enumerate(loc)
                                                         if isinstance(p, str))]))
    if parent is None or names[-1] not in parent.model_fields:
        return []
    field = parent.model_fields[names[-1]]
    extra = field.json_schema_extra
    enum = extra.get("enum") if isinstance(extra, dict) else None
    if isinstance(enum, list):
        return list(enum)
    values: list[Any] = []
    for item in _unwrapped(field.annotation):
        if get_origin(item) is Literal:
            values += get_args(item)
        elif isinstance(item, type) and issubclass(item, Enum):
            values += [member.value for member in item]
    return values


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


# Room for the multipart framing around a file at the size limit.
MULTIPART_OVERHEAD = 64 * 1024


async def read_upload(request: Request, limit: int) -> tuple[str, bytes]:
    """The name and bytes of the file sent as multipart field ``file``: refused with 413 as
    soon as the body is longer than a file of ``limit`` bytes could need."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise LoaclError("validation_error", "send the file as multipart/form-data, field 'file'")
    too_large = LoaclError("file_too_large", f"files may be at most {limit} bytes")
    raw = await read_body(request, limit + MULTIPART_OVERHEAD, too_large)
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    buffered = Request(request.scope, receive)
    try:
        form = await buffered.form(max_files=1, max_fields=10, max_part_size=limit + 1)
    except Exception as exc:
        raise LoaclError(
            "validation_error", f"the upload is not valid multipart: {exc}",
            errors=[{"field": "file", "message": f"not valid multipart: {exc}"}],
        ) from None
    # Closed on every path: a form with the wrong field still holds spooled temporary files.
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise LoaclError(
                "validation_error", "file: required",
                errors=[{"field": "file", "message": "missing"}],
            )
        data = await upload.read(limit + 1)
    finally:
        await form.close()
    if len(data) > limit:
        raise too_large
    return upload.filename or "file", data


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
    return validated(model, await json_object(request))


async def json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object (an empty body is ``{}``)."""
    raw = await read_body(
        request, MAX_JSON_BODY,
        LoaclError("payload_too_large", f"the request body is larger than {MAX_JSON_BODY} bytes"),
    )
    data: Any = decode_json(raw) if raw else {}
    if not isinstance(data, dict):
        raise LoaclError("invalid_json", "the request body must be a JSON object")
    return data


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as JSON Merge Patch (RFC 7396): a member set to null is
    removed, an object is merged member by member, anything else replaces what was there."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = merge_patch(merged.get(name), value)
    return merged


def validated(model: type[M], data: dict[str, Any]) -> M:
    """``data`` as ``model``, or the ``validation_error`` naming each bad field: the same
    refusal for a request body and a WebSocket frame."""
    try:
        # Strict: JSON's types as the API document declares them; no false read as 0, no
        # "20" read as 20 (the document says number, so a client sending those is wrong).
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise validation_error(exc, model) from None
