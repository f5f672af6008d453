"""A throwaway PostgreSQL cluster for the tests: ``initdb`` in a temporary folder, started on a
free loopback port with its socket in that folder, stopped and removed at the end of the session.
``LOACL_TEST_POSTGRES_URL`` names a server to use instead (its user must be able to create
databases). Each test gets a database of its own, copied from a template (``CREATE DATABASE ...
TEMPLATE``), which costs a file copy rather than a migration.

``initdb`` and ``postgres`` refuse to run as root: as root (CI), the cluster's folder is given to
the unprivileged ``nobody`` and both run as that user (``runuser``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from loacl.store.postgres import migrate

URL_ENV = "LOACL_TEST_POSTGRES_URL"
TEMPLATE = "loacl_template"
RUN_AS = "nobody"
T = TypeVar("T")


class Unavailable(Exception):
    """No PostgreSQL server could be had; the message says why."""


def binaries() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, or Debian's versioned folder."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    # Debian keeps them out of PATH, one folder per major version: take the newest.
    folders = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda f: int(Path(f).parent.name) if Path(f).parent.name.isdigit() else 0,
    )
    for folder in reversed(folders):
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    raise Unavailable(
        "PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql/*/bin); "
        f"install Debian's postgresql package or set {URL_ENV}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """A running cluster: the server's URL without a database name, and how to stop it."""

    base_url: str  # postgresql://user@host:port
    folder: Path | None = None  # ours to stop and remove; None for a server given by URL
    pg_ctl: list[str] | None = None
    admin_url: str | None = None  # where databases are created from; "postgres" by default

    def url(self, database: str) -> str:
        return f"{self.base_url}/{database}"

    @property
    def admin(self) -> str:
        return self.admin_url or self.url("postgres")

    def stop(self) -> None:
        if self.folder is None or self.pg_ctl is None:
            return
        subprocess.run(
            [*self.pg_ctl, "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop"],
            capture_output=True, check=False, timeout=60,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def _as_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix that drops root (and the uid and gid to give the folder), or nothing
    when not root."""
    if os.geteuid() != 0:
        return [], None, None
    runuser = shutil.which("runuser") or shutil.which("setpriv")
    if runuser is None:
        raise Unavailable("running as root and neither runuser nor setpriv is installed")
    user = pwd.getpwnam(RUN_AS)
    if runuser.endswith("runuser"):
        return [runuser, "-u", RUN_AS, "--"], user.pw_uid, user.pw_gid
    return (
        [runuser, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"],
        user.pw_uid, user.pw_gid,
    )


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise Unavailable(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def start_cluster() -> Cluster:
    """A new cluster in a temporary folder, started; ``Unavailable`` when it cannot be."""
    bin_dir = binaries()
    prefix, uid, gid = _as_user()
    # Under /tmp itself, not pytest's folder: the unprivileged user must reach it.
    folder = Path(tempfile.mkdtemp(prefix="loacl-pg-"))
    try:
        if uid is not None and gid is not None:
            os.chown(folder, uid, gid)
        data = folder / "data"
        _run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            "initdb",
        )
        pg_ctl = [*prefix, str(bin_dir / "pg_ctl")]
        for _attempt in range(3):  # the free port may be taken between the probe and the bind
            port = free_port()
            # fsync off: a crash of the test machine loses a throwaway cluster, nothing more.
            options = (
                f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c full_page_writes=off "
                "-c max_connections=200"
            )
            started = subprocess.run(
                [*pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-o", options,
                 "-w", "-t", "60", "start"],
                capture_output=True, text=True, check=False, timeout=120,
            )
            if started.returncode == 0:
                return Cluster(f"postgresql://postgres@127.0.0.1:{port}", folder, pg_ctl)
        log = (folder / "server.log").read_text(errors="replace")[-2000:]
        raise Unavailable(f"postgres did not start: {started.stderr.strip()} {log}")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _server_url(url: str) -> str:
    """A URL without its database name (and query)."""
    head, _, rest = url.partition("://")
    return f"{head}://{rest.split('/', 1)[0]}"


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    """The server named by ``LOACL_TEST_POSTGRES_URL``, or a cluster of our own."""
    given = os.environ.get(URL_ENV)
    if given:
        yield Cluster(_server_url(given), admin_url=given)
        return
    running = start_cluster()
    try:
        yield running
    finally:
        running.stop()


async def create_database(cluster: Cluster, name: str, template: str = "template0") -> str:
    """A new database copied from ``template``; its URL."""
    conn = await asyncpg.connect(cluster.admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    return cluster.url(name)


async def drop_database(cluster: Cluster, name: str) -> None:
    conn = await asyncpg.connect(cluster.admin)
    try:
        # FORCE: a test that failed half-way may have left a connection open.
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def migrated_template(cluster: Cluster) -> str:
    """A database at the latest schema for tests to copy; refused as a template while anything
    is connected to it, so the migration's connection is closed before."""
    name = f"{TEMPLATE}_{os.getpid()}"
    await drop_database(cluster, name)
    url = await create_database(cluster, name)
    conn = await asyncpg.connect(url)
    try:
        await migrate.up(conn)
    finally:
        await conn.close()
    return name


def run_apart(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on a loop of its own, in a thread: the session fixture may be
    set up from inside a test's running loop (``getfixturevalue`` in an async fixture)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


def failed_to_start(reason: str) -> None:
    """Under CI=true a missing server fails the test; elsewhere it is skipped."""
    message = f"PostgreSQL is not available: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
