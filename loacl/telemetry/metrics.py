"""Prometheus metrics: one registry per app, counted on the hot paths, read at scrape time.

Counted as things happen (each a dictionary look-up and an add under a lock): HTTP requests by
route template (never the raw path: ids stay out of labels), method and status, with a latency
histogram; open WebSockets; replies by provider and outcome; time to the first token; tokens
and estimated cost by widget; the store's commits (events, batch sizes, commit time).

Read only when Prometheus scrapes (``_Scraped``): subscriber lag (from each runner's position in
memory), the replica's lag and last sync (from the status Litestream's poll keeps), and the
sizes of the database file and its WAL. Nothing there runs per request.

Labels are bounded sets: route templates, methods, statuses, providers, reply codes, and widget
ids (at most ``max_widgets`` of them; the rest count as ``other``). Visitors, conversations and
messages are never labels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from loacl.services.observer import ReplyObserver

if TYPE_CHECKING:
    from loacl.settings import ModelPrice

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"  # a path no route serves (a scan): one label, not one per path
OTHER = "other"

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_FIRST_TOKEN = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
_TOKENS = (16, 64, 256, 1024, 4096, 16384, 65536)
_COMMIT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics(ReplyObserver):
    def __init__(
        self, prices: Mapping[str, ModelPrice] | None = None, *, max_widgets: int = 500,
        process: bool = True,
    ) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.prices = dict(prices or {})
        self.max_widgets = max_widgets
        self._widgets: set[str] = set()
        self.http_requests = Counter(
            "loacl_http_requests", "HTTP requests answered, by route template, method and "
            "status", ("route", "method", "status"), registry=registry)
        self.http_latency = Histogram(
            "loacl_http_request_duration_seconds", "Time to answer an HTTP request (to the "
            "end of its body), by route template and method", ("route", "method"),
            buckets=_LATENCY, registry=registry)
        self.websockets = Gauge(
            "loacl_websockets_open", "WebSocket connections open now", registry=registry)
        self.replies_started = Counter(
            "loacl_replies_started", "Replies asked of a provider", ("provider",),
            registry=registry)
        self.replies_ended = Counter(
            "loacl_replies_ended", "Replies ended, by provider, outcome (completed, failed, "
            "interrupted) and reason (the failure's code)", ("provider", "outcome", "reason"),
            registry=registry)
        self.first_token_seconds = Histogram(
            "loacl_provider_first_token_seconds", "Time from a reply's start to the "
            "provider's first piece of text", ("provider",), buckets=_FIRST_TOKEN,
            registry=registry)
        self.reply_tokens = Histogram(
            "loacl_reply_output_tokens", "Output tokens per completed reply", ("provider",),
            buckets=_TOKENS, registry=registry)
        self.widget_tokens = Counter(
            "loacl_widget_tokens", "Tokens used by replies, by widget and direction (input, "
            "output)", ("widget", "direction"), registry=registry)
        self.widget_cost = Counter(
            "loacl_widget_cost_dollars", "Estimated US dollars of replies, by widget (models "
            "with a price only)", ("widget",), registry=registry)
        self.events_appended = Counter(
            "loacl_events_appended", "Events committed to the log", registry=registry)
        self.commit_seconds = Histogram(
            "loacl_store_commit_seconds", "Time to write and commit one group of appends",
            buckets=_COMMIT, registry=registry)
        self.batch_requests = Histogram(
            "loacl_store_batch_appends", "Appends committed together in one transaction "
            "(group commit)", buckets=_BATCH, registry=registry)
        self.scraped = _Scraped()
        registry.register(self.scraped)
        if process:
            ProcessCollector(registry=registry)
        # Children looked up once per label set: the hot path is then an add under a lock.
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    # -- HTTP --------------------------------------------------------------------------------

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._http.get(key)
        if children is None:
            children = self._http[key] = (
                self.http_requests.labels(route, method, str(status)),
                self.http_latency.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)

    # -- the store (called on the writer thread) ---------------------------------------------

    def committed(self, appends: int, events: int, seconds: float) -> None:
        self.events_appended.inc(events)
        self.commit_seconds.observe(seconds)
        self.batch_requests.observe(appends)

    # -- replies (ReplyObserver) -------------------------------------------------------------

    def started(self, provider: str) -> None:
        self.replies_started.labels(provider).inc()

    def first_token(self, provider: str, seconds: float) -> None:
        self.first_token_seconds.labels(provider).observe(seconds)

    def ended(
        self, provider: str, widget_id: str, model: str, outcome: str, reason: str,
        input_tokens: int, output_tokens: int,
    ) -> None:
        self.replies_ended.labels(provider, outcome, reason or "none").inc()
        if outcome == "completed":
            self.reply_tokens.labels(provider).observe(output_tokens)
        widget = self._widget_label(widget_id)
        if input_tokens:
            self.widget_tokens.labels(widget, "input").inc(input_tokens)
        if output_tokens:
            self.widget_tokens.labels(widget, "output").inc(output_tokens)
        price = self._price(model)
        if price is not None and (input_tokens or output_tokens):
            cost = (input_tokens * price.input + output_tokens * price.output) / 1_000_000
            self.widget_cost.labels(widget).inc(cost)

    def _widget_label(self, widget_id: str) -> str:
        if widget_id in self._widgets:
            return widget_id
        if len(self._widgets) < self.max_widgets and widget_id:
            self._widgets.add(widget_id)
            return widget_id
        return OTHER

    def _price(self, model: str) -> ModelPrice | None:
        from loacl.services.budgets import price_of

        return price_of(model, self.prices)

    # -- scraping ----------------------------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Scraped(Collector):
    """Values read when Prometheus asks, from callables the app wires in (``watch``)."""

    def __init__(self) -> None:
        self.head: Any = None  # () -> int: the log's last position this process knows
        self.positions: Any = None  # () -> {subscriber: position}
        self.failures: Any = None  # () -> {subscriber: failures in a row}
        self.database: Path | None = None
        self.replica: Any = None  # () -> (lag seconds, last sync unix time | None) | None

    def watch(
        self, *, head: Any, positions: Any, failures: Any, database: Path, replica: Any = None
    ) -> None:
        self.head, self.positions, self.failures = head, positions, failures
        self.database, self.replica = database, replica

    def collect(self) -> Iterable[Metric]:
        if self.positions is not None:
            head = int(self.head())
            lag = GaugeMetricFamily("loacl_subscriber_lag_events", "Events in the log after "
                                    "a subscriber's position", labels=("subscriber",))
            failures = GaugeMetricFamily("loacl_subscriber_failures", "Failed attempts in a "
                                         "row of a subscriber (0: healthy)",
                                         labels=("subscriber",))
            failed = self.failures()
            for name, position in sorted(self.positions().items()):
                lag.add_metric((name,), max(0, head - position) if position >= 0 else head)
                failures.add_metric((name,), failed.get(name, 0))
            yield lag
            yield failures
            yield GaugeMetricFamily("loacl_events_head", "The log's last position", head)
        if self.database is not None:
            yield GaugeMetricFamily("loacl_database_bytes", "Size of the database file",
                                    _size(self.database))
            yield GaugeMetricFamily("loacl_database_wal_bytes", "Size of the database's WAL",
                                    _size(Path(f"{self.database}-wal")))
        if self.replica is not None:
            found = self.replica()
            if found is not None:
                lag_seconds, last_sync = found
                yield GaugeMetricFamily("loacl_replica_lag_seconds", "Age of the oldest "
                                        "change not yet on the replica (0: caught up)",
                                        lag_seconds)
                if last_sync is not None:
                    yield GaugeMetricFamily("loacl_replica_last_sync_timestamp_seconds",
                                            "When the replica's newest transaction was made "
                                            "(Unix time)", last_sync)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
