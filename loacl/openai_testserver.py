"""LOACL's own OpenAI-compatible test server: real HTTP, chunked SSE, scriptable replies and faults.

The project's tests drive the real ``openai`` SDK against it, and a user can run it to try LOACL
without a key::

    python -m loacl.openai_testserver --host 127.0.0.1 --port 8089
    # then point LOACL (or any OpenAI client) at http://127.0.0.1:8089/v1 with any API key

It implements ``POST /v1/responses`` (JSON and SSE), ``POST /v1/chat/completions`` (JSON and SSE),
``GET /v1/models[/{id}]``, ``POST``/``GET /v1/files``, ``GET``/``DELETE /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``POST /v1/embeddings``, and vector stores: ``POST
/v1/vector_stores``, ``GET``/``DELETE /v1/vector_stores/{id}``, ``POST``/``GET
/v1/vector_stores/{id}/files`` and ``GET``/``DELETE /v1/vector_stores/{id}/files/{file_id}``,
with the wire shapes of ``shared/research/openai-wire.md`` section 2 and the SDK's types.

A vector store file is ``in_progress`` for :attr:`OpenAITestServer.processing_reads` reads, then
``completed``, or ``failed`` with a ``last_error`` when its name is in
:attr:`OpenAITestServer.file_failures`. A Responses request that offers ``file_search`` over
stores with files gets a ``file_search_call`` item first (the turn's scripted ``file_search``
results, or the stored paragraphs that share words with the question; with ``include:
["file_search_call.results"]`` the item carries them), and the answer's text a
``file_citation`` annotation per file found.

Embeddings are deterministic: each word of the input lands in one of :data:`EMBEDDING_DIMENSIONS`
buckets by its hash, normalised, so texts sharing words are near; a test may pin the vector of an
exact text (:attr:`OpenAITestServer.vectors`) to make two texts near that share no word.

Each request to a text endpoint takes the next scripted :class:`Turn` (FIFO), or the default: a
deterministic reply derived from the last user text (``echo:<text>`` answers ``<text>``), unless the
instructions (or a system message) hold a line ``Always answer: <text>``, which is then the answer:
a way to see instructions followed. A turn
carries at most one :class:`Fault`. Tests script turns in-process (:meth:`OpenAITestServer.script`)
and read what LOACL sent (:attr:`OpenAITestServer.requests`); another process does the same over
HTTP (``POST /_admin/script``, ``GET /_admin/requests``, ``POST /_admin/reset``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import Any, Literal, TypeAlias

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

Endpoint: TypeAlias = Literal[
    "responses", "chat", "models", "files", "embeddings", "vector_stores"]

# A turn scripted without an endpoint is meant for a text reply, so a model check or an upload
# made in between must not swallow it.
_TEXT_ENDPOINTS: frozenset[str] = frozenset({"responses", "chat"})
_POLL_SECONDS = 0.02
_FILE_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})


# --------------------------------------------------------------------------------------------
# Faults and turns (msgspec structs, so the admin API validates the same types tests construct)


class _Fault(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    pass


class HttpError(_Fault, frozen=True, tag="http_error"):
    """Answer with an error object and this status before any body (429, 500, 503, ...)."""

    status: int = 500
    message: str | None = None
    type: str | None = None
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    # Sent as ``x-should-retry``, which overrides the SDK's own retry decision.
    should_retry: bool | None = None


class Stall(_Fault, frozen=True, tag="stall"):
    """Sleep ``seconds`` before the first byte (``after_deltas=None``) or after K deltas.

    The sleep ends early when the client goes away or the server shuts down.
    """

    seconds: float
    after_deltas: int | None = None


class Cut(_Fault, frozen=True, tag="cut"):
    """Drop the connection after K deltas: no terminal event, no ``[DONE]``, no last chunk."""

    after_deltas: int = 0


class ErrorEvent(_Fault, frozen=True, tag="error_event"):
    """Send a Responses ``error`` event after K deltas and end the stream.

    ``nested=False`` is the documented flat shape (the SDK yields it as ``ResponseErrorEvent``);
    ``nested=True`` wraps the fields in ``error`` as the real API does in production (the SDK
    raises ``APIError``). Chat Completions always gets ``data: {"error": {...}}``.
    """

    after_deltas: int = 0
    code: str | None = "server_error"
    message: str = "The server had an error while processing your request. Sorry about that!"
    param: str | None = None
    nested: bool = False


class Failed(_Fault, frozen=True, tag="failed"):
    """End with ``response.failed`` after K deltas (Chat Completions: an error chunk)."""

    after_deltas: int = 0
    code: str = "server_error"
    message: str = "The model failed to generate a response."


class Incomplete(_Fault, frozen=True, tag="incomplete"):
    """End with ``response.incomplete`` after K deltas (Chat Completions: finish_reason length)."""

    after_deltas: int = 0
    reason: str = "max_output_tokens"


Fault: TypeAlias = HttpError | Stall | Cut | ErrorEvent | Failed | Incomplete


class FunctionCall(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A function call the model makes: ``arguments`` is the JSON text, streamed in pieces
    (``response.function_call_arguments.delta``, or ``tool_calls`` deltas in Chat
    Completions). ``call_id=None`` makes one up."""

    name: str
    arguments: str = "{}"
    call_id: str | None = None


class SearchResult(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A passage OpenAI's file_search finds: in the file ``file_id``, or the stored file named
    ``filename``."""

    text: str
    file_id: str | None = None
    filename: str | None = None
    score: float = 0.9


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    """What the server does for one request. ``reply_text=None`` means the default reply (or,
    with ``calls``, no text before them). ``file_search``: the results of the file_search
    call that comes first when the request offers that tool (None: the stores' files are
    searched by shared words)."""

    reply_text: str | None = None
    fault: Fault | None = None
    endpoint: Endpoint | None = None
    token_delay: float | None = None
    calls: tuple[FunctionCall, ...] = ()
    file_search: tuple[SearchResult, ...] | None = None


class ScriptRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /_admin/script``; the same meaning as :meth:`OpenAITestServer.script`."""

    reply_text: str | None = None
    faults: tuple[Fault, ...] = ()
    endpoint: Endpoint | None = None
    token_delay: float | None = None
    calls: tuple[FunctionCall, ...] = ()
    file_search: tuple[SearchResult, ...] | None = None


class _ConfigRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    token_delay: float | None = None


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str
    endpoint: str
    headers: dict[str, str]
    json: Any = None
    form: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    id: str
    created: int = 1_700_000_000
    owned_by: str = "system"
    shutdown_date: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
            "shutdown_date": self.shutdown_date,
        }


DEFAULT_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("gpt-fake-1", owned_by="loacl"),
    ModelInfo("gpt-4.1-mini"),
    ModelInfo("gpt-4o-mini"),
    ModelInfo("gpt-5-mini"),
    # Lets LOACL's model validation show an announced shutdown.
    ModelInfo("gpt-fake-retiring", owned_by="loacl", shutdown_date="2026-12-31"),
)


@dataclasses.dataclass(frozen=True)
class _StoredFile:
    meta: dict[str, Any]
    data: bytes


# --------------------------------------------------------------------------------------------
# Embeddings

EMBEDDING_DIMENSIONS = 64
_EMBED_WORD = re.compile(r"\w+", re.UNICODE)


def embedding(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic bag-of-words vector: one bucket per word by its SHA-256, normalised."""
    import hashlib

    vector = [0.0] * dimensions
    for word in _EMBED_WORD.findall(text.lower()):
        vector[int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big") % dimensions] \
            += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector] if any(vector) else [1.0 / math.sqrt(dimensions)] * \
        dimensions


# --------------------------------------------------------------------------------------------
# Replies


def split_deltas(text: str, size: int = 6) -> list[str]:
    """Cut ``text`` into small pieces (leading spaces stay with their word).

    Joined again, the pieces are exactly ``text``.
    """
    return re.findall(rf"\s*\S{{1,{size}}}|\s+$", text)


_ALWAYS = re.compile(r"^\s*always answer:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


def default_reply(
    user_text: str, file_names: Sequence[str] = (), instructions: str = ""
) -> str:
    """The deterministic answer when no reply is scripted."""
    ordered = _ALWAYS.search(instructions)
    if ordered:
        return ordered.group(1)
    if user_text.startswith("echo:"):
        return user_text[len("echo:") :]
    said = user_text.strip() or "(nothing)"
    reply = f"This is the LOACL test server. You said: {said}. No OpenAI key was needed for this."
    if file_names:
        reply += f" Attached: {', '.join(file_names)}."
    return reply


def tool_reply(outputs: Sequence[str]) -> str:
    """The deterministic answer to a request that ends with function outputs."""
    return "The tool answered: " + "; ".join(outputs)


def _token_estimate(text: str) -> int:
    # Deterministic and roughly OpenAI's four characters per token.
    return math.ceil(len(text) / 4)


def _new_id(prefix: str, nbytes: int = 12) -> str:
    return prefix + secrets.token_hex(nbytes)


# --------------------------------------------------------------------------------------------
# Errors


class _ApiError(Exception):
    """Raised by handlers; rendered as the real API's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}
        self.headers = headers or {}


class _ClientGone(Exception):
    """The client left (or the server is closing) while a handler was stalling."""


class _StreamCut(Exception):
    """Raised after the response started, so uvicorn drops the connection mid-body."""


class _QuietCuts(logging.Filter):
    """A scripted cut is not a server bug: keep uvicorn from logging its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, _StreamCut)


def _install_cut_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietCuts) for f in logger.filters):
        logger.addFilter(_QuietCuts())


_HTTP_ERROR_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Scripted bad request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model.", "invalid_request_error", None),
    404: ("Scripted not found.", "invalid_request_error", None),
    429: (
        "Rate limit reached for requests. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def _http_error(fault: HttpError) -> _ApiError:
    message, kind, code = _HTTP_ERROR_DEFAULTS.get(
        fault.status, ("Scripted error.", "server_error", None)
    )
    headers: dict[str, str] = {}
    if fault.retry_after is not None:
        headers["retry-after"] = f"{fault.retry_after:g}"
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = str(fault.retry_after_ms)
    if fault.should_retry is not None:
        headers["x-should-retry"] = "true" if fault.should_retry else "false"
    return _ApiError(
        fault.status,
        fault.message or message,
        type=fault.type or kind,
        param=fault.param,
        code=fault.code if fault.code is not None else code,
        headers=headers,
    )


def _invalid(param: str, message: str, code: str | None = "invalid_value") -> _ApiError:
    return _ApiError(400, message, param=param, code=code)


def _missing(param: str) -> _ApiError:
    return _invalid(param, f"Missing required parameter: '{param}'.", "missing_required_parameter")


# --------------------------------------------------------------------------------------------
# Request bodies: validation close to the real API's, so LOACL's mistakes show up in tests

_USER_PARTS = frozenset({"input_text", "input_image", "input_file", "input_audio"})
_ASSISTANT_PARTS = frozenset({"output_text", "refusal"})
_ROLES = frozenset({"user", "assistant", "system", "developer"})


def _check_range(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _invalid(name, f"Invalid type for '{name}': expected a number.", "invalid_type")
    if value < low:
        raise _invalid(
            name,
            f"Invalid '{name}': decimal below minimum value. Expected a value >= {low:g}, "
            f"but got {value:g} instead.",
            "decimal_below_min_value",
        )
    if value > high:
        raise _invalid(
            name,
            f"Invalid '{name}': decimal above maximum value. Expected a value <= {high:g}, "
            f"but got {value:g} instead.",
            "decimal_above_max_value",
        )


def _check_max_output_tokens(body: dict[str, Any]) -> None:
    value = body.get("max_output_tokens")
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid("max_output_tokens", "Invalid type for 'max_output_tokens'.", "invalid_type")
    if value < 16:
        raise _invalid(
            "max_output_tokens",
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, "
            f"but got {value} instead.",
            "integer_below_min_value",
        )


def _check_message_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise _invalid(where, f"Invalid type for '{where}': expected an object.", "invalid_type")
    if item.get("type", "message") != "message":
        return  # function outputs and other items pass through unchecked
    role = item.get("role")
    if role not in _ROLES:
        raise _invalid(
            f"{where}.role",
            f"Invalid value: '{role}'. Supported values are: "
            "'assistant', 'system', 'developer', and 'user'.",
        )
    content = item.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _missing(f"{where}.content")
    allowed = _ASSISTANT_PARTS if role == "assistant" else _USER_PARTS
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            names = "' and '".join(sorted(allowed))
            raise _invalid(
                f"{where}.content[{index}]",
                f"Invalid value: '{kind}'. Supported values are: '{names}'.",
            )


def _check_function_items(items: list[Any]) -> None:
    """Every ``function_call_output`` answers a ``function_call`` before it, as the real API
    insists when nothing is stored."""
    called: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    raise _missing(f"input[{index}].{name}")
            called.add(item["call_id"])
        elif item.get("type") == "function_call_output":
            if item.get("call_id") not in called:
                raise _invalid(
                    f"input[{index}]",
                    f"No tool call found for function call output with call_id "
                    f"{item.get('call_id')}.",
                )
            if not isinstance(item.get("output"), str | list):
                raise _missing(f"input[{index}].output")


def _check_tools(tools: Any, chat: bool) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _invalid("tools", "Invalid type for 'tools': expected an array.", "invalid_type")
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        fn = tool.get("function") if chat else tool
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            where = f"tools[{index}].function.name" if chat else f"tools[{index}].name"
            raise _missing(where)
        if "parameters" in fn and not isinstance(fn["parameters"], dict):
            raise _invalid(f"tools[{index}].parameters", "Invalid type: expected an object.",
                           "invalid_type")


def _check_tool_messages(messages: list[Any]) -> None:
    called: set[str] = set()
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict):
                called.add(str(call.get("id")))
        if message.get("role") == "tool" and message.get("tool_call_id") not in called:
            raise _invalid(
                f"messages.[{index}].role",
                "Invalid parameter: messages with role 'tool' must be a response to a "
                "preceeding message with 'tool_calls'.",
            )


def _outputs_at_end(items: Any, chat: bool) -> list[str]:
    """The function outputs that end the input, oldest first (none when the last item is
    something else)."""
    found: list[str] = []
    for item in reversed(items if isinstance(items, list) else []):
        is_output = isinstance(item, dict) and (
            item.get("role") == "tool" if chat else item.get("type") == "function_call_output"
        )
        if not is_output:
            break
        value = item.get("content" if chat else "output")
        found.append(value if isinstance(value, str) else json.dumps(value))
    return found[::-1]


def _check_responses_body(body: dict[str, Any]) -> None:
    source = body.get("input")
    if source is not None and not isinstance(source, str | list):
        raise _invalid(
            "input", "Invalid type for 'input': expected a string or an array.", "invalid_type"
        )
    if isinstance(source, list):
        for index, item in enumerate(source):
            _check_message_item(item, f"input[{index}]")
        _check_function_items(source)
    if "store" in body and not isinstance(body["store"], bool):
        raise _invalid("store", "Invalid type for 'store': expected a boolean.", "invalid_type")
    _check_tools(body.get("tools"), chat=False)
    _check_range(body, "temperature", 0, 2)
    _check_range(body, "top_p", 0, 1)
    _check_max_output_tokens(body)


def _part_texts(content: Any, kinds: frozenset[str]) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [
        str(part.get("text", ""))
        for part in content
        if isinstance(part, dict) and part.get("type") in kinds
    ]


def _last_user_content(items: Any) -> Any:
    if isinstance(items, str):
        return items
    users = [i for i in items or [] if isinstance(i, dict) and i.get("role") == "user"]
    return users[-1].get("content") if users else ""


def _all_text(items: Any) -> str:
    if isinstance(items, str):
        return items
    kinds = frozenset({"input_text", "output_text", "text"})
    texts = [
        text
        for item in items or []
        if isinstance(item, dict)
        for text in _part_texts(item.get("content"), kinds)
    ]
    return "\n".join(texts)


def _file_ids(content: Any) -> list[str]:
    if not isinstance(content, list):
        return []
    return [
        str(part["file_id"])
        for part in content
        if isinstance(part, dict) and part.get("type") == "input_file" and "file_id" in part
    ]


# --------------------------------------------------------------------------------------------
# Wire protocols: each knows how to frame its events; the server drives them the same way


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclasses.dataclass(frozen=True)
class _Call:
    call_id: str
    item_id: str
    name: str
    pieces: list[str]

    @property
    def arguments(self) -> str:
        return "".join(self.pieces)


# What a stream does step by step: ("text", piece), ("close_text",), ("open", call index),
# ("args", call index, piece), ("close", call index). Text and argument pieces are deltas.
Action: TypeAlias = tuple[Any, ...]


class _Plan:
    """The text of one reply, cut into deltas, the function calls after it, and the turn's
    fault (if any) with its position among the deltas (text pieces, then argument pieces)."""

    def __init__(
        self, text: str, fault: Fault | None, delay: float, limit: int | None,
        calls: Sequence[FunctionCall] = (),
    ) -> None:
        self.pieces = split_deltas(text)
        self.delay = delay
        self.calls = [
            _Call(c.call_id or _new_id("call_", 12), _new_id("fc_", 24), c.name,
                  split_deltas(c.arguments) or [c.arguments])
            for c in calls
        ]
        # The real API stops at max_output_tokens; one delta counts as one token here.
        if fault is None and limit is not None and limit < len(self.pieces):
            fault = Incomplete(after_deltas=limit)
        self.fault = fault

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def kept_text(self) -> str:
        """The text a non-streaming answer carries: cut short only when it ends incomplete."""
        at = self.fault_at()
        if isinstance(self.fault, Incomplete) and at is not None:
            return "".join(self.pieces[:at])
        return self.text

    @property
    def deltas(self) -> int:
        return len(self.pieces) + sum(len(c.pieces) for c in self.calls)

    def fault_at(self) -> int | None:
        after = getattr(self.fault, "after_deltas", None)
        return None if after is None else min(after, self.deltas)

    def actions(self) -> list[Action]:
        steps: list[Action] = [("text", piece) for piece in self.pieces]
        if self.calls:
            steps.append(("close_text",))
        for index, call in enumerate(self.calls):
            steps.append(("open", index))
            steps += [("args", index, piece) for piece in call.pieces]
            steps.append(("close", index))
        return steps


class _ResponsesWire:
    """Responses API objects and SSE events, with ``sequence_number`` counting from 0."""

    def __init__(self, body: dict[str, Any], input_tokens: int) -> None:
        self.body = body
        self.response_id = _new_id("resp_", 24)
        self.item_id = _new_id("msg_", 24)
        self.created_at = int(time.time())
        self.input_tokens = input_tokens
        self._seq = 0
        self.plan: _Plan | None = None
        self.text_open = True
        # OpenAI's file_search, when the request offered it and it found something: the
        # file_search_call item (output 0) and the message's file_citation annotations.
        self.search: dict[str, Any] | None = None
        self.annotations: list[dict[str, Any]] = []

    def searched(self, queries: list[str], results: list[dict[str, Any]]) -> None:
        included = "file_search_call.results" in (self.body.get("include") or [])
        self.search = {"id": _new_id("fs_", 24), "type": "file_search_call",
                       "status": "completed", "queries": queries,
                       "results": results if included else None}
        cited: dict[str, str] = {}
        for found in results:
            cited.setdefault(found["file_id"], found["filename"])
        self.annotations = [{"type": "file_citation", "file_id": f, "filename": n, "index": 0}
                            for f, n in cited.items()]

    @property
    def _first(self) -> int:
        """The message's output index: after the file_search call, when there is one."""
        return 1 if self.search is not None else 0

    def _frame(self, payload: dict[str, Any]) -> bytes:
        payload["sequence_number"] = self._seq
        self._seq += 1
        return _sse(payload, payload["type"])

    def _part(self, text: str, final: bool = False) -> dict[str, Any]:
        notes = [{**a, "index": len(text)} for a in self.annotations] if final else []
        return {"type": "output_text", "text": text, "annotations": notes, "logprobs": []}

    def _item(self, text: str | None, status: str) -> dict[str, Any]:
        content = [] if text is None else [self._part(text, final=status != "in_progress")]
        return {
            "id": self.item_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _usage(self, text: str) -> dict[str, Any]:
        output_tokens = len(split_deltas(text))
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + output_tokens,
        }

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        incomplete: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body = self.body
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": body["model"],
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": usage,
            "user": None,
            "metadata": body.get("metadata") or {},
        }

    def _call_item(self, call: _Call, status: str, arguments: str) -> dict[str, Any]:
        return {"id": call.item_id, "type": "function_call", "status": status,
                "call_id": call.call_id, "name": call.name, "arguments": arguments}

    def _output(self, text: str, status: str) -> list[dict[str, Any]]:
        calls = self.plan.calls if self.plan is not None else []
        message = [self._item(text, status)] if text or not calls else []
        search = [self.search] if self.search is not None else []
        return search + message + [self._call_item(c, "completed", c.arguments) for c in calls]

    def final(self, fault: Fault | None, text: str) -> dict[str, Any]:
        """The non-streaming body for a reply that ended as ``fault`` says."""
        if isinstance(fault, Failed):
            error = {"code": fault.code, "message": fault.message}
            return self.response("failed", [], error=error)
        if isinstance(fault, Incomplete):
            output = [self._item(text, "incomplete")]
            return self.response(
                "incomplete", output, self._usage(text), incomplete={"reason": fault.reason}
            )
        return self.response("completed", self._output(text, "completed"), self._usage(text))

    def opening(self, plan: _Plan | None = None) -> list[bytes]:
        self.plan = plan
        started = self.response("in_progress", [])
        frames = [
            self._frame({"type": "response.created", "response": started}),
            self._frame({"type": "response.in_progress", "response": started}),
        ]
        if self.search is not None:
            frames += self._search_frames()
        if plan is not None and plan.calls and not plan.pieces:
            self.text_open = False  # calls only: no message item
            return frames
        self.text_open = True
        return [
            *frames,
            self._frame(
                {
                    "type": "response.output_item.added",
                    "output_index": self._first,
                    "item": self._item(None, "in_progress"),
                }
            ),
            self._frame(
                {"type": "response.content_part.added", **self._where(), "part": self._part("")}
            ),
        ]

    def act(self, action: Action) -> list[bytes]:
        """The frames of one step of the plan."""
        assert self.plan is not None
        kind = action[0]
        if kind == "text":
            return [self.delta(action[1])]
        if kind == "close_text":
            if not self.text_open:
                return []
            self.text_open = False
            return self._close_item(self.plan.text, "completed")
        call = self.plan.calls[action[1]]
        index = action[1] + (1 if self.plan.pieces else 0) + self._first
        where = {"item_id": call.item_id, "output_index": index}
        if kind == "open":
            return [self._frame({"type": "response.output_item.added", "output_index": index,
                                 "item": self._call_item(call, "in_progress", "")})]
        if kind == "args":
            return [self._frame({"type": "response.function_call_arguments.delta", **where,
                                 "delta": action[2]})]
        return [
            self._frame({"type": "response.function_call_arguments.done", **where,
                         "name": call.name, "arguments": call.arguments}),
            self._frame({"type": "response.output_item.done", "output_index": index,
                         "item": self._call_item(call, "completed", call.arguments)}),
        ]

    def _search_frames(self) -> list[bytes]:
        assert self.search is not None
        item = self.search
        where = {"output_index": 0, "item_id": item["id"]}
        return [
            self._frame({"type": "response.output_item.added", "output_index": 0,
                         "item": {**item, "status": "in_progress", "results": None}}),
            self._frame({"type": "response.file_search_call.in_progress", **where}),
            self._frame({"type": "response.file_search_call.searching", **where}),
            self._frame({"type": "response.file_search_call.completed", **where}),
            self._frame({"type": "response.output_item.done", "output_index": 0, "item": item}),
        ]

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "output_index": self._first, "content_index": 0}

    def delta(self, piece: str) -> bytes:
        return self._frame(
            {"type": "response.output_text.delta", **self._where(), "delta": piece, "logprobs": []}
        )

    def _close_item(self, text: str, status: str) -> list[bytes]:
        notes = [
            self._frame({"type": "response.output_text.annotation.added", **self._where(),
                         "annotation_index": i, "annotation": annotation})
            for i, annotation in enumerate(self._part(text, final=True)["annotations"])
        ]
        return [
            *notes,
            self._frame(
                {"type": "response.output_text.done", **self._where(), "text": text, "logprobs": []}
            ),
            self._frame(
                {"type": "response.content_part.done", **self._where(),
                 "part": self._part(text, final=True)}
            ),
            self._frame(
                {
                    "type": "response.output_item.done",
                    "output_index": self._first,
                    "item": self._item(text, status),
                }
            ),
        ]

    def finish(self, text: str) -> list[bytes]:
        completed = self.final(None, text)
        closing = self._close_item(text, "completed") if getattr(self, "text_open", True) else []
        return [
            *closing,
            self._frame({"type": "response.completed", "response": completed}),
        ]

    def interrupt(self, fault: Fault, text: str) -> list[bytes]:
        """Frames that end the stream early because of ``fault`` (none for a cut)."""
        if isinstance(fault, ErrorEvent):
            fields = {"code": fault.code, "message": fault.message, "param": fault.param}
            if fault.nested:
                return [self._frame({"type": "error", "error": {"type": "server_error", **fields}})]
            return [self._frame({"type": "error", **fields})]
        if isinstance(fault, Failed):
            return [self._frame({"type": "response.failed", "response": self.final(fault, text)})]
        if isinstance(fault, Incomplete):
            return [
                *self._close_item(text, "incomplete"),
                self._frame({"type": "response.incomplete", "response": self.final(fault, text)}),
            ]
        return []


class _ChatWire:
    """Chat Completions objects and ``chat.completion.chunk`` frames, ending in ``[DONE]``."""

    def __init__(self, body: dict[str, Any], input_tokens: int) -> None:
        self.body = body
        self.completion_id = "chatcmpl-" + secrets.token_hex(14)
        self.created = int(time.time())
        self.input_tokens = input_tokens
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        self.plan: _Plan | None = None

    def _usage(self, text: str) -> dict[str, Any]:
        output_tokens = len(split_deltas(text))
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": self.input_tokens + output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _head(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": kind,
            "created": self.created,
            "model": self.body["model"],
            "system_fingerprint": None,
            "service_tier": "default",
        }

    def final(self, fault: Fault | None, text: str) -> dict[str, Any]:
        calls = self.plan.calls if self.plan is not None else []
        reason = "length" if isinstance(fault, Incomplete) else "tool_calls" if calls else "stop"
        message: dict[str, Any] = {"role": "assistant", "content": text or None,
                                   "refusal": None, "annotations": []}
        if calls:
            message["tool_calls"] = [
                {"id": c.call_id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]
        else:
            message["content"] = text
        choice = {
            "index": 0,
            "message": message,
            "finish_reason": reason,
            "logprobs": None,
        }
        return {**self._head("chat.completion"), "choices": [choice], "usage": self._usage(text)}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk = {**self._head("chat.completion.chunk"), "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None  # the real API marks every chunk but the last this way
        return _sse(chunk)

    def opening(self, plan: _Plan | None = None) -> list[bytes]:
        self.plan = plan
        return [self._chunk({"role": "assistant", "content": "", "refusal": None})]

    def delta(self, piece: str) -> bytes:
        return self._chunk({"content": piece})

    def act(self, action: Action) -> list[bytes]:
        assert self.plan is not None
        kind = action[0]
        if kind == "text":
            return [self.delta(action[1])]
        if kind == "open":
            call = self.plan.calls[action[1]]
            return [self._chunk({"tool_calls": [{
                "index": action[1], "id": call.call_id, "type": "function",
                "function": {"name": call.name, "arguments": ""}}]})]
        if kind == "args":
            return [self._chunk({"tool_calls": [{
                "index": action[1], "function": {"arguments": action[2]}}]})]
        return []

    def finish(self, text: str, reason: str | None = None) -> list[bytes]:
        if reason is None:
            reason = "tool_calls" if self.plan is not None and self.plan.calls else "stop"
        frames = [self._chunk({}, reason)]
        if self.include_usage:
            frames.append(
                _sse(
                    {
                        **self._head("chat.completion.chunk"),
                        "choices": [],
                        "usage": self._usage(text),
                    }
                )
            )
        return [*frames, b"data: [DONE]\n\n"]

    def interrupt(self, fault: Fault, text: str) -> list[bytes]:
        if isinstance(fault, ErrorEvent | Failed):
            error = {
                "message": fault.message,
                "type": "server_error",
                "param": None,
                "code": fault.code,
            }
            return [_sse({"error": error})]
        if isinstance(fault, Incomplete):
            return self.finish(text, "length")
        return []


_Wire: TypeAlias = _ResponsesWire | _ChatWire


# --------------------------------------------------------------------------------------------
# The server


class _RequestIdMiddleware:
    """Every real API response carries ``x-request-id``; the SDK exposes it as ``request_id``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _new_id("req_", 16).encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-request-id", request_id)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class OpenAITestServer:
    """An OpenAI-compatible server whose replies and faults tests script, request by request.

    ``api_key=None`` accepts any non-empty bearer key. ``token_delay`` is the pause between
    deltas (seconds), for benchmarks. Serve :attr:`app` with :func:`running` or the CLI.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        token_delay: float = 0.0,
        models: Sequence[ModelInfo] = DEFAULT_MODELS,
    ) -> None:
        self.api_key = api_key
        self.token_delay = token_delay
        self.models = {model.id: model for model in models}
        # Set when the server shuts down, so stalls end instead of holding uvicorn open.
        self.closing = threading.Event()
        self._lock = threading.Lock()
        self._turns: list[Turn] = []
        self._requests: list[RecordedRequest] = []
        self._files: dict[str, _StoredFile] = {}
        # Vector stores by id, and their files by (store id, file id).
        self.vector_stores: dict[str, dict[str, Any]] = {}
        self._store_files: dict[tuple[str, str], dict[str, Any]] = {}
        # How many reads of a vector store file (its creation among them) say in_progress
        # before it is completed; read at each read, so that a test may end the wait.
        self.processing_reads = 1
        # Vector store files that end failed: (code, message) by the file's name.
        self.file_failures: dict[str, tuple[str, str]] = {}
        # Vectors pinned for exact input texts (see :func:`embedding` for the rest).
        self.vectors: dict[str, list[float]] = {}
        _install_cut_filter()
        self.app = self._build_app()

    # ---- the Python API for tests

    def script(
        self,
        reply_text: str | None = None,
        faults: Sequence[Fault] = (),
        *,
        endpoint: Endpoint | None = None,
        token_delay: float | None = None,
        calls: Sequence[FunctionCall] = (),
        file_search: Sequence[SearchResult] | None = None,
    ) -> None:
        """Queue one turn per fault, or one clean turn when there are no faults.

        Each turn answers ``reply_text`` (or the default reply) up to its fault, so
        ``script("Hi", [Cut(after_deltas=2)])`` streams two deltas of "Hi" and drops the line.
        A success after faults is a second call: ``script(faults=[HttpError(status=429)])``
        then ``script("Hi")``. With ``endpoint=None`` the turns go to the next ``responses`` or
        ``chat`` request, whichever comes first. With ``calls`` the turn ends in those
        function calls (after ``reply_text``, when given); faults count argument pieces as
        deltas too.
        """
        chosen: Sequence[Fault | None] = faults or [None]
        turns = [
            Turn(reply_text=reply_text, fault=fault, endpoint=endpoint, token_delay=token_delay,
                 calls=tuple(calls),
                 file_search=None if file_search is None else tuple(file_search))
            for fault in chosen
        ]
        self.enqueue(*turns)

    def enqueue(self, *turns: Turn) -> None:
        with self._lock:
            self._turns.extend(turns)

    @property
    def pending(self) -> list[Turn]:
        """Scripted turns not consumed yet."""
        with self._lock:
            return list(self._turns)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every ``/v1`` request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_to(self, endpoint: Endpoint) -> list[RecordedRequest]:
        return [r for r in self.requests if r.endpoint == endpoint]

    def file_bytes(self, file_id: str) -> bytes:
        with self._lock:
            return self._files[file_id].data

    @property
    def file_ids(self) -> set[str]:
        """The files stored now (deleted ones are gone)."""
        with self._lock:
            return set(self._files)

    def store_files(self, vector_store_id: str) -> list[dict[str, Any]]:
        """The vector store's files as ``GET /v1/vector_stores/{id}/files`` lists them."""
        with self._lock:
            return [dict(f) for (v, _), f in self._store_files.items() if v == vector_store_id]

    def reset(self) -> None:
        """Forget scripted turns and recorded requests (uploaded files stay)."""
        with self._lock:
            self._turns.clear()
            self._requests.clear()

    # ---- plumbing

    def _build_app(self) -> Starlette:
        routes = [
            Route("/v1/responses", self._responses, methods=["POST"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._list_models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self._get_model, methods=["GET"]),
            Route("/v1/files", self._upload, methods=["POST"]),
            Route("/v1/files", self._list_files, methods=["GET"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/files/{file_id}", self._get_file, methods=["GET"]),
            Route("/v1/files/{file_id}", self._delete_file, methods=["DELETE"]),
            Route("/v1/vector_stores", self._create_store, methods=["POST"]),
            Route("/v1/vector_stores/{store_id}", self._get_store, methods=["GET"]),
            Route("/v1/vector_stores/{store_id}", self._delete_store, methods=["DELETE"]),
            Route("/v1/vector_stores/{store_id}/files", self._add_store_file, methods=["POST"]),
            Route("/v1/vector_stores/{store_id}/files", self._list_store_files,
                  methods=["GET"]),
            Route("/v1/vector_stores/{store_id}/files/{file_id}", self._get_store_file,
                  methods=["GET"]),
            Route("/v1/vector_stores/{store_id}/files/{file_id}", self._delete_store_file,
                  methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", self._get_file_content, methods=["GET"]),
            Route("/_admin/script", self._admin_script, methods=["POST"]),
            Route("/_admin/requests", self._admin_requests, methods=["GET"]),
            Route("/_admin/reset", self._admin_reset, methods=["POST"]),
            Route("/_admin/config", self._admin_config, methods=["POST"]),
        ]
        return Starlette(
            routes=routes,
            middleware=[Middleware(_RequestIdMiddleware)],
            exception_handlers={
                _ApiError: self._on_api_error,
                _ClientGone: self._on_client_gone,
                HTTPException: self._on_http_exception,
            },
        )

    async def _on_api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _ApiError)
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    async def _on_client_gone(self, request: Request, exc: Exception) -> Response:
        # A client that left never reads this; one still waiting while we shut down gets a 503.
        error = _ApiError(503, "The test server is shutting down.", type="server_error")
        return JSONResponse(error.body, status_code=error.status)

    async def _on_http_exception(self, request: Request, exc: Exception) -> Response:
        # Unknown routes and methods answer as the real API does, not with Starlette's text.
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = f"Invalid URL ({request.method} {request.url.path})"
        return JSONResponse(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
            status_code=status,
        )

    def _record(
        self, request: Request, endpoint: str, body: Any = None, form: dict[str, str] | None = None
    ) -> None:
        entry = RecordedRequest(
            method=request.method,
            path=request.url.path,
            endpoint=endpoint,
            headers={k.lower(): v for k, v in request.headers.items()},
            json=body,
            form=form or {},
        )
        with self._lock:
            self._requests.append(entry)

    def _check_auth(self, request: Request) -> None:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise _ApiError(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if self.api_key is not None and key != self.api_key:
            shown = f"{key[:3]}*****{key[-4:]}" if len(key) > 8 else "*****"
            raise _ApiError(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    async def _json_body(self, request: Request, endpoint: Endpoint) -> dict[str, Any]:
        """Record the request, check its key, and return its JSON object body."""
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self._record(request, endpoint, body)
        self._check_auth(request)
        if not isinstance(body, dict):
            raise _ApiError(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                "but what was sent was not valid JSON.)",
            )
        return body

    def _take_turn(self, endpoint: Endpoint) -> Turn:
        with self._lock:
            for index, turn in enumerate(self._turns):
                wanted = turn.endpoint
                if wanted == endpoint or (wanted is None and endpoint in _TEXT_ENDPOINTS):
                    return self._turns.pop(index)
        return Turn()

    async def _start_turn(self, request: Request, endpoint: Endpoint) -> Turn:
        """Take this request's turn and apply faults that strike before the first byte."""
        turn = self._take_turn(endpoint)
        fault = turn.fault
        first_byte_stall = (
            fault.seconds if isinstance(fault, Stall) and (fault.after_deltas is None) else 0.0
        )
        if not await self._pause(first_byte_stall, request):
            raise _ClientGone
        if isinstance(fault, HttpError):
            raise _http_error(fault)
        return turn

    async def _pause(self, seconds: float, request: Request) -> bool:
        """Sleep up to ``seconds``; False if the client left or the server is closing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            if self.closing.is_set() or await request.is_disconnected():
                return False
            await asyncio.sleep(min(remaining, _POLL_SECONDS))
        return not self.closing.is_set()

    def _check_model(self, body: dict[str, Any], status: int) -> None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _missing("model")
        if model not in self.models:
            # Approximations of the real wording: Responses says 400, Chat Completions 404.
            if status == 400:
                raise _invalid(
                    "model", f"The requested model '{model}' does not exist.", "model_not_found"
                )
            raise _ApiError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )

    def _file_names(self, file_ids: Sequence[str]) -> list[str]:
        with self._lock:
            return [self._files[f].meta["filename"] for f in file_ids if f in self._files]

    # ---- text endpoints

    async def _responses(self, request: Request) -> Response:
        body = await self._json_body(request, "responses")
        turn = await self._start_turn(request, "responses")
        self._check_model(body, 400)
        _check_responses_body(body)
        source = body.get("input", "")
        wire = _ResponsesWire(
            body, _token_estimate(f"{body.get('instructions') or ''}\n{_all_text(source)}")
        )
        last = _last_user_content(source)
        text = turn.reply_text
        outputs = _outputs_at_end(source, chat=False)
        if text is None and turn.calls:
            text = ""
        elif text is None and outputs:
            text = tool_reply(outputs)
        elif text is None:
            user_text = "\n".join(_part_texts(last, frozenset({"input_text"})))
            text = default_reply(user_text, self._file_names(_file_ids(last)),
                                 str(body.get("instructions") or ""))
        stores = [i for t in body.get("tools") or [] if isinstance(t, dict)
                  and t.get("type") == "file_search" for i in t.get("vector_store_ids") or []]
        if stores and not outputs:
            query = "\n".join(_part_texts(last, frozenset({"input_text"})))
            found = self._file_search(stores, query, turn.file_search)
            if found:
                wire.searched([query], found)
        plan = self._plan(turn, text, body.get("max_output_tokens"))
        return await self._answer(request, body, plan, wire)

    def _file_search(
        self, stores: list[str], query: str, scripted: tuple[SearchResult, ...] | None
    ) -> list[dict[str, Any]]:
        """file_search over the stores' completed files: the scripted results, or the
        paragraphs sharing the most words with the query."""
        with self._lock:
            ready = {f: self._files[f] for (v, f), entry in self._store_files.items()
                     if v in stores and entry["status"] == "completed" and f in self._files}
            names = {stored.meta["filename"]: f for f, stored in self._files.items()}
        results: list[dict[str, Any]] = []
        if scripted is not None:
            for hit in scripted:
                file_id = hit.file_id or names.get(hit.filename or "", "")
                stored = self._files.get(file_id)
                filename = stored.meta["filename"] if stored else (hit.filename or file_id)
                results.append({"file_id": file_id, "filename": filename, "score": hit.score,
                                "text": hit.text, "attributes": {}})
            return results
        words = set(_EMBED_WORD.findall(query.lower()))
        scored = []
        for file_id, stored in ready.items():
            text = stored.data.decode("utf-8", "ignore")
            for paragraph in (p.strip() for p in text.split("\n\n")):
                shared = len(words & set(_EMBED_WORD.findall(paragraph.lower())))
                if paragraph and shared:
                    scored.append((-shared, file_id, paragraph))
        for shared, file_id, paragraph in sorted(scored)[:3]:
            results.append({"file_id": file_id, "filename": ready[file_id].meta["filename"],
                            "score": min(1.0, -shared / max(len(words), 1)), "text": paragraph,
                            "attributes": {}})
        return results

    async def _chat(self, request: Request) -> Response:
        body = await self._json_body(request, "chat")
        turn = await self._start_turn(request, "chat")
        self._check_model(body, 404)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _missing("messages")
        _check_tool_messages(messages)
        _check_tools(body.get("tools"), chat=True)
        wire = _ChatWire(body, _token_estimate(_all_text(messages)))
        text = turn.reply_text
        outputs = _outputs_at_end(messages, chat=True)
        if text is None and turn.calls:
            text = ""
        elif text is None and outputs:
            text = tool_reply(outputs)
        elif text is None:
            last = _last_user_content(messages)
            system = "\n".join(
                m["content"] for m in messages if isinstance(m, dict)
                and m.get("role") in ("system", "developer") and isinstance(m.get("content"), str))
            text = default_reply("\n".join(_part_texts(last, frozenset({"text"}))), (), system)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        plan = self._plan(turn, text, limit if isinstance(limit, int) else None)
        return await self._answer(request, body, plan, wire)

    def _plan(self, turn: Turn, text: str, limit: Any) -> _Plan:
        delay = self.token_delay if turn.token_delay is None else turn.token_delay
        return _Plan(text, turn.fault, delay, limit if isinstance(limit, int) else None,
                     turn.calls)

    async def _answer(
        self, request: Request, body: dict[str, Any], plan: _Plan, wire: _Wire
    ) -> Response:
        if body.get("stream") is True:
            return StreamingResponse(
                self._stream(request, plan, wire),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache"},
            )
        return await self._answer_json(request, plan, wire)

    async def _answer_json(self, request: Request, plan: _Plan, wire: _Wire) -> Response:
        wire.plan = plan
        fault = plan.fault
        wait = plan.delay * len(plan.pieces)  # as long as streaming the same reply would take
        if isinstance(fault, Stall) and fault.after_deltas is not None:
            wait += fault.seconds
        if not await self._pause(wait, request):
            raise _ClientGone
        if isinstance(fault, ErrorEvent) or (
            isinstance(fault, Failed) and isinstance(wire, _ChatWire)
        ):
            raise _ApiError(500, fault.message, type="server_error", code=fault.code)
        payload = wire.final(fault, plan.kept_text())
        if isinstance(fault, Cut):
            return _cut_json(payload)
        return JSONResponse(payload)

    async def _stream(self, request: Request, plan: _Plan, wire: _Wire) -> AsyncIterator[bytes]:
        for frame in wire.opening(plan):
            yield frame
        at = plan.fault_at()
        actions = plan.actions()
        deltas = 0
        # One step past the last action, so a fault placed after every delta still strikes.
        for step in range(len(actions) + 1):
            is_delta = step < len(actions) and actions[step][0] in ("text", "args")
            if (is_delta or step == len(actions)) and deltas == at and plan.fault is not None:
                if not isinstance(plan.fault, Stall):
                    for frame in wire.interrupt(plan.fault, "".join(plan.pieces[:deltas])):
                        yield frame
                    if isinstance(plan.fault, Cut):
                        raise _StreamCut
                    return
                if not await self._pause(plan.fault.seconds, request):
                    return
                at = None  # a stall strikes once
            if step == len(actions):
                break
            if is_delta:
                if not await self._pause(plan.delay, request):
                    return
                deltas += 1
            for frame in wire.act(actions[step]):
                yield frame
        for frame in wire.finish(plan.text):
            yield frame

    # ---- models and files

    async def _list_models(self, request: Request) -> Response:
        self._record(request, "models")
        self._check_auth(request)
        await self._start_turn(request, "models")
        data = [model.to_json() for model in self.models.values()]
        return JSONResponse({"object": "list", "data": data})

    async def _get_model(self, request: Request) -> Response:
        self._record(request, "models")
        self._check_auth(request)
        await self._start_turn(request, "models")
        model_id = request.path_params["model_id"]
        model = self.models.get(model_id)
        if model is None:
            raise _ApiError(
                404, f"The model '{model_id}' does not exist", param="model", code="model_not_found"
            )
        return JSONResponse(model.to_json())

    async def _upload(self, request: Request) -> Response:
        async with request.form() as form:
            upload = form.get("file")
            purpose = form.get("purpose")
            fields = {
                k: (v.filename or "") if isinstance(v, UploadFile) else v for k, v in form.items()
            }
            self._record(request, "files", form=fields)
            self._check_auth(request)
            await self._start_turn(request, "files")
            if not isinstance(upload, UploadFile):
                raise _missing("file")
            if purpose not in _FILE_PURPOSES:
                raise _invalid(
                    "purpose", f"'{purpose}' is not one of {sorted(_FILE_PURPOSES)} - 'purpose'"
                )
            data = await upload.read()
        meta: dict[str, Any] = {
            "id": _new_id("file-", 11),
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": upload.filename or "upload",
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        with self._lock:
            self._files[meta["id"]] = _StoredFile(meta, data)
        return JSONResponse(meta)

    def _stored_file(self, request: Request) -> _StoredFile:
        file_id = request.path_params["file_id"]
        with self._lock:
            stored = self._files.get(file_id)
        if stored is None:
            raise _ApiError(404, f"No such File object: {file_id}", param="id")
        return stored

    async def _get_file(self, request: Request) -> Response:
        self._record(request, "files")
        self._check_auth(request)
        await self._start_turn(request, "files")
        return JSONResponse(self._stored_file(request).meta)

    async def _get_file_content(self, request: Request) -> Response:
        self._record(request, "files")
        self._check_auth(request)
        await self._start_turn(request, "files")
        return Response(self._stored_file(request).data, media_type="application/octet-stream")

    async def _list_files(self, request: Request) -> Response:
        self._record(request, "files")
        self._check_auth(request)
        await self._start_turn(request, "files")
        with self._lock:
            data = [stored.meta for stored in self._files.values()]
        return JSONResponse({"object": "list", "data": data, "has_more": False,
                             "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None})

    async def _delete_file(self, request: Request) -> Response:
        self._record(request, "files")
        self._check_auth(request)
        await self._start_turn(request, "files")
        file_id = self._stored_file(request).meta["id"]
        with self._lock:
            self._files.pop(file_id, None)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    # ---- vector stores

    async def _store_call(self, request: Request) -> dict[str, Any] | None:
        """Record the request, check its key, apply the turn's faults; its JSON body."""
        if request.method == "POST":
            body = await self._json_body(request, "vector_stores")
        else:
            self._record(request, "vector_stores")
            self._check_auth(request)
            body = None
        await self._start_turn(request, "vector_stores")
        return body

    def _store(self, store_id: str) -> dict[str, Any]:
        with self._lock:
            found = self.vector_stores.get(store_id)
            if found is None:
                raise _ApiError(404, f"No vector store found with id '{store_id}'.",
                                param="vector_store_id")
            files = [f for (v, _), f in self._store_files.items() if v == store_id]
            counts = {k: sum(1 for f in files if f["status"] == k)
                      for k in ("in_progress", "completed", "failed", "cancelled")}
            busy = counts["in_progress"] > 0
            return {**found, "file_counts": {**counts, "total": len(files)},
                    "status": "in_progress" if busy else "completed",
                    "usage_bytes": sum(f["usage_bytes"] for f in files)}

    async def _create_store(self, request: Request) -> Response:
        body = await self._store_call(request) or {}
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise _invalid("name", "Invalid type for 'name': expected a string.", "invalid_type")
        now = int(time.time())
        store: dict[str, Any] = {"id": _new_id("vs_", 12), "object": "vector_store",
                                 "created_at": now,
                 "name": name or "", "last_active_at": now, "metadata": body.get("metadata") or {},
                 "expires_after": None, "expires_at": None}
        with self._lock:
            self.vector_stores[store["id"]] = store
        for file_id in body.get("file_ids") or []:
            self._attach(store["id"], file_id, {})
        return JSONResponse(self._store(store["id"]))

    async def _get_store(self, request: Request) -> Response:
        await self._store_call(request)
        return JSONResponse(self._store(request.path_params["store_id"]))

    async def _delete_store(self, request: Request) -> Response:
        await self._store_call(request)
        store_id = request.path_params["store_id"]
        self._store(store_id)
        with self._lock:
            self.vector_stores.pop(store_id, None)
            for key in [k for k in self._store_files if k[0] == store_id]:
                del self._store_files[key]
        return JSONResponse({"id": store_id, "object": "vector_store.deleted", "deleted": True})

    def _attach(self, store_id: str, file_id: str, attributes: Any) -> dict[str, Any]:
        self._store(store_id)
        with self._lock:
            stored = self._files.get(file_id)
            if stored is None:
                raise _ApiError(404, f"No file found with id '{file_id}'.", param="file_id")
            entry = {"id": file_id, "object": "vector_store.file", "usage_bytes": 0,
                     "created_at": int(time.time()), "vector_store_id": store_id,
                     "status": "in_progress", "last_error": None,
                     "attributes": attributes if isinstance(attributes, dict) else {},
                     "chunking_strategy": {"type": "static", "static": {
                         "max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}},
                     "_reads": 0,
                     "_filename": stored.meta["filename"], "_size": len(stored.data)}
            self._store_files[(store_id, file_id)] = entry
        return self._advance(entry)

    def _advance(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The file as this read sees it: in_progress for ``processing_reads`` reads (as the
        setting is at each read), then completed (or failed, when its name is in
        :attr:`file_failures`)."""
        with self._lock:
            if entry["status"] == "in_progress":
                if entry["_reads"] < self.processing_reads:
                    entry["_reads"] += 1
                else:
                    failure = self.file_failures.get(entry["_filename"])
                    if failure is not None:
                        entry["status"] = "failed"
                        entry["last_error"] = {"code": failure[0], "message": failure[1]}
                    else:
                        entry["status"] = "completed"
                        entry["usage_bytes"] = entry["_size"]
            return {k: v for k, v in entry.items() if not k.startswith("_")}

    def _store_file(self, request: Request) -> dict[str, Any]:
        store_id, file_id = request.path_params["store_id"], request.path_params["file_id"]
        self._store(store_id)
        with self._lock:
            entry = self._store_files.get((store_id, file_id))
        if entry is None:
            raise _ApiError(404, f"No file found with id '{file_id}' in vector store "
                            f"'{store_id}'.", param="file_id")
        return entry

    async def _add_store_file(self, request: Request) -> Response:
        body = await self._store_call(request) or {}
        file_id = body.get("file_id")
        if not isinstance(file_id, str) or not file_id:
            raise _missing("file_id")
        return JSONResponse(self._attach(request.path_params["store_id"], file_id,
                                         body.get("attributes")))

    async def _list_store_files(self, request: Request) -> Response:
        await self._store_call(request)
        store_id = request.path_params["store_id"]
        self._store(store_id)
        with self._lock:
            entries = [f for (v, _), f in self._store_files.items() if v == store_id]
        data = [self._advance(e) for e in entries]
        return JSONResponse({"object": "list", "data": data, "has_more": False,
                             "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None})

    async def _get_store_file(self, request: Request) -> Response:
        await self._store_call(request)
        return JSONResponse(self._advance(self._store_file(request)))

    async def _delete_store_file(self, request: Request) -> Response:
        await self._store_call(request)
        entry = self._store_file(request)
        with self._lock:
            self._store_files.pop((entry["vector_store_id"], entry["id"]), None)
        return JSONResponse({"id": entry["id"], "object": "vector_store.file.deleted",
                             "deleted": True})

    async def _embeddings(self, request: Request) -> Response:
        body = await self._json_body(request, "embeddings")
        await self._start_turn(request, "embeddings")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise _missing("model")
        given = body.get("input")
        texts = [given] if isinstance(given, str) else given
        if not isinstance(texts, list) or not texts or not all(
            isinstance(t, str) and t for t in texts
        ):
            raise _invalid("input", "'input' must be a non-empty string or array of strings")
        data = []
        for index, text in enumerate(texts):
            vector = self.vectors.get(text) or embedding(text)
            encoded: Any = vector
            if body.get("encoding_format") == "base64":  # the SDK's default: float32, LE
                import base64
                import struct

                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(_token_estimate(t) for t in texts)
        return JSONResponse({"object": "list", "data": data, "model": model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    # ---- admin API, for a server in another process

    async def _admin_script(self, request: Request) -> Response:
        try:
            script = msgspec.json.decode(await request.body(), type=ScriptRequest)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise _invalid("body", str(exc)) from exc
        before = len(self.pending)
        self.script(
            script.reply_text,
            script.faults,
            endpoint=script.endpoint,
            token_delay=script.token_delay,
            calls=script.calls,
            file_search=script.file_search,
        )
        return JSONResponse({"queued": len(self.pending) - before})

    async def _admin_requests(self, request: Request) -> Response:
        endpoint = request.query_params.get("endpoint")
        data = [
            dataclasses.asdict(entry)
            for entry in self.requests
            if endpoint is None or entry.endpoint == endpoint
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _admin_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"ok": True})

    async def _admin_config(self, request: Request) -> Response:
        try:
            config = msgspec.json.decode(await request.body(), type=_ConfigRequest)
        except msgspec.DecodeError as exc:
            raise _invalid("body", str(exc)) from exc
        if config.token_delay is not None:
            self.token_delay = config.token_delay
        return JSONResponse({"token_delay": self.token_delay})


def _cut_json(payload: dict[str, Any]) -> Response:
    """Announce the whole body's length, send half, then drop the connection."""
    data = json.dumps(payload, separators=(",", ":")).encode()

    async def half() -> AsyncIterator[bytes]:
        yield data[: len(data) // 2]
        raise _StreamCut

    return StreamingResponse(
        half(), media_type="application/json", headers={"content-length": str(len(data))}
    )


# --------------------------------------------------------------------------------------------
# Running it


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listening before uvicorn starts means a client that reads our URL can connect at once.
    sock.listen(128)
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _config(app: ASGIApp, **overrides: Any) -> uvicorn.Config:
    options: dict[str, Any] = {"lifespan": "off", "ws": "websockets-sansio"} | overrides
    return uvicorn.Config(app, **options)


@contextmanager
def running(server: OpenAITestServer, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve ``server`` on an unused loopback port in a thread; yield its root URL (add ``/v1``)."""
    sock = _listening_socket(host, 0)
    url = _url(host, sock.getsockname()[1])
    uv = uvicorn.Server(_config(server.app, log_config=None, access_log=False))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    server.closing.clear()
    thread.start()
    try:
        _wait_started(uv, thread)
        yield url
    finally:
        server.closing.set()
        uv.should_exit = True
        thread.join(timeout=20)
        sock.close()
    if thread.is_alive():
        raise RuntimeError("the OpenAI test server did not stop within 20 s")


def _wait_started(uv: uvicorn.Server, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 20
    while not uv.started:
        if not thread.is_alive():
            raise RuntimeError("the OpenAI test server did not start")
        if time.monotonic() > deadline:
            raise TimeoutError("the OpenAI test server did not start within 20 s")
        time.sleep(0.01)


class _ClosingServer(uvicorn.Server):
    """Ends stalls on Ctrl-C / SIGTERM, so shutdown does not wait for them."""

    def __init__(self, config: uvicorn.Config, closing: threading.Event) -> None:
        super().__init__(config)
        self._closing = closing

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._closing.set()
        super().handle_exit(sig, frame)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loacl.openai_testserver",
        description="LOACL's OpenAI-compatible test server (no API key needed). Prints its URL "
        "on stdout; use <URL>/v1 as the OpenAI base URL.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument(
        "--token-delay", type=float, default=0.0, help="seconds between streamed deltas"
    )
    parser.add_argument(
        "--api-key", default=None, help="the only accepted key (default: any non-empty key)"
    )
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    server = OpenAITestServer(api_key=args.api_key, token_delay=args.token_delay)
    sock = _listening_socket(args.host, args.port)
    url = _url(args.host, sock.getsockname()[1])
    # The first stdout line is the URL, for a parent process; the hint is for people.
    print(url, flush=True)
    print(
        f"OpenAI test server: set OPENAI_BASE_URL={url}/v1 and any OPENAI_API_KEY",
        file=sys.stderr,
        flush=True,
    )
    uv = _ClosingServer(_config(server.app, log_level=args.log_level), server.closing)
    uv.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
