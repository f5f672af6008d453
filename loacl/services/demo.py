"""The demo on the home page: an assistant and a widget owned by a built-in owner.

The owner ``system:demo`` is no account: nobody can log in as it, so nobody can edit, list or
embed its widget through the owner API. At start-up :meth:`Demo.ensure` creates the assistant
and the widget through the services, or brings them up to date, and writes nothing when they
already are (the log does not grow on every start). The widget's allowed origins are LOACL's own
origins only: ``public_url`` when it is set, else the origins the home page was really served
from (see ``loacl.http.static``), the newest few kept.

Anyone who can send this server's own ``Origin`` can chat with the demo (scripts are not
browsers), so it is on by default only while no OpenAI key is set: with a key it would answer
strangers at the operator's cost. ``demo_widget = true`` turns it on all the same, and it is
always under the small ``demo_*_tokens`` budgets. Turned off, an existing demo widget is
disabled, so that tokens handed out before stop working too.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from urllib.parse import urlsplit

import structlog

from loacl.domain.assistants import AssistantDefinition
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.domain.origins import normalize_origin
from loacl.domain.widgets import WidgetBudget, WidgetDefinition, WidgetSettings
from loacl.providers import default_provider, spec
from loacl.services.assistants import Assistants
from loacl.services.widgets import Widgets
from loacl.settings import Settings
from loacl.store.eventstore import EventStore
from loacl.store.views.widgets import WidgetView

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


def demo_enabled(settings: Settings) -> bool:
    """Whether this server runs the demo: as configured, else only with the demo provider."""
    if settings.demo_widget is not None:
        return settings.demo_widget
    return default_provider(settings) == "demo"


def public_origin(settings: Settings) -> str | None:
    """The origin of ``public_url``, or None when it is unset (or not a usable origin)."""
    if not settings.public_url:
        return None
    parts = urlsplit(settings.public_url)
    try:
        return normalize_origin(f"{parts.scheme}://{parts.netloc}")
    except LoaclError:
        return None


class Demo:
    def __init__(
        self, store: EventStore, settings: Settings, assistants: Assistants, widgets: Widgets
    ) -> None:
        self.store = store
        self.settings = settings
        self.assistants = assistants
        self.widgets = widgets
        self.widget_id: str | None = None
        self._lock = asyncio.Lock()
        self._meta = Metadata(actor=DEMO_OWNER)

    def assistant_definition(self) -> AssistantDefinition:
        provider = default_provider(self.settings)
        model = spec(provider).default_model or OPENAI_MODEL
        return AssistantDefinition(
            name="LOACL demo", provider=provider, model=model, instructions=INSTRUCTIONS
        )

    async def ensure(self) -> str:
        """Create or update the demo assistant and widget; return the widget's id."""
        async with self._lock:
            wanted = self.assistant_definition()
            assistant_id = await self._ensure_assistant(wanted)
            widgets = await self.widgets.list(DEMO_OWNER, 0, 1)
            public = public_origin(self.settings)
            if not widgets.items:
                origins: tuple[str, ...] = (public,) if public else ()
                created = await self.widgets.create(
                    DEMO_OWNER, self._widget_definition(assistant_id, origins), self._meta
                )
                widget_id = created.widget_id
            else:
                widget = widgets.items[0]
                widget_id = widget.widget_id
                origins = (public,) if public else widget.definition.allowed_origins
                await self._update(widget, self._widget_definition(
                    assistant_id, origins, widget.definition.settings
                ))
            self.widget_id = widget_id
            log.info("demo.ready", widget_id=widget_id, provider=wanted.provider)
            return widget_id

    async def retire(self) -> None:
        """The demo is off: disable its widget, if there is one (writes nothing otherwise)."""
        async with self._lock:
            self.widget_id = None
            found = await self.widgets.list(DEMO_OWNER, 0, 1)
            for widget in found.items:
                if widget.definition.enabled:
                    await self.widgets.update(
                        DEMO_OWNER, widget.widget_id,
                        replace(widget.definition, enabled=False), None, self._meta,
                    )
                    log.info("demo.disabled", widget_id=widget.widget_id)

    async def ensure_or_go_without(self) -> None:
        """``ensure``; on failure the home page goes without its demo, and says why in the
        log."""
        try:
            await self.ensure()
        except LoaclError as exc:
            log.warning("demo.unavailable", code=exc.code, error=exc.message)

    async def _ensure_assistant(self, wanted: AssistantDefinition) -> str:
        found = await self.assistants.list(DEMO_OWNER, 0, 1)
        if not found.items:
            # The model is not checked with the provider at start-up: no network call there.
            created = await self.assistants.create(
                DEMO_OWNER, wanted, self._meta, check_model=False
            )
            return created.assistant_id
        current = found.items[0]
        have = current.definition
        if (have.provider, have.model, have.instructions) != (
            wanted.provider, wanted.model, wanted.instructions
        ):
            await self.assistants.update(
                DEMO_OWNER, current.assistant_id, wanted, None, self._meta, check_model=False
            )
        return current.assistant_id

    def _widget_definition(
        self, assistant_id: str, origins: tuple[str, ...],
        settings: WidgetSettings | None = None,
    ) -> WidgetDefinition:
        return WidgetDefinition(
            name="LOACL demo", assistant_id=assistant_id, allowed_origins=origins,
            settings=settings or WidgetSettings(title="LOACL demo", greeting=GREETING),
            messages_per_minute=10,
            # Always small, whatever the server's defaults: the demo answers anyone.
            budget=WidgetBudget(
                daily_tokens=self.settings.demo_daily_tokens,
                monthly_tokens=self.settings.demo_monthly_tokens,
            ),
        )

    async def _update(self, current: WidgetView, wanted: WidgetDefinition) -> None:
        if current.definition == wanted:
            return
        await self.widgets.update(DEMO_OWNER, current.widget_id, wanted, None, self._meta)

    async def allow(self, origins: list[str]) -> bool:
        """Let the demo widget be embedded from ``origins`` (LOACL's own, checked by the
        caller), keeping the newest few. Writes only when one of them is new."""
        widget_id = self.widget_id
        if widget_id is None or not origins:
            return False
        async with self._lock:
            widget = await self.widgets.get(DEMO_OWNER, widget_id)
            allowed = list(widget.definition.allowed_origins)
            if all(origin in allowed for origin in origins):
                return True
            public = public_origin(self.settings)
            merged = [*([public] if public else []), *origins]
            merged += [o for o in allowed if o not in merged]
            definition = self._widget_definition(
                widget.definition.assistant_id, tuple(merged[:MAX_ORIGINS]),
                widget.definition.settings,
            )
            await self._update(widget, definition)
            log.info("demo.origin_allowed", origins=origins)
            return True
