"""Liveness and readiness.

``/healthz`` says the process answers. ``/readyz`` says whether it can do its work, within a
second and without waiting for the writer's queue: each check is named in the answer with its
outcome, and a failed one makes it a 503 ``not_ready`` problem.

- ``store``: the writer's latest commit succeeded (``EventStore.writer_health``); when it has not
  committed lately, the write lock is taken and released on a connection of its own.
- ``disk``: the database's filesystem has at least ``min_free_disk_mb`` free.
- ``integrity``: the latest of the running server's integrity checks (``store/watch.py``) found
  no damage; until the first, the start-up check vouches for the file.
- ``replica`` (when ``replica_url`` is set): Litestream runs, the replica can be read, and it is
  at most a minute behind; with its last sync and lag. This one is reported, never failed on:
  the answer stays 200 with the problem under ``warnings``. /readyz decides whether visitors are
  sent here (and whether a container is restarted); a replica that cannot be reached is no
  reason to stop them chatting, and a restart would not bring the replica back. What they write
  meanwhile is shipped once it is back.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loacl.domain.errors import LoaclError
from loacl.http.errors import problem
from loacl.http.routing import Endpoint
from loacl.store.eventstore import EventStore
from loacl.store.replica.supervisor import Replication
from loacl.store.watch import Watch

RECENT_COMMIT = 1.0
# A failed commit keeps the server not ready this long even when the lock is free (a full disk
# still hands out the lock). After that the probe decides: a server taken out of rotation gets no
# appends, and a verdict only a commit could lift would never be lifted.
FAILURE_HOLD = 30.0
# The writer waits up to its busy timeout (5 s) for the lock; a commit running far longer is stuck.
STUCK_AFTER = 10.0
HEAD_WAIT = 0.3
MB = 1024 * 1024


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def store_check(store: EventStore) -> dict[str, Any]:
    health = store.writer_health
    now = time.monotonic()
    if health.failing() and now - (health.last_failure or now) < FAILURE_HOLD:
        return {"ok": False, "error": f"the last commit failed: {health.last_error}"}
    busy = health.busy_since
    if busy is not None and now - busy > STUCK_AFTER:
        return {"ok": False, "error": f"a commit has been running for {now - busy:.0f} s"}
    # A commit under way or just done vouches for the write path; the probe would only compete
    # with the writer. One waiting longer may be waiting for a lock held elsewhere: probe it.
    recent = max(busy or 0.0, health.last_success or 0.0)
    if not health.failing() and recent and now - recent < RECENT_COMMIT:
        return {"ok": True}
    try:
        await store.probe_write_lock()
    except LoaclError as exc:
        success = health.last_success
        if success is not None and success > now:
            return {"ok": True}  # it was the writer's own commit that held the lock
        return {"ok": False, "error": exc.message}
    return {"ok": True}


def disk_check(store: EventStore, min_free_mb: int) -> dict[str, Any]:
    try:
        free_mb = shutil.disk_usage(store.path.parent).free // MB
    except OSError as exc:
        return {"ok": False, "error": f"cannot read the free disk space: {exc.strerror}"}
    check: dict[str, Any] = {"ok": free_mb >= min_free_mb, "free_mb": free_mb,
                             "min_free_mb": min_free_mb}
    if not check["ok"]:
        check["error"] = f"{free_mb} MB free, fewer than the {min_free_mb} MB required"
    return check


def integrity_check(watch: Watch) -> dict[str, Any]:
    verdict = watch.verdict
    if verdict is None:
        return {"ok": True, "checked": "at start-up"}
    check: dict[str, Any] = {"ok": verdict.ok, "checked": verdict.checked_at}
    if not verdict.ok:
        check |= {"code": verdict.code, "error": verdict.error}
    return check


async def readyz(request: Request) -> Response:
    store: EventStore = request.app.state.store
    checks = {
        "store": await store_check(store),
        "disk": disk_check(store, request.app.state.settings.min_free_disk_mb),
        "integrity": integrity_check(request.app.state.integrity),
    }
    failed = [f"{name}: {check['error']}" for name, check in checks.items() if not check["ok"]]
    replication: Replication | None = request.app.state.replication
    if replication is not None:
        checks["replica"] = replication.check()
    warnings = [f"replica: {checks['replica']['error']}"] if (
        "replica" in checks and not checks["replica"]["ok"]) else []
    if failed:
        return problem(503, "not_ready", "; ".join(failed), request, checks=checks)
    body: dict[str, Any] = {"status": "ready", "checks": checks}
    if warnings:
        body["warnings"] = warnings
    try:
        # The reader's thread may be busy with a long read: the count is left out, not awaited.
        body["events"] = await asyncio.wait_for(store.head(), HEAD_WAIT)
    except TimeoutError:
        body["events"] = None
    return JSONResponse(body)


# Probes for the machine that runs LOACL, not part of the API.
endpoints = [
    Endpoint("get", "/healthz", healthz, "Liveness", documented=False),
    Endpoint("get", "/readyz", readyz, "Readiness: the store commits and the disk has room",
             documented=False),
]
