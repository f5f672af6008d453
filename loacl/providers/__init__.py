"""Model providers: OpenAI (Responses API), any OpenAI-compatible server (Chat Completions), and
the built-in demo. They sit beside the services behind small protocols.

``REGISTRY`` is the one place a provider is chosen by name: what builds it and what it can
read. Everything else asks the registry, never ``if name == ...``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import openai
import structlog

from loacl.domain.errors import LoaclError
from loacl.providers.base import Provider
from loacl.providers.chat_completions import ChatCompletionsProvider
from loacl.providers.demo import DemoProvider
from loacl.providers.openai_responses import ResponsesProvider
from loacl.settings import Settings

log = structlog.get_logger(__name__)

DEMO_MODELS = ("demo",)


def client_for(settings: Settings, provider: str, *, max_retries: int = 2,
               timeout: float = 30.0) -> openai.AsyncOpenAI:
    """An SDK client for ``provider``; the base URL falls back to ``OPENAI_BASE_URL``."""
    if provider == "chat_completions":
        base_url = settings.chat_completions_base_url or settings.openai_base_url
        # Local model servers often need no key, but the SDK insists on one.
        api_key = settings.chat_completions_api_key or settings.openai_api_key or "not-needed"
        if base_url is None:
            raise LoaclError(
                "provider_unavailable",
                "the chat_completions provider needs LOACL_CHAT_COMPLETIONS_BASE_URL or "
                "OPENAI_BASE_URL",
            )
    else:
        base_url = settings.openai_base_url
        if not settings.openai_api_key:
            raise LoaclError(
                "provider_unavailable", "the openai provider needs OPENAI_API_KEY to be set"
            )
        api_key = settings.openai_api_key
    return openai.AsyncOpenAI(
        api_key=api_key, base_url=base_url, max_retries=max_retries,
        timeout=openai.Timeout(timeout, connect=5.0),
        # aiohttp under the SDK (its `aiohttp` extra): with hundreds of replies streaming at
        # once it takes half the CPU of the default transport per reply.
        http_client=openai.DefaultAioHttpClient(),
    )


def _reply_client(settings: Settings, name: str) -> openai.AsyncOpenAI:
    return client_for(
        settings, name, max_retries=settings.provider_max_retries,
        timeout=settings.provider_read_timeout,
    )


@dataclass(frozen=True)
class ProviderSpec:
    name: str
    create: Callable[[Settings], Provider]
    # The kinds of uploaded file the provider can read; others are refused before anything is
    # written, since a file in the history it cannot take would fail every later turn.
    file_kinds: frozenset[str]
    # The model an assistant gets when it names none; None: the owner must say.
    default_model: str | None = None
    # Whether ``models.retrieve`` can check a model name.
    lists_models: bool = True


REGISTRY: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec(
            "openai",
            lambda s: ResponsesProvider(_reply_client(s, "openai"), store=s.openai_store),
            frozenset({"pdf", "docx", "doc", "txt"}),
        ),
        ProviderSpec(
            "chat_completions",
            lambda s: ChatCompletionsProvider(_reply_client(s, "chat_completions")),
            frozenset({"txt"}),
        ),
        ProviderSpec(
            "demo", lambda s: DemoProvider(s.demo_delay), frozenset({"pdf", "docx", "doc", "txt"}),
            default_model="demo", lists_models=False,
        ),
    )
}


def spec(name: str) -> ProviderSpec:
    found = REGISTRY.get(name)
    if found is None:
        raise LoaclError(
            "validation_error", f"provider: one of {', '.join(REGISTRY)}, not {name!r}",
            errors=[{"field": "provider", "message": "unknown provider",
                     "accepted": list(REGISTRY)}],
        )
    return found


def default_provider(settings: Settings) -> str:
    """The provider of an assistant that names none: OpenAI once a key is set, else the demo."""
    return "openai" if settings.openai_api_key else "demo"


def provider_for(settings: Settings, name: str) -> Provider:
    """The provider an assistant names, configured from settings."""
    return spec(name).create(settings)


def missing_configuration(settings: Settings, provider: str) -> str | None:
    """What the server lacks to use ``provider`` (None when it has it)."""
    if provider == "openai" and not settings.openai_api_key:
        return "OPENAI_API_KEY"
    if provider == "chat_completions" and not (
        settings.chat_completions_base_url or settings.openai_base_url
    ):
        return "LOACL_CHAT_COMPLETIONS_BASE_URL or OPENAI_BASE_URL"
    return None


def configured(settings: Settings) -> list[str]:
    """The providers an assistant may use on this server: the demo always, OpenAI with a key,
    Chat Completions with a base URL."""
    return [name for name in REGISTRY if missing_configuration(settings, name) is None]


async def list_models(settings: Settings, provider: str) -> list[str]:
    """The ids of the models ``provider`` offers (``models.list``), sorted."""
    if not spec(provider).lists_models:
        return list(DEMO_MODELS)
    client = client_for(settings, provider, max_retries=1, timeout=10.0)
    try:
        return sorted({model.id async for model in client.models.list()})
    finally:
        await client.close()


async def check_model(settings: Settings, provider: str, model: str) -> None:
    """Ask the provider whether it knows ``model`` (``models.retrieve``). A provider this server
    is not configured for is the request's fault, not an outage: 422, naming what is missing."""
    missing = missing_configuration(settings, provider)
    if missing is not None:
        usable = [name for name in REGISTRY if missing_configuration(settings, name) is None]
        raise LoaclError(
            "provider_not_configured",
            f"this server is not configured for the {provider} provider: its operator must set "
            f"{missing}",
            errors=[{"field": "provider", "message": f"needs {missing} on the server",
                     "accepted": usable}],
        )
    if not spec(provider).lists_models:
        if model not in DEMO_MODELS:
            raise LoaclError(
                "unknown_model", f"the demo provider has one model, 'demo', not {model!r}",
                errors=[{"field": "model", "message": "unknown model"}],
            )
        return
    if not settings.validate_models:
        return
    client = client_for(settings, provider, max_retries=1, timeout=10.0)
    try:
        await client.models.retrieve(model)
    except (openai.NotFoundError, ValueError):
        # ValueError: the SDK refuses ids that would be a path's "." or ".." segment.
        raise LoaclError(
            "unknown_model", f"the {provider} provider does not know the model {model!r}",
            errors=[{"field": "model", "message": "unknown model"}],
        ) from None
    except openai.APIError as exc:
        log.warning("provider.model_check_failed", provider=provider, error=repr(exc))
        raise LoaclError(
            "provider_unavailable",
            f"could not reach the {provider} provider to check the model; try again, or set "
            "LOACL_VALIDATE_MODELS=false for servers without a models endpoint",
        ) from None
    finally:
        await client.close()
