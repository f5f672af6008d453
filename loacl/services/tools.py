"""An assistant's HTTP tools: the model's calls checked against their schema, POSTed to the
owner's endpoint signed the Standard Webhooks way, and the bounded answer given back.

Whatever goes wrong (arguments that do not fit the schema, an address that is refused, an
endpoint that fails, is slow or answers too much) becomes an error output for the model, which
can say so or try otherwise; it never ends the reply.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jsonschema
import structlog
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource
from standardwebhooks.webhooks import Webhook

from loacl.domain.assistants import ToolDefinition
from loacl.providers.base import ToolCall
from loacl.services.egress import Outbound, OutboundError, Policy
from loacl.services.tokens import new_id
from loacl.settings import Settings

log = structlog.get_logger(__name__)

# What the log keeps of a call's arguments and output: enough to audit, bounded all the same.
EVENT_CHARS = 16_000


def tool_secret(server_key: bytes, assistant_id: str, generation: int) -> str:
    """The secret that signs an assistant's tool calls, Standard Webhooks' ``whsec_`` form:
    derived from the server key and a generation number, never stored."""
    message = f"assistant-tools:{assistant_id}:{generation}".encode()
    key = hmac.new(server_key, message, hashlib.sha256).digest()
    return "whsec_" + base64.b64encode(key).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,`` and the base64 HMAC-SHA256 of
    ``{id}.{timestamp}.{body}`` keyed with the secret's base64 part."""
    return Webhook(secret).sign(
        message_id, datetime.fromtimestamp(timestamp, UTC), body.decode("utf-8")
    )


def bounded(text: str, limit: int = EVENT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "…[cut]"


@dataclass(frozen=True)
class CallContext:
    """Who a call is made for: sent with the arguments, so the endpoint can answer for the
    right person (``user_id`` only when the site signed the visitor's identity)."""

    assistant_id: str
    conversation_id: str
    message_id: str
    user_id: str | None
    secret: str


@dataclass(frozen=True)
class Outcome:
    status: str  # ok, or an error code
    output: str  # what the model is given
    http_status: int | None = None
    duration_ms: int = 0


def _no_retrieval(uri: str) -> Resource[Any]:
    # A schema's $ref to a URL is never fetched: the owner's schema must not make the server
    # call addresses (the SSRF checks are for tool URLs; this path would skip them).
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]


_REGISTRY: Registry[Any] = Registry(retrieve=_no_retrieval)  # type: ignore[call-arg]


def _error(code: str, message: str, http_status: int | None = None) -> Outcome:
    return Outcome(code, json.dumps({"error": {"code": code, "message": message}}), http_status)


class Tools:
    """Runs tool calls; one connection pool for the app's life (``aclose``)."""

    def __init__(self, settings: Settings, outbound: Outbound | None = None) -> None:
        self.settings = settings
        private = settings.tools_allow_private_networks
        self.outbound = outbound or Outbound(
            Policy(allow_private=private, allow_http=private), user_agent="LOACL-tools"
        )
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def _validator(self, schema: dict[str, Any]) -> jsonschema.protocols.Validator:
        key = json.dumps(schema, sort_keys=True)
        found = self._validators.get(key)
        if found is None:
            cls = jsonschema.validators.validator_for(schema, jsonschema.Draft202012Validator)
            found = self._validators[key] = cls(schema, registry=_REGISTRY)
        return found

    def arguments(self, tool: ToolDefinition, call: ToolCall) -> dict[str, Any] | Outcome:
        """The call's arguments, checked against the tool's schema; or the error output."""
        try:
            value = json.loads(call.arguments or "{}")
        except ValueError:
            return _error("invalid_arguments", "the arguments are not JSON")
        if not isinstance(value, dict):
            return _error("invalid_arguments", "the arguments must be a JSON object")
        if tool.parameters:
            try:
                error = jsonschema.exceptions.best_match(
                    self._validator(tool.parameters).iter_errors(value)
                )
            except Exception as exc:  # a $ref that leads nowhere, found only now
                log.warning("tools.schema_unusable", tool=tool.name, error=repr(exc))
                return _error("invalid_arguments", "the tool's schema could not be applied")
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(root)"
                return _error("invalid_arguments", f"{where}: {error.message}"[:500])
        return value

    async def call(
        self, tool: ToolDefinition, call: ToolCall, context: CallContext, time_left: float
    ) -> Outcome:
        started = time.perf_counter()
        outcome = await self._call(tool, call, context, time_left)
        duration = round((time.perf_counter() - started) * 1000)
        return Outcome(outcome.status, outcome.output, outcome.http_status, duration)

    async def _call(
        self, tool: ToolDefinition, call: ToolCall, context: CallContext, time_left: float
    ) -> Outcome:
        checked = self.arguments(tool, call)
        if isinstance(checked, Outcome):
            return checked
        body = json.dumps({
            "type": "tool.call",
            "tool": tool.name,
            "call_id": call.call_id,
            "arguments": checked,
            "assistant_id": context.assistant_id,
            "conversation_id": context.conversation_id,
            "message_id": context.message_id,
            "user_id": context.user_id,
        }, ensure_ascii=False, separators=(",", ":")).encode()
        message_id, timestamp = "msg_" + new_id(), int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(context.secret, message_id, timestamp, body),
        }
        limit = self.settings.tool_output_bytes
        try:
            answer = await self.outbound.post(
                tool.url, body, headers,
                seconds=max(0.01, min(tool.timeout_ms / 1000, time_left)),
                max_bytes=limit,
            )
        except OutboundError as exc:
            log.info("tools.call_failed", tool=tool.name, code=exc.reason, error=exc.message)
            return _error(exc.reason, exc.message)
        if answer.truncated:
            return _error("too_large", f"the answer is over {limit} bytes")
        if not 200 <= answer.status < 300:
            return _error("http_error", f"the endpoint answered HTTP {answer.status}",
                          answer.status)
        try:
            text = answer.body.decode("utf-8")
            json.loads(text or "null")
        except ValueError:
            return _error("invalid_response", "the endpoint's answer is not JSON",
                          answer.status)
        return Outcome("ok", text, answer.status)

    async def run(
        self, tools: dict[str, ToolDefinition], calls: list[ToolCall], context: CallContext,
        time_left: float,
    ) -> list[Outcome]:
        """Every call of one round, at once; outcomes in the calls' order."""
        async def one(call: ToolCall) -> Outcome:
            tool = tools.get(call.name)
            if tool is None:
                return _error("unknown_tool", f"there is no tool {call.name!r}")
            return await self.call(tool, call, context, time_left)

        return list(await asyncio.gather(*(one(c) for c in calls)))

    async def aclose(self) -> None:
        await self.outbound.aclose()
