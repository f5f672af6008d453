"""Widgets, their embed code, and visitor access (public config and visitor sessions)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from typing import Any

from loacl.domain import widgets as domain
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.domain.origins import origin_allowed
from loacl.domain.privacy import OWNER, subject
from loacl.services.limits import VisitorLimits
from loacl.services.tokens import Tokens, new_id
from loacl.services.versions import expect_version
from loacl.store.eventstore import NO_STREAM, EventStore
from loacl.store.views import Page
from loacl.store.views import assistants as assistant_views
from loacl.store.views import conversations as conversation_views
from loacl.store.views import widgets as views
from loacl.store.views.widgets import WidgetView

VISITOR_TOKEN_DAYS = 30


class Widgets:
    def __init__(
        self, store: EventStore, tokens: Tokens, server_key: str,
        limits: VisitorLimits | None = None,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self._server_key = server_key.encode()
        self.limits = limits  # None: sessions unlimited (tools that start none)

    # -- owners -----------------------------------------------------------------------------

    def identity_secret(self, widget_id: str, generation: int) -> str:
        """Derived, never stored: the log keeps only the generation number."""
        message = f"widget-identity:{widget_id}:{generation}".encode()
        return "whs_" + hmac.new(self._server_key, message, hashlib.sha256).hexdigest()

    async def _load(self, widget_id: str) -> tuple[domain.Widget, int]:
        return await self.store.load(
            domain.widget_stream(widget_id), domain.Widget(), domain.evolve_widget
        )

    async def get(self, owner_id: str, widget_id: str) -> WidgetView:
        found = await views.widget(self.store, widget_id)
        if found is None or found.owner_id != owner_id:
            raise LoaclError("not_found", "no such widget")
        return found

    async def list(self, owner_id: str, after: int, limit: int) -> Page[WidgetView]:
        return await views.widgets_of(self.store, owner_id, after, limit)

    async def _check_assistant(self, owner_id: str, assistant_id: str) -> None:
        found = await assistant_views.assistant(self.store, assistant_id)
        if found is None or found.owner_id != owner_id:
            raise LoaclError(
                "unknown_assistant", f"you have no assistant {assistant_id!r}",
                errors=[{"field": "assistant_id", "message": "unknown assistant"}],
            )

    async def create(
        self, owner_id: str, definition: domain.WidgetDefinition, meta: Metadata
    ) -> WidgetView:
        widget_id = new_id()
        events = domain.create_widget(widget_id, owner_id, definition)
        await self._check_assistant(owner_id, definition.assistant_id)
        await self.store.append(
            domain.widget_stream(widget_id), events, expected_version=NO_STREAM, metadata=meta,
            subject=subject(OWNER, owner_id),
        )
        return await self.get(owner_id, widget_id)

    async def update(
        self, owner_id: str, widget_id: str, definition: domain.WidgetDefinition,
        if_match: int | None, meta: Metadata,
    ) -> WidgetView:
        state, version = await self._load(widget_id)
        events = domain.update_widget(state, owner_id, definition)
        expect_version("widget", version, if_match)
        await self._check_assistant(owner_id, definition.assistant_id)
        await self.store.append(
            domain.widget_stream(widget_id), events, expected_version=version, metadata=meta,
            subject=subject(OWNER, owner_id),
        )
        return await self.get(owner_id, widget_id)

    async def rotate_secret(
        self, owner_id: str, widget_id: str, if_match: int | None, meta: Metadata
    ) -> WidgetView:
        state, version = await self._load(widget_id)
        events = domain.rotate_secret(state, owner_id)
        expect_version("widget", version, if_match)
        await self.store.append(
            domain.widget_stream(widget_id), events, expected_version=version, metadata=meta,
            subject=subject(OWNER, owner_id),
        )
        return await self.get(owner_id, widget_id)

    async def delete(
        self, owner_id: str, widget_id: str, if_match: int | None, meta: Metadata
    ) -> None:
        state, version = await self._load(widget_id)
        events = domain.delete_widget(state, owner_id)
        expect_version("widget", version, if_match)
        await self.store.append(
            domain.widget_stream(widget_id), events, expected_version=version, metadata=meta,
            subject=subject(OWNER, owner_id),
        )

    # -- visitors ---------------------------------------------------------------------------

    async def public(self, widget_id: str, origin: str | None) -> WidgetView:
        """The enabled widget as a visitor may see it, if ``origin`` may embed it."""
        widget = await views.widget(self.store, widget_id)
        if widget is None or not widget.definition.enabled:
            raise LoaclError("widget_not_found", "no such widget")
        if not origin_allowed(origin, widget.definition.allowed_origins):
            raise LoaclError(
                "origin_not_allowed",
                "this site is not allowed to embed this widget; its owner can add "
                f"{origin or 'the site'} to the widget's allowed origins",
            )
        return widget

    async def start_session(
        self, widget_id: str, origin: str | None, *, user_id: str | None,
        user_hash: str | None, visitor_token: str | None, meta: Metadata,
    ) -> dict[str, Any]:
        widget = await self.public(widget_id, origin)
        if user_id is not None or user_hash is not None:
            secret = self.identity_secret(widget_id, widget.secret_generation)
            expected = hmac.new(secret.encode(), (user_id or "").encode(), hashlib.sha256)
            # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError).
            if not user_id or not user_hash or not hmac.compare_digest(
                expected.hexdigest().encode(), user_hash.lower().encode()
            ):
                raise LoaclError("invalid_identity", "user_hash does not match user_id")
            return await self._identified_session(
                widget_id, user_id, widget.secret_generation, meta
            )
        if widget.definition.require_identity:
            raise LoaclError(
                "identity_required", "this widget only talks to signed-in users of its site"
            )
        if visitor_token:
            try:
                claims = self.read_visitor_token(visitor_token, widget_id)
            except LoaclError:
                pass  # a stale token from another widget or an old key: start afresh
            else:
                if claims.get("uid") is None and not await conversation_views.erased(
                    self.store, str(claims["cid"])
                ):
                    return self._session_json(
                        widget_id, str(claims["sub"]), str(claims["cid"]), None
                    )
        # Only a new anonymous visitor counts: a returning one brings its token, and a signed-in
        # user has one conversation per widget however often it asks.
        if self.limits is not None:
            self.limits.new_session(meta.client_ip)
        visitor_id = new_id()
        conversation_id = new_id()
        await self.store.append(
            domain.conversation_stream(conversation_id),
            [domain.ConversationStarted(
                conversation_id=conversation_id, widget_id=widget_id, visitor_id=visitor_id,
            )],
            expected_version=NO_STREAM, metadata=meta,
        )
        return self._session_json(widget_id, visitor_id, conversation_id, None)

    async def _identified_session(
        self, widget_id: str, user_id: str, generation: int, meta: Metadata
    ) -> dict[str, Any]:
        found = await conversation_views.conversation_of_user(self.store, widget_id, user_id)
        if found is not None:
            return self._session_json(
                widget_id, found.visitor_id, found.conversation_id, user_id, generation
            )
        visitor_id, conversation_id = new_id(), new_id()
        try:
            await self.store.append(
                domain.conversation_stream(conversation_id),
                [domain.ConversationStarted(
                    conversation_id=conversation_id, widget_id=widget_id,
                    visitor_id=visitor_id, external_user_id=user_id,
                )],
                expected_version=NO_STREAM, metadata=meta,
            )
        except LoaclError as exc:
            if exc.code != "conversation_exists":
                raise
            # Two devices of one user at the same moment: the other one made it first.
            return await self._identified_session(widget_id, user_id, generation, meta)
        return self._session_json(widget_id, visitor_id, conversation_id, user_id, generation)

    def _session_json(
        self, widget_id: str, visitor_id: str, conversation_id: str, user_id: str | None,
        generation: int | None = None,
    ) -> dict[str, Any]:
        lifetime = timedelta(days=VISITOR_TOKEN_DAYS)
        token = self.tokens.issue_link(
            "visitor", visitor_id, lifetime, wid=widget_id, cid=conversation_id, uid=user_id,
            gen=generation,
        )
        return {
            "visitor_token": token,
            "token_type": "bearer",
            "expires_in": int(lifetime.total_seconds()),
            "visitor_id": visitor_id,
            "conversation_id": conversation_id,
            "user_id": user_id,
        }

    def read_visitor_token(self, token: str, widget_id: str) -> dict[str, Any]:
        claims = self.tokens.read_link("visitor", token, "wid", "cid")
        if claims["wid"] != widget_id:
            raise LoaclError("invalid_token", "this visitor token belongs to another widget")
        return claims

    async def visitor_access(
        self, widget_id: str, origin: str | None, token: str
    ) -> domain.VisitorAccess:
        """Who a visitor token names, from an allowed origin, if the widget still accepts
        it: a widget that now requires identity refuses anonymous tokens, and a rotated
        identity secret ends the signed-in users' tokens."""
        widget = await self.public(widget_id, origin)
        claims = self.read_visitor_token(token, widget_id)
        user_id = claims.get("uid")
        if user_id is None and widget.definition.require_identity:
            raise LoaclError(
                "invalid_token", "this widget now talks to signed-in users only; start again"
            )
        if user_id is not None and claims.get("gen") != widget.secret_generation:
            raise LoaclError("invalid_token", "the site's identity secret changed; start again")
        if await conversation_views.erased(self.store, str(claims["cid"])):
            # The widget starts a new session on invalid_token, and gets a new conversation.
            raise LoaclError("invalid_token", "this conversation was erased; start again")
        return domain.VisitorAccess(
            widget_id, str(claims["sub"]), str(claims["cid"]),
            None if user_id is None else str(user_id),
        )
