"""The demo on the home page: an assistant and a widget owned by a built-in owner.

The owner ``system:demo`` is no account: nobody can log in as it, so nobody can edit, list or
embed its widget through the owner API. At start-up :meth:`Demo.ensure` creates the assistant
and the widget through the services, or brings them up to date, and writes nothing when they
already are (the log does not grow on every start). The widget's allowed origins are LOACL's own
origins only: ``public_url`` when it is set, else the origins the home page was really served
from (see ``loacl.http.static``), the newest few kept.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import structlog

from loacl.domain.assistants import AssistantDefinition
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.domain.origins import normalize_origin
from loacl.domain.widgets import WidgetDefinition, WidgetSettings
from loacl.services.assistants import Assistants
from loacl.services.widgets import Widgets
from loacl.settings import Settings
from loacl.store.eventstore import EventStore

log = structlog.get_logger(__name__)

DEMO_OWNER = "system:demo"
OPENAI_MODEL = "gpt-4.1-mini"
MAX_ORIGINS = 8
INSTRUCTIONS = (
    "You are the demo assistant on the home page of a LOACL server, a self-hosted chat widget "
    "for websites. Answer briefly and helpfully. If asked about LOACL: it puts an AI assistant "
    "on a website with one script tag, runs as one process on one SQLite file, streams answers "
    "over a WebSocket that resumes after a drop, and keeps every change in an auditable event log."
)
GREETING = (
    "Hi! I am the demo assistant of this LOACL server. Ask me anything: the answer streams in "
    "as it is written."
)


def public_origin(settings: Settings) -> str | None:
    """The origin of ``public_url``, or None when it is unset (or not a usable origin)."""
    if not settings.public_url:
        return None
    parts = urlsplit(settings.public_url)
    try:
        return normalize_origin(f"{parts.scheme}://{parts.netloc}")
    except LoaclError:
        return None


def definition_of(widget: dict[str, Any]) -> WidgetDefinition:
    """A widget's definition, from its JSON form."""
    return WidgetDefinition(
        name=widget["name"], assistant_id=widget["assistant_id"],
        allowed_origins=tuple(widget["allowed_origins"]),
        settings=WidgetSettings(**widget["settings"]),
        messages_per_minute=widget["limits"]["messages_per_minute"],
        enabled=widget["enabled"], require_identity=widget["require_identity"],
    )


class Demo:
    def __init__(
        self, store: EventStore, settings: Settings, assistants: Assistants, widgets: Widgets
    ) -> None:
        self.store = store
        self.settings = settings
        # The model is not checked with the provider at start-up: no network call there.
        self.assistants = Assistants(
            store, settings.model_copy(update={"validate_models": False})
        )
        self.widgets = widgets
        self.widget_id: str | None = None
        self._lock = asyncio.Lock()
        self._meta = Metadata(actor=DEMO_OWNER)

    def assistant_definition(self) -> AssistantDefinition:
        provider, model = (
            ("openai", OPENAI_MODEL) if self.settings.openai_api_key else ("demo", "demo")
        )
        return AssistantDefinition(
            name="LOACL demo", provider=provider, model=model, instructions=INSTRUCTIONS
        )

    async def _owned(self, table: str, column: str) -> str | None:
        rows = await self.store.query(
            f"SELECT {column} FROM {table} WHERE owner_id = ? ORDER BY created_seq LIMIT 1",
            (DEMO_OWNER,),
        )
        return str(rows[0][0]) if rows else None

    async def ensure(self) -> str:
        """Create or update the demo assistant and widget; return the widget's id."""
        async with self._lock:
            wanted = self.assistant_definition()
            assistant_id = await self._owned("assistants", "assistant_id")
            if assistant_id is None:
                created = await self.assistants.create(DEMO_OWNER, wanted, self._meta)
                assistant_id = str(created["id"])
            else:
                current = await self.assistants.get(DEMO_OWNER, assistant_id)
                if (current["provider"], current["model"], current["instructions"]) != (
                    wanted.provider, wanted.model, wanted.instructions
                ):
                    await self.assistants.update(
                        DEMO_OWNER, assistant_id, wanted, None, self._meta
                    )
            widget_id = await self._owned("widgets", "widget_id")
            public = public_origin(self.settings)
            if widget_id is None:
                origins = (public,) if public else ()
                created = await self.widgets.create(
                    DEMO_OWNER, self._widget_definition(assistant_id, origins), self._meta
                )
                widget_id = str(created["id"])
            else:
                widget = await self.widgets.get(DEMO_OWNER, widget_id)
                origins = (public,) if public else tuple(widget["allowed_origins"])
                await self._update(widget_id, widget, self._widget_definition(
                    assistant_id, origins, widget
                ))
            self.widget_id = widget_id
            log.info("demo.ready", widget_id=widget_id, provider=wanted.provider)
            return widget_id

    def _widget_definition(
        self, assistant_id: str, origins: tuple[str, ...], current: dict[str, Any] | None = None
    ) -> WidgetDefinition:
        settings = WidgetSettings(title="LOACL demo", greeting=GREETING)
        if current is not None:
            settings = WidgetSettings(**current["settings"])
        return WidgetDefinition(
            name="LOACL demo", assistant_id=assistant_id, allowed_origins=origins,
            settings=settings, messages_per_minute=10,
        )

    async def _update(
        self, widget_id: str, current: dict[str, Any], wanted: WidgetDefinition
    ) -> None:
        if definition_of(current) == wanted:
            return
        await self.widgets.update(DEMO_OWNER, widget_id, wanted, None, self._meta)

    async def allow(self, origins: list[str]) -> bool:
        """Let the demo widget be embedded from ``origins`` (LOACL's own, checked by the
        caller), keeping the newest few. Writes only when one of them is new."""
        widget_id = self.widget_id
        if widget_id is None or not origins:
            return False
        async with self._lock:
            widget = await self.widgets.get(DEMO_OWNER, widget_id)
            allowed = list(widget["allowed_origins"])
            if all(origin in allowed for origin in origins):
                return True
            public = public_origin(self.settings)
            merged = [*([public] if public else []), *origins]
            merged += [o for o in allowed if o not in merged]
            definition = self._widget_definition(
                widget["assistant_id"], tuple(merged[:MAX_ORIGINS]), widget
            )
            await self._update(widget_id, widget, definition)
            log.info("demo.origin_allowed", origins=origins)
            return True
