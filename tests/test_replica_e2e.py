"""Litestream for real, against a folder and against an S3-compatible server (moto's, on
loopback): ``loacl serve`` replicates while fifty visitors stream replies, everything is
SIGKILLed, and ``loacl restore --from-replica`` brings a new folder back with every event the
replica had; a restore to a point in time holds exactly the events recorded up to it.

Replication is asynchronous (a sync a second), so what a kill may lose is what was written after
the replica's last sync: the first fifty replies are checked once ``loacl replica status`` says
the replica caught up with them; the fifty streaming when the kill comes may be cut anywhere,
and the restored log must then be a prefix of the killed server's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Origin

from loacl.cli import main
from loacl.openai_testserver import OpenAITestServer, running
from loacl.settings import Settings, env_name, parse_master_keys
from loacl.store import audit, replay
from loacl.store.keys import Keyring, MasterKeys
from loacl.store.projections import default_projections
from loacl.store.replica import restore
from loacl.store.sqlite import connect
from tests.live import OPEN_LIMITS
from tests.replicas import (
    Replica,
    S3Server,
    cli,
    s3_server,
    wait_caught_up,
    wait_shipped_past,
)
from tests.test_chat import chat_settings, live
from tests.test_crash import Server
from tests.test_stream import MODEL, ORIGIN, PASSWORD, Reply, Tab, reply_text

pytestmark = pytest.mark.e2e

WAIT = 60.0  # a guard against a hang, never a measurement
VISITORS = 50
TABLES = default_projections().tables


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(params=["file", "s3"])
def replica(request: pytest.FixtureRequest, tmp_path: Path) -> Replica:
    if request.param == "file":
        return Replica(f"file://{tmp_path / 'replica'}")
    server: S3Server = request.getfixturevalue("s3")
    return server.replica()


@pytest.fixture
def provider() -> Iterator[tuple[OpenAITestServer, str]]:
    server = OpenAITestServer(token_delay=0.005)
    with running(server) as url:
        yield server, url


# The replica holds personal fields sealed; whoever restores it needs the master key, kept
# outside the data folder (as compose.yaml requires).
MASTER_KEY = base64.b64encode(b"replica-tests-master-key-32bytes").decode()


def child_server(folder: Path, provider_url: str, replica: Replica) -> Server:
    """``loacl serve`` in its own process, replicating to ``replica``, with the visitor limits
    off (every test visitor comes from 127.0.0.1)."""
    server = Server(folder, provider_url)
    server.env |= {"LOACL_REPLICA_URL": replica.url, "LOACL_MASTER_KEY": MASTER_KEY,
                   **replica.env,
                   **{env_name(key): str(value) for key, value in OPEN_LIMITS.items()}}
    return server


def folder_env(base: dict[str, str], folder: Path) -> dict[str, str]:
    """The environment of a LOACL whose database and data live in ``folder``."""
    return base | {"DATABASE_URL": f"sqlite:///{folder / 'loacl.db'}",
                   "LOACL_DATA_DIR": str(folder / "data"), "LOACL_MASTER_KEY": MASTER_KEY}


# -- the log, as files hold it ---------------------------------------------------------------


def events(database: Path) -> list[tuple[int, str, str, str, str]]:
    """(seq, recorded_at, hash, type, payload) of every event."""
    conn = sqlite3.connect(database, timeout=WAIT)
    try:
        rows = conn.execute(
            "SELECT seq, recorded_at, hash, type, payload FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(int(a), str(b), str(c), str(d), str(e)) for a, b, c, d, e in rows]


def messages(database: Path) -> dict[str, tuple[str, str]]:
    """message id -> (status, text)."""
    conn = sqlite3.connect(database, timeout=WAIT)
    try:
        rows = conn.execute("SELECT message_id, status, text FROM messages").fetchall()
    finally:
        conn.close()
    return {str(m): (str(s), str(t)) for m, s, t in rows}


def assert_sound(database: Path) -> None:
    """The hash chain holds, and replay builds exactly the read tables the file holds."""
    conn = connect(database)
    try:
        assert audit.verify(conn).ok
        built = replay.dump_tables(conn, TABLES)
        keys = Keyring(MasterKeys(lambda: parse_master_keys(MASTER_KEY)))
        replay.replay(conn, default_projections(), keys=keys.attach(conn))
        assert replay.dump_tables(conn, TABLES) == built
    finally:
        conn.close()


# -- fifty visitors on a server in its own process --------------------------------------------


def owner_widget(url: str) -> str:
    with httpx.Client(base_url=url, timeout=WAIT) as http:
        assert http.post("/api/v1/auth/register", json={
            "email": "owner@example.com", "password": PASSWORD}).status_code == 202
        login = http.post("/api/v1/auth/login",
                          json={"email": "owner@example.com", "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        assistant = http.post("/api/v1/assistants", headers=headers,
                              json={"name": "Helper", "provider": "openai", "model": MODEL})
        assert assistant.status_code == 201, assistant.text
        widget = http.post("/api/v1/widgets", headers=headers, json={
            "name": "Site", "assistant_id": assistant.json()["id"], "allowed_origins": [ORIGIN],
            "limits": {"messages_per_minute": 600},
        })
        assert widget.status_code == 201, widget.text
        return str(widget.json()["id"])


@contextlib.asynccontextmanager
async def visitor_tab(url: str, widget_id: str) -> Any:
    async with httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
        session = await http.post(f"/api/v1/widgets/{widget_id}/sessions", json={},
                                  headers={"Origin": ORIGIN})
        assert session.status_code == 201, session.text
    token = session.json()["visitor_token"]
    stream = f"{url.replace('http://', 'ws://')}/api/v1/widgets/{widget_id}/stream?token={token}"
    async with ws_connect(stream, origin=Origin(ORIGIN), open_timeout=WAIT,
                          close_timeout=1) as ws:
        tab = Tab(ws)
        assert (await tab.recv())["type"] == "ready"
        yield tab


async def ask(tab: Tab, text: str) -> dict[str, Any]:
    await tab.send({"type": "message", "text": "echo:" + text})
    ack = await tab.next_kind("ack")
    return ack


def litestream_of(pid: int) -> int:
    """The ``litestream`` process ``loacl serve`` (``pid``) started."""
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            if b"litestream" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    raise AssertionError("loacl serve runs no litestream")


@pytest.mark.long
async def test_fifty_streaming_visitors_then_sigkill_then_restore(
    tmp_path: Path, replica: Replica, provider: tuple[OpenAITestServer, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in replica.env.items():
        monkeypatch.setenv(name, value)  # for reading the replica's status from here
    first = tmp_path / "first"
    first.mkdir()
    server = child_server(first, provider[1], replica)
    server.env["LOACL_FLUSH_INTERVAL_MS"] = "50"
    server.start()
    try:
        widget_id = owner_widget(server.url)
        async with contextlib.AsyncExitStack() as stack:
            tabs = [await stack.enter_async_context(visitor_tab(server.url, widget_id))
                    for _ in range(VISITORS)]
            texts = [reply_text(40, tag=f"one{n} ") for n in range(VISITORS)]
            acks = await asyncio.gather(*(ask(tab, text) for tab, text in zip(tabs, texts,
                                                                            strict=True)))
            ends: list[Reply] = await asyncio.gather(*(
                tab.follow(ack["reply_id"]) for tab, ack in zip(tabs, acks, strict=True)))
            assert [reply.text for reply in ends] == texts
            assert all(reply.done and reply.done["status"] == "completed" for reply in ends)

            # The replica catches up with the first fifty replies...
            caught = wait_caught_up(server.env, at_least=len(events(server.database)))

            # ...and fifty more stream when everything is killed.
            seen = len(events(server.database))
            provider[0].token_delay = 0.03  # long enough to be cut by the kill
            more = await asyncio.gather(*(ask(tab, reply_text(300, tag=f"two{n} "))
                                          for n, tab in enumerate(tabs)))
            following = [asyncio.create_task(tab.follow(ack["reply_id"]))
                         for tab, ack in zip(tabs, more, strict=True)]
            deadline = time.monotonic() + WAIT
            while sum(1 for e in events(server.database)[seen:]
                      if e[3] == "assistant.delta") < VISITORS:
                assert time.monotonic() < deadline, "the second replies never streamed"
                await asyncio.sleep(0.05)
            # The replica takes some of them before the kill.
            await asyncio.to_thread(wait_shipped_past, server.env, caught["replica_txid"])
            assert server.process is not None
            os.kill(litestream_of(server.process.pid), signal.SIGKILL)
            server.kill()
            for task in following:
                task.cancel()
            await asyncio.gather(*following, return_exceptions=True)
    finally:
        server.stop()
    killed = events(server.database)

    second = tmp_path / "second"
    code, out, err = cli(folder_env(server.env, second), "restore", "--from-replica")
    assert code == 0, err
    assert "integrity and audit ok" in out
    assert "there was no database before" in out
    restored = events(second / "loacl.db")
    print(f"killed with {len(killed)} events, the replica had caught up with "
          f"{caught['events']}, {len(restored)} restored")
    # Everything the replica had caught up with, and nothing that was not in the killed file.
    assert len(restored) > caught["events"]
    assert restored == killed[:len(restored)]
    kept = messages(second / "loacl.db")
    for ack, reply, text in zip(acks, ends, texts, strict=True):
        assert kept[ack["message_id"]][0] == "completed"
        assert kept[reply.message_id] == ("completed", text)
    assert_sound(second / "loacl.db")

    # A server on the restored folder goes on replicating to the same replica: a restore of
    # it then holds what that server wrote (the replies the kill cut off closed, a new turn).
    again = child_server(second, provider[1], replica)
    again.start()
    try:
        async with visitor_tab(again.url, widget_id) as tab:
            ack = await ask(tab, "after the restore")
            assert (await tab.follow(ack["reply_id"])).text == "after the restore"
        wait_caught_up(again.env, at_least=len(events(second / "loacl.db")))
    finally:
        again.stop()
    third = tmp_path / "third"
    code, out, err = cli(folder_env(again.env, third), "restore", "--from-replica")
    assert code == 0, err
    assert events(third / "loacl.db") == events(second / "loacl.db")
    assert "streaming" not in {status for status, _ in messages(third / "loacl.db").values()}
    assert_sound(third / "loacl.db")


# -- a point in time ------------------------------------------------------------------------------


def test_a_point_in_time_restore_holds_exactly_the_events_up_to_it(
    tmp_path: Path, replica: Replica, openai_server: tuple[OpenAITestServer, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in replica.env.items():
        monkeypatch.setenv(name, value)  # the server's Litestream reads them
    monkeypatch.chdir(tmp_path)  # no loacl.toml but the environment's
    settings: Settings = chat_settings(tmp_path / "live", openai_server[1],
                                       replica_url=replica.url, master_key=MASTER_KEY)
    env = {"LOACL_REPLICA_URL": replica.url, "DATABASE_URL": settings.database_url,
           "LOACL_DATA_DIR": str(settings.data_dir)}

    def restore_into(folder: Path, *args: str) -> tuple[int, str, str]:
        with monkeypatch.context() as patched:
            for name, value in folder_env(env, folder).items():
                patched.setenv(name, value)
            capsys.readouterr()
            code = main(["restore", "--from-replica", *args])
            out, err = capsys.readouterr()
        return code, out, err

    with live(settings) as site:
        site.register()
        visitor = site.visitor(site.widget())
        assert site.post(visitor, "echo:before the moment").status_code == 201
        first = wait_caught_up(dict(os.environ) | env, at_least=1)
        assert site.post(visitor, "echo:after the moment").status_code == 201
        wait_caught_up(dict(os.environ) | env, past=first["replica_txid"])
        # The replica lists its files' times to the second: after this pause the burst's
        # files are listed after the first moment, and the restore to it starts from one of
        # them (then cuts) rather than from the newest state.
        time.sleep(restore.SLACK.total_seconds() + 0.5)
        for n in range(6):
            assert site.post(visitor, f"echo:burst {n}").status_code == 201
        wait_caught_up(dict(os.environ) | env)
    log = events(settings.database_path)
    posted = [e for e in log if e[3] == "message.posted"]
    after = posted[1]  # "after the moment" (payloads hold the text sealed)
    moments = {
        "between the first two turns": log[after[0] - 2][1],  # the event before "after"
        "inside the burst": posted[-3][1],
        "after everything": log[-1][1],
    }
    for n, (name, moment) in enumerate(moments.items()):
        folder = tmp_path / f"at{n}"
        code, out, err = restore_into(folder, "--timestamp", moment)
        assert code == 0, f"{name}: {err}"
        expected = [e for e in log if e[1] <= moment]
        assert events(folder / "loacl.db") == expected, name
        if name == "after everything":
            assert "the replica holds nothing recorded after it" in out
        else:
            assert f"the log was cut after event {expected[-1][0]}," in out, out
        assert_sound(folder / "loacl.db")
        texts = {text for _, text in messages(folder / "loacl.db").values()}
        assert ("after the moment" in texts) == (name != "between the first two turns"), name
        assert "before the moment" in texts
    # A moment with no zone is refused, not guessed.
    code, _, err = restore_into(tmp_path / "nozone", "--timestamp", "2026-11-30T14:05:00")
    assert code == 1 and "[invalid_timestamp]" in err
