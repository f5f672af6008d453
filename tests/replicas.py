"""Replicas for the Litestream tests: a folder, or a bucket on an S3-compatible server (moto's,
started on a loopback port as its own process)."""

from __future__ import annotations

import contextlib
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from loacl.settings import load_settings
from loacl.store.replica import status, urls
from tests.test_crash import free_port

WAIT = 60.0  # a guard against a hang, never a measurement
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "loacl-test", "AWS_SECRET_ACCESS_KEY": "loacl-test-secret"}


@dataclass(frozen=True)
class Replica:
    url: str
    env: dict[str, str] = field(default_factory=dict)  # the credentials it needs


class S3Server:
    """``moto_server`` on 127.0.0.1: buckets on demand, gone with the process."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        binary = Path(sys.executable).parent / "moto_server"
        self.log = (folder / "moto.log").open("wb")
        self.process = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + WAIT
        while True:
            assert self.process.poll() is None, "moto_server exited"
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.endpoint, timeout=1)
                return
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.05)

    def replica(self) -> Replica:
        bucket = f"loacl-{secrets.token_hex(4)}"
        created = httpx.put(f"{self.endpoint}/{bucket}", timeout=WAIT)
        assert created.status_code == 200, created.text
        return Replica(f"s3://{bucket}/loacl?endpoint={self.endpoint}&region=us-east-1",
                       dict(S3_CREDENTIALS))

    def close(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@contextlib.contextmanager
def s3_server(folder: Path) -> Iterator[S3Server]:
    server = S3Server(folder)
    try:
        yield server
    finally:
        server.close()


def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """``python -m loacl ARGS`` in a child process with exactly ``env`` on top of this one's
    (what an operator types)."""
    done = subprocess.run(
        [sys.executable, "-m", "loacl", *args], env=env, capture_output=True, text=True,
        timeout=WAIT * 2, check=False,
    )
    return done.returncode, done.stdout, done.stderr


def replica_status(env: dict[str, str]) -> dict[str, Any]:
    """What ``loacl replica status --json`` says for the LOACL that ``env`` configures, read in
    this process (the credentials must be in this process's environment too)."""
    settings = load_settings(environ=env)
    assert settings.replica_url is not None
    db = settings.database_path
    config = urls.write_config(settings.data_dir, db, settings.replica_url)
    position = status.replica_position(config, db)
    conn = sqlite3.connect(db, timeout=WAIT)
    try:
        found = status.status(settings.replica_url, db, conn, position, datetime.now(UTC))
    finally:
        conn.close()
    return found.as_dict()


def wait_caught_up(
    env: dict[str, str], at_least: int = 0, *, past: str | None = None
) -> dict[str, Any]:
    """Poll the replica's status until it holds every event (and ``at_least`` of them, and a
    transaction after ``past``)."""
    deadline = time.monotonic() + WAIT
    while True:
        found = replica_status(env)
        if (found["caught_up"] and found["events"] >= at_least and found["replica_txid"]
                and (past is None or found["replica_txid"] > past)):
            return found
        assert time.monotonic() < deadline, f"the replica did not catch up: {found}"
        time.sleep(0.2)


def wait_shipped_past(env: dict[str, str], txid: str) -> dict[str, Any]:
    """Poll until the replica holds a transaction after ``txid``, caught up or not."""
    deadline = time.monotonic() + WAIT
    while True:
        found = replica_status(env)
        if found["replica_txid"] and found["replica_txid"] > txid:
            return found
        assert time.monotonic() < deadline, f"the replica did not move past {txid}: {found}"
        time.sleep(0.2)
