"""Outgoing webhooks: the endpoints owners keep, and the deliveries to them.

From the log to a receiver, in three steps:

1. ``outbox`` is a durable subscriber (an ``Effect``) of the conversation events. For each, it
   adds a delivery row per enabled endpoint of the conversation's owner that asked for that
   kind. A batch handed over again after a crash adds nothing twice: a delivery's message id
   (``msg_<seq>_<endpoint>``) is unique.
2. ``Dispatcher`` sends what is due, oldest first; of one endpoint and one conversation only the
   oldest pending delivery at a time, so a receiver sees a conversation's events in order. With
   the log in PostgreSQL the deliveries are there, and every instance's dispatcher sends, each
   claiming what it is about to send (``store.postgres.operational``). A
   failed attempt (no answer, or a status outside 2xx) is retried after an exponential delay
   with jitter, until ``webhook_retry_hours`` after it was first due; then it is given up.
3. After ``webhook_disable_after`` failed attempts in a row the endpoint is disabled (an event)
   and its owner told by mail.

Each message is signed as Standard Webhooks says (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``), with the endpoint's secret and, for a day after a rotation, with the one
before too. The same ``webhook-id`` goes with every attempt: a receiver de-duplicates by it. A
delivery is marked done only after the receiver answered, so LOACL stopping in between sends it
again: duplicates only then, and with the same id.

The payload is built when it is sent, from the log: the ids always, the message texts and the
visitor's ids only to an endpoint that takes personal data. Nothing personal is kept in the
delivery table, so erasing a conversation leaves none behind there.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import functools
import hashlib
import hmac
import json
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from standardwebhooks.webhooks import Webhook as Signer

from loacl.domain import webhooks as domain
from loacl.domain.conversations import AssistantCompleted, AssistantFailed, MessagePosted
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata, RecordedEvent
from loacl.domain.handoff import CLOSED, WAITING, ConversationStateChanged
from loacl.domain.privacy import OWNER, is_erased, subject
from loacl.domain.widgets import ConversationStarted
from loacl.domain.workspaces import MemberJoined, MemberRemoved, MemberRoleChanged
from loacl.services.egress import Outbound, Policy, check_url
from loacl.services.mail import Mailer
from loacl.services.tokens import new_id
from loacl.services.versions import expect_version
from loacl.settings import Settings
from loacl.store.codec import format_time, parse_time
from loacl.store.eventstore import NO_STREAM, Clock, EventStore, utc_now
from loacl.store.operational import DeliveryTable
from loacl.store.records import EVENT_COLUMNS, decode_rows
from loacl.store.subscriptions import Effect
from loacl.store.views import Page
from loacl.store.views import webhooks as views
from loacl.store.views import workspaces as workspace_views
from loacl.store.views.webhooks import Delivery, NewDelivery, SqliteDeliveries, WebhookView

log = structlog.get_logger(__name__)

OUTBOX = "webhooks.outbox"
# The log's event types and the kinds an endpoint subscribes to.
SOURCES = {
    ConversationStarted.event_type: "conversation.started",
    MessagePosted.event_type: "message.posted",
    AssistantCompleted.event_type: "reply.completed",
    AssistantFailed.event_type: "reply.failed",
    MemberJoined.event_type: "member.changed",
    MemberRoleChanged.event_type: "member.changed",
    MemberRemoved.event_type: "member.changed",
    ConversationStateChanged.event_type: "",  # by the new state: see _kind
}
MEMBER = "member.changed"
# A state change is news to a webhook when the conversation starts waiting or is closed.
_STATE_KINDS = {WAITING: "handoff.requested", CLOSED: "conversation.closed"}


def _kind(recorded: RecordedEvent) -> str | None:
    event = recorded.event
    if isinstance(event, ConversationStateChanged):
        return _STATE_KINDS.get(event.state)
    return SOURCES[recorded.type]


TEST = "webhook.test"
ROTATION_GRACE = timedelta(days=1)  # the secret before a rotation still signs this long
BACKOFF_CAP = 3600.0
IDLE = 30.0  # seconds between looks when nothing is due and nothing woke the dispatcher


def policy_of(settings: Settings) -> Policy:
    return Policy(allow_private=settings.outbound_allow_private,
                  allow_http=settings.outbound_allow_http,
                  timeout=settings.outbound_timeout_seconds)


def retry_delay(attempts: int, base: float, jitter: float) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: doubling from ``base``
    up to an hour, the second half of it at random (``jitter`` in [0, 1)) so that endpoints
    that failed together are not all retried together."""
    delay = min(BACKOFF_CAP, base * 2 ** min(attempts - 1, 30))
    return float(delay / 2 + delay / 2 * jitter)


def _conversation_of(recorded: RecordedEvent) -> str:
    event = recorded.event
    if isinstance(event, ConversationStarted | MessagePosted):
        return event.conversation_id
    return recorded.stream.removeprefix("conversation-")


class Webhooks:
    """The owner's side: register, list, change, rotate, delete, test; the delivery log."""

    def __init__(
        self, store: EventStore, settings: Settings, server_key: str, mailer: Mailer,
        clock: Clock = utc_now, table: DeliveryTable | None = None,
    ) -> None:
        self.store = store
        # The deliveries: in the store's file, or in PostgreSQL with the log (http.app).
        self.table: DeliveryTable = table if table is not None else SqliteDeliveries(store)
        self.settings = settings
        self._server_key = server_key.encode()
        self.mailer = mailer
        self.clock = clock
        self.policy = policy_of(settings)
        self.outbound = Outbound(self.policy)
        self.wake = asyncio.Event()  # set when there may be something to send

    # -- secrets -----------------------------------------------------------------------------

    def secret(self, webhook_id: str, generation: int) -> str:
        """Derived, never stored: the log keeps only the generation number."""
        digest = hmac.new(self._server_key, f"webhook-secret:{webhook_id}:{generation}".encode(),
                          hashlib.sha256).digest()
        return "whsec_" + base64.b64encode(digest[:24]).decode()

    def signing_secrets(self, view: WebhookView, now: datetime) -> list[str]:
        secrets = [self.secret(view.webhook_id, view.secret_generation)]
        if view.rotated_at is not None and now - parse_time(view.rotated_at) < ROTATION_GRACE:
            secrets.append(self.secret(view.webhook_id, view.secret_generation - 1))
        return secrets

    # -- endpoints ---------------------------------------------------------------------------

    async def _load(self, webhook_id: str) -> tuple[domain.Webhook, int]:
        return await self.store.load(
            domain.webhook_stream(webhook_id), domain.Webhook(), domain.evolve_webhook
        )

    def _checked(self, definition: domain.WebhookDefinition) -> domain.WebhookDefinition:
        check_url(definition.url, self.policy)
        return definition

    async def get(self, owner_id: str, webhook_id: str) -> WebhookView:
        found = await views.webhook(self.store, webhook_id)
        if found is None or found.owner_id != owner_id:
            raise LoaclError("not_found", "no such webhook")
        return found

    async def list(self, owner_id: str, after: int, limit: int) -> Page[WebhookView]:
        return await views.webhooks_of(self.store, owner_id, after, limit)

    async def create(
        self, owner_id: str, definition: domain.WebhookDefinition, meta: Metadata
    ) -> WebhookView:
        webhook_id = "wh_" + new_id()
        events = domain.create_webhook(domain.Webhook(), webhook_id=webhook_id,
                                       owner_id=owner_id, definition=self._checked(definition))
        await self.store.append(domain.webhook_stream(webhook_id), events,
                                expected_version=NO_STREAM, metadata=meta,
                                subject=subject(OWNER, owner_id))
        return await self.get(owner_id, webhook_id)

    async def update(
        self, owner_id: str, webhook_id: str, definition: domain.WebhookDefinition,
        if_match: int | None, meta: Metadata,
    ) -> WebhookView:
        state, version = await self._load(webhook_id)
        events = domain.update_webhook(state, owner_id, self._checked(definition))
        expect_version("webhook", version, if_match)
        await self.store.append(domain.webhook_stream(webhook_id), events,
                                expected_version=version, metadata=meta,
                                subject=subject(OWNER, owner_id))
        if events and definition.enabled:  # on again: its past failures are forgotten
            await self.table.forget_failures(webhook_id)
            self.wake.set()
        return await self.get(owner_id, webhook_id)

    async def rotate_secret(
        self, owner_id: str, webhook_id: str, if_match: int | None, meta: Metadata
    ) -> WebhookView:
        state, version = await self._load(webhook_id)
        events = domain.rotate_secret(state, owner_id)
        expect_version("webhook", version, if_match)
        await self.store.append(domain.webhook_stream(webhook_id), events,
                                expected_version=version, metadata=meta,
                                subject=subject(OWNER, owner_id))
        return await self.get(owner_id, webhook_id)

    async def delete(
        self, owner_id: str, webhook_id: str, if_match: int | None, meta: Metadata
    ) -> None:
        state, version = await self._load(webhook_id)
        events = domain.delete_webhook(state, owner_id)
        expect_version("webhook", version, if_match)
        await self.store.append(domain.webhook_stream(webhook_id), events,
                                expected_version=version, metadata=meta,
                                subject=subject(OWNER, owner_id))

    async def disable(self, webhook_id: str, failures: int) -> bool:
        """LOACL turns the endpoint off after a run of failures, and tells its owner; False
        when it was off (or gone) already."""
        state, version = await self._load(webhook_id)
        events = domain.disable_webhook(state, domain.FAILURES, failures)
        if not events:
            return False
        try:
            await self.store.append(domain.webhook_stream(webhook_id), events,
                                    expected_version=version,
                                    metadata=Metadata(actor="loacl"),
                                    subject=subject(OWNER, state.owner_id))
        except LoaclError as exc:
            if exc.code == "version_conflict":  # changed meanwhile: decided again next time
                return False
            raise
        log.warning("webhook.disabled", webhook_id=webhook_id, failures=failures)
        await self._mail_disabled(state, failures)
        return True

    async def _mail_disabled(self, state: domain.Webhook, failures: int) -> None:
        # The workspace's owners (owner_id is the workspace's id).
        addresses = await workspace_views.owner_emails(self.store, state.owner_id)
        if not addresses or state.definition is None:
            return
        body = (
            f"LOACL stopped sending events to your webhook {state.webhook_id}\n"
            f"({state.definition.url}) after {failures} failed deliveries in a row.\n\n"
            "Its deliveries and their errors are at GET /api/v1/webhooks/"
            f"{state.webhook_id}/deliveries.\nOnce the endpoint answers again, turn it back on "
            f"with PATCH /api/v1/webhooks/{state.webhook_id} {{\"enabled\": true}}; what was "
            "not delivered is then sent, and each delivery can be sent again by hand.\n"
        )
        for address in addresses:
            with contextlib.suppress(Exception):  # kept in the outbox when it fails
                await self.mailer.deliver(
                    address, "LOACL: a webhook endpoint was disabled", body,
                    f"<webhook.{state.webhook_id}.disabled.{failures}@loacl>",
                )

    # -- messages ----------------------------------------------------------------------------

    def _window(self) -> tuple[str, str]:
        now = self.clock()
        until = now + timedelta(hours=self.settings.webhook_retry_hours)
        return format_time(now), format_time(until)

    async def enqueue(self, deliveries: Sequence[NewDelivery]) -> int:
        if not deliveries:
            return 0
        now, until = self._window()
        added = await self.table.enqueue(deliveries, now, until)
        self.wake.set()
        return added

    async def send_test(self, owner_id: str, webhook_id: str) -> Delivery:
        view = await self.get(owner_id, webhook_id)
        message_id = "msg_test_" + new_id()
        payload = {"type": TEST, "timestamp": format_time(self.clock()),
                   "data": {"webhook_id": view.webhook_id,
                            "message": "a test event from LOACL"}}
        await self.enqueue([NewDelivery(message_id, webhook_id, TEST, 0, message_id,
                                        json.dumps(payload))])
        found = await self.table.by_message(message_id)
        assert found is not None, "enqueued just now"
        return found

    async def budget_reached(
        self, owner_id: str, widget_id: str, period: str, key: str,
        measures: builtins.list[str],
    ) -> None:
        """A widget used up a budget (once per widget, period and key)."""
        found = (await views.listeners(self.store, [owner_id])).get(owner_id, [])
        kind = "budget.reached"
        payload = json.dumps({"type": kind, "timestamp": format_time(self.clock()),
                              "data": {"widget_id": widget_id, "period": period,
                                       "period_key": key, "measures": measures}})
        await self.enqueue([
            NewDelivery(f"msg_budget_{widget_id}_{key}_{listener.webhook_id}",
                        listener.webhook_id, kind, 0, f"budget:{widget_id}", payload)
            for listener in found if kind in listener.event_types
        ])

    async def deliveries(
        self, owner_id: str, webhook_id: str, after: int, limit: int
    ) -> Page[Delivery]:
        await self.get(owner_id, webhook_id)
        return await self.table.deliveries_of(webhook_id, after, limit)

    async def delivery(self, owner_id: str, webhook_id: str, delivery_id: int) -> Delivery:
        await self.get(owner_id, webhook_id)
        found = await self.table.delivery(webhook_id, delivery_id)
        if found is None:
            raise LoaclError("not_found", "no such delivery")
        return found

    async def redeliver(self, owner_id: str, webhook_id: str, delivery_id: int) -> Delivery:
        found = await self.delivery(owner_id, webhook_id, delivery_id)
        now, until = self._window()
        await self.table.redeliver(found.delivery_id, now, until)
        self.wake.set()
        return await self.delivery(owner_id, webhook_id, delivery_id)

    # -- the outbox: a durable subscriber of the log ------------------------------------------

    def subscriber(self) -> Effect:
        return Effect(OUTBOX, self.handle, types=frozenset(SOURCES))

    async def handle(self, events: Sequence[RecordedEvent]) -> None:
        members = [r for r in events if SOURCES[r.type] == MEMBER]
        if members:
            await self._member_changes(members)
            events = [r for r in events if SOURCES[r.type] != MEMBER]
            if not events:
                return
        owners = await views.conversation_owners(
            self.store, list(dict.fromkeys(_conversation_of(r) for r in events)))
        listening = await views.listeners(
            self.store, list({o.owner_id for o in owners.values() if o.owner_id}))
        created = await self._created(listening)
        new: builtins.list[NewDelivery] = []
        for recorded in events:
            conversation_id = _conversation_of(recorded)
            owner = owners.get(conversation_id)
            if owner is None or owner.owner_id is None:
                continue
            kind = _kind(recorded)
            if kind is None:
                continue
            for listener in listening.get(owner.owner_id, ()):
                # An endpoint hears of what happened after it was registered, never before.
                if kind in listener.event_types and recorded.seq > created[listener.webhook_id]:
                    new.append(NewDelivery(f"msg_{recorded.seq}_{listener.webhook_id}",
                                           listener.webhook_id, kind, recorded.seq,
                                           conversation_id))
        await self.enqueue(new)

    async def _member_changes(self, events: Sequence[RecordedEvent]) -> None:
        """A workspace's member changes, to its endpoints (ids and roles: no personal data),
        one after another per workspace."""
        workspaces = list(dict.fromkeys(r.stream.removeprefix("workspace-") for r in events))
        listening = await views.listeners(self.store, workspaces)
        created = await self._created(listening)
        new: builtins.list[NewDelivery] = []
        for recorded in events:
            event = recorded.event
            assert isinstance(event, MemberJoined | MemberRoleChanged | MemberRemoved)
            change = {MemberJoined: "joined", MemberRoleChanged: "role_changed",
                      MemberRemoved: "removed"}[type(event)]
            data = {"workspace_id": event.workspace_id, "account_id": event.user_id,
                    "change": change,
                    "role": None if isinstance(event, MemberRemoved) else event.role,
                    "reason": event.reason if isinstance(event, MemberRemoved) else None}
            payload = json.dumps({"type": MEMBER, "timestamp": format_time(recorded.recorded_at),
                                  "data": data}, separators=(",", ":"))
            for listener in listening.get(event.workspace_id, ()):
                if MEMBER in listener.event_types and recorded.seq > created[listener.webhook_id]:
                    new.append(NewDelivery(f"msg_{recorded.seq}_{listener.webhook_id}",
                                           listener.webhook_id, MEMBER, recorded.seq,
                                           f"workspace:{event.workspace_id}", payload))
        await self.enqueue(new)

    async def _created(
        self, listening: dict[str, builtins.list[views.Listener]]
    ) -> dict[str, int]:
        ids = [listener.webhook_id for found in listening.values() for listener in found]
        if not ids:
            return {}
        rows = await self.store.query(
            f"SELECT webhook_id, created_seq FROM webhooks WHERE webhook_id IN "
            f"({','.join('?' * len(ids))})", ids)
        return {r[0]: int(r[1]) for r in rows}

    # -- payloads ----------------------------------------------------------------------------

    async def payload(self, delivery: Delivery, view: WebhookView) -> str | None:
        """The body to send; None when the event is not in this store (yet: a copy behind)."""
        if delivery.payload is not None:
            return delivery.payload
        rows = await self.store.query(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq = ?", (delivery.source_seq,))
        if not rows:
            return None
        recorded = decode_rows(rows, self.store.keyring)[0]
        owner = (await views.conversation_owners(self.store, [delivery.ordering_key])).get(
            delivery.ordering_key)
        data = _data(recorded, delivery.ordering_key, owner, view.definition.personal_data)
        return json.dumps({"type": delivery.event_type,
                           "timestamp": format_time(recorded.recorded_at), "data": data},
                          ensure_ascii=False, separators=(",", ":"))

    async def aclose(self) -> None:
        await self.outbound.aclose()


def _text(value: Any) -> dict[str, Any]:
    if is_erased(value) or value == "[erased]":
        return {"text": None, "erased": True}
    return {"text": value}


def _data(
    recorded: RecordedEvent, conversation_id: str, owner: views.ConversationOwner | None,
    personal: bool,
) -> dict[str, Any]:
    event = recorded.event
    data: dict[str, Any] = {"conversation_id": conversation_id,
                            "widget_id": owner.widget_id if owner else None}
    if personal and owner is not None:
        data["visitor_id"] = owner.visitor_id
    if isinstance(event, MessagePosted):
        data |= {"message_id": event.message_id, "file_ids": list(event.file_ids)}
        if personal:
            data |= _text(event.text)
    elif isinstance(event, AssistantCompleted):
        data |= {"message_id": event.message_id,
                 "usage": {"input_tokens": event.usage.input_tokens,
                           "output_tokens": event.usage.output_tokens}}
        if personal:
            data |= _text(event.text)
    elif isinstance(event, AssistantFailed):
        data |= {"message_id": event.message_id, "code": event.code}
        if personal:
            data |= _text(event.text)
    elif isinstance(event, ConversationStateChanged):
        data |= {"state": event.state, "previous": event.previous, "by": event.by,
                 "cause": event.cause}
        if personal:  # the reason may repeat the visitor's words
            data["reason"] = None if is_erased(event.reason) else event.reason
    return data


class Dispatcher:
    """Sends due deliveries while the server runs (one task, a bounded number of sends at
    once)."""

    def __init__(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks
        self.store = webhooks.store
        self.table = webhooks.table
        self.settings = webhooks.settings
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._concurrency = self.settings.webhook_concurrency

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        """Sends cut short here are pending still, and go again after the restart (or at once
        from another instance, their claims given back)."""
        tasks = [t for t in (self._task, *self._inflight.values()) if t is not None]
        cut = list(self._inflight)
        self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        # Given back, so that another instance sends them now rather than when their claim
        # would run out (store.postgres.operational; nothing to do in SQLite).
        with contextlib.suppress(Exception):
            await self.table.release(cut)

    async def _run(self) -> None:
        wake = self.webhooks.wake
        while True:
            wake.clear()
            try:
                wait = await self._dispatch()
            except LoaclError as exc:
                if exc.code == "store_closed":
                    return
                log.warning("webhook.dispatch_failed", error=exc.message)
                wait = 1.0
            except Exception:
                log.exception("webhook.dispatch_failed")
                wait = 1.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await wake.wait()

    async def _dispatch(self) -> float:
        """Start what is due; seconds until the next look."""
        now = self.webhooks.clock()
        room = self._concurrency - len(self._inflight)
        if room > 0:
            for delivery in await self.table.due(format_time(now), list(self._inflight), room):
                task = asyncio.create_task(self._attempt(delivery),
                                           name=f"webhook-{delivery.delivery_id}")
                self._inflight[delivery.delivery_id] = task
                task.add_done_callback(functools.partial(self._done, delivery.delivery_id))
        upcoming = await self.table.next_due(format_time(now))
        if upcoming is None:
            return IDLE
        return min(IDLE, max(0.01, (parse_time(upcoming) - now).total_seconds()))

    def _done(self, delivery_id: int, _task: object = None) -> None:
        self._inflight.pop(delivery_id, None)
        self.webhooks.wake.set()

    async def _attempt(self, delivery: Delivery) -> None:
        # At most ``webhook_concurrency`` of these run: ``_dispatch`` starts no more.
        try:
            await self._send(delivery)
        except LoaclError as exc:
            if exc.code != "store_closed":
                log.warning("webhook.attempt_failed", delivery_id=delivery.delivery_id,
                            error=exc.message)
        except Exception:
            log.exception("webhook.attempt_crashed", delivery_id=delivery.delivery_id)

    async def _send(self, delivery: Delivery) -> None:
        webhooks = self.webhooks
        view = await views.webhook(self.store, delivery.webhook_id)
        if view is None or not view.definition.enabled:
            await self.table.release([delivery.delivery_id])
            return
        body = await webhooks.payload(delivery, view)
        if body is None:
            # Enqueued by another instance, of an event this copy has not got yet: in a
            # moment it has (store.postgres.upstream).
            soon = webhooks.clock() + timedelta(seconds=1)
            await self.table.release([delivery.delivery_id], format_time(soon))
            return
        now = webhooks.clock()
        headers = {
            "webhook-id": delivery.message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": " ".join(
                Signer(secret).sign(delivery.message_id, now, body)
                for secret in webhooks.signing_secrets(view, now)),
        }
        status: int | None = None
        latency: float | None = None
        error: str | None = None
        try:
            answer = await webhooks.outbound.post(view.definition.url, body.encode(), headers)
            status, latency = answer.status, round(answer.seconds * 1000, 2)
            if not 200 <= status < 300:
                error = f"the endpoint answered {status}"
        except LoaclError as exc:
            if exc.code not in ("outbound_failed", "url_not_allowed"):
                raise
            error = exc.message
        done = webhooks.clock()
        if error is None:
            outcome = views.Outcome("delivered", status, latency, None, format_time(done))
        else:
            delay = retry_delay(delivery.attempts + 1, self.settings.webhook_retry_base_seconds,
                                random.random())
            retry_at = done + timedelta(seconds=delay)
            gave_up = format_time(retry_at) > delivery.retry_until
            outcome = views.Outcome("failed" if gave_up else "pending", status, latency, error,
                                    format_time(retry_at))
        failures = await self.table.record_attempt(delivery.delivery_id, delivery.webhook_id,
                                                   outcome, format_time(done))
        log.info("webhook.attempt", delivery_id=delivery.delivery_id, status=outcome.status,
                 response=status, error=error)
        if error is not None and failures >= self.settings.webhook_disable_after:
            await webhooks.disable(delivery.webhook_id, failures)
