"""/healthz and /readyz: readiness names each check, answers without waiting for the writer, and
says not ready while the database cannot commit or the disk is short of room."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from loacl.domain.accounts import EmailVerified
from loacl.http import health
from loacl.http.app import create_app
from loacl.settings import Settings
from loacl.store.eventstore import EventStore
from tests.live import serve

# Far less than the writer's busy timeout (5 s), which the old check waited out.
ANSWER_WITHIN = 3.0
PASSWORD = "correct horse battery staple"


@contextlib.contextmanager
def write_lock_held(settings: Settings) -> Iterator[None]:
    """Another process's connection holding the database's write lock."""
    with contextlib.closing(
        sqlite3.connect(settings.database_path, isolation_level=None)
    ) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


def register(client: TestClient, email: str) -> int:
    response = client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    return response.status_code


def test_healthz_is_trivial(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}


def test_a_fresh_server_is_ready_and_names_its_checks(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["events"] == 0
    assert body["checks"]["store"] == {"ok": True}
    disk = body["checks"]["disk"]
    assert disk["ok"] is True
    assert disk["min_free_mb"] == 100
    assert disk["free_mb"] >= 100


def test_not_ready_at_once_while_another_process_holds_the_write_lock(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Start-up may have committed a moment ago; that commit must not vouch for the lock here.
    monkeypatch.setattr(health, "RECENT_COMMIT", 0.0)
    with serve(create_app(settings)) as url, httpx.Client(timeout=ANSWER_WITHIN) as client:
        with write_lock_held(settings):
            held = client.get(f"{url}/readyz")
        released = client.get(f"{url}/readyz")
    assert held.status_code == 503
    assert held.headers["content-type"] == "application/problem+json"
    problem = held.json()
    assert problem["code"] == "not_ready"
    assert problem["checks"]["store"]["ok"] is False
    assert "write lock" in problem["checks"]["store"]["error"]
    assert problem["checks"]["disk"]["ok"] is True
    assert problem["detail"].startswith("store: ")
    assert released.status_code == 200
    assert released.json()["checks"]["store"] == {"ok": True}


def test_not_ready_when_the_disk_has_less_room_than_the_setting(settings: Settings) -> None:
    hungry = settings.model_copy(update={"min_free_disk_mb": 1 << 40})
    with TestClient(create_app(hungry)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    problem = response.json()
    assert problem["code"] == "not_ready"
    assert problem["checks"]["store"] == {"ok": True}
    disk = problem["checks"]["disk"]
    assert disk["ok"] is False
    assert disk["min_free_mb"] == 1 << 40
    assert "MB free" in disk["error"]
    assert problem["detail"].startswith("disk: ")


def test_a_failed_commit_makes_it_not_ready_until_a_commit_succeeds(settings: Settings) -> None:
    def impatient(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA busy_timeout=0")  # fail at once on a lock held elsewhere

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        store: EventStore = client.app.state.store  # type: ignore[attr-defined]
        portal: Any = client.portal
        portal.call(store.run_on_writer, impatient)
        with write_lock_held(settings):
            assert register(client, "a@example.com") == 503
        # The lock is free again, but the writer has not shown that it can commit.
        failing = client.get("/readyz")
        assert register(client, "b@example.com") == 202
        recovered = client.get("/readyz")
    assert failing.status_code == 503
    store_check = failing.json()["checks"]["store"]
    assert store_check["ok"] is False
    assert store_check["error"].startswith("the last commit failed: ")
    assert recovered.status_code == 200
    assert recovered.json()["checks"]["store"] == {"ok": True}


async def test_the_writer_records_how_its_commits_went(store: EventStore) -> None:
    assert not store.writer_health.failing()
    assert store.writer_health.last_success is None
    await store.append("user-a", [EmailVerified(user_id="a")])
    assert store.writer_health.last_success is not None
    assert store.writer_health.busy_since is None
    assert not store.writer_health.failing()
