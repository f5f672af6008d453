"""``create_app(settings)``: the one function that wires LOACL together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from loacl import __version__, tracing
from loacl.domain.errors import LoaclError
from loacl.http import (
    apidocs,
    auth,
    chat,
    console,
    handoff,
    health,
    inbox,
    models,
    openapi,
    owner_stream,
    owners,
    privacy,
    routing,
    static,
    stream,
    telemetry,
    usage,
    visitors,
    webhooks,
    workspaces,
)
from loacl.http import knowledge as knowledge_http
from loacl.http.errors import EXCEPTION_HANDLERS
from loacl.http.middleware import RequestIdMiddleware, SecurityHeadersMiddleware
from loacl.private import FILE_MODE, FOLDER_MODE, too_open
from loacl.services.accounts import Accounts
from loacl.services.assistants import Assistants
from loacl.services.budgets import BudgetMail, Budgets
from loacl.services.chat import Chat
from loacl.services.demo import Demo, demo_enabled
from loacl.services.files import Files
from loacl.services.handoff import Handoffs
from loacl.services.handoff_mail import HandoffMail
from loacl.services.inbox import Inbox
from loacl.services.keys import keyring_for
from loacl.services.knowledge import Knowledge
from loacl.services.limits import VisitorLimits
from loacl.services.mail import Mailer
from loacl.services.models import Models
from loacl.services.observer import NO_OBSERVER
from loacl.services.passwords import Passwords
from loacl.services.privacy import Privacy
from loacl.services.recovery import recover
from loacl.services.remote_replies import RemoteReplies
from loacl.services.retention import Retention
from loacl.services.tokens import Tokens
from loacl.services.webhooks import Dispatcher, Webhooks
from loacl.services.widgets import Widgets
from loacl.services.workspaces import Workspaces
from loacl.settings import MASTER_KEY_FILE, Settings, jwt_secret
from loacl.store import integrity, migrations
from loacl.store.backup import ServeLock
from loacl.store.eventstore import Clock, EventStore, utc_now
from loacl.store.handoff_mails import SqliteHandoffMails
from loacl.store.operational import DeliveryTable, MailRecord
from loacl.store.postgres.operational import WAKE as DELIVERIES
from loacl.store.postgres.operational import PgDeliveries, PgHandoffMails
from loacl.store.postgres.operational import adopt as adopt_operational
from loacl.store.postgres.upstream import PgUpstream
from loacl.store.projections import default_projections
from loacl.store.replica.supervisor import Replication
from loacl.store.sqlite import check_version, connect
from loacl.store.subscribers import default_subscribers
from loacl.store.subscriptions import Subscriptions
from loacl.store.views.webhooks import SqliteDeliveries
from loacl.store.watch import Watch
from loacl.telemetry.metrics import Metrics

log = structlog.get_logger(__name__)


def prepare_database(settings: Settings) -> None:
    """Check the SQLite version, bring the schema up to date (or check it is), and refuse a
    damaged file or a broken hash chain."""
    check_version()
    # Under Litestream even the migrations leave checkpoints to it (store.sqlite.connect).
    conn = connect(settings.database_path, autocheckpoint=0 if settings.under_litestream else None)
    try:
        if settings.auto_migrate:
            for step in migrations.up(conn):
                log.info("migrate.applied", version=step.version, name=step.name)
        elif migrations.current(conn) < migrations.LATEST:
            raise LoaclError(
                "schema_out_of_date", "the database needs migrations: run `loacl migrate up`"
            )
        result = integrity.check_at_start(conn)
        log.info("integrity.checked", events=result.events)
    finally:
        conn.close()


def warn_open_files(settings: Settings) -> None:
    """Warn about each private file or folder that others may read (made so before, or by
    hand): the data folder should be 0700, the database, its WAL, the key and the outbox 0600."""
    db = settings.database_path
    outbox = settings.data_dir / "outbox"
    paths = [settings.data_dir, db, Path(f"{db}-wal"), Path(f"{db}-shm"),
             settings.data_dir / "jwt_secret", settings.data_dir / MASTER_KEY_FILE, outbox]
    if outbox.is_dir():
        paths += sorted(outbox.glob("*.eml"))
    for path, mode in too_open(dict.fromkeys(paths)):
        log.warning("files.too_open", path=str(path), mode=mode,
                    expected=oct(FOLDER_MODE if path.is_dir() else FILE_MODE),
                    fix=f"chmod {'700' if path.is_dir() else '600'} {path}")


def replica_figures(replication: Replication) -> tuple[float, float | None] | None:
    """The replica's lag and last sync as its status poll last read them, for metrics."""
    found = replication.status
    if found is None:
        return None
    synced = found.last_sync.timestamp() if found.last_sync is not None else None
    return found.lag_seconds, synced


def serve_metrics(metrics: Metrics | None, listen: str | None) -> Any:
    """The metrics on an address of their own (``metrics_listen``), served by
    prometheus_client's small HTTP server in a thread; None when not asked for."""
    if metrics is None or not listen:
        return None
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), host or "0.0.0.0", metrics.registry)
    log.info("metrics.listening", address=f"{host}:{server.server_port}")
    return server


async def _recover_every(store: EventStore, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await recover(store, quiet=True)
        except Exception:
            log.exception("recovery.failed")


def create_app(
    settings: Settings, *, clock: Clock = utc_now, mailer: Mailer | None = None
) -> Starlette:
    metrics = (
        Metrics(settings.model_prices, max_widgets=settings.metrics_max_widgets)
        if settings.metrics_enabled else None
    )
    tracing.configure(settings.otel_exporter_otlp_endpoint, version=__version__)
    keyring = keyring_for(settings, clock)
    store = EventStore(
        settings.database_path, default_projections(), clock=clock,
        autocheckpoint=0 if settings.replica_url or settings.under_litestream else None,
        keyring=keyring,
        on_commit=metrics.committed if metrics is not None else None,
        # With a PostgreSQL log, the file is this instance's copy of it (docs/scale-out.md).
        upstream=PgUpstream(settings.postgres_url, keyring, auto_migrate=settings.auto_migrate)
        if settings.postgres_url else None,
    )
    replication = None
    if settings.replica_url:
        replication = Replication(
            settings.replica_url, settings.database_path, settings.data_dir, store,
            supervise=not settings.under_litestream,
        )
    watch = Watch(settings.database_path, settings.integrity_check_minutes * 60, clock)
    lock = ServeLock(settings.database_path)
    mailer = mailer or Mailer.from_settings(settings)
    limits = VisitorLimits(settings)
    budgets = Budgets(store, settings, clock)
    server_key = jwt_secret(settings)
    # Deliveries and the mails' record: in PostgreSQL with the log, so that every instance
    # reads the same and any may send what is due (docs/scale-out.md); else in the file.
    deliveries: DeliveryTable = SqliteDeliveries(store)
    mails_sent: MailRecord = SqliteHandoffMails(store)
    if store.upstream is not None:
        # A claim outlives the longest send, lest a second instance take it over meanwhile.
        deliveries = PgDeliveries(store, store.upstream,
                                  lease_seconds=2 * settings.outbound_timeout_seconds + 30)
        mails_sent = PgHandoffMails(store.upstream)
    hooks = Webhooks(store, settings, server_key, mailer, clock, deliveries)
    if store.upstream is not None:
        store.upstream.listen(DELIVERIES, hooks.wake.set)
    dispatcher = Dispatcher(hooks)

    def visitor_online(conversation_id: str) -> bool:
        return any(c.access.conversation_id == conversation_id
                   for c in stream.open_connections(app))

    subscriptions = Subscriptions(store, [
        *default_subscribers(), BudgetMail(budgets, mailer, hooks.budget_reached).subscriber(),
        hooks.subscriber(), HandoffMail(store, settings, mailer, visitor_online,
                                        mails_sent).subscriber(),
    ])
    passwords = Passwords(
        settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
    )
    tokens = Tokens(
        server_key, settings.jwt_algorithm, settings.access_token_expire_minutes, clock
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not lock.acquire():
            raise LoaclError(
                "database_in_use", f"another LOACL server uses {settings.database_path}"
            )
        try:
            await asyncio.to_thread(prepare_database, settings)
            warn_open_files(settings)
            await store.open()
            metrics_server = None
            recovering: asyncio.Task[None] | None = None
            try:
                if replication is not None:
                    await replication.start()
                elif settings.under_litestream:
                    log.warning("replica.not_configured", under_litestream=True,
                                remedy="set LOACL_REPLICA_URL to the replica Litestream uses, "
                                "so that /readyz reports it")
                await recover(store)
                if store.upstream is not None:
                    # Deliveries and mails a copy kept before PostgreSQL held them: moved there.
                    moved = await adopt_operational(store, store.upstream)
                    if moved:
                        log.info("operational.adopted", rows=moved)
                    # Replies left by an instance that stopped while this one runs.
                    recovering = asyncio.create_task(_recover_every(store, 60.0))
                if demo_enabled(settings):
                    await demo.ensure_or_go_without()
                else:
                    await demo.retire()
                await subscriptions.start()
                await knowledge.start()
                metrics_server = serve_metrics(metrics, settings.metrics_listen)
                dispatcher.start()
                retention.start()
                watch.start()
                log.info("loacl.started", version=__version__, database=str(store.path))
                # A full collection walks every object the process holds, and most are the
                # modules', the SDKs' and the app's own, which live as long as it does: frozen
                # once started, they are left out of every collection, whose pauses otherwise
                # hold the event loop (and every socket) for tens of milliseconds.
                gc.collect()
                gc.freeze()
                yield
            finally:
                gc.unfreeze()  # an app started again in this process (tests) freezes afresh
                if metrics_server is not None:
                    await asyncio.to_thread(metrics_server.shutdown)
                    metrics_server.server_close()
                tracing.shutdown()
                await watch.stop()
                if recovering is not None:
                    recovering.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await recovering
                await retention.stop()
                await chat_service.shutdown()
                if remote is not None:
                    await remote.close()
                await knowledge.stop()
                await dispatcher.stop()
                await hooks.aclose()
                await mailer.drain()
                # Before the store closes: a runner cut short resumes at its checkpoint.
                await subscriptions.stop()
                await store.close()
                if replication is not None:
                    # After the store: Litestream's last sync ships the last commits.
                    await replication.stop()
        finally:
            lock.release()

    app = Starlette(
        routes=routing.routes(
            health.endpoints, openapi.endpoints, apidocs.endpoints, auth.endpoints,
            visitors.endpoints, chat.endpoints, stream.endpoints, owners.endpoints,
            usage.endpoints, privacy.endpoints, inbox.endpoints, handoff.endpoints,
            models.endpoints, owner_stream.endpoints, webhooks.endpoints, workspaces.endpoints,
            telemetry.endpoints, static.endpoints,
            console.endpoints, knowledge_http.endpoints,
        ),
        middleware=[
            # First: every layer below sees the client's own address and scheme.
            Middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies),
            Middleware(SecurityHeadersMiddleware, hsts_seconds=settings.hsts_seconds),
            Middleware(RequestIdMiddleware),
            Middleware(telemetry.TelemetryMiddleware, metrics=metrics),
            Middleware(static.SameOriginMiddleware),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.subscriptions = subscriptions
    app.state.replication = replication
    app.state.metrics = metrics
    app.state.webhooks = hooks
    if metrics is not None:
        metrics.scraped.watch(
            head=lambda: store.notifier.head, positions=subscriptions.positions,
            failures=subscriptions.failures, database=settings.database_path,
            replica=None if replication is None else lambda: replica_figures(replication),
        )
    app.state.integrity = watch
    app.state.clock = clock
    app.state.accounts = Accounts(store, settings, passwords, tokens, mailer, clock)
    app.state.workspaces = Workspaces(store, app.state.accounts)
    app.state.assistants = Assistants(store, settings, server_key)
    app.state.limits = limits
    app.state.budgets = budgets
    app.state.widgets = Widgets(store, tokens, server_key, limits)
    app.state.demo = demo = Demo(store, settings, app.state.assistants, app.state.widgets)
    app.state.knowledge = knowledge = Knowledge(store, settings)
    app.state.assistants.deleted = knowledge.settle
    app.state.chat = chat_service = Chat(
        store, settings, limits=limits, budgets=budgets, server_key=server_key,
        observer=metrics if metrics is not None else NO_OBSERVER, knowledge=knowledge,
    )
    app.state.files = Files(store, settings, limits)
    app.state.inbox = Inbox(store)
    app.state.handoffs = handoffs = Handoffs(store, settings.typing_interval_seconds)
    chat_service.handoffs = handoffs
    # With a PostgreSQL log: replies streaming on other instances, followed here (their text
    # sent live once per socket window, the log bringing it in any case), and the other way.
    remote = RemoteReplies(
        chat_service, store.upstream, settings.ws_coalesce_ms / 1000
    ) if store.upstream else None
    if remote is not None:
        store.on_copied.append(remote.take_all)
    app.state.models = Models(settings)
    # Under Litestream the WAL's checkpoints are Litestream's: an erasure does not cut it.
    app.state.privacy = Privacy(
        store, chat_service.stop,
        truncate_wal=not (settings.replica_url or settings.under_litestream),
    )
    app.state.retention = retention = Retention(
        app.state.privacy, clock, every_seconds=settings.retention_check_minutes * 60,
        batch=settings.retention_batch,
    )
    return app
