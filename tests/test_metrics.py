"""``/metrics`` end to end: a real uvicorn, a reply streamed from the OpenAI test server through
the real SDK, the page scraped while it streams and read with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loacl.openai_testserver import OpenAITestServer
from loacl.settings import Settings
from loacl.telemetry.metrics import OTHER, Metrics
from tests.test_stream import WAIT, Live, provider_server, reply_text, start

pytestmark = pytest.mark.e2e

TOKEN = "metrics-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Every sample by its name (``_total``, ``_bucket``, ... included), with its labels."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


def scrape(live: Live) -> Samples:
    response = live.http.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


@pytest.fixture
def provider() -> Iterator[tuple[OpenAITestServer, str]]:
    with provider_server(token_delay=0.01) as running_server:
        yield running_server


@pytest.fixture
def live(settings: Settings, provider: tuple[OpenAITestServer, str]) -> Iterator[Live]:
    with start(settings, provider, metrics_token=TOKEN) as started:
        yield started


def test_metrics_want_the_token(live: Live) -> None:
    assert live.http.get("/metrics").status_code == 401
    wrong = live.http.get("/metrics", headers={"Authorization": "Bearer nope-nope-nope-nope"})
    assert wrong.status_code == 401
    assert wrong.headers["content-type"] == "application/problem+json"
    assert live.http.get("/metrics", headers=AUTH).status_code == 200


def test_without_a_token_metrics_are_not_there(
    settings: Settings, provider: tuple[OpenAITestServer, str]
) -> None:
    with start(settings, provider) as live:
        response = live.http.get("/metrics", headers=AUTH)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"


async def test_metrics_scraped_while_a_reply_streams(live: Live) -> None:
    text = reply_text(150)
    live.provider.script(text)
    session = live.session()
    async with live.tab(session) as tab:
        ack = await live.ask(tab, "Hello there", "c-1")
        first = await tab.next_kind("delta")
        assert first["offset"] == 0
        during = await asyncio.to_thread(scrape, live)
        reply = await tab.follow(ack["reply_id"])
        assert reply.text == text
        await live.log.finished(ack["reply_id"])
    after = await asyncio.to_thread(scrape, live)
    # The server counts the socket closed once it has read the close the client sent.
    deadline = time.monotonic() + WAIT
    while value(after, "loacl_websockets_open") and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        after = await asyncio.to_thread(scrape, live)

    # While it streamed: the socket open, the reply started and not ended.
    assert value(during, "loacl_websockets_open") == 1
    assert value(during, "loacl_replies_started_total", provider="openai") == 1
    assert value(during, "loacl_replies_ended_total") == 0
    # After: ended as completed, with its first token's time and its tokens.
    assert value(after, "loacl_websockets_open") == 0
    assert value(after, "loacl_replies_ended_total", provider="openai", outcome="completed",
                 reason="none") == 1
    assert value(after, "loacl_provider_first_token_seconds_count", provider="openai") == 1
    assert value(after, "loacl_reply_output_tokens_count", provider="openai") == 1
    assert value(after, "loacl_widget_tokens_total", widget=live.widget_id,
                 direction="output") > 0
    # The store: events appended, each commit timed and its batch counted.
    events = value(after, "loacl_events_appended_total")
    assert events >= 4  # message, reply start, deltas, end
    assert value(after, "loacl_store_commit_seconds_count") >= 1
    assert value(after, "loacl_store_batch_appends_count") == value(
        after, "loacl_store_commit_seconds_count")
    assert value(after, "loacl_events_head") >= events
    # Read at scrape time: subscribers, the database, the process.
    subscribers = {labels["subscriber"] for labels, _ in after["loacl_subscriber_lag_events"]}
    assert {"usage", "webhooks.outbox"} <= subscribers
    assert value(after, "loacl_database_bytes") > 0
    assert "process_cpu_seconds_total" in after
    # HTTP: by route template, never the path with its ids.
    routes = {labels["route"] for labels, _ in after["loacl_http_requests_total"]}
    assert "/api/v1/widgets/{id}/sessions" in routes
    assert not any(live.widget_id in route for route in routes)
    posted = value(after, "loacl_http_requests_total", route="/api/v1/widgets/{id}/sessions",
                   method="POST", status="201")
    assert posted == 1
    assert value(after, "loacl_http_request_duration_seconds_count",
                 route="/api/v1/widgets/{id}/sessions", method="POST") == 1


DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana-dashboard.json"


def test_the_grafana_dashboard_uses_only_metrics_loacl_serves(live: Live) -> None:
    """Each metric a panel queries is on /metrics (the replica's once a replica is set)."""
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name for panel in dashboard["panels"] for target in panel["targets"]
        for name in re.findall(r"\b((?:loacl|process)_[a-z_]+)", target["expr"])
    }
    page = live.http.get("/metrics", headers=AUTH).text
    served = {
        f"{family.name}{suffix}" for family in text_string_to_metric_families(page)
        for suffix in ("", "_total", "_bucket", "_sum", "_count")
    }
    replica = {"loacl_replica_lag_seconds", "loacl_replica_last_sync_timestamp_seconds"}
    assert queried - replica <= served, sorted(queried - replica - served)
    assert len(dashboard["panels"]) >= 12


@pytest.mark.long
def test_labels_stay_bounded_with_a_thousand_visitors(live: Live) -> None:
    visitors = [live.session() for _ in range(1000)]
    live.http.get(f"/api/v1/widgets/{live.widget_id}/nope/{visitors[0].conversation_id}")
    samples = scrape(live)
    labels = {v for found in samples.values() for labels, _ in found for v in labels.values()}
    ids = {s.conversation_id for s in visitors}
    assert not labels & ids
    assert not any(s.conversation_id in v or s.token in v for s in visitors[:50] for v in labels)
    http = samples["loacl_http_requests_total"]
    assert len(http) < 20, [labels for labels, _ in http]
    assert value(samples, "loacl_http_requests_total", route="unmatched") == 1
    assert value(samples, "loacl_http_requests_total",
                 route="/api/v1/widgets/{id}/sessions") == 1000
    assert len(labels) < 200


def test_widget_labels_are_capped() -> None:
    metrics = Metrics({}, max_widgets=2, process=False)
    for n in range(5):
        metrics.ended("openai", f"w{n}", "gpt-fake", "completed", "", 10, 5)
    samples = parse(metrics.exposition().decode())
    widgets = {labels["widget"] for labels, _ in samples["loacl_widget_tokens_total"]}
    assert widgets == {"w0", "w1", OTHER}
    assert value(samples, "loacl_widget_tokens_total", widget=OTHER, direction="input") == 30


def test_cost_is_estimated_for_priced_models(settings: Settings) -> None:
    metrics = Metrics(settings.model_prices, process=False)
    metrics.ended("openai", "w1", "gpt-4o-mini", "completed", "", 1_000_000, 1_000_000)
    metrics.ended("openai", "w1", "unpriced-model", "completed", "", 1_000_000, 0)
    metrics.ended("openai", "w1", "gpt-4o-mini", "failed", "provider_unavailable", 0, 0)
    samples = parse(metrics.exposition().decode())
    assert value(samples, "loacl_widget_cost_dollars_total", widget="w1") == pytest.approx(0.75)
    assert value(samples, "loacl_replies_ended_total", outcome="failed",
                 reason="provider_unavailable") == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_metrics_on_a_listener_of_their_own(
    settings: Settings, provider: tuple[OpenAITestServer, str]
) -> None:
    port = _free_port()
    with start(settings, provider, metrics_listen=f"127.0.0.1:{port}") as live:
        assert live.http.get("/metrics").status_code == 404  # not on the main address
        live.session()
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert response.status_code == 200
        samples = parse(response.text)
        assert value(samples, "loacl_http_requests_total",
                     route="/api/v1/widgets/{id}/sessions") == 1
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_metrics_can_be_turned_off(
    settings: Settings, provider: tuple[OpenAITestServer, str]
) -> None:
    with start(settings, provider, metrics_enabled=False, metrics_token=TOKEN) as live:
        assert live.http.get("/metrics", headers=AUTH).status_code == 404
        assert live.session().token


def test_replica_lag_and_last_sync_as_the_status_poll_read_them(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from loacl.http.app import replica_figures
    from loacl.store.replica.status import ReplicaStatus
    from loacl.store.replica.supervisor import Replication

    replication = Replication(f"file://{tmp_path / 'replica'}", tmp_path / "loacl.db",
                              tmp_path, store=None, supervise=False)  # type: ignore[arg-type]
    assert replica_figures(replication) is None  # not polled yet: no figures, no zeros
    synced = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    replication.status = ReplicaStatus(
        url=replication.url, replica_txid=7, last_sync=synced, local_txid=9, local_at=synced,
        behind=2, pending_since=synced, lag_seconds=4.5, events=12)
    metrics = Metrics({}, process=False)
    metrics.scraped.watch(head=lambda: 12, positions=lambda: {"usage": 10},
                          failures=lambda: {}, database=tmp_path / "loacl.db",
                          replica=lambda: replica_figures(replication))
    samples = parse(metrics.exposition().decode())
    assert value(samples, "loacl_replica_lag_seconds") == 4.5
    assert value(samples, "loacl_replica_last_sync_timestamp_seconds") == synced.timestamp()
    assert value(samples, "loacl_subscriber_lag_events", subscriber="usage") == 2
    assert value(samples, "loacl_database_bytes") == 0  # no file yet
