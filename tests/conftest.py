from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from loacl.cli import main
from loacl.openai_testserver import OpenAITestServer, running
from loacl.settings import CONFIG_ENV, ENV_NAMES, Settings
from loacl.store import migrations
from loacl.store.eventstore import EventStore
from loacl.store.projections import default_projections
from loacl.store.sqlite import connect
from tests import pg
from tests.live import OPEN_LIMITS


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A migrated, empty database file."""
    path = tmp_path / "loacl.db"
    conn = connect(path)
    migrations.up(conn)
    conn.close()
    return path


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[EventStore]:
    async with EventStore(db_path, default_projections()) as opened:
        yield opened


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'loacl.db'}",
        data_dir=tmp_path / "data",
        log_format="text",
        # Cheap hashes keep the suite fast; production defaults are tested in test_passwords.
        argon2_time_cost=1,
        argon2_memory_kib=64,
        argon2_parallelism=1,
        # Tests count the events they cause; the home page's demo is tested on its own.
        demo_widget=False,
        **OPEN_LIMITS,
    )


@pytest.fixture
def chdir_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in an empty folder, so no loacl.toml of the checkout is picked up."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path


RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run_cli(
    chdir_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> RunCli:
    """``run_cli(db, *args)``: the CLI in this process against the database file ``db``, with
    no setting from the environment; returns the exit code, stdout and stderr."""
    for name in [CONFIG_ENV, *ENV_NAMES.values()]:
        monkeypatch.delenv(name, raising=False)

    def run(db: Path, *args: str) -> tuple[int, str, str]:
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{db}")
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def openai_server() -> Iterator[tuple[OpenAITestServer, str]]:
    """The project's OpenAI-compatible test server on a loopback port, one per test module
    (starting one per test costs more than the tests), and its base URL."""
    server = OpenAITestServer()
    with running(server) as url:
        yield server, url


@pytest.fixture
def server(openai_server: tuple[OpenAITestServer, str]) -> OpenAITestServer:
    """The module's test server, with no scripted replies and no recorded requests."""
    openai_server[0].reset()
    return openai_server[0]


@pytest.fixture
def root(openai_server: tuple[OpenAITestServer, str], server: OpenAITestServer) -> str:
    return openai_server[1]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[tuple[pg.Cluster, str]]:
    """A PostgreSQL server for the session (tests/pg.py) and the name of a migrated template
    database on it. Skipped when none can be had, failed under CI=true."""
    try:
        with pg.cluster() as running:
            template = pg.run_apart(pg.migrated_template(running))
            yield running, template
            pg.run_apart(pg.drop_database(running, template))
    except (pg.Unavailable, OSError, asyncpg.PostgresError) as exc:
        pg.failed_to_start(str(exc))


_pg_databases = itertools.count(1)


# Plain fixtures (their work on a loop apart): an async fixture may ask for them by name.
@pytest.fixture
def pg_url(pg_cluster: tuple[pg.Cluster, str]) -> Iterator[str]:
    """A migrated, empty PostgreSQL database of this test's own."""
    running, template = pg_cluster
    name = f"loacl_test_{os.getpid()}_{next(_pg_databases)}"
    yield pg.run_apart(pg.create_database(running, name, template))
    pg.run_apart(pg.drop_database(running, name))


@pytest.fixture
def pg_empty_url(pg_cluster: tuple[pg.Cluster, str]) -> Iterator[str]:
    """A PostgreSQL database of this test's own with no table at all."""
    running, _ = pg_cluster
    name = f"loacl_empty_{os.getpid()}_{next(_pg_databases)}"
    yield pg.run_apart(pg.create_database(running, name))
    pg.run_apart(pg.drop_database(running, name))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``-n``), the tests marked ``long`` first, the rest in their order.
    Spread a file at a time (``--dist loadfile``: a module's fixture then sees all of its
    module's tests, as the replay checks at their teardown expect), the files with long tests
    start first, and none of them near the end, where it would keep one worker busy after the
    others have run out. A run in one process keeps the files' order."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("long") is None)
