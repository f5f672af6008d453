"""Damage to a real database file: a smashed page of a read table, of an index, of the log, and
one event's bytes changed in place. What `audit verify`, `replay`, `repair` and start-up say
and do about each."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import shutil
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from loacl.domain.errors import LoaclError
from loacl.http.app import create_app
from loacl.settings import Settings, write_master_keys
from loacl.store import migrations, replay
from loacl.store.backup import restore
from loacl.store.projections import default_projections
from loacl.store.sqlite import connect
from loacl.store.watch import Watch
from tests.conftest import RunCli
from tests.live import serve
from tests.test_replay_catalog import MASTER, _live

Cli = Callable[..., tuple[int, str, str]]
TABLES = default_projections().tables


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two conversations with sixty questions and replies: the log and `messages` span many
    pages. Built once; each test damages its own copy."""
    path = tmp_path_factory.mktemp("base") / "loacl.db"
    conn = connect(path)
    migrations.up(conn)
    conn.close()
    commands = [("assistant", 0, 0), ("widget", 0, 0), ("conversation", 0, 0),
                ("conversation", 1, 1)]
    for n in range(60):
        commands += [("ask", n, 4), ("stream", n, 4), ("finish", n, 0)]
    asyncio.run(_live(path, commands))
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
    conn.close()
    return path


@pytest.fixture
def db(base: Path, tmp_path: Path) -> Path:
    path = tmp_path / "loacl.db"
    shutil.copy(base, path)
    return path


@pytest.fixture
def cli(db: Path, run_cli: RunCli, chdir_tmp: Path) -> Cli:
    # The master key the log was sealed with, where the CLI looks for it (./data).
    write_master_keys(Settings(data_dir=chdir_tmp / "data"), [MASTER])
    return functools.partial(run_cli, db)


def smash(path: Path, name: str) -> None:
    """Overwrite the cells of one b-tree page of table or index ``name`` (its second leaf when
    it has more than one), as a failing disk would."""
    conn = sqlite3.connect(path)
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    pages = [p for (p,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno", (name,)
    )]
    conn.close()
    page = pages[1] if len(pages) > 1 else pages[0]
    with path.open("r+b") as f:
        f.seek((page - 1) * size + 8)
        f.write(b"\xa5" * 400)


def events(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def edit_in_place(path: Path) -> int:
    """Change one character of one event's payload in the file's bytes (same length, so SQLite
    sees nothing wrong); the event's seq."""
    data = path.read_bytes()
    for seq, *_, payload, _, _, _ in events(path)[20:]:
        raw = payload.encode()
        if data.count(raw) == 1:
            at = data.index(raw) + raw.index(b'":"') + 3
            changed = b"Z" if data[at:at + 1] != b"Z" else b"Y"
            path.write_bytes(data[:at] + changed + data[at + 1:])
            return int(seq)
    raise AssertionError("no event with a payload found once in the file")


def test_an_undamaged_file_passes(cli: Cli, db: Path) -> None:
    code, out, _ = cli("audit", "verify")
    assert (code, out) == (0, f"ok: {len(events(db))} events, last hash {events(db)[-1][-1]}\n")


@pytest.mark.parametrize(("name", "named"), [
    ("messages", "table messages"),
    ("messages_conversation", "index messages_conversation of table messages"),
])
def test_verify_names_a_damaged_read_table_and_replay_repairs_it(
    cli: Cli, db: Path, base: Path, name: str, named: str
) -> None:
    smash(db, name)
    code, out, _ = cli("audit", "verify")
    assert code == 1
    assert out.startswith(f"DAMAGED: {named}\n  On tree page "), out
    assert "`loacl replay`" in out
    assert f"ok: {len(events(base))} events" in out  # the log itself is sound

    code, out, _ = cli("replay")
    assert (code, out.split(":")[0]) == (0, f"replayed {len(events(base))} events into "
                                            f"{len(TABLES)} tables")
    code, out, _ = cli("audit", "verify")
    assert (code, out.startswith("ok: ")) == (0, True), out
    assert events(db) == events(base)
    old, new = sqlite3.connect(base), sqlite3.connect(db)
    assert replay.dump_tables(new, TABLES) == replay.dump_tables(old, TABLES)
    assert new.execute("SELECT * FROM blobs").fetchall() == old.execute(
        "SELECT * FROM blobs").fetchall()
    old.close()
    new.close()
    assert not Path(f"{db}.replay").exists()


def test_verify_names_the_first_unreadable_event(cli: Cli, db: Path, base: Path) -> None:
    smash(db, "events")
    code, out, _ = cli("audit", "verify")
    assert code == 1
    assert out.startswith("DAMAGED: table events\n"), out
    assert "`loacl repair NEW_FILE`" in out
    found = re.search(r"FAILED at event (\d+): event \1 cannot be read", out)
    assert found, out
    bad = int(found[1])
    assert 1 < bad < len(events(base))
    conn = sqlite3.connect(db)
    readable = conn.execute("SELECT * FROM events WHERE seq < ? ORDER BY seq", (bad,)).fetchall()
    conn.close()
    assert readable == events(base)[: bad - 1]


def test_replay_refuses_a_damaged_log_and_leaves_the_file(cli: Cli, db: Path) -> None:
    smash(db, "events")
    before = digest(db)
    code, out, err = cli("replay")
    assert (code, out) == (1, "")
    assert "[log_damaged]" in err and "table events" in err and "loacl repair" in err
    assert digest(db) == before
    assert not Path(f"{db}.replay").exists()


def test_an_event_edited_in_place_is_named_and_refused(
    cli: Cli, db: Path, settings: Settings
) -> None:
    seq = edit_in_place(db)
    code, out, _ = cli("audit", "verify")
    assert (code, out) == (1, f"FAILED at event {seq}: event {seq} does not match its hash\n")
    code, _, err = cli("replay")
    assert code == 1
    assert "[chain_broken]" in err and f"event {seq}" in err
    assert settings.database_path == db  # the server's database is the damaged copy
    with pytest.raises(LoaclError) as caught, TestClient(create_app(settings)):
        pass
    assert caught.value.code == "chain_broken"
    assert f"at event {seq}" in caught.value.message
    assert "loacl audit verify" in caught.value.message


@pytest.mark.parametrize(("name", "code", "command"), [
    ("messages", "database_damaged", "loacl replay"),
    ("events", "log_damaged", "loacl repair"),
])
def test_start_refuses_a_damaged_file(
    db: Path, settings: Settings, name: str, code: str, command: str
) -> None:
    smash(db, name)
    assert settings.database_path == db  # the server's database is the damaged copy
    with pytest.raises(LoaclError) as caught, TestClient(create_app(settings)):
        pass
    assert caught.value.code == code
    assert f"table {name}" in caught.value.message
    assert command in caught.value.message


def _mark(path: Path) -> tuple[int, str] | None:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT seq, hash FROM integrity_mark").fetchone()
        return None if row is None else (int(row[0]), str(row[1]))
    finally:
        conn.close()


def test_start_verifies_from_its_mark_and_moves_it(
    base: Path, settings: Settings, run_cli: RunCli
) -> None:
    db = settings.database_path
    shutil.copy(base, db)
    assert _mark(db) is None
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
    head = events(db)[-1]
    assert _mark(db) == (head[0], head[-1])
    # An edit of the marked event (or a later one) is found by the next start, and the mark
    # stays where it was.
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET payload = replace(payload, 'a', 'b') WHERE seq = ?",
                 (head[0],))
    conn.commit()
    conn.close()
    with pytest.raises(LoaclError) as caught, TestClient(create_app(settings)):
        pass
    assert caught.value.code == "chain_broken"
    assert f"event {head[0]}" in caught.value.message
    assert _mark(db) == (head[0], head[-1])


def test_repair_copies_every_readable_event_and_names_what_was_lost(
    cli: Cli, db: Path, base: Path, tmp_path: Path, run_cli: RunCli
) -> None:
    smash(db, "events")
    before = digest(db)
    out_path = tmp_path / "repaired.db"
    code, out, _ = cli("repair", str(out_path))
    assert code == 0, out
    assert digest(db) == before  # the damaged file is only read
    found = re.search(r"lost (\d+) events that could not be read: positions (\d+)-(\d+) ", out)
    assert found, out
    lost, first, last = (int(g) for g in found.groups())
    assert lost == last - first + 1
    assert f"computed again from position {first} on" in out
    old = events(base)
    kept = [row for row in old if not first <= row[0] <= last]
    new = events(out_path)
    assert len(new) == len(kept) == len(old) - lost
    assert [r[3:8] for r in new] == [r[3:8] for r in kept]  # type, payload, ... in order
    assert new[: first - 1] == old[: first - 1]  # untouched before the loss, hashes too
    code, out, _ = run_cli(out_path, "audit", "verify")
    assert (code, out) == (0, f"ok: {len(new)} events, last hash {new[-1][-1]}\n")


def test_repair_of_a_sound_file_loses_nothing_and_never_overwrites(
    cli: Cli, db: Path, tmp_path: Path
) -> None:
    out_path = tmp_path / "copy.db"
    code, out, _ = cli("repair", str(out_path))
    assert code == 0
    assert "nothing was lost" in out
    assert events(out_path) == events(db)
    old, new = sqlite3.connect(db), sqlite3.connect(out_path)
    assert replay.dump_tables(new, TABLES) == replay.dump_tables(old, TABLES)
    old.close()
    new.close()
    before = digest(out_path)
    code, _, err = cli("repair", str(out_path))
    assert code == 1 and "[file_exists]" in err
    assert digest(out_path) == before


def test_a_damaged_backup_is_refused_naming_what_is_damaged(db: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged-backup.db"
    shutil.copyfile(db, damaged)
    smash(damaged, "messages")
    target = tmp_path / "restored.db"
    with pytest.raises(LoaclError) as caught:
        restore(damaged, target)
    assert caught.value.code == "backup_corrupt"
    assert "table messages" in caught.value.message
    assert not target.exists()


# -- while the server runs ----------------------------------------------------------------------


def test_damage_while_serving_is_found_and_fails_readyz(db: Path, settings: Settings) -> None:
    """A page smashed under a running server: the next round of its integrity watch names it,
    and /readyz says not ready, instead of nothing until the next start."""
    watching = settings.model_copy(update={"integrity_check_minutes": 0.005})  # 0.3 s
    with serve(create_app(watching)) as url:
        ready = httpx.get(f"{url}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        smash(db, "messages")
        deadline = time.monotonic() + 30
        while (answer := httpx.get(f"{url}/readyz", timeout=5)).status_code == 200:
            assert time.monotonic() < deadline, "the damage was never found"
            time.sleep(0.1)
    assert answer.status_code == 503
    check = answer.json()["checks"]["integrity"]
    assert (check["ok"], check["code"]) == (False, "database_damaged")
    assert "table messages" in check["error"] and "loacl replay" in check["error"]


def test_an_edited_event_is_found_by_the_next_round(db: Path) -> None:
    """A round walks the chain from where the previous one stopped (its last event included),
    so its cost follows the events appended since; an older edit is `audit verify`'s to find."""
    watch = Watch(db, every_seconds=0)
    first = watch.check_now()
    assert (first.ok, first.events) == (True, len(events(db)))
    seq = first.events
    conn = sqlite3.connect(db)  # another program writing into the file
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET payload = json_set(payload, '$.edited', 1) WHERE seq = ?",
                 (seq,))
    conn.commit()
    conn.close()
    found = watch.check_now()
    assert (found.ok, found.code) == (False, "chain_broken")
    assert f"at event {seq}" in found.error
    assert watch.verdict == found
