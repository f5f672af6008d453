"""Outgoing webhooks: endpoints an owner registers to hear of conversations as they happen.

What is a fact in the log and what is not: an endpoint's registration, each change to it, each
secret rotation, its disabling (by hand or after a run of failed deliveries) and its deletion
are events (``webhook.*``), because they are decisions someone (or LOACL on the owner's behalf)
made, that an audit must be able to show and replay must rebuild. The deliveries themselves
(each attempt, its response code and latency, the retry schedule) are operational state in
tables (``webhook_deliveries``, ``webhook_health``): they are many, they change in place, they
are about another system's availability rather than about LOACL's data, and the log already
holds the events they carry. Losing those tables loses the delivery log, never a fact.

Secrets never enter the log: an endpoint's secret is derived from the server key, the
endpoint's id and its ``secret_generation``, which the log keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from loacl.domain.errors import LoaclError
from loacl.domain.events import Event

# What an endpoint may subscribe to, and what each means.
KINDS: dict[str, str] = {
    "conversation.started": "a visitor started a conversation",
    "message.posted": "a visitor posted a message",
    "reply.completed": "the assistant's reply ended whole",
    "reply.failed": "the assistant's reply failed",
    "budget.reached": "a widget used up a daily or monthly budget",
    "member.changed": "a workspace member joined, changed role, or was removed (or left)",
    "handoff.requested": "the visitor or the assistant asked for a person: the conversation "
                         "waits for one",
    "conversation.closed": "a member closed a conversation",
}
# Kinds an endpoint may subscribe to before LOACL sends them (none at present).
RESERVED_KINDS: dict[str, str] = {
}
ALL_KINDS = (*KINDS, *RESERVED_KINDS)
MAX_URL = 2000
FAILURES = "failures"  # why an endpoint was disabled: its deliveries kept failing


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookDefinition:
    url: str
    event_types: tuple[str, ...]
    personal_data: bool = False  # message texts and visitor ids in payloads
    enabled: bool = True
    description: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookCreated(Event):
    event_type = "webhook.created"
    webhook_id: str
    owner_id: str
    definition: WebhookDefinition
    not_personal = ("webhook_id", "owner_id", "definition")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookUpdated(Event):
    event_type = "webhook.updated"
    webhook_id: str
    definition: WebhookDefinition
    not_personal = ("webhook_id", "definition")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSecretRotated(Event):
    event_type = "webhook.secret_rotated"
    webhook_id: str
    generation: int
    not_personal = ("webhook_id",)


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookDisabled(Event):
    """LOACL turned the endpoint off: ``failures`` deliveries in a row failed."""

    event_type = "webhook.disabled"
    webhook_id: str
    reason: str
    failures: int = 0
    not_personal = ("webhook_id", "reason")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookDeleted(Event):
    event_type = "webhook.deleted"
    webhook_id: str
    not_personal = ("webhook_id",)


def webhook_stream(webhook_id: str) -> str:
    return f"webhook-{webhook_id}"


@dataclass(frozen=True, slots=True)
class Webhook:
    webhook_id: str = ""
    owner_id: str = ""
    definition: WebhookDefinition | None = None
    secret_generation: int = 0
    deleted: bool = False

    @property
    def exists(self) -> bool:
        return self.definition is not None and not self.deleted


def evolve_webhook(state: Webhook, event: Event) -> Webhook:
    match event:
        case WebhookCreated():
            return Webhook(event.webhook_id, event.owner_id, event.definition, 1)
        case WebhookUpdated():
            return replace(state, definition=event.definition)
        case WebhookSecretRotated():
            return replace(state, secret_generation=event.generation)
        case WebhookDisabled() if state.definition is not None:
            return replace(state, definition=replace(state.definition, enabled=False))
        case WebhookDeleted():
            return replace(state, deleted=True)
    return state


def checked(definition: WebhookDefinition) -> WebhookDefinition:
    """The definition with its event types in canonical order, or ``validation_error``."""
    types = tuple(dict.fromkeys(definition.event_types))
    unknown = [t for t in types if t not in ALL_KINDS]
    if unknown or not types:
        message = (f"unknown event types: {', '.join(unknown)}" if unknown
                   else "name at least one event type")
        raise LoaclError("validation_error", message,
                         errors=[{"field": "event_types", "message": message,
                                  "accepted": list(ALL_KINDS)}])
    if len(definition.url) > MAX_URL:
        raise LoaclError("validation_error", "the URL is too long",
                         errors=[{"field": "url", "message": "too long"}])
    return replace(definition, event_types=tuple(sorted(types)))


def _owned(state: Webhook, owner_id: str) -> WebhookDefinition:
    if not state.exists or state.owner_id != owner_id or state.definition is None:
        raise LoaclError("not_found", "no such webhook")
    return state.definition


def create_webhook(
    state: Webhook, *, webhook_id: str, owner_id: str, definition: WebhookDefinition
) -> list[Event]:
    if state.definition is not None:
        raise LoaclError("conflict", "the webhook exists")
    return [WebhookCreated(webhook_id=webhook_id, owner_id=owner_id,
                           definition=checked(definition))]


def update_webhook(state: Webhook, owner_id: str, definition: WebhookDefinition) -> list[Event]:
    current = _owned(state, owner_id)
    new = checked(definition)
    return [] if new == current else [WebhookUpdated(webhook_id=state.webhook_id,
                                                     definition=new)]


def rotate_secret(state: Webhook, owner_id: str) -> list[Event]:
    _owned(state, owner_id)
    return [WebhookSecretRotated(webhook_id=state.webhook_id,
                                 generation=state.secret_generation + 1)]


def disable_webhook(state: Webhook, reason: str, failures: int) -> list[Event]:
    """LOACL's own decision: nothing when the endpoint is gone or off already."""
    if not state.exists or state.definition is None or not state.definition.enabled:
        return []
    return [WebhookDisabled(webhook_id=state.webhook_id, reason=reason, failures=failures)]


def delete_webhook(state: Webhook, owner_id: str) -> list[Event]:
    _owned(state, owner_id)
    return [WebhookDeleted(webhook_id=state.webhook_id)]
