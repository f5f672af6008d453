"""The replica setting, the generated Litestream config, ``loacl replica status|config``, the
refusals of ``loacl restore --from-replica``, the log cut that makes a point-in-time restore
exact, and Litestream supervised beside a server (restarted when it dies, reported in /readyz
when the replica fails, while visitors chat on). The end-to-end runs are in
test_replica_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from loacl.http.app import create_app
from loacl.openai_testserver import OpenAITestServer
from loacl.settings import Settings, SettingsError, load_settings
from loacl.store import audit, backup, codec, cut, replay
from loacl.store.backup import ServeLock
from loacl.store.projections import default_projections
from loacl.store.replica import litestream, restore, status, urls
from loacl.store.replica.supervisor import Replication
from loacl.store.sqlite import connect
from loacl.store.subscribers import default_subscribers
from tests.conftest import RunCli
from tests.test_chat import chat_settings, live

WAIT = 30.0  # a guard against a hang, never a measurement
TABLES = default_projections().tables


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# -- the setting --------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "file:///backups/loacl",
    "s3://bucket/loacl",
    "s3://bucket/loacl?endpoint=https://s3.example.com&region=eu-central-1",
    "s3://bucket/db?endpoint=http://127.0.0.1:9000&forcePathStyle=true",
    "gs://bucket/loacl",
    "abs://account@container/loacl",
])
def test_replica_urls_litestream_takes(url: str) -> None:
    assert load_settings(environ={"LOACL_REPLICA_URL": url}).replica_url == url
    assert load_settings(environ={}).replica_url is None


@pytest.mark.parametrize(("url", "says"), [
    ("http://example.com/x", "must start with file:///, s3://"),
    ("/backups/loacl", "not no scheme://"),
    ("file://backups/loacl", "absolute folder"),
    ("file:///", "a folder of its own"),
    ("file:///backups?x=1", "takes no ?options"),
    ("s3:///loacl", "names no bucket"),
    ("s3://bucket/loacl?endpont=https://x", "'endpont' is not one LOACL passes on"),
    ("s3://bucket/loacl?endpoint=s3.example.com", "http:// or https://"),
    ("s3://bucket/loacl?endpoint=https://k:s@s3.example.com", "credentials never go"),
    ("gs://bucket/loacl?region=x", "'region' is not one"),
    ("abs://container/loacl", "abs://account@container/path"),
    ("s3://bucket/$HOME", "may not contain '$'"),
])
def test_a_bad_replica_url_is_refused_at_start_and_says_why(url: str, says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"LOACL_REPLICA_URL": url})
    assert "LOACL_REPLICA_URL" in str(caught.value)
    assert says in str(caught.value)


def test_credentials_in_the_url_are_refused_and_not_repeated() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"LOACL_REPLICA_URL": "s3://AKIAKEY:s3cr3t@bucket/loacl"})
    message = str(caught.value)
    assert "credentials never go in replica_url" in message
    assert "AWS_SECRET_ACCESS_KEY" in message
    assert "s3cr3t" not in message and "AKIAKEY" not in message


def test_under_litestream_is_read_from_the_environment() -> None:
    assert load_settings(environ={"LOACL_UNDER_LITESTREAM": "1"}).under_litestream is True
    assert load_settings(environ={}).under_litestream is False


# -- the generated config -------------------------------------------------------------------


@pytest.fixture
def replica_env(run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file replica and a data folder for ``run_cli``; returns the replica's folder."""
    folder = tmp_path / "replica"
    monkeypatch.setenv("LOACL_REPLICA_URL", f"file://{folder}")
    monkeypatch.setenv("LOACL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("LOACL_UNDER_LITESTREAM", raising=False)
    return folder


def test_replica_config_is_private_and_names_no_credential(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOACL_REPLICA_URL", "s3://bucket/loacl?endpoint=http://127.0.0.1:9")
    monkeypatch.setenv("LOACL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAKEYID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret-key")
    db = tmp_path / "loacl.db"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / urls.CONFIG_NAME).write_text("old")
    os.chmod(tmp_path / "data" / urls.CONFIG_NAME, 0o644)
    code, out, err = run_cli(db, "replica", "config")
    assert code == 0, err
    path = Path(out.strip())
    assert path == (tmp_path / "data" / urls.CONFIG_NAME).resolve()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert '"s3://bucket/loacl?endpoint=http://127.0.0.1:9"' in text
    assert json.dumps(str(db.resolve())) in text
    assert "AKIAKEYID" not in text and "very-secret-key" not in text
    assert [p.name for p in path.parent.iterdir()] == [urls.CONFIG_NAME]  # no partial left
    # Litestream reads it as LOACL meant it.
    listed = litestream.run(["databases", "-config", str(path), "-json"])
    assert json.loads(listed)[0]["path"] == str(db.resolve())


def test_without_a_replica_the_commands_say_how_to_set_one(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOACL_REPLICA_URL", raising=False)
    for args in (["replica", "status"], ["replica", "config"], ["restore", "--from-replica"]):
        code, _, err = run_cli(tmp_path / "loacl.db", *args)
        assert code == 1
        assert "LOACL_REPLICA_URL" in err and "[replica_not_configured]" in err


def test_litestream_gets_the_ca_bundle_under_the_name_go_reads() -> None:
    env = litestream.environment({"AWS_CA_BUNDLE": "/etc/ca.pem", "PATH": "/bin"})
    assert env == {"SSL_CERT_FILE": "/etc/ca.pem", "PATH": "/bin"}
    kept = litestream.environment({"AWS_CA_BUNDLE": "/a.pem", "SSL_CERT_FILE": "/b.pem"})
    assert kept == {"SSL_CERT_FILE": "/b.pem"}


# -- restore --from-replica: what it refuses ----------------------------------------------------


def test_restore_from_an_empty_replica(run_cli: RunCli, replica_env: Path, tmp_path: Path) -> None:
    db = tmp_path / "new" / "loacl.db"
    code, _, err = run_cli(db, "restore", "--from-replica")
    assert code == 1 and "[replica_empty]" in err
    # A container's first start: nothing to restore is no error.
    code, out, err = run_cli(db, "restore", "--from-replica", "--if-empty")
    assert code == 0, err
    assert "holds no backup yet: nothing restored" in out
    assert not db.exists()


def test_restore_if_empty_leaves_a_database_with_events(
    run_cli: RunCli, replica_env: Path, tmp_path: Path
) -> None:
    db = tmp_path / "loacl.db"
    with TestClient(create_app(Settings(database_url=f"sqlite:///{db}",
                                        data_dir=tmp_path / "data"))):
        pass  # the demo widget: two events
    before = db.read_bytes()
    code, out, err = run_cli(db, "restore", "--from-replica", "--if-empty")
    assert code == 0, err
    assert out == f"{db} holds 2 events: nothing restored (--if-empty)\n"
    assert db.read_bytes() == before


@pytest.mark.parametrize(("args", "says"), [
    (["restore", "backup.db", "--from-replica"], "not both"),
    (["restore"], "name the backup file"),
    (["restore", "backup.db", "--timestamp", "2026-01-01T00:00:00Z"], "go with --from-replica"),
    (["restore", "--from-replica", "--timestamp", "yesterday"], "[invalid_timestamp]"),
    (["restore", "--from-replica", "--timestamp", "2026-01-01T10:00:00"], "no time zone"),
])
def test_restore_from_replica_refusals(
    run_cli: RunCli, replica_env: Path, tmp_path: Path, args: list[str], says: str
) -> None:
    code, _, err = run_cli(tmp_path / "loacl.db", *args)
    assert code == 1
    assert says in err


def test_restore_from_replica_refuses_while_a_server_holds_the_database(
    run_cli: RunCli, replica_env: Path, tmp_path: Path
) -> None:
    db = tmp_path / "loacl.db"
    with ServeLock(db):
        for force in ([], ["--force"]):  # its Litestream replicates the file: never
            code, _, err = run_cli(db, "restore", "--from-replica", *force)
            assert code == 1 and "[database_in_use]" in err


# -- the log cut --------------------------------------------------------------------------------


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return [tuple(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def test_a_cut_is_the_database_as_it_was_at_that_event(
    tmp_path: Path, openai_server: tuple[OpenAITestServer, str]
) -> None:
    settings = chat_settings(tmp_path, openai_server[1])
    reference = tmp_path / "at-the-cut.db"
    with live(settings) as site:
        site.register()
        visitor = site.visitor(site.widget())
        upload = site.http.post(
            f"/api/v1/widgets/{visitor.widget_id}/files", headers=visitor.headers,
            files={"file": ("note.txt", b"kept bytes", "text/plain")},
        )
        assert upload.status_code == 201, upload.text
        assert site.post(visitor, "echo:before the cut",
                         client_message_id="one").status_code == 201
        wait_until(lambda: rows(settings.database_path, "SELECT position FROM "
                                "subscriber_checkpoints WHERE name = 'usage'") != [],
                   "the usage subscriber never ran")
        assert backup.backup(settings.database_path, reference).ok  # the state at the cut
        assert site.post(visitor, "echo:after the cut",
                         client_message_id="two").status_code == 201
    source = settings.database_path
    last = rows(reference, "SELECT max(seq) FROM events")[0][0]
    conn = sqlite3.connect(source)
    conn.execute("INSERT INTO subscriber_checkpoints (name, position) VALUES ('hooks', "
                 "(SELECT max(seq) FROM events))")  # an effect subscriber past the cut
    conn.commit()
    conn.close()

    out = tmp_path / "cut.db"
    count = cut.cut(source, out, last, default_projections(), default_subscribers())
    assert count == last
    assert rows(out, "SELECT * FROM events ORDER BY seq") == rows(
        reference, "SELECT * FROM events ORDER BY seq")
    conn = connect(out)
    try:
        assert audit.verify(conn).ok
        assert replay.dump_tables(conn, TABLES) == replay.dump_tables(
            sqlite3.connect(reference), TABLES)
    finally:
        conn.close()
    assert rows(out, "SELECT seq, hash, indexed_seq FROM event_log_head")[0][:2] == rows(
        reference, "SELECT seq, hash FROM event_log_head")[0]
    # The retried "two" would write again; "one" answers with what it wrote.
    assert [k for (k,) in rows(out, "SELECT key FROM append_keys")] == [
        k for (k,) in rows(reference, "SELECT key FROM append_keys")]
    assert rows(out, "SELECT data FROM blobs") == [(b"kept bytes",)]
    # A table subscriber starts again (its rows rebuilt exactly once), an effect subscriber
    # goes back to the cut, never further.
    effects = [(name, min(position, last)) for name, position in rows(
        source, "SELECT name, position FROM subscriber_checkpoints ORDER BY name")
        if name != "usage"]
    assert ("hooks", last) in effects
    assert rows(out, "SELECT name, position FROM subscriber_checkpoints ORDER BY name") == effects
    assert rows(out, "SELECT count(*) FROM usage_daily") == [(0,)]
    assert cut.first_after(sqlite3.connect(out), "9999") is None


def test_a_cut_refuses_a_table_it_does_not_know(db_path: Path, tmp_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE notes (x)")
    conn.close()
    with pytest.raises(Exception, match="table notes is not one LOACL knows how to cut"):
        cut.cut(db_path, tmp_path / "cut.db", 0, default_projections(), default_subscribers())
    assert not (tmp_path / "cut.db").exists()


# -- swapping a restored file in ----------------------------------------------------------------


def test_swap_keeps_a_copy_and_forgets_litestreams_state(tmp_path: Path) -> None:
    db = tmp_path / "loacl.db"
    with TestClient(create_app(Settings(database_url=f"sqlite:///{db}",
                                        data_dir=tmp_path / "data"))):
        pass
    meta = status.meta_folder(db) / "ltx" / "0"
    meta.mkdir(parents=True)
    (meta / "0000000000000001-0000000000000001.ltx").write_bytes(b"x")
    fresh = tmp_path / "fresh.db"
    conn = connect(fresh)
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY)")
    conn.close()
    kept = restore.swap(fresh, db)
    assert kept is not None and kept.parent == tmp_path / "safety"
    assert kept.name.startswith("loacl-before-restore-")
    assert restore.holds_events(kept) == 2
    assert restore.holds_events(db) == 0
    assert not status.meta_folder(db).exists()
    assert not fresh.exists()
    # Into an empty place: nothing to keep.
    other = tmp_path / "other.db"
    connect(other).close()
    assert restore.swap(other, tmp_path / "new.db") is None


def test_restoring_the_replica_over_newer_events_needs_force(
    run_cli: RunCli, replica_env: Path, tmp_path: Path
) -> None:
    db = tmp_path / "loacl.db"
    settings = Settings(database_url=f"sqlite:///{db}", data_dir=tmp_path / "data")
    with TestClient(create_app(settings)):
        pass  # two events
    config = urls.write_config(settings.data_dir, db, f"file://{replica_env}")
    litestream.run(["replicate", "-config", str(config), "-once"])
    with TestClient(create_app(settings)) as client:  # more, not on the replica
        client.post("/api/v1/auth/register", json={
            "email": "o@example.com", "password": "correct horse battery staple"})
    held = restore.holds_events(db)
    assert held > 2
    code, _, err = run_cli(db, "restore", "--from-replica")
    assert code == 1 and "[events_would_be_lost]" in err
    assert f"holds {held - 2} events that the restored state does not" in err
    assert restore.holds_events(db) == held
    assert not list(tmp_path.glob("loacl.db.from-replica*"))
    code, out, err = run_cli(db, "restore", "--from-replica", "--force")
    assert code == 0, err
    assert out.startswith(f"restored 2 events from file://{replica_env} (replica transaction ")
    kept = next((tmp_path / "safety").iterdir())
    assert (f"the database it replaced, with {held - 2} events the restored one does not "
            f"hold, is kept at {kept}") in out
    assert restore.holds_events(kept) == held and restore.holds_events(db) == 2


# -- the status, from its parts ----------------------------------------------------------------


def test_first_event_after_finds_the_first_later_event(db_path: Path) -> None:
    start = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TRIGGER events_no_update")
    for seq in range(1, 41):
        conn.execute("INSERT INTO events VALUES (?, 's', ?, 't', 1, '{}', '{}', ?, 'h')",
                     (seq, seq, codec.format_time(start + timedelta(seconds=seq // 3))))
    conn.commit()
    for second in range(-1, 16):
        moment = start + timedelta(seconds=second, milliseconds=500)
        found = status.first_event_after(conn, moment)
        linear = cut.first_after(conn, codec.format_time(moment))
        assert (found[0] if found else None) == linear, second
    conn.close()


def test_status_before_litestream_ever_ran_counts_every_event_as_waiting(
    tmp_path: Path
) -> None:
    db = tmp_path / "loacl.db"
    with TestClient(create_app(Settings(database_url=f"sqlite:///{db}",
                                        data_dir=tmp_path / "data"))):
        pass
    conn = sqlite3.connect(db)
    (first,) = conn.execute("SELECT recorded_at FROM events WHERE seq = 1").fetchone()
    later = codec.parse_time(first) + timedelta(seconds=90)
    found = status.status("file:///r", db, conn, (None, None), later)
    conn.close()
    assert not found.caught_up
    assert found.pending_since == codec.parse_time(first)
    assert found.lag_seconds == 90.0
    assert found.as_dict() | {"url": "-"} == {
        "url": "-", "replica_txid": None, "last_sync": None, "local_txid": None,
        "local_at": None, "behind": 0, "pending_since": first,
        "lag_seconds": 90.0, "events": 2, "caught_up": False,
    }


# -- Litestream beside a server -----------------------------------------------------------------


def replication(client: TestClient) -> Replication:
    found = client.app.state.replication  # type: ignore[attr-defined]
    assert isinstance(found, Replication)
    return found


def readyz(client: TestClient) -> dict[str, Any]:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text  # a replica never fails readiness
    body: dict[str, Any] = response.json()
    return body


def writer_autocheckpoint(client: TestClient) -> int:
    store = client.app.state.store  # type: ignore[attr-defined]
    value = client.portal.call(  # type: ignore[union-attr]
        store.run_on_writer, lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    return int(value)


def test_litestream_that_dies_is_started_again(settings: Settings, tmp_path: Path) -> None:
    configured = settings.model_copy(update={"replica_url": f"file://{tmp_path / 'replica'}"})
    with TestClient(create_app(configured)) as client:
        running = replication(client)
        wait_until(lambda: running.process.pid is not None, "litestream never started")
        first = running.process.pid
        assert first is not None
        assert writer_autocheckpoint(client) == 0  # checkpoints are Litestream's
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: running.process.restarts == 1 and running.process.pid not in (
            None, first), "litestream was not started again")
        assert running.process.last_exit == -signal.SIGKILL
        wait_until(lambda: writer_autocheckpoint(client) == 0, "checkpoints stayed with LOACL")
        replica = readyz(client)["checks"]["replica"]
        assert replica["running"] is True and replica["restarts"] == 1
        pid = running.process.pid
    assert pid is not None
    assert not Path(f"/proc/{pid}").exists(), "litestream outlived the server"


def test_a_failing_replica_is_reported_and_visitors_chat_on(
    tmp_path: Path, openai_server: tuple[OpenAITestServer, str]
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the replica's folder should be")
    settings = chat_settings(tmp_path, openai_server[1],
                             replica_url=f"file://{blocked / 'replica'}")
    with live(settings) as site:
        site.register()
        visitor = site.visitor(site.widget())

        def reported() -> bool:
            body = site.http.get("/readyz").json()
            return bool(body.get("warnings"))

        wait_until(reported, "the replica's failure was never reported")
        ready = site.http.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ready"
        replica = body["checks"]["replica"]
        assert replica["ok"] is False
        assert "not a directory" in replica["error"]
        assert body["warnings"] == [f"replica: {replica['error']}"]
        # Visitors chat on.
        answer = site.post(visitor, "echo:still here")
        assert answer.status_code == 201, answer.text
        assert answer.json()["reply"]["text"] == "still here"


def test_under_litestream_the_server_starts_none_and_reads_the_replica(
    settings: Settings, tmp_path: Path
) -> None:
    configured = settings.model_copy(update={
        "replica_url": f"file://{tmp_path / 'replica'}", "under_litestream": True})
    with TestClient(create_app(configured)) as client:
        running = replication(client)
        assert running.supervise is False
        assert writer_autocheckpoint(client) == 0
        client.portal.call(running.refresh)  # type: ignore[union-attr]
        replica = readyz(client)["checks"]["replica"]
        assert "running" not in replica
        assert replica["supervised"] is False
        # Nothing replicates here: the events wait, and the status says since when.
        assert replica["replica_txid"] is None
        assert running.process.pid is None
        assert (configured.data_dir / urls.CONFIG_NAME).exists()


def test_a_readyz_without_a_replica_has_no_replica_check(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        body = client.get("/readyz").json()
        assert writer_autocheckpoint(client) == 1000  # SQLite's own, with no Litestream
    assert "replica" not in body["checks"] and "warnings" not in body
    # Run by Litestream but told no replica: checkpoints are Litestream's all the same.
    under = settings.model_copy(update={"under_litestream": True})
    with TestClient(create_app(under)) as client:
        assert writer_autocheckpoint(client) == 0
        assert "replica" not in client.get("/readyz").json()["checks"]


def test_replica_status_prints_what_an_operator_reads(
    run_cli: RunCli, replica_env: Path, tmp_path: Path
) -> None:
    db = tmp_path / "loacl.db"
    code, out, err = run_cli(db, "replica", "status")
    assert code == 0, err
    assert out.splitlines()[0] == f"replica       file://{replica_env}"
    assert "replica txid  - (last sync never)" in out
    code, out, err = run_cli(db, "replica", "status", "--json")
    assert json.loads(out)["caught_up"] is True and json.loads(out)["events"] == 0
