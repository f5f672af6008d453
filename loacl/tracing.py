"""OpenTelemetry traces: off unless an OTLP endpoint is configured, and then exported in the
background by the SDK's batch processor.

Off, ``span(...)`` hands back one shared do-nothing context manager: the OpenTelemetry SDK is
never imported and a request pays one function call per span site. On, spans nest through the
OpenTelemetry context (a context variable), so a reply's task, started inside a request, is that
request's child, and the store's commits and the provider's call are the reply's.

The tracer is the process's (OpenTelemetry's context is too): ``configure`` sets it once at
start, ``install`` lets a test bring its own provider (the SDK's in-memory exporter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = structlog.get_logger(__name__)

_NULL: AbstractContextManager[None] = contextlib.nullcontext()
_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def enabled() -> bool:
    return _tracer is not None


def span(name: str, **attributes: Any) -> AbstractContextManager[Any]:
    """A span around the ``with`` block, child of the current one; nothing when off."""
    if _tracer is None:
        return _NULL
    return _tracer.start_as_current_span(name, attributes=attributes)


def current() -> Span | None:
    """The span being recorded now, or None (off, or none open)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    found = trace.get_current_span()
    return found if found.is_recording() else None


def trace_id(found: Span) -> str:
    return format(found.get_span_context().trace_id, "032x")


def configure(endpoint: str | None, service: str = "loacl", version: str = "") -> bool:
    """Export spans over OTLP/HTTP to ``endpoint`` (the collector's base URL, as
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` gives it: ``/v1/traces`` is added); None leaves traces off.
    True when on."""
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service, "service.version": version})
    provider = TracerProvider(resource=resource)
    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    install(provider)
    log.info("tracing.configured", endpoint=url)
    return True


def install(provider: TracerProvider | None) -> None:
    """Record spans with ``provider`` from now on; None turns traces off again."""
    global _tracer, _provider
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer("loacl")


def shutdown() -> None:
    """Send what is buffered and stop (the server is going down)."""
    provider = _provider
    if provider is not None:
        with contextlib.suppress(Exception):
            provider.force_flush(5000)


@contextlib.contextmanager
def spans_off() -> Iterator[None]:
    """For tests: traces off within the block, as they were after it."""
    saved = _provider
    install(None)
    try:
        yield
    finally:
        install(saved)
