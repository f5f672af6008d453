"""Widgets, their embed code, and visitor access (public config and visitor sessions)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

from loacl.domain import widgets as domain
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.domain.origins import origin_allowed
from loacl.services.tokens import Tokens, new_id
from loacl.store.eventstore import NO_STREAM, EventStore

VISITOR_TOKEN_DAYS = 30
_COLUMNS = (
    "widget_id, owner_id, definition, secret_generation, version, created_seq, created_at, "
    "updated_at"
)


def widget_json(row: Any) -> dict[str, Any]:
    widget_id, _owner_id, definition, _gen, version, _seq, created_at, updated_at = row
    d = json.loads(definition)
    return {
        "id": widget_id,
        "name": d["name"],
        "assistant_id": d["assistant_id"],
        "allowed_origins": d["allowed_origins"],
        "settings": d["settings"],
        "limits": {"messages_per_minute": d["messages_per_minute"]},
        "enabled": d["enabled"],
        "require_identity": d["require_identity"],
        "version": version,
        "created_at": created_at,
        "updated_at": updated_at,
    }


class Widgets:
    def __init__(self, store: EventStore, tokens: Tokens, server_key: str) -> None:
        self.store = store
        self.tokens = tokens
        self._server_key = server_key.encode()

    # -- owners -----------------------------------------------------------------------------

    def identity_secret(self, widget_id: str, generation: int) -> str:
        """Derived, never stored: the log keeps only the generation number."""
        message = f"widget-identity:{widget_id}:{generation}".encode()
        return "whs_" + hmac.new(self._server_key, message, hashlib.sha256).hexdigest()

    async def _load(self, widget_id: str) -> tuple[domain.Widget, int]:
        return await self.store.load(
            domain.widget_stream(widget_id), domain.Widget(), domain.evolve_widget
        )

    async def _row(self, widget_id: str) -> Any | None:
        rows = await self.store.query(
            f"SELECT {_COLUMNS} FROM widgets WHERE widget_id = ?", (widget_id,)
        )
        return rows[0] if rows else None

    async def get(self, owner_id: str, widget_id: str) -> dict[str, Any]:
        row = await self._row(widget_id)
        if row is None or row[1] != owner_id:
            raise LoaclError("not_found", "no such widget")
        return widget_json(row)

    async def list(
        self, owner_id: str, after: int, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        rows = await self.store.query(
            f"SELECT {_COLUMNS} FROM widgets WHERE owner_id = ? AND created_seq > ? "
            "ORDER BY created_seq LIMIT ?",
            (owner_id, after, limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return [widget_json(r) for r in rows], (rows[-1][5] if more else None)

    async def _check_assistant(self, owner_id: str, assistant_id: str) -> None:
        rows = await self.store.query(
            "SELECT 1 FROM assistants WHERE assistant_id = ? AND owner_id = ?",
            (assistant_id, owner_id),
        )
        if not rows:
            raise LoaclError(
                "unknown_assistant", f"you have no assistant {assistant_id!r}",
                errors=[{"field": "assistant_id", "message": "unknown assistant"}],
            )

    async def create(
        self, owner_id: str, definition: domain.WidgetDefinition, meta: Metadata
    ) -> dict[str, Any]:
        await self._check_assistant(owner_id, definition.assistant_id)
        widget_id = new_id()
        await self.store.append(
            domain.widget_stream(widget_id),
            domain.create_widget(widget_id, owner_id, definition),
            expected_version=NO_STREAM, metadata=meta,
        )
        widget = await self.get(owner_id, widget_id)
        widget["identity_secret"] = self.identity_secret(widget_id, 1)
        return widget

    async def _decide(
        self, owner_id: str, widget_id: str, if_match: int | None
    ) -> tuple[domain.Widget, int]:
        state, version = await self._load(widget_id)
        if not state.exists or state.deleted or state.owner_id != owner_id:
            raise LoaclError("not_found", "no such widget")
        if if_match is not None and if_match != version:
            raise LoaclError(
                "version_conflict", "the widget changed since you read it; GET it again",
                current_version=version,
            )
        return state, version

    async def update(
        self, owner_id: str, widget_id: str, definition: domain.WidgetDefinition,
        if_match: int | None, meta: Metadata,
    ) -> dict[str, Any]:
        state, version = await self._decide(owner_id, widget_id, if_match)
        await self._check_assistant(owner_id, definition.assistant_id)
        await self.store.append(
            domain.widget_stream(widget_id), domain.update_widget(state, owner_id, definition),
            expected_version=version, metadata=meta,
        )
        return await self.get(owner_id, widget_id)

    async def rotate_secret(
        self, owner_id: str, widget_id: str, if_match: int | None, meta: Metadata
    ) -> dict[str, Any]:
        state, version = await self._decide(owner_id, widget_id, if_match)
        events = domain.rotate_secret(state, owner_id)
        await self.store.append(
            domain.widget_stream(widget_id), events, expected_version=version, metadata=meta
        )
        widget = await self.get(owner_id, widget_id)
        widget["identity_secret"] = self.identity_secret(widget_id, state.secret_generation + 1)
        return widget

    async def delete(
        self, owner_id: str, widget_id: str, if_match: int | None, meta: Metadata
    ) -> None:
        state, version = await self._decide(owner_id, widget_id, if_match)
        await self.store.append(
            domain.widget_stream(widget_id), domain.delete_widget(state, owner_id),
            expected_version=version, metadata=meta,
        )

    # -- visitors ---------------------------------------------------------------------------

    async def public(self, widget_id: str, origin: str | None) -> dict[str, Any]:
        """The enabled widget as a visitor may see it, if ``origin`` may embed it."""
        row = await self._row(widget_id)
        if row is None:
            raise LoaclError("widget_not_found", "no such widget")
        widget = widget_json(row)
        if not widget["enabled"]:
            raise LoaclError("widget_not_found", "no such widget")
        if not origin_allowed(origin, widget["allowed_origins"]):
            raise LoaclError(
                "origin_not_allowed",
                "this site is not allowed to embed this widget; its owner can add "
                f"{origin or 'the site'} to the widget's allowed origins",
            )
        widget["secret_generation"] = row[3]
        return widget

    async def start_session(
        self, widget_id: str, origin: str | None, *, user_id: str | None,
        user_hash: str | None, visitor_token: str | None, meta: Metadata,
    ) -> dict[str, Any]:
        widget = await self.public(widget_id, origin)
        if user_id is not None or user_hash is not None:
            secret = self.identity_secret(widget_id, widget["secret_generation"])
            expected = hmac.new(secret.encode(), (user_id or "").encode(), hashlib.sha256)
            if not user_id or not user_hash or not hmac.compare_digest(
                expected.hexdigest(), user_hash.lower()
            ):
                raise LoaclError("invalid_identity", "user_hash does not match user_id")
            return await self._identified_session(
                widget_id, user_id, widget["secret_generation"], meta
            )
        if widget["require_identity"]:
            raise LoaclError(
                "identity_required", "this widget only talks to signed-in users of its site"
            )
        if visitor_token:
            try:
                claims = self.read_visitor_token(visitor_token, widget_id)
            except LoaclError:
                pass  # a stale token from another widget or an old key: start afresh
            else:
                if claims.get("uid") is None:
                    return self._session_json(
                        widget_id, str(claims["sub"]), str(claims["cid"]), None
                    )
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
        rows = await self.store.query(
            "SELECT conversation_id, visitor_id FROM conversations "
            "WHERE widget_id = ? AND external_user_id = ?",
            (widget_id, user_id),
        )
        if rows:
            return self._session_json(widget_id, rows[0][1], rows[0][0], user_id, generation)
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
            if exc.code != "conflict":
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
    ) -> tuple[str, str, str | None]:
        """(visitor id, conversation id, user id) for a token, from an allowed origin, that the
        widget still accepts: a widget that now requires identity refuses anonymous tokens,
        and a rotated identity secret ends the signed-in users' tokens."""
        widget = await self.public(widget_id, origin)
        claims = self.read_visitor_token(token, widget_id)
        user_id = claims.get("uid")
        if user_id is None and widget["require_identity"]:
            raise LoaclError(
                "invalid_token", "this widget now talks to signed-in users only; start again"
            )
        if user_id is not None and claims.get("gen") != widget["secret_generation"]:
            raise LoaclError("invalid_token", "the site's identity secret changed; start again")
        return str(claims["sub"]), str(claims["cid"]), None if user_id is None else str(user_id)
