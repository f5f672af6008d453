"""``create_app(settings)``: the one function that wires LOACL together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware

from loacl import __version__
from loacl.domain.errors import LoaclError
from loacl.http import health
from loacl.http.errors import EXCEPTION_HANDLERS
from loacl.http.middleware import RequestIdMiddleware
from loacl.services.recovery import recover
from loacl.settings import Settings, jwt_secret
from loacl.store import migrations
from loacl.store.backup import ServeLock
from loacl.store.eventstore import Clock, EventStore, utc_now
from loacl.store.projections import default_projections
from loacl.store.sqlite import check_version, connect

log = structlog.get_logger(__name__)


def prepare_database(settings: Settings) -> None:
    """Check the SQLite version and bring the schema up to date (or check it is)."""
    check_version()
    conn = connect(settings.database_path)
    try:
        if settings.auto_migrate:
            for step in migrations.up(conn):
                log.info("migrate.applied", version=step.version, name=step.name)
        elif migrations.current(conn) < migrations.LATEST:
            raise LoaclError(
                "schema_out_of_date", "the database needs migrations: run `loacl migrate up`"
            )
    finally:
        conn.close()


def create_app(settings: Settings, *, clock: Clock = utc_now) -> Starlette:
    store = EventStore(settings.database_path, default_projections(), clock=clock)
    lock = ServeLock(settings.database_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not lock.acquire():
            raise LoaclError(
                "database_in_use", f"another LOACL server uses {settings.database_path}"
            )
        try:
            await asyncio.to_thread(prepare_database, settings)
            await store.open()
            try:
                await recover(store)
                log.info("loacl.started", version=__version__, database=str(store.path))
                yield
            finally:
                await store.close()
        finally:
            lock.release()

    app = Starlette(
        routes=[*health.routes],
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.jwt_secret = jwt_secret(settings)
    app.state.clock = clock
    return app
