"""The ``loacl`` command: serve, migrate, replay, audit, events, backup and restore."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from loacl import __version__
from loacl.domain.errors import LoaclError
from loacl.services.keys import keyring_for
from loacl.services.privacy import Erasure
from loacl.settings import Settings, SettingsError, load_settings
from loacl.store import audit, backup, integrity, migrations, rebuild, replay, tail
from loacl.store.keys import Keyring
from loacl.store.postgres import migrate as pg_migrate
from loacl.store.postgres.eventstore import verify as pg_verify
from loacl.store.projections import default_projections
from loacl.store.sqlite import connect
from loacl.store.tail import StoredEvent

Command = Callable[[argparse.Namespace, Settings], int]


def _progress(label: str, out: TextIO) -> Callable[[int, int], None]:
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and done < total:
            return
        last[0] = now
        pct = 100 * done // total if total else 100
        out.write(f"{label}: {done}/{total} events ({pct}%)\n")
        out.flush()

    return show


def _open(settings: Settings, *, must_exist: bool = True) -> sqlite3.Connection:
    path = settings.database_path
    if must_exist and not path.exists():
        raise LoaclError("database_not_found", f"no database at {path}")
    return connect(path)


@contextlib.contextmanager
def _level_with_log(settings: Settings) -> Iterator[None]:
    """With a PostgreSQL log: this instance's copy brought level with it before the block (made
    when missing), and kept level while the block runs (an open store copies in what other
    instances append, woken by their NOTIFY), so that a command reading the copy reads the whole
    log. Nothing to do on SQLite, where the file is the log."""
    if settings.postgres_url is None:
        yield
        return
    from loacl.admin import open_store

    loop = asyncio.new_event_loop()
    opened = threading.Event()
    failed: list[BaseException] = []
    stop: list[asyncio.Event] = []

    async def hold() -> None:
        stop.append(asyncio.Event())
        async with open_store(settings):
            opened.set()
            await stop[0].wait()

    def run() -> None:
        try:
            loop.run_until_complete(hold())
        except BaseException as exc:  # given to the command's thread, which raises it
            failed.append(exc)
        finally:
            opened.set()

    holder = threading.Thread(target=run, name="loacl-level", daemon=True)
    holder.start()
    opened.wait()
    try:
        if failed:
            raise failed[0]
        yield
    finally:
        if stop and holder.is_alive():
            loop.call_soon_threadsafe(stop[0].set)
        holder.join()
        loop.close()


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:

    from loacl.http.app import create_app
    from loacl.http.serving import serve, server_config
    from loacl.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    serve(app, server_config(app, settings, host=args.host, port=args.port),
          settings.shutdown_seconds)
    return 0


def _migrate_postgres(args: argparse.Namespace, url: str) -> None:
    """``migrate status`` and ``up`` of a PostgreSQL log (its tables; the read tables are each
    instance's copy's)."""

    async def run() -> None:
        conn = await pg_migrate.connect(url)
        try:
            if args.action == "status":
                done = await pg_migrate.applied(conn)
                for m in pg_migrate.MIGRATIONS:
                    state = f"applied {done[m.version]}" if m.version in done else "pending"
                    print(f"postgresql {m.version:04d}_{m.name:<24} {state}")
                return
            steps = await pg_migrate.up(conn, args.to)
            for step in steps:
                print(f"applied postgresql {step.version:04d}_{step.name}")
        finally:
            await conn.close()

    asyncio.run(run())


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "down":
        if settings.postgres_url is not None:
            raise LoaclError(
                "invalid_migration_target", "a PostgreSQL log is not migrated down by LOACL: "
                "restore it with PostgreSQL's own tools (docs/scale-out.md)",
            )
        return _migrate_down(args, settings)
    if settings.postgres_url is not None and args.action in ("up", "status"):
        _migrate_postgres(args, settings.postgres_url)
        if args.action == "status" and not settings.database_path.exists():
            print(f"{settings.database_path}: this instance's copy, made when it first starts")
            return 0
    conn = _open(settings, must_exist=args.action != "up")
    try:
        if args.action == "status":
            for version, name, applied_at in migrations.status(conn):
                state = f"applied {applied_at}" if applied_at else "pending"
                print(f"{version:04d}_{name:<24} {state}")
            return 0
        steps = (migrations.up if args.action == "up" else migrations.down)(conn, args.to)
        verb = "applied" if args.action == "up" else "reverted"
        for step in steps:
            print(f"{verb} {step.version:04d}_{step.name}")
        if not steps:
            print("nothing to do")
        return 0
    finally:
        conn.close()


def _migrate_down(args: argparse.Namespace, settings: Settings) -> int:
    """Reverting drops tables a running server reads: refuse while one holds the database,
    and keep a copy of it first."""
    _open(settings).close()  # database_not_found, before the lock makes its folder
    lock = backup.ServeLock(settings.database_path)
    if not lock.acquire() and not args.force:
        raise LoaclError(
            "database_in_use",
            f"a LOACL server is using {settings.database_path}: it would fail on the tables "
            "this drops. Stop it first, or pass --force",
        )
    try:
        conn = _open(settings)
        try:
            if migrations.current(conn) == 0 or (args.to is not None
                                                  and migrations.current(conn) <= args.to):
                print("nothing to do")
                return 0
            kept = backup.safety_copy(settings.database_path, "migrate-down")
            try:
                steps = migrations.down(conn, args.to)
            except BaseException:
                if kept is not None:
                    kept.unlink()  # nothing was reverted: there is nothing to keep
                raise
        finally:
            conn.close()
    finally:
        lock.release()
    for step in steps:
        print(f"reverted {step.version:04d}_{step.name}")
    print(f"the database as it was before is kept at {kept}")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    with _level_with_log(settings):
        pass  # the copy's read tables are then rebuilt from the whole log
    show = _progress("replay", sys.stderr)
    result: replay.ReplayResult
    try:
        result = rebuild.rebuild(
            settings.database_path, default_projections(), progress=show,
            keys=keyring_for(settings),
        )
    except LoaclError as exc:
        if exc.code != "database_in_use":
            raise
        # A running server keeps writing: rebuild its read tables in place, beside it.
        print("a server uses the database: rebuilding the read tables in place (stop it to "
              "rebuild into a fresh file, which also repairs damaged tables)", file=sys.stderr)
        conn = _open(settings)
        try:
            result = replay.replay(
                conn, default_projections(), progress=show,
                keys=keyring_for(settings).attach(conn),
            )
        finally:
            conn.close()
    print(f"replayed {result.events} events into {len(result.tables)} tables: "
          + ", ".join(result.tables))
    if isinstance(result, rebuild.Rebuilt) and result.safety_copy is not None:
        print(f"the file it replaced is kept at {result.safety_copy}")
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "reindex":
        with backup.ServeLock(settings.database_path):
            conn = _open(settings)
            try:
                count = audit.reindex(conn)
            finally:
                conn.close()
        print(f"reindexed {count} events")
        return 0
    conn = _open(settings)
    try:
        damage = integrity.check(conn)
        result = audit.verify(conn, progress=_progress("audit", sys.stderr))
    finally:
        conn.close()
    if not damage.ok:
        print(f"DAMAGED: {damage.names()}")
        for line in damage.messages:
            print(f"  {line}")
        print(f"to repair: {damage.remedy()}")
    if settings.postgres_url is not None:
        # The log itself is PostgreSQL's; the file is this instance's copy of (a beginning of)
        # it, checked above like any database.
        shared = asyncio.run(_verify_postgres(settings.postgres_url))
        if not shared.ok:
            print(f"FAILED in PostgreSQL at event {shared.bad_seq}: {shared.reason}")
            return 1
        print(f"postgresql ok: {shared.events} events, last hash {shared.last_hash}")
    if result.ok:
        print(f"ok: {result.events} events, last hash {result.last_hash}")
        return 0 if damage.ok else 1
    print(f"FAILED at event {result.bad_seq}: {result.reason}")
    return 1


async def _postgres_checkpoints(url: str) -> dict[str, tuple[int, str | None]]:
    conn = await pg_migrate.connect(url)
    try:
        rows = await conn.fetch("SELECT name, position, updated_at FROM subscriber_checkpoints")
    finally:
        await conn.close()
    return {r["name"]: (int(r["position"]), r["updated_at"]) for r in rows}


async def _verify_postgres(url: str) -> audit.AuditResult:
    conn = await pg_migrate.connect(url)
    try:
        return await pg_verify(conn)
    finally:
        await conn.close()


def cmd_copy(args: argparse.Namespace, settings: Settings) -> int:
    from loacl.store import copy

    # The master key opens the sealed fields that a SQLite target's read tables are built with.
    # None without a key file (none is made): a log with sealed fields is then refused.
    keys = None
    if not copy.is_postgres(args.target):
        with contextlib.suppress(FileNotFoundError):
            keys = keyring_for(settings, create=False)
    done = asyncio.run(copy.copy(
        args.source, args.target, keys=keys,
        progress=lambda stage: _progress(stage, sys.stderr),
    ))
    print(f"copied {done.events} events, last hash {done.last_hash}: the chain verifies on "
          "arrival")
    print(f"data keys: {done.data_keys} ({done.erased_keys} erased), idempotency keys: "
          f"{done.append_keys}, subscriber checkpoints: {done.checkpoints}")
    if done.restarted:
        print(f"subscribers that rebuild their own tables from position 0 where the log "
              f"arrives: {', '.join(done.restarted)}")
    if done.replayed or not copy.is_postgres(args.target):
        print(f"read tables built from {done.replayed} events")
    if done.left_behind:
        print("not copied (tables PostgreSQL has no place for yet; they stay in the SQLite "
              "file): " + ", ".join(f"{t} ({n} rows)" for t, n in done.left_behind.items()))
    if done.safety_copy is not None:
        print(f"the empty file it replaced is kept at {done.safety_copy}")
    return 0


def _ranges(spans: list[tuple[int, int]]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def cmd_repair(args: argparse.Namespace, settings: Settings) -> int:
    from loacl.store import repair

    out = Path(args.path)
    result = repair.repair(
        settings.database_path, out, default_projections(), keys=keyring_for(settings)
    )
    print(f"copied {result.copied} events into {out}")
    if result.lost:
        print(f"lost {result.lost_count} events that could not be read: positions "
              f"{_ranges(result.lost)} of the old file")
    if result.edited:
        print("copied, though they fail their hash check (edited?): positions "
              + ", ".join(map(str, result.edited)))
    if result.rechained_from is not None:
        print(f"the hash chain was computed again from position {result.rechained_from} on; "
              "later events moved down to close the gap")
    for note in result.notes:
        print(note)
    if not (result.lost or result.edited or result.notes):
        print("nothing was lost")
    print(f"{settings.database_path} was not changed. Check the copy with `loacl audit "
          f"verify` (DATABASE_URL=sqlite:///{out}), then, the server stopped, put it in place with "
          f"`loacl restore {out}`")
    return 0


def _event_json(event: StoredEvent, deltas: tail.Deltas | None = None) -> dict[str, Any]:
    shown = {
        "seq": event.seq, "stream": event.stream, "version": event.version,
        "type": event.type, "schema_version": event.schema_version,
        "payload": json.loads(event.payload), "metadata": json.loads(event.metadata),
        "recorded_at": event.recorded_at, "hash": event.hash,
    }
    if deltas is not None:
        shown["deltas"] = {"count": deltas.count, "chars": deltas.chars}
    return shown


def _reading_keys(settings: Settings, conn: sqlite3.Connection) -> Keyring | None:
    """The keyring that opens sealed fields for display, or None without the master key (a
    command that only reads makes no key) or before the database has sealing."""
    try:
        return keyring_for(settings, create=False).attach(conn)
    except (FileNotFoundError, sqlite3.OperationalError):
        return None


def _print_event(
    conn: sqlite3.Connection, event: StoredEvent, args: argparse.Namespace, out: TextIO,
    keys: Keyring | None = None,
) -> None:
    """One line: the event, who caused it and its payload in short; a reply's end says how
    many delta events it closes (they are left out unless ``--deltas``)."""
    event = tail.opened(event, keys)
    deltas = None if args.deltas else tail.deltas_of(conn, event, keys)
    if args.json:
        out.write(json.dumps(_event_json(event, deltas), separators=(",", ":")) + "\n")
        return
    folded = f"  [{deltas.count} deltas, {deltas.chars} chars]" if deltas else ""
    out.write(f"{event.seq:>8}  {event.recorded_at[:23]}  {event.type:<22} {event.stream} "
              f"v{event.version}  by {tail.actor(event)}  {tail.summary(event.payload)}"
              f"{folded}\n")


def _show_event(
    conn: sqlite3.Connection, seq: int, as_json: bool, keys: Keyring | None
) -> int:
    found = tail.event_at(conn, seq)
    if found is None:
        raise LoaclError("event_not_found", f"no event at position {seq}")
    event = tail.opened(found, keys)
    if as_json:
        print(json.dumps(_event_json(event)))
        return 0
    for key, value in _event_json(event).items():
        shown = json.dumps(value, indent=2) if isinstance(value, dict) else value
        print(f"{key:>15}: {shown}")
    return 0


def cmd_events(args: argparse.Namespace, settings: Settings) -> int:
    with _level_with_log(settings):
        return _events(args, settings)


def _events(args: argparse.Namespace, settings: Settings) -> int:
    conn = _open(settings)
    keys = _reading_keys(settings, conn)
    try:
        if args.action == "show":
            return _show_event(conn, args.seq, args.json, keys)
        which = tail.EventFilter(args.stream, args.type, deltas=args.deltas)
        if args.since is not None:
            events = tail.events_after(conn, args.since, which)
        else:
            events = tail.last_events(conn, args.limit, which)
        for event in events:
            _print_event(conn, event, args, sys.stdout, keys)
        sys.stdout.flush()
        position = events[-1].seq if events else (
            args.since if args.since is not None else tail.head(conn)
        )
        if args.follow:
            # A follower started in the background ignores Ctrl-C (the shell sets SIGINT to
            # ignored for background jobs): a plain ``kill`` ends it as quietly.
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while args.follow:
            time.sleep(args.interval)
            for event in tail.events_after(conn, position, which):
                _print_event(conn, event, args, sys.stdout, keys)
                position = event.seq
            sys.stdout.flush()
        return 0
    finally:
        conn.close()


EXPORT_PAGE = 1000


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """The log after ``--since`` as JSON lines on stdout (or ``--output``), personal fields
    opened where the master key is at hand (``[erased]`` for an erased subject, ``<sealed>``
    without the key); progress on stderr when it is a terminal."""
    with _level_with_log(settings):
        pass  # the copy then holds the whole log, up to its head when the export begins
    conn = _open(settings)
    keys = _reading_keys(settings, conn)
    if keys is None:
        print("no master key at hand: personal fields are exported as <sealed>",
              file=sys.stderr)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115
    try:
        end = tail.head(conn)
        total = max(0, end - args.since)
        show = _progress("exported", sys.stderr) if sys.stderr.isatty() else None
        position, done = args.since, 0
        while position < end:
            page = tail.page_after(conn, position, EXPORT_PAGE)
            if not page:
                break
            for event in page:
                if event.seq > end:
                    break
                out.write(json.dumps(_event_json(tail.opened(event, keys)),
                                     ensure_ascii=False, separators=(",", ":")) + "\n")
                position, done = event.seq, done + 1
            if show is not None:
                show(done, total)
            if page[-1].seq > end:
                break
        out.flush()
        if show is not None:
            show(total, total)
        return 0
    finally:
        if out is not sys.stdout:
            out.close()
        conn.close()


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    if settings.postgres_url is not None:
        return _backup_postgres(settings.postgres_url, Path(args.path))
    result = backup.backup(settings.database_path, Path(args.path))
    if not result.ok:
        print(f"backed up to {args.path}, but its audit FAILED at event {result.bad_seq}: "
              f"{result.reason}")
        return 1
    print(f"backed up {result.events} events to {args.path} (audit ok)")
    return 0


def _backup_postgres(url: str, dest: Path) -> int:
    """The log's chain audited, then the database dumped by PostgreSQL's own pg_dump: an
    instance's SQLite file is a copy of the log, rebuilt from PostgreSQL when missing, and is
    not what is backed up."""
    from loacl.store.postgres import dump

    checked = asyncio.run(_verify_postgres(url))
    if not checked.ok:
        print(f"not backed up: the log in PostgreSQL FAILED its audit at event "
              f"{checked.bad_seq}: {checked.reason}")
        return 1
    dump.dump(url, dest)
    print(f"backed up the PostgreSQL log ({checked.events} events, audit ok) to {dest} with "
          f"pg_dump; restore it with: pg_restore --no-owner --dbname URL {dest}")
    return 0


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    if args.from_replica:
        if args.path is not None:
            raise LoaclError("validation_error", "name a backup file or --from-replica, not both")
        return _restore_from_replica(args, settings)
    if args.path is None:
        raise LoaclError("validation_error", "name the backup file to restore, or "
                                             "--from-replica")
    if args.timestamp is not None or args.if_empty:
        raise LoaclError("validation_error", "--timestamp and --if-empty go with --from-replica")
    result = backup.restore(Path(args.path), settings.database_path, force=args.force)
    print(f"restored {result.audit.events} events into {settings.database_path}")
    if result.safety_copy is not None:
        dropped = {None: ", which could not be read", 0: ""}.get(
            result.lost, f", with {result.lost} events the backup does not hold"
        )
        print(f"the database it replaced{dropped}, is kept at {result.safety_copy}")
    return 0


def _moment(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise LoaclError("invalid_timestamp", f"--timestamp {text!r} is not an ISO-8601 time "
                                              "(2026-11-30T14:05:00Z)") from None
    if moment.tzinfo is None:
        raise LoaclError("invalid_timestamp", f"--timestamp {text!r} has no time zone: add Z "
                                              "for UTC, or an offset such as +01:00")
    return moment.astimezone(UTC)


def _replica_url(settings: Settings) -> str:
    if not settings.replica_url:
        raise LoaclError("replica_not_configured", "no replica is configured: set "
                                                   "LOACL_REPLICA_URL (replica_url in loacl.toml)")
    return settings.replica_url


def _restore_from_replica(args: argparse.Namespace, settings: Settings) -> int:
    from loacl.store.rebuild import remove_file
    from loacl.store.replica import restore, urls
    from loacl.store.subscribers import default_subscribers

    url = _replica_url(settings)
    moment = _moment(args.timestamp)
    db = settings.database_path
    # Never under a running server, --force or not: its Litestream replicates the file.
    with backup.ServeLock(db):
        if args.if_empty and (held := restore.holds_events(db)):
            print(f"{db} holds {held} events: nothing restored (--if-empty)")
            return 0
        config = urls.write_config(settings.data_dir, db, url)
        try:
            done = restore.restore(config, db, moment, default_projections(),
                                   default_subscribers(), keyring_for(settings))
        except LoaclError as exc:
            if exc.code == "replica_empty" and args.if_empty:
                print(f"the replica {url} holds no backup yet: nothing restored "
                      "(--if-empty)")
                return 0
            raise
        try:
            lost = restore.would_lose(db, done.path, force=args.force)
        except BaseException:
            remove_file(done.path)
            raise
        kept = restore.swap(done.path, db)
    last = done.last_recorded.isoformat() if done.last_recorded else "-"
    print(f"restored {done.events} events from {url} (replica transaction "
          f"{done.txid:016x}; integrity and audit ok) into {db}; the last was recorded {last}")
    if moment is not None:
        if done.cut_after is not None:
            print(f"point in time {moment.isoformat()}: the log was cut after event "
                  f"{done.cut_after}, the last recorded up to then")
        else:
            # Only the newest state is kept uncut (restore.py): the replica has nothing later.
            print(f"point in time {moment.isoformat()}: the replica holds nothing recorded "
                  f"after it (its newest file is from {done.newest.isoformat()})")
    if kept is None:
        print("there was no database before: nothing to keep")
    else:
        dropped = {None: ", which could not be read", 0: ""}.get(
            lost, f", with {lost} events the restored one does not hold")
        print(f"the database it replaced{dropped}, is kept at {kept}")
    print("Litestream's local state for the old file was removed: it continues from the "
          "replica's position when it next starts")
    return 0


def cmd_replica(args: argparse.Namespace, settings: Settings) -> int:
    from loacl.store.replica import status, urls

    url = _replica_url(settings)
    db = settings.database_path
    config = urls.write_config(settings.data_dir, db, url)
    if args.action == "config":
        print(config)
        return 0
    position = status.replica_position(config, db)
    conn = connect(db, readonly=True) if db.exists() else None
    try:
        found = status.status(url, db, conn, position, datetime.now(UTC))
    finally:
        if conn is not None:
            conn.close()
    if args.json:
        print(json.dumps(found.as_dict()))
        return 0
    shown = found.as_dict()
    sync = found.last_sync.isoformat() if found.last_sync else "never"
    print(f"replica       {url}")
    print(f"replica txid  {shown['replica_txid'] or '-'} (last sync {sync})")
    taken = found.local_at.isoformat() if found.local_at else "never"
    print(f"local txid    {shown['local_txid'] or '-'} (Litestream last took changes {taken})")
    print(f"events        {found.events}")
    if found.caught_up:
        print("lag           0 s: caught up")
    else:
        assert found.pending_since is not None
        print(f"lag           {found.lag_seconds:.1f} s: {found.behind} transaction(s) to ship, "
              f"changes waiting since {found.pending_since.isoformat()}")
    return 0


def _print_rows(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    if not rows:
        print("(none)")
        return
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(w) for c, w in zip(columns, widths,
                                                                     strict=True)))


def cmd_users(args: argparse.Namespace, settings: Settings) -> int:
    from loacl import admin

    if args.action == "list":
        rows = asyncio.run(admin.list_users(settings))
        _print_rows(rows, ["id", "email", "name", "email_verified", "created_at"], args.json)
        return 0
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise LoaclError("validation_error", "the passwords differ")
    user = asyncio.run(
        admin.create_user(settings, args.email, password, name=args.name, verified=args.verified)
    )
    print(f"created {user['email']} ({user['id']})"
          + (", e-mail verified" if user["email_verified"] else ""))
    return 0


def cmd_assistants(args: argparse.Namespace, settings: Settings) -> int:
    from loacl import admin

    if args.action == "list":
        rows = asyncio.run(admin.list_assistants(settings, args.owner))
        _print_rows(rows, ["id", "owner", "name", "provider", "model"], args.json)
        return 0
    results = asyncio.run(
        admin.import_assistants(settings, Path(args.file), args.owner, validate=args.validate)
    )
    failed = 0
    for result in results:
        label = f"{result.source_id} {result.name!r}"
        if result.error:
            failed += 1
            print(f"skipped {label}: {result.error}")
            continue
        print(f"imported {label} as {result.assistant_id}")
        if result.waiting_tools:
            print(f"    function tools carried over as http tools, disabled until you set "
                  f"their url: {', '.join(result.waiting_tools)}")
        if result.vector_store_ids:
            print(f"    vector stores kept for OpenAI's file_search: "
                  f"{', '.join(result.vector_store_ids)}; upload the documents to LOACL too: "
                  "searched by LOACL (local knowledge, the default), or kept at OpenAI in a "
                  "store LOACL makes and searched with these (PUT "
                  f"/api/v1/assistants/{result.assistant_id}/knowledge-store "
                  '{"store": "openai"}); LOACL never deletes these stores')
        for dropped in result.dropped:
            print(f"    not carried over: {dropped}")
    print(f"{len(results) - failed} imported, {failed} skipped")
    return 0 if failed == 0 else 1


def cmd_widgets(args: argparse.Namespace, settings: Settings) -> int:
    from loacl import admin

    rows = asyncio.run(admin.list_widgets(settings, args.owner))
    for row in rows:
        row["allowed_origins"] = " ".join(row["allowed_origins"]) or "-"
    _print_rows(rows, ["id", "owner", "name", "assistant_id", "enabled", "allowed_origins"],
                args.json)
    return 0


def cmd_subscribers(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from loacl.store import checkpoints
    from loacl.store.eventstore import utc_now
    from loacl.store.subscribers import default_subscribers
    from loacl.store.subscriptions import Table

    known = {s.name: s for s in default_subscribers()}
    shared = None
    if settings.postgres_url is not None:
        with _level_with_log(settings):
            pass  # lag is counted to the whole log's head
        # An effect (webhooks, mails) runs on one instance at a time, from its checkpoint in
        # PostgreSQL, the only ones kept there: where it has got to is there (its failures
        # are the copy's of the instance that ran it).
        shared = asyncio.run(_postgres_checkpoints(settings.postgres_url))
    conn = _open(settings)
    try:
        if args.action == "reset":
            subscriber = known.get(args.name)
            if not isinstance(subscriber, Table):
                raise LoaclError(
                    "not_resettable", f"{args.name!r} is not a table subscriber LOACL knows: "
                    "only those can be rebuilt (an effect would repeat everything it did)",
                )
            checkpoints.reset(conn, subscriber.name, subscriber.tables)
            print(f"reset {subscriber.name}: it starts again from position 0")
            return 0
        found = checkpoints.status(conn, known, utc_now(), shared)
    finally:
        conn.close()
    rows = [asdict(s) | {"lag_seconds": round(s.lag_seconds, 3)} for s in found]
    if not args.json:
        for row in rows:
            row["last_error"] = row["last_error"] or "-"
    _print_rows(rows, ["name", "position", "lag_events", "lag_seconds", "failures",
                       "last_error"], args.json)
    return 0


def cmd_usage(args: argparse.Namespace, settings: Settings) -> int:
    from loacl.store import usage

    conn = _open(settings)
    try:
        days = usage.daily(conn, args.widget)
    finally:
        conn.close()
    _print_rows([d.as_dict() for d in days], ["day", "widget_id", "replies_completed",
                                              "replies_failed", "input_tokens",
                                              "output_tokens"], args.json)
    return 0


def _print_erasure(found: Erasure, dry_run: bool) -> None:
    verb = "would erase" if dry_run else "erased"
    print(f"{verb} {found.scope}:")
    if found.account:
        print(f"  account {found.account}, its {found.sessions} open session(s)")
    if found.widgets or found.assistants:
        print(f"  {len(found.widgets)} widget(s) and {len(found.assistants)} assistant(s), "
              "deleted")
    print(f"  {len(found.conversations)} conversation(s): {found.messages} message(s), "
          f"{found.files} file(s)")
    for conversation_id in found.conversations:
        print(f"    {conversation_id}")
    if found.plain_events:
        print(f"  {found.plain_events} of their events were written before personal fields were "
              "sealed: their text stays in the log until `loacl privacy reseal NEW_FILE` is run "
              "and its file put in place")
    if not dry_run and not found.wal_cut:
        print("  the WAL still holds pages written before: a running server cuts it at its next "
              "retention round, or stop it and run `loacl privacy erase` again to cut it now")


def cmd_privacy(args: argparse.Namespace, settings: Settings) -> int:
    import loacl.privacy_admin as admin

    if args.action == "erase":
        found = asyncio.run(admin.erase(
            settings, conversation=args.conversation, visitor=args.visitor, owner=args.owner,
            dry_run=args.dry_run,
        ))
        _print_erasure(found, args.dry_run)
        return 0
    if args.action == "reseal":
        out = Path(args.path)
        done = admin.reseal(settings, out)
        print(f"resealed {done.events} events into {out} ({done.plain} held plaintext; "
              f"{done.keys_made} data key(s) made)")
        if not done.audit.ok:
            print(f"its audit FAILED at event {done.audit.bad_seq}: {done.audit.reason}")
            return 1
        print(f"audit ok. Stop the server, put it in place with `loacl restore --force {out}`, "
              "then delete the old file's copies (the safety folder, older backups): they hold "
              "the plaintext")
        return 0
    report = asyncio.run(admin.status(settings))
    if args.json:
        print(json.dumps(report))
        return 0
    _print_rows(report["retention"], ["widget_id", "name", "retention_days", "due",
                                      "oldest_activity"], False)
    orphans = report["conversations_of_deleted_widgets"]
    print(f"conversations erased: {report['conversations_erased']}; of deleted widgets (kept "
          f"until erased by hand or with the account): {orphans}")
    keys = report["data_keys"]
    print(f"data keys: {keys['live']} live, {keys['erased']} erased; master key "
          f"{report['master_key'] or '-'}")
    for master, count in sorted(report["data_keys_by_master_key"].items()):
        print(f"  {count} sealed with master key {master}")
    before = report["events_before_sealing"]
    if before:
        print(f"events written before sealing (plaintext in the log): up to position {before}; "
              "`loacl privacy reseal NEW_FILE` seals them")
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    import loacl.privacy_admin as admin

    done = admin.rotate(settings, forget_old=args.forget_old)
    print(f"master key {done.new} now seals every data key ({done.rewrapped} sealed again)")
    if done.from_settings:
        print("master_key names it first; remove the old key(s) from master_key once no backup "
              "that needs them is kept")
    elif done.forgotten:
        print("the old master key(s) were removed from the key file: backups made before now "
              "cannot be read with it any more")
    elif done.old:
        print(f"the old master key(s) {', '.join(done.old)} stay in the key file, second, so "
              "that older backups can still be read; run again with --forget-old to drop them")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loacl",
        description="LOACL: an AI assistant for your website. Serve it, and migrate, replay, "
        "audit, back up and restore its database.",
        epilog="Settings come from ./loacl.toml (or --config) and LOACL_* environment "
        "variables; README.md lists them.",
    )
    parser.add_argument("--version", action="version", version=f"loacl {__version__}")
    parser.add_argument("--config", type=Path, help="settings file (default: ./loacl.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the HTTP server")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", help="apply, revert or list schema migrations")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--to", type=int, help="target migration number")
    p.add_argument("--force", action="store_true",
                   help="down: even while a server uses the database")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("replay", help="rebuild every read table from the event log")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "repair", help="copy every readable event of a damaged log into a new file"
    )
    p.add_argument("path", help="the new file (must not exist)")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser(
        "audit", help="check the event log's hash chain (verify) or rebuild its stream index"
    )
    p.add_argument("action", choices=["verify", "reindex"])
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser(
        "copy", help="copy the event log between a SQLite file and a PostgreSQL database, and "
        "verify its hash chain on arrival"
    )
    p.add_argument("--from", dest="source", required=True, metavar="URL",
                   help="sqlite:///path/to/loacl.db or postgresql://user@host/db")
    p.add_argument("--to", dest="target", required=True, metavar="URL",
                   help="the other kind: an empty PostgreSQL database, or a new SQLite file")
    p.set_defaults(func=cmd_copy)

    p = sub.add_parser("events", help="read the event log")
    ev = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = ev.add_parser("tail", help="the latest events, optionally following new ones")
    t.add_argument("--follow", "-f", action="store_true")
    t.add_argument("--stream")
    t.add_argument("--type")
    t.add_argument("--since", type=int, help="show events after this position")
    t.add_argument("--limit", "-n", type=int, default=20)
    t.add_argument("--json", action="store_true", help="one JSON object a line")
    t.add_argument("--deltas", action="store_true",
                   help="show each assistant.delta event (by default a reply's end says how "
                        "many it closes)")
    t.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    s = ev.add_parser("show", help="one event in full")
    s.add_argument("seq", type=int)
    s.add_argument("--json", action="store_true")
    x = ev.add_parser("export", help="the log as JSON lines, personal fields opened where the "
                      "master key allows (erased subjects as [erased])")
    x.add_argument("--since", type=int, default=0, help="export events after this position")
    x.add_argument("--format", choices=["jsonl"], default="jsonl")
    x.add_argument("--output", "-o", help="a file to write instead of stdout")
    x.set_defaults(func=cmd_export)
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("backup", help="write a consistent copy of the database")
    p.add_argument("path")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser(
        "restore", help="put a backup, or the replica's latest or earlier state, in place of "
        "the database (the replaced one is kept)",
    )
    p.add_argument("path", nargs="?", help="the backup file")
    p.add_argument("--force", action="store_true",
                   help="even when the database holds events the restored one lacks (and, for a "
                   "backup file, while a server uses it)")
    p.add_argument("--from-replica", action="store_true",
                   help="restore from replica_url (Litestream) instead of a backup file")
    p.add_argument("--timestamp", metavar="ISO-8601",
                   help="with --from-replica: exactly the events recorded up to this time")
    p.add_argument("--if-empty", action="store_true",
                   help="with --from-replica: only when there is no database (or no event in "
                   "it), and no error when the replica is empty (a container's first start)")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("replica", help="the Litestream replica: its status, or its config file")
    rsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    rsub.add_parser(
        "status", help="the replica's newest transaction, its last sync and its lag"
    ).add_argument("--json", action="store_true")
    rsub.add_parser(
        "config", help="write Litestream's config for replica_url into the data folder (mode "
        "0600, no credentials) and print its path"
    )
    p.set_defaults(func=cmd_replica)

    p = sub.add_parser("users", help="create or list owner accounts")
    us = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = us.add_parser("create", help="create an owner account")
    c.add_argument("--email", required=True)
    c.add_argument("--name")
    c.add_argument("--verified", action="store_true", help="mark the e-mail address verified")
    c.add_argument("--password-stdin", action="store_true",
                   help="read the password from standard input instead of asking")
    us.add_parser("list", help="list owner accounts").add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("assistants", help="list assistants, or import them from OpenAI")
    asub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = asub.add_parser("list", help="list assistants")
    a.add_argument("--owner", help="only this owner's (e-mail address)")
    a.add_argument("--json", action="store_true")
    i = asub.add_parser(
        "import", help="create assistants from a JSON export of OpenAI's Assistants API"
    )
    i.add_argument("file")
    i.add_argument("--owner", required=True, help="e-mail address of the owner to give them to")
    i.add_argument("--validate", action="store_true",
                   help="check each model with OpenAI first (needs OPENAI_API_KEY)")
    p.set_defaults(func=cmd_assistants)

    p = sub.add_parser("widgets", help="list widgets")
    wsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    w = wsub.add_parser("list", help="list widgets")
    w.add_argument("--owner", help="only this owner's (e-mail address)")
    w.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_widgets)

    p = sub.add_parser("subscribers", help="durable subscribers: status, or rebuild one")
    ssub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ssub.add_parser(
        "status", help="each subscriber's position, lag and last error"
    ).add_argument("--json", action="store_true")
    r = ssub.add_parser("reset", help="empty a table subscriber's tables and start it from 0")
    r.add_argument("name")
    p.set_defaults(func=cmd_subscribers)

    p = sub.add_parser("privacy", help="erase personal data, see what retention will erase")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    e = psub.add_parser(
        "erase", help="erase a conversation, every conversation of a visitor, or an account"
    )
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--conversation", metavar="ID")
    which.add_argument("--visitor", metavar="ID")
    which.add_argument("--owner", metavar="EMAIL",
                       help="the account, its widgets, assistants and their conversations")
    e.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    psub.add_parser(
        "status", help="retention per widget (what is due), data keys, unsealed history"
    ).add_argument("--json", action="store_true")
    r = psub.add_parser(
        "reseal", help="copy the log into a new file with every personal field sealed"
    )
    r.add_argument("path", help="the new file (must not exist)")
    p.set_defaults(func=cmd_privacy)

    p = sub.add_parser("keys", help="rotate the master key that seals the data keys")
    ksub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = ksub.add_parser("rotate", help="seal every data key with a new master key (online)")
    k.add_argument("--forget-old", action="store_true",
                   help="drop the old master key from the key file afterwards")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("usage", help="replies and tokens per widget and UTC day")
    p.add_argument("--widget", help="only this widget's")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_usage)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"loacl: {exc}", file=sys.stderr)
        return 2
    func: Command = args.func
    try:
        return func(args, settings)
    except LoaclError as exc:
        print(f"loacl: {exc.message} [{exc.code}]", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:  # e.g. a file that is not a LOACL database
        print(f"loacl: database error: {exc} [database_error]", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
