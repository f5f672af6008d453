"""Traces: the span tree of a chat request, recorded with the OpenTelemetry SDK's in-memory
exporter from a real uvicorn, the reply streamed from the OpenAI test server by the real SDK."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

from loacl import tracing
from loacl.openai_testserver import OpenAITestServer
from loacl.settings import Settings
from tests.test_stream import ORIGIN, provider_server, start

pytestmark = pytest.mark.e2e


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    found = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(found))
    tracing.install(provider)
    try:
        yield found
    finally:
        tracing.install(None)
        provider.shutdown()


@pytest.fixture
def provider() -> Iterator[tuple[OpenAITestServer, str]]:
    with provider_server() as running_server:
        yield running_server


def _finished(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """The spans named ``name``, once there is one (the reply's span ends just after the
    answer is sent)."""
    deadline = time.monotonic() + 30
    while True:
        found = [s for s in exporter.get_finished_spans() if s.name == name]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_a_chat_request_gives_the_expected_span_tree(
    settings: Settings, provider: tuple[OpenAITestServer, str],
    exporter: InMemorySpanExporter,
) -> None:
    with start(settings, provider) as live:
        live.provider.script("Hello from the test server.")
        session = live.session()
        exporter.clear()
        with capture_logs() as logs:
            answer = live.http.post(
                f"/api/v1/widgets/{live.widget_id}/messages", json={"text": "Hi"},
                headers={"Origin": ORIGIN, "Authorization": f"Bearer {session.token}",
                         "X-Request-ID": "req-trace-1"})
            assert answer.status_code in (200, 201), answer.text
            [reply] = _finished(exporter, "reply")
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    [request] = [s for s in spans if s.name == "POST /api/v1/widgets/{id}/messages"]
    assert request.parent is None
    assert request.attributes is not None
    assert request.attributes["loacl.request_id"] == "req-trace-1"
    assert request.attributes["http.route"] == "/api/v1/widgets/{id}/messages"
    assert request.attributes["http.response.status_code"] == answer.status_code

    def parent(span: ReadableSpan) -> ReadableSpan | None:
        return by_id.get(span.parent.span_id) if span.parent is not None else None

    # The reply is the request's child; the provider's call and the reply's commits are the
    # reply's; the visitor's message is committed under the request itself.
    assert parent(reply) is request
    assert reply.attributes is not None and reply.attributes["loacl.provider"] == "openai"
    provider_calls = [s for s in spans if s.name == "provider.stream"]
    assert provider_calls and all(parent(s) is reply for s in provider_calls)
    appends = [s for s in spans if s.name == "store.append"]
    assert any(parent(s) is request for s in appends), "the message's commit"
    under_reply = [s for s in appends if parent(s) is reply]
    assert under_reply, "the reply's deltas and end"
    assert {s.context.trace_id for s in spans if s.name != "GET /healthz"} >= {
        request.context.trace_id}
    assert all(s.context.trace_id == request.context.trace_id
               for s in [reply, *provider_calls, *under_reply])
    # The access log line (the request id is bound to it as to every line) names the trace.
    trace_id = format(request.context.trace_id, "032x")
    lines = [e for e in logs if e.get("event") == "http.request"
             and e.get("path") == f"/api/v1/widgets/{live.widget_id}/messages"]
    assert [e.get("trace_id") for e in lines] == [trace_id]
    assert answer.headers["x-request-id"] == "req-trace-1"


def test_traces_off_cost_no_sdk_import() -> None:
    """With no endpoint, serving requests imports nothing of the OpenTelemetry SDK."""
    code = (
        "import sys\n"
        "from starlette.testclient import TestClient\n"
        "from loacl.http.app import create_app\n"
        "from loacl.settings import Settings\n"
        "import tempfile, pathlib\n"
        "d = pathlib.Path(tempfile.mkdtemp())\n"
        "s = Settings(database_url=f'sqlite:///{d}/x.db', data_dir=d / 'data', "
        "demo_widget=False, argon2_memory_kib=64, argon2_time_cost=1, argon2_parallelism=1)\n"
        "with TestClient(create_app(s)) as c:\n"
        "    assert c.get('/healthz').status_code == 200\n"
        "    assert c.get('/api/v1/openapi.json').status_code == 200\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_configure_without_an_endpoint_leaves_traces_off() -> None:
    assert tracing.configure(None) is False
    assert not tracing.enabled()
    with tracing.span("nothing") as span:
        assert span is None
