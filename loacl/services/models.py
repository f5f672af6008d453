"""The models the configured providers offer, for the console's model picker: each provider's
list (``models.list``), kept for a short while; a provider that cannot be reached is reported
as such, beside the others' lists."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import openai
import structlog

from loacl.domain.errors import LoaclError
from loacl.providers import configured, list_models
from loacl.settings import Settings

log = structlog.get_logger(__name__)

CACHE_SECONDS = 60.0

Lister = Callable[[Settings, str], Awaitable[list[str]]]


@dataclass(frozen=True)
class ProviderModels:
    provider: str
    models: tuple[str, ...]
    error: str | None = None  # why the list could not be had; models is then empty

    @property
    def ok(self) -> bool:
        return self.error is None


class Models:
    def __init__(self, settings: Settings, *, lister: Lister = list_models,
                 ticks: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.lister = lister
        self.ticks = ticks
        self._cache: dict[str, tuple[float, ProviderModels]] = {}

    async def offered(self) -> list[ProviderModels]:
        """Each configured provider's models, asked of all at once."""
        return list(await asyncio.gather(*(self._one(p) for p in configured(self.settings))))

    async def _one(self, provider: str) -> ProviderModels:
        now = self.ticks()
        cached = self._cache.get(provider)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        try:
            found = ProviderModels(provider, tuple(await self.lister(self.settings, provider)))
        except (openai.APIError, LoaclError) as exc:
            # Not kept: the next look asks again.
            log.warning("provider.models_unavailable", provider=provider, error=repr(exc))
            message = exc.message if isinstance(exc, LoaclError) else (
                f"could not reach the {provider} provider ({type(exc).__name__})")
            return ProviderModels(provider, (), message)
        self._cache[provider] = (now, found)
        return found
