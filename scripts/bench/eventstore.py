"""Event store throughput, measured side by side in one run on the same rows.

(a) raw sqlite3 executemany in batches of 1,000 (events and their stream index entries): the
    limit;
(b) LOACL appends one at a time from one coroutine;
(c) LOACL appends from 100 concurrent coroutines (group commit);
(d) replay against a raw scan plus msgspec decode of the same rows;
(e) and (f): (c) and (d) again with each event's text (a personal field, as a streamed reply's
    is) and each append's client address sealed with AES-256-GCM under its conversation's key,
    against the same rows written plain; (d)'s projection counts events and reads no text, so
    replay leaves the text sealed (``Projections.on_sealed``);
(f') replay of the same rows with a projection that reads each event's text, so that every
    sealed value is opened, sealed against plain;
(g) replay of whole conversations through LOACL's own read tables (a message, the reply's start,
    twenty deltas, its end), sealed against plain.

Each figure is the best of three runs: on a shared machine a single run varies by half; the
best is what the code can do and applies to LOACL and the raw baselines alike. The sealed
against plain ratios are also given in CPU time (this process's, all its threads), which a
machine busy with other work disturbs far less than the wall clock.

With ``--postgres URL`` (a server whose user may create databases) the same run measures the
PostgreSQL store too: (h) appends from 100 concurrent coroutines against (i) ``COPY`` of the same
rows 1,000 to a transaction, (j) ``read_all`` against a raw fetch and decode, and (k) appends
as LOACL makes them with ``DATABASE_URL=postgresql://...``: each instance's SQLite copy written
with every batch, then PostgreSQL in one statement if its head has not moved
(store.postgres.upstream), against (i). A throwaway
server, from the checkout: ``python -c "from tests import pg; print(pg.start_cluster().admin)"``.

    python scripts/bench/eventstore.py [--events 100000] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import asyncpg
import msgspec

from loacl.domain.conversations import (
    AssistantCompleted,
    AssistantDelta,
    AssistantStarted,
    MessagePosted,
)
from loacl.domain.events import Event, Metadata, RecordedEvent
from loacl.domain.widgets import ConversationStarted
from loacl.store import migrations
from loacl.store.eventstore import EventStore
from loacl.store.keys import Keyring, MasterKeys
from loacl.store.postgres import migrate as pg_migrate
from loacl.store.postgres.eventstore import PgEventStore
from loacl.store.postgres.upstream import PgUpstream
from loacl.store.projections import Projections, default_projections
from loacl.store.replay import replay
from loacl.store.sqlite import connect

WRITERS = 100


class Elapsed(NamedTuple):
    wall: float
    cpu: float


class Stopwatch:
    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> Elapsed:
        return Elapsed(time.perf_counter() - self.wall, time.process_time() - self.cpu)


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchNoted(Event):
    event_type = "bench.noted"
    conversation_id: str
    message_id: str
    offset: int
    text: str
    personal = ("text",)
    not_personal = ("conversation_id", "message_id")


MASTER = bytes(range(32))


def keyring() -> Keyring:
    return Keyring(MasterKeys(lambda: [MASTER]))


def metadata(writer: int) -> Metadata:
    # As a streamed reply's deltas carry it: the visitor's request, with its address.
    return Metadata(actor=f"visitor:{writer}", request_id=f"req-{writer:06d}",
                    client_ip=f"203.0.113.{writer % 250}")


def make_event(writer: int, i: int) -> BenchNoted:
    # About 200 bytes encoded, like a coalesced streaming delta.
    return BenchNoted(
        conversation_id=f"c{writer:04d}-8f0d2f5c-1b7e-4c59",
        message_id=f"m{i:08d}-3a2d-41a7-9bb5",
        offset=i * 40,
        text="The quick brown fox jumps over the lazy dog, then naps: "[: 40 + i % 16] * 2,
    )


def fresh_db(folder: Path, name: str) -> Path:
    path = folder / name
    conn = connect(path)
    migrations.up(conn)
    conn.close()
    return path


async def loacl_concurrent(
    path: Path, events: int, writers: int, keys: Keyring | None = None
) -> Elapsed:
    per_writer = events // writers
    async with EventStore(path, Projections(), keyring=keys) as store:

        async def writer(w: int) -> None:
            stream = f"conversation-{w}"
            meta = metadata(w)
            for i in range(per_writer):
                await store.append(stream, [make_event(w, i)], expected_version=i, metadata=meta)

        watch = Stopwatch()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        return watch.stop()


def raw_executemany(source: Path, target: Path) -> float:
    """Insert exactly the rows LOACL wrote, 1,000 to a transaction: each event and its entry in
    the stream index (the same tables, the same data, written the simplest way)."""
    rows = sqlite3.connect(source).execute(
        "SELECT seq, stream, version, type, schema_version, payload, metadata, recorded_at, hash "
        "FROM events ORDER BY seq"
    ).fetchall()
    entries = [(stream, version, seq) for seq, stream, version, *_ in rows]
    conn = connect(target)
    started = time.perf_counter()
    for i in range(0, len(rows), 1000):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows[i:i + 1000])
        conn.executemany("INSERT INTO stream_index VALUES (?, ?, ?)", entries[i:i + 1000])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


def raw_scan(path: Path) -> tuple[float, int]:
    decoder = msgspec.json.Decoder(BenchNoted)
    conn = connect(path)
    started = time.perf_counter()
    count = 0
    for (payload,) in conn.execute("SELECT payload FROM events ORDER BY seq"):
        decoder.decode(payload)
        count += 1
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed, count


def timed_replay(path: Path, keys: Keyring | None = None, *, reads_text: bool = False) -> Elapsed:
    """Replay with a projection that handles every event, so each one is decoded: one that
    counts them (it reads no personal field and says so: ``on_sealed``), or with
    ``reads_text`` one that reads each event's text, so that every sealed value is opened."""
    projections = Projections()
    seen = [0]

    if reads_text:

        @projections.on
        def measure(conn: sqlite3.Connection, event: BenchNoted, recorded: RecordedEvent) -> None:
            seen[0] += len(event.text)

    else:

        @projections.on_sealed
        def count(conn: sqlite3.Connection, event: BenchNoted, recorded: RecordedEvent) -> None:
            seen[0] += 1

    conn = connect(path)
    opened = keys.attach(conn) if keys is not None else None
    watch = Stopwatch()
    replay(conn, projections, keys=opened)
    elapsed = watch.stop()
    conn.close()
    return elapsed


DELTAS = 20


async def conversations(path: Path, count: int, keys: Keyring | None) -> int:
    """``count`` conversations of one question and a streamed answer; the events written."""
    written = 0
    async with EventStore(path, default_projections(), keyring=keys) as store:
        for c in range(count):
            cid, meta = f"c{c:06d}", metadata(c)
            stream = f"conversation-{cid}"
            reply = [f"{DELTAS}-words answer, part {d}: the parcel leaves today. " for d in
                     range(DELTAS)]
            batch: list[Event] = [
                ConversationStarted(conversation_id=cid, widget_id="w", visitor_id=f"v{c}"),
                MessagePosted(conversation_id=cid, message_id=f"{cid}-q",
                              text=f"Where is my parcel number {c}? It was due yesterday."),
                AssistantStarted(conversation_id=cid, message_id=f"{cid}-a",
                                 reply_to=f"{cid}-q", assistant_id="a", provider="demo",
                                 model="demo"),
            ]
            offset = 0
            for piece in reply:
                batch.append(AssistantDelta(message_id=f"{cid}-a", offset=offset, text=piece))
                offset += len(piece)
            batch.append(AssistantCompleted(message_id=f"{cid}-a", text="".join(reply)))
            await store.append(stream, batch, metadata=meta)
            written += len(batch)
    return written


def timed_full_replay(path: Path, keys: Keyring | None) -> Elapsed:
    conn = connect(path)
    opened = keys.attach(conn) if keys is not None else None
    watch = Stopwatch()
    replay(conn, default_projections(), keys=opened)
    elapsed = watch.stop()
    conn.close()
    return elapsed


# -- PostgreSQL (--postgres URL) ----------------------------------------------------------------
#
# (h) LOACL's PostgreSQL store, appends from 100 concurrent coroutines (group commit, the head
#     lock held by each transaction); (i) the same rows written by COPY in transactions of 1,000
#     into the same table, the head row moved with each: the limit; (j) LOACL's read_all in
#     pages of 5,000 against a raw fetch and msgspec decode of the same rows. Each round writes
#     into databases of its own, created and dropped through URL.


_PG_COLUMNS = ("seq", "stream", "version", "type", "schema_version", "payload", "metadata",
            "recorded_at", "hash")


def _url(base: str, database: str) -> str:
    head, _, rest = base.partition("://")
    return f"{head}://{rest.split('/', 1)[0]}/{database}"


async def _fresh(base: str, name: str) -> str:
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = _url(base, name)
    conn = await asyncpg.connect(url)
    try:
        await pg_migrate.up(conn)
    finally:
        await conn.close()
    return url


async def _drop(base: str, name: str) -> None:
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _appends(store: PgEventStore | EventStore, events: int, writers: int) -> float:
    """Seconds for ``writers`` coroutines to append ``events`` one at a time, each to its own
    stream."""
    per_writer = events // writers

    async def writer(w: int) -> None:
        stream, meta = f"conversation-{w}", metadata(w)
        for i in range(per_writer):
            await store.append(stream, [make_event(w, i)], expected_version=i, metadata=meta)

    started = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return time.perf_counter() - started


async def _pg_concurrent(url: str, events: int, writers: int) -> float:
    async with PgEventStore(url) as store:
        return await _appends(store, events, writers)


async def _instance_concurrent(url: str, folder: Path, name: str, events: int,
                               writers: int) -> float:
    """(k): as LOACL runs with DATABASE_URL=postgresql://...: the SQLite store keeping its
    file as a copy of the log in PostgreSQL, each batch written there in one statement that
    moves the head only if it has not moved (store.postgres.upstream)."""
    async with EventStore(fresh_db(folder, name), Projections(),
                          upstream=PgUpstream(url, None)) as store:
        return await _appends(store, events, writers)


async def _copy(source: str, target: str) -> float:
    """Exactly the rows LOACL wrote, copied 1,000 to a transaction, the head row moved with
    each (as an append does)."""
    conn = await asyncpg.connect(source)
    try:
        rows = [tuple(r) for r in await conn.fetch(
            f"SELECT {', '.join(_PG_COLUMNS)} FROM events ORDER BY seq"
        )]
    finally:
        await conn.close()
    conn = await asyncpg.connect(target)
    try:
        started = time.perf_counter()
        for i in range(0, len(rows), 1000):
            chunk = rows[i:i + 1000]
            async with conn.transaction():
                await conn.copy_records_to_table("events", records=chunk, columns=_PG_COLUMNS)
                await conn.execute(
                    "UPDATE event_log_head SET seq = $1, hash = $2", chunk[-1][0], chunk[-1][8]
                )
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _read_all(url: str) -> tuple[float, int]:
    async with PgEventStore(url) as store:
        started, last, count = time.perf_counter(), 0, 0
        while True:
            page = await store.read_all(after=last, limit=5000)
            if not page:
                return time.perf_counter() - started, count
            last, count = page[-1].seq, count + len(page)


async def _pg_raw_scan(url: str) -> float:
    decoder = msgspec.json.Decoder(BenchNoted)
    conn = await asyncpg.connect(url)
    try:
        started, last = time.perf_counter(), 0
        while True:
            rows = await conn.fetch(
                "SELECT seq, payload FROM events WHERE seq > $1 ORDER BY seq LIMIT 5000", last
            )
            if not rows:
                return time.perf_counter() - started
            for row in rows:
                decoder.decode(row["payload"])
            last = rows[-1]["seq"]
    finally:
        await conn.close()


async def measure_postgres(
    base: str, events: int, rounds: int, folder: Path
) -> dict[str, list[float]]:
    """Seconds per round of (h), (i), (j), (k) and the raw scan."""
    times: dict[str, list[float]] = {"h": [], "i": [], "j": [], "k": [], "scan": []}
    for round_ in range(rounds):
        written, copied = f"loacl_bench_h{round_}", f"loacl_bench_i{round_}"
        instance = f"loacl_bench_k{round_}"
        try:
            url = await _fresh(base, written)
            times["h"].append(await _pg_concurrent(url, events, WRITERS))
            times["k"].append(await _instance_concurrent(
                await _fresh(base, instance), folder, f"k{round_}.db", events, WRITERS))
            times["i"].append(await _copy(url, await _fresh(base, copied)))
            read, count = await _read_all(url)
            assert count == events // WRITERS * WRITERS
            times["j"].append(read)
            times["scan"].append(await _pg_raw_scan(url))
        finally:
            await _drop(base, written)
            await _drop(base, copied)
            await _drop(base, instance)
    return times


ROUNDS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--single", type=int, default=5_000, help="events for (b)")
    parser.add_argument("--conversations", type=int, default=2_000, help="for (g)")
    parser.add_argument("--postgres", metavar="URL", help="also measure PostgreSQL: (h)-(j)")
    args = parser.parse_args()
    n = args.events // WRITERS * WRITERS
    keys = ("a", "b", "c", "d", "scan", "e", "f", "d_read", "f_read", "g_plain", "g_sealed")
    times: dict[str, list[float]] = {key: [] for key in keys}
    cpu: dict[str, list[float]] = {key: [] for key in keys if key not in ("a", "b", "scan")}

    def note(key: str, elapsed: Elapsed) -> None:
        times[key].append(elapsed.wall)
        cpu[key].append(elapsed.cpu)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        g_events = 0
        for round_ in range(ROUNDS):  # interleaved, so that a slow spell hits every figure
            c_path = fresh_db(folder, f"c{round_}.db")
            note("c", asyncio.run(loacl_concurrent(c_path, args.events, WRITERS)))
            e_path = fresh_db(folder, f"e{round_}.db")
            note("e", asyncio.run(loacl_concurrent(e_path, args.events, WRITERS, keyring())))
            times["a"].append(raw_executemany(c_path, fresh_db(folder, f"a{round_}.db")))
            times["b"].append(asyncio.run(
                loacl_concurrent(fresh_db(folder, f"b{round_}.db"), args.single, 1)
            ).wall)
            note("d", timed_replay(c_path))
            note("f", timed_replay(e_path, keyring()))
            note("d_read", timed_replay(c_path, reads_text=True))
            note("f_read", timed_replay(e_path, keyring(), reads_text=True))
            scan, scanned = raw_scan(c_path)
            assert scanned == n
            times["scan"].append(scan)
            plain, sealed = fresh_db(folder, f"gp{round_}.db"), fresh_db(folder, f"gs{round_}.db")
            g_events = asyncio.run(conversations(plain, args.conversations, None))
            asyncio.run(conversations(sealed, args.conversations, keyring()))
            note("g_plain", timed_full_replay(plain, None))
            note("g_sealed", timed_full_replay(sealed, keyring()))
    counts = {"a": n, "b": args.single, "c": n, "d": n, "scan": n, "e": n, "f": n,
              "d_read": n, "f_read": n, "g_plain": g_events, "g_sealed": g_events}
    rate = {key: counts[key] / min(values) for key, values in times.items()}
    print(f"{n} events of ~200 bytes, {WRITERS} streams; best of {ROUNDS} interleaved rounds")
    print(f"(a) raw executemany, 1,000 a commit   {rate['a']:>10,.0f} events/s")
    print(f"(b) LOACL, one coroutine, one by one  {rate['b']:>10,.0f} events/s")
    print(f"(c) LOACL, {WRITERS} coroutines (group)   {rate['c']:>10,.0f} events/s")
    print(f"(d) LOACL replay                      {rate['d']:>10,.0f} events/s")
    print(f"    raw scan + msgspec decode         {rate['scan']:>10,.0f} events/s")
    print(f"(e) as (c), personal fields sealed    {rate['e']:>10,.0f} events/s")
    print(f"(f) as (d), personal fields sealed    {rate['f']:>10,.0f} events/s")
    print(f"(f') replay reading every text: plain {rate['d_read']:,.0f}, sealed "
          f"{rate['f_read']:,.0f} events/s")
    print(f"(g) replay of {args.conversations} conversations into the read tables "
          f"({g_events} events): plain {rate['g_plain']:,.0f}, sealed {rate['g_sealed']:,.0f} "
          "events/s")
    per_round = [
        (a / c, scan / d)
        for a, c, d, scan in zip(times["a"], times["c"], times["d"], times["scan"], strict=True)
    ]
    rounds = ", ".join(f"{ca:.2f} / {ds:.2f}" for ca, ds in per_round)
    print(f"(c)/(a) / (d)/(raw scan) per round: {rounds}")
    print(f"(c)/(a) = {rate['c'] / rate['a']:.2f}   (goal >= 0.5)")
    if args.postgres:
        with tempfile.TemporaryDirectory() as tmp:
            pg = asyncio.run(measure_postgres(args.postgres, args.events, ROUNDS, Path(tmp)))
        pg_rate = {key: n / min(values) for key, values in pg.items()}
        print(f"(h) PostgreSQL, {WRITERS} coroutines (group) {pg_rate['h']:>10,.0f} events/s")
        print(f"(i) PostgreSQL COPY, 1,000 a commit   {pg_rate['i']:>10,.0f} events/s")
        print(f"(j) PostgreSQL read_all               {pg_rate['j']:>10,.0f} events/s")
        print(f"    raw fetch + msgspec decode        {pg_rate['scan']:>10,.0f} events/s")
        print(f"(k) LOACL instance on PostgreSQL, {WRITERS} coroutines {pg_rate['k']:>10,.0f} "
              "events/s")
        print(f"(h)/(i) = {pg_rate['h'] / pg_rate['i']:.2f}   (goal >= 0.5)")
        print(f"(k)/(i) = {pg_rate['k'] / pg_rate['i']:.2f}")
        print(f"(j)/(raw fetch) = {pg_rate['j'] / pg_rate['scan']:.2f}")
    print(f"(d)/(raw scan) = {rate['d'] / rate['scan']:.2f}   (goal >= 0.4)")

    def ratio(without: str, sealing: str, of: dict[str, list[float]]) -> float:
        return min(of[without]) / min(of[sealing])

    for label, without, sealing in (
        ("appends, (e)/(c)", "c", "e"), ("replay, (f)/(d)", "d", "f"),
        ("replay reading every text, (f')", "d_read", "f_read"),
        ("replay into the read tables, (g)", "g_plain", "g_sealed"),
    ):
        print(f"sealed against plain, {label}: wall {ratio(without, sealing, times):.2f}, "
              f"CPU {ratio(without, sealing, cpu):.2f}   (goal >= 0.85)")
    print("load average:", " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
