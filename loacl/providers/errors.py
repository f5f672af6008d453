"""The SDK's exceptions, as the three things a visitor is told."""

from __future__ import annotations

import json

import httpx2
import openai

from loacl.providers.base import ProviderError


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except ValueError:
        return None
    return None


def _should_retry(exc: openai.APIStatusError, default: bool) -> bool:
    # The provider's own word overrides the status, as the SDK's policy has it.
    said = exc.response.headers.get("x-should-retry")
    return {"true": True, "false": False}.get(said or "", default)


def translate(exc: Exception) -> ProviderError:
    """The SDK's exception as a ProviderError; ``retryable`` follows the SDK's own retry policy
    (408, 409, 429, 5xx, timeouts, connection errors; ``x-should-retry`` overrides)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, openai.RateLimitError):
        return ProviderError(
            "provider_rate_limited", "the AI provider is busy (rate limited); try again shortly",
            _retry_after(exc), retryable=_should_retry(exc, True),
        )
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(
            "provider_unavailable", "the AI provider stopped answering", retryable=True
        )
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(
            "provider_unavailable", "the AI provider could not be reached", retryable=True
        )
    if isinstance(exc, openai.InternalServerError):
        return ProviderError(
            "provider_unavailable", "the AI provider had an internal error", _retry_after(exc),
            retryable=_should_retry(exc, True),
        )
    if isinstance(exc, openai.APIStatusError) and exc.status_code in (408, 409):
        return ProviderError(
            "provider_unavailable", f"the AI provider asked to try again: {exc.message}",
            _retry_after(exc), retryable=_should_retry(exc, True),
        )
    if isinstance(exc, openai.APIError):
        code = getattr(exc, "code", None)
        if code in ("rate_limit_exceeded",):
            return ProviderError("provider_rate_limited", "the AI provider is busy; try again")
        return ProviderError(
            "provider_error", f"the AI provider refused the request: {exc.message}"
        )
    # Raw transport errors: raised while LOACL reads a stream's body itself.
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderError(
            "provider_unavailable", "the AI provider stopped answering", retryable=True
        )
    if isinstance(exc, httpx2.TransportError):
        return ProviderError(
            "provider_unavailable", "the AI provider's answer was cut short", retryable=True
        )
    if isinstance(exc, json.JSONDecodeError):
        return ProviderError("provider_error", "the AI provider sent a malformed stream")
    return ProviderError("provider_error", f"the AI provider failed: {type(exc).__name__}")
