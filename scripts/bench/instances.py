"""Streaming through several LOACL instances on one log in PostgreSQL: tabs of one conversation
on different instances.

A throwaway PostgreSQL cluster (tests/pg.py), one database per configuration, N LOACL server
processes on it (``DATABASE_URL=postgresql://...``), each with its own SQLite copy
(``instance_database``) and all with the same data folder (one JWT secret, one master key), the
OpenAI test server with its timing wrapper (scripts/bench/streaming.py), a process that only
LISTENs to the log's channel and notes when each commit's ``NOTIFY`` arrives, and this process,
which plays the visitors.

For each of K conversations: a session made on instance ``i mod N`` (where it asks), one tab
there and one tab on the next instance. Every conversation asks at once; the test server streams
each reply at a fixed token rate. A tab on the asking instance follows the reply token by token;
a tab on another instance follows it through the log: the asking instance writes the reply's
text to PostgreSQL once per ``flush_interval_ms``, the other hears the ``NOTIFY``, copies the new
events into its SQLite file and feeds its tab. For every token the test server sent:

- when each tab had it; the difference (other tab minus asking tab) is the added cross-instance
  delay (goal p99 <= 50 ms);
- split in two at the PostgreSQL commit of the event that carries it (when the listening process
  heard its ``NOTIFY``): asking tab -> commit (the flush window and the write), commit -> other
  tab (``NOTIFY``, copy, projection, fan-out, socket);
- deltas lost or repeated on either tab, texts that differ, replies whose log differs (all must
  be 0).

At the end of each configuration: the log in PostgreSQL verifies (hash chain and head), each
instance's copy verifies, and every copy holds PostgreSQL's chain (the same positions and
hashes). While a round runs, what the instances' PostgreSQL connections are doing is sampled
every 20 ms (``pg_stat_activity``: waiting for the head lock, idle in its transaction, ...). All
clocks are ``time.monotonic()`` (one clock for every process). The exit status is 1 when a goal
is missed.

Every visitor comes from loopback, so the per-address limits are lifted. ``--pg-pool N``
widens each instance's PostgreSQL pool to N connections (``widen_pool``). ``--keep`` keeps the
instances' logs and copies; a stuck instance prints its threads' stacks to its log on SIGUSR1.

    python scripts/bench/instances.py [--instances 2 3] [--conversations 50 200]
        [--flush-ms 250 20] [--rate 20] [--tokens 40] [--coalesce-ms 5] [--pg-pool N] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from loacl.settings import Settings
from scripts.bench import streaming
from scripts.bench.streaming import (
    ORIGIN,
    WAIT,
    Child,
    Stream,
    ask,
    ms,
    pct,
    read_frames,
    reply_for,
    timings,
    wait_ready,
)


def instance_settings(pg_url: str, data_dir: Path, copy: Path, provider_url: str = "",
                      flush_ms: int = 250, coalesce_ms: int = 5) -> Settings:
    return Settings(
        database_url=pg_url, instance_database=copy, data_dir=data_dir,
        openai_api_key="sk-bench", openai_base_url=f"{provider_url or 'http://127.0.0.1:9'}/v1",
        require_verified_email=False, argon2_time_cost=1, argon2_memory_kib=64,
        argon2_parallelism=1, provider_concurrency=1000, log_level="warning",
        flush_interval_ms=flush_ms, ws_coalesce_ms=coalesce_ms,
        # Every visitor comes from one loopback address: the per-address limits would refuse
        # most of them (4 replies at once, 64 sockets per instance).
        replies_per_ip=100_000, sockets_per_ip=100_000, sessions_per_ip_hour=100_000,
        messages_per_ip_minute=100_000, messages_per_ip_day=100_000,
    )


# -- child processes -----------------------------------------------------------------------------


def run_instance(args: argparse.Namespace) -> None:
    import faulthandler

    from loacl.http.app import create_app
    from loacl.logs import configure_logging

    settings = instance_settings(args.pg_url, Path(args.data), Path(args.copy),
                                 args.provider_url, args.flush_ms[0], args.coalesce_ms)
    configure_logging(settings.log_level, settings.log_format)
    if args.pg_pool:
        widen_pool(args.pg_pool)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a stuck instance's stacks
    streaming._serve_child(create_app(settings), lifespan="on", deflate=False)


def widen_pool(size: int) -> None:
    """Give the instance's PostgreSQL pool ``size`` connections at most (store.postgres.upstream
    has its own size; a pool of 4 once hung an instance whose listener and subscribers held all
    four)."""
    import asyncpg

    create_pool = asyncpg.create_pool

    def wider(*args: Any, **kwargs: Any) -> Any:
        kwargs["max_size"] = max(kwargs.get("max_size", 0), size)
        return create_pool(*args, **kwargs)

    asyncpg.create_pool = wider


def run_listener(pg_url: str, out: Path) -> None:
    """Note, one line each, when each commit's NOTIFY on the log's channel arrives here:
    ``time position``. Until SIGTERM."""
    import asyncpg

    from loacl.store.postgres.upstream import CHANNEL

    async def listen() -> None:
        conn = await asyncpg.connect(pg_url)
        with out.open("w", buffering=1) as lines:

            def heard(*notice: Any) -> None:
                lines.write(f"{time.monotonic()!r} {notice[-1]}\n")

            await conn.add_listener(CHANNEL, heard)
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            print("listening", flush=True)
            await stop.wait()
        await conn.close()

    asyncio.run(listen())


class Listener:
    def __init__(self, pg_url: str, out: Path, log: Path) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--role", "listen", "--pg-url", pg_url, "--out", str(out)],
            stdout=subprocess.PIPE, stderr=log.open("wb"), text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "listening":
            raise RuntimeError(f"the listener did not start: {log.read_text()}")

    def heard(self) -> tuple[list[int], list[float]]:
        """Positions and the times their NOTIFY arrived, in arrival order."""
        positions, times = [], []
        for line in self.out.read_text().splitlines():
            at, _, seq = line.partition(" ")
            if seq:
                positions.append(int(seq))
                times.append(float(at))
        return positions, times

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=60)


# -- the parent: one configuration -------------------------------------------------------------


@dataclass
class Pair:
    """One conversation: a tab on the instance that asks, one on another."""

    asking: Stream
    other: Stream
    asking_at: int
    other_at: int


@dataclass
class Round:
    instances: int
    conversations: int
    flush_ms: int
    lost_asking: int = 0
    lost_other: int = 0
    wrong: int = 0  # texts that differ, on either tab
    log_wrong: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    same: list[float] = field(default_factory=list)  # provider sent -> asking tab
    other: list[float] = field(default_factory=list)  # provider sent -> other tab
    added: list[float] = field(default_factory=list)  # other tab - asking tab
    # The same split: each reply's first token (which waits for the reply's start to reach the
    # other instance through the log) and the tokens after it (sent live, or by the log).
    added_first: list[float] = field(default_factory=list)
    added_rest: list[float] = field(default_factory=list)
    to_commit: list[float] = field(default_factory=list)  # asking tab -> PostgreSQL commit
    from_commit: list[float] = field(default_factory=list)  # commit -> other tab
    out_of_order: int = 0  # NOTIFYs heard with a lower position than one before
    commits: int = 0  # PostgreSQL commits that wrote events (NOTIFYs heard)
    # What the instances' PostgreSQL connections were doing, sampled every 20 ms.
    activity: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    events: int = 0
    cpu: list[float] = field(default_factory=list)  # each instance's CPU seconds


async def pg_head(conn: Any) -> int:
    return int(await conn.fetchval("SELECT seq FROM event_log_head WHERE id = 1"))


async def level(conn: Any, copies: Sequence[Path]) -> int:
    """Wait until every copy holds PostgreSQL's head; that head."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        head = await pg_head(conn)
        if all(streaming._head(copy) == head for copy in copies):
            return head
        await asyncio.sleep(0.05)
    raise RuntimeError("the copies never came level with PostgreSQL")


async def open_pairs(urls: Sequence[str], widget_id: str, count: int, conn: Any,
                     copies: Sequence[Path]) -> list[Pair]:
    """``count`` conversations, each made on instance ``i mod N`` with a tab there and a tab on
    the next instance (once that instance's copy holds the conversation)."""
    import httpx
    from websockets.asyncio.client import connect
    from websockets.typing import Origin

    gate = asyncio.Semaphore(50)
    limits = httpx.Limits(max_connections=50, keepalive_expiry=2.0)
    clients = [httpx.AsyncClient(base_url=url, timeout=60, limits=limits) for url in urls]
    n = len(urls)
    try:
        async def session(i: int) -> tuple[str, str]:
            async with gate:
                response = await clients[i % n].post(
                    f"/api/v1/widgets/{widget_id}/sessions", json={}, headers={"Origin": ORIGIN}
                )
                response.raise_for_status()
                body = response.json()
                return str(body["visitor_token"]), str(body["conversation_id"])

        sessions = await asyncio.gather(*(session(i) for i in range(count)))
    finally:
        for client in clients:
            await client.aclose()
    await level(conn, copies)

    async def tab(at: int, token: str, conversation_id: str) -> Stream:
        async with gate:
            stream = Stream(token, conversation_id)
            base = urls[at].replace("http://", "ws://")
            stream.ws = await connect(
                f"{base}/api/v1/widgets/{widget_id}/stream?token={token}",
                origin=Origin(ORIGIN), open_timeout=60, ping_interval=None, max_queue=None,
            )
            ready = json.loads(await asyncio.wait_for(stream.ws.recv(), 60))
            assert ready["type"] == "ready", ready
            assert ready["conversation_id"] == conversation_id, ready
            return stream

    async def pair(i: int, token: str, conversation_id: str) -> Pair:
        on, off = i % n, (i + 1) % n
        asking, other = await asyncio.gather(tab(on, token, conversation_id),
                                             tab(off, token, conversation_id))
        return Pair(asking, other, on, off)

    return list(await asyncio.gather(
        *(pair(i, token, cid) for i, (token, cid) in enumerate(sessions))
    ))


async def follow(stream: Stream) -> None:
    """Note every frame's arrival on a tab that did not ask, until the reply's ``done``."""
    stream.frames = []
    async for raw in stream.ws:
        stream.frames.append((time.monotonic(), raw))
        if raw.startswith('{"type":"done"'):
            return


async def report_stuck(pairs: Sequence[Pair], stuck: Sequence[tuple[int, str]], conn: Any,
                       copies: Sequence[Path]) -> None:
    """What a tab that never saw its reply's end had, and where that reply's events are."""
    for i, side in stuck:
        pair = pairs[i]
        tab = pair.asking if side == "asking" else pair.other
        seen = read_frames(tab)
        reply_id = read_frames(pair.asking).reply_id or seen.reply_id
        kinds = [json.loads(raw)["type"] for _, raw in tab.frames]
        print(f"    stuck: conversation {i} ({tab.conversation_id}), {side} tab on instance "
              f"{pair.asking_at if side == 'asking' else pair.other_at}: reply {reply_id}, "
              f"{len(seen.text)} characters, frames {kinds[:3]}...{kinds[-3:]} ({len(kinds)}); "
              f"the asking tab's errors {read_frames(pair.asking).errors}")
        if reply_id is None:
            continue
        like = f'%"message_id":"{reply_id}"%'
        in_pg = [tuple(r) for r in await conn.fetch(
            "SELECT seq, type FROM events WHERE payload LIKE $1 ORDER BY seq", like)]
        print(f"      in PostgreSQL: {in_pg[:2]}...{in_pg[-2:]} ({len(in_pg)} events)")
        for copy in copies:
            local = sqlite3.connect(copy)
            try:
                rows = local.execute("SELECT seq, type FROM events WHERE payload LIKE ? "
                                     "ORDER BY seq", (like,)).fetchall()
            finally:
                local.close()
            print(f"      in {copy.name}: {rows[-2:]} ({len(rows)} events)")


def url_of(conn: Any) -> str:
    params, address = conn._params, conn._addr
    return f"postgresql://{params.user}@{address[0]}:{address[1]}/{params.database}"


async def sample(url: str, counts: dict[str, int]) -> None:
    """Count what the instances' connections are doing (state, wait, statement), every 20 ms,
    on a connection of its own."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        while True:
            for row in await conn.fetch(
                "SELECT state, wait_event, left(query, 40) AS query FROM pg_stat_activity "
                "WHERE application_name LIKE 'loacl %' AND state <> 'idle'"
            ):
                key = f"{row['state']} | {row['wait_event'] or '-'} | {row['query']}"
                counts[key] = counts.get(key, 0) + 1
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


def first_at(arrivals: Sequence[tuple[float, int]], length: int) -> float | None:
    """When a tab first had ``length`` characters of the reply."""
    lengths = [a[1] for a in arrivals]
    i = bisect.bisect_left(lengths, length)
    return arrivals[i][0] if i < len(arrivals) else None


async def one_round(provider: Child, instances: Sequence[Child], widget_id: str, store: Any,
                    conn: Any, copies: Sequence[Path], listener: Listener, result: Round,
                    tokens: int) -> Round:
    from loacl.domain import conversations as domain

    urls = [i.url for i in instances]
    pairs = await open_pairs(urls, widget_id, result.conversations, conn, copies)
    tag = f"n{result.instances}f{result.flush_ms}k{result.conversations}"
    wanted = [reply_for(f"{tag}c{i:04d}", tokens) for i in range(len(pairs))]
    head_before = await pg_head(conn)
    await timings(provider.url)  # forget earlier replies
    pids = [i.process.pid for i in instances]
    cpu_before = [streaming._cpu_seconds(pid) for pid in pids]
    started = time.monotonic()
    asking = [asyncio.ensure_future(ask(p.asking, m))
              for p, (m, _) in zip(pairs, wanted, strict=True)]
    following = [asyncio.ensure_future(follow(p.other)) for p in pairs]
    sampler = asyncio.ensure_future(sample(url_of(conn), result.activity))
    await asyncio.wait([*asking, *following], timeout=WAIT)
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    stuck = [(i, side) for i, (a, f) in enumerate(zip(asking, following, strict=True))
             for side, task in (("asking", a), ("other", f)) if not task.done()]
    if stuck:
        await report_stuck(pairs, stuck, conn, copies)
        for task in (*asking, *following):
            task.cancel()
        raise RuntimeError(f"{len(stuck)} tabs did not see their reply end within {WAIT:.0f} s")
    result.elapsed = time.monotonic() - started
    result.cpu = [streaming._cpu_seconds(pid) - before
                  for pid, before in zip(pids, cpu_before, strict=True)]
    await level(conn, copies)
    result.events = await pg_head(conn) - head_before
    marks = await timings(provider.url)
    positions, heard_at = listener.heard()
    result.out_of_order = sum(b < a for a, b in itertools.pairwise(positions))
    result.commits = sum(head_before < p <= head_before + result.events for p in positions)

    # Where each reply's text is in the log: (characters so far, position), in log order.
    ends: dict[str, list[tuple[int, int]]] = {}
    texts: dict[str, str] = {}
    for recorded in await store.read_all(after=head_before):
        event = recorded.event
        if isinstance(event, domain.AssistantDelta):
            pieces = ends.setdefault(event.message_id, [])
            if event.offset != (pieces[-1][0] if pieces else 0):
                result.log_wrong += 1
            pieces.append((event.offset + len(event.text), recorded.seq))
            texts[event.message_id] = texts.get(event.message_id, "") + event.text
        elif isinstance(event, domain.AssistantCompleted):
            ends.setdefault(event.message_id, []).append((len(event.text), recorded.seq))
            texts[event.message_id] = event.text

    def committed(reply_id: str, length: int) -> float | None:
        """When the NOTIFY of the commit that carried the reply's first ``length`` characters
        arrived at the listener."""
        for end, seq in ends.get(reply_id, []):
            if end >= length:
                i = bisect.bisect_left(positions, seq)
                return heard_at[i] if i < len(positions) else None
        return None

    for pair, (_, expected) in zip(pairs, wanted, strict=True):
        seen_a, seen_b = read_frames(pair.asking), read_frames(pair.other)
        result.lost_asking += seen_a.lost_or_repeated
        result.lost_other += seen_b.lost_or_repeated
        result.wrong += (seen_a.text != expected) + (seen_b.text != expected)
        for code in seen_a.errors + seen_b.errors:
            result.errors[code] = result.errors.get(code, 0) + 1
        reply_id = seen_a.reply_id or seen_b.reply_id
        if reply_id is None or texts.get(reply_id) != expected:
            result.log_wrong += 1
            continue
        for n, (sent, length) in enumerate(marks.get(expected, [])):
            at_a, at_b = first_at(seen_a.arrivals, length), first_at(seen_b.arrivals, length)
            commit = committed(reply_id, length)
            if at_a is None or at_b is None:
                continue
            result.same.append(at_a - sent)
            result.other.append(at_b - sent)
            result.added.append(at_b - at_a)
            (result.added_rest if n else result.added_first).append(at_b - at_a)
            if commit is not None:
                result.to_commit.append(commit - at_a)
                result.from_commit.append(at_b - commit)
    await asyncio.gather(*(s.ws.close() for p in pairs for s in (p.asking, p.other)),
                         return_exceptions=True)
    return result


def print_round(r: Round) -> None:
    def both(values: Sequence[float]) -> str:
        return f"p50 {ms(pct(values, 50))}   p99 {ms(pct(values, 99))}"

    print(f"\n{r.instances} instances, {r.conversations} conversations, flush window "
          f"{r.flush_ms} ms ({len(r.added)} tokens timed, {r.elapsed:.2f} s)")
    print(f"    deltas lost or repeated: asking tabs {r.lost_asking}, other tabs "
          f"{r.lost_other}; texts wrong {r.wrong}; logs wrong {r.log_wrong}")
    if r.errors:
        print(f"    replies refused or failed {r.errors}")
    print(f"    token delay provider -> tab on the asking instance  {both(r.same)}")
    print(f"    token delay provider -> tab on another instance     {both(r.other)}")
    print(f"    added on the other instance (per token)             {both(r.added)}")
    print(f"      each reply's first token                          {both(r.added_first)}")
    print(f"      the tokens after it                               {both(r.added_rest)}")
    print(f"      asking tab -> PostgreSQL commit (flush, write)    {both(r.to_commit)}")
    print(f"      commit -> other tab (NOTIFY, copy, fan-out)       {both(r.from_commit)}")
    print("      (below 0: the other tab had the text, sent live, before the log did)")
    samples = sorted(r.activity.items(), key=lambda item: -item[1])[:4]
    if samples:
        print("    instances' PostgreSQL connections not idle (samples every 20 ms; state | "
              "wait | statement):")
        for what, count in samples:
            print(f"      {count:5}  {what}")
    cpu = ", ".join(f"{c / r.elapsed:.0%}" for c in r.cpu)
    print(f"    events written {r.events} ({r.events / r.elapsed:,.0f}/s) in {r.commits} "
          f"PostgreSQL commits ({r.commits / r.elapsed:,.0f}/s); instances' CPU "
          f"(of one core) {cpu}"
          + (f"; NOTIFYs out of order {r.out_of_order}" if r.out_of_order else ""))


async def configuration(cluster: Any, provider: Child, n: int, flush_ms: int,
                        args: argparse.Namespace, folder: Path) -> tuple[list[Round], list[str]]:
    """N instances on a new database with one flush window: a warm-up, then each round."""
    import asyncpg

    from loacl.services.keys import keyring_for
    from loacl.store import audit
    from loacl.store.postgres.eventstore import PgEventStore
    from loacl.store.sqlite import connect
    from tests import pg

    name = f"bench_n{n}_f{flush_ms}"
    url = await pg.create_database(cluster, name)
    here = folder / name
    here.mkdir()
    data = here / "data"
    copies = [here / f"instance{i}.db" for i in range(n)]
    listener = Listener(url, here / "notify.txt", here / "listener.log")
    instances: list[Child] = []
    rounds: list[Round] = []
    problems: list[str] = []

    def start(i: int) -> Child:
        return Child(["--role", "instance", "--pg-url", url, "--data", str(data), "--copy",
                      str(copies[i]), "--provider-url", provider.url, "--flush-ms",
                      str(flush_ms), "--coalesce-ms", str(args.coalesce_ms),
                      "--pg-pool", str(args.pg_pool)],
                     here / f"instance{i}.log", script=__file__)

    conn = await asyncpg.connect(url)
    try:
        # The first alone: it migrates PostgreSQL and writes the data folder's JWT secret and
        # master key, which the others then read.
        instances.append(start(0))
        wait_ready(instances[0].url)
        instances += [start(i) for i in range(1, n)]
        for instance in instances[1:]:
            wait_ready(instance.url)
        widget_id = await streaming.setup_widget(instances[0].url)
        await level(conn, copies)  # every instance knows the widget before sessions are made
        keys = keyring_for(instance_settings(url, data, copies[0]), create=False)
        async with PgEventStore(url, keyring=keys, pool_size=2) as store:
            # Each instance answers one reply first (the SDK's lazy imports), followed on the
            # next: the cross-instance path is warm too.
            warm = Round(n, n, flush_ms)
            await one_round(provider, instances, widget_id, store, conn, copies, listener,
                            warm, 3)
            if warm.lost_asking or warm.lost_other or warm.wrong or warm.log_wrong:
                problems.append(f"{n} instances, flush {flush_ms} ms: the warm-up lost or "
                                "repeated deltas")
            for count in args.conversations:
                result = await one_round(provider, instances, widget_id, store, conn, copies,
                                         listener, Round(n, count, flush_ms), args.tokens)
                print_round(result)
                rounds.append(result)
        chain = await level(conn, copies)
    finally:
        for instance in instances:
            ended(instance.process, instance.stop)
        ended(listener.process, listener.stop)
    try:
        # The log in PostgreSQL verifies, each copy verifies, and each holds PostgreSQL's chain.
        async with PgEventStore(url, keyring=keys, pool_size=2) as store:
            verified = await store.verify()
        if not verified.ok:
            problems.append(f"{n} instances, flush {flush_ms} ms: PostgreSQL's log does not "
                            f"verify: {verified}")
        expected = [tuple(r) for r in await conn.fetch("SELECT seq, hash FROM events ORDER BY seq")]
        for copy in copies:
            local = connect(copy)
            try:
                ok = audit.verify(local).ok
                held = [tuple(r) for r in local.execute(
                    "SELECT seq, hash FROM events ORDER BY seq")]
            finally:
                local.close()
            if not (ok and held == expected):
                # A copy that is a beginning of the log missed what another instance appended
                # as it stopped, after this one had stopped: name those events.
                beginning = held == expected[:len(held)]
                after = [f"{r['seq']} {r['type']} {r['recorded_at']}" for r in await conn.fetch(
                    "SELECT seq, type, recorded_at FROM events WHERE seq > $1 ORDER BY seq "
                    "LIMIT 5", len(held))] if beginning else []
                problems.append(
                    f"{n} instances, flush {flush_ms} ms: {copy.name} "
                    f"{'verifies' if ok else 'does not verify'}, holds "
                    + (f"the first {len(held)} of PostgreSQL's {len(expected)} events "
                       f"(then {after})" if beginning else "another chain than PostgreSQL's"))
        print(f"    at the end: PostgreSQL's log {chain} events, verifies "
              f"{'yes' if verified.ok else 'NO'}; the {n} copies verify and hold its chain: "
              f"{'yes' if not problems else 'NO'}")
    finally:
        await conn.close()
        await pg.drop_database(cluster, name)
    return rounds, problems


def ended(process: subprocess.Popen[str], stop: Any) -> None:
    """Stop a child; killed if it does not end within a minute (its log says why)."""
    try:
        stop()
    except subprocess.TimeoutExpired:
        print(f"    process {process.pid} did not end on SIGTERM within 60 s: killed")
        process.kill()
        process.wait()


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min)"


async def bench(args: argparse.Namespace, folder: Path) -> int:
    from tests import pg

    cluster = pg.start_cluster()
    provider = Child(["--role", "provider", "--rate", str(args.rate)], folder / "provider.log")
    rounds: list[Round] = []
    failures: list[str] = []
    try:
        streaming.wait_ready_provider(provider.url)
        print(f"token rate {args.rate:g}/s per stream, {args.tokens} tokens per reply; socket "
              f"coalescing window {args.coalesce_ms} ms; {os.cpu_count()} CPUs, {_load()}; "
              "PostgreSQL, the test server, the instances, a NOTIFY listener and the visitors "
              "in their own processes")
        for flush_ms in args.flush_ms:
            for n in args.instances:
                done, problems = await configuration(cluster, provider, n, flush_ms, args,
                                                     folder)
                rounds += done
                failures += problems
    finally:
        ended(provider.process, provider.stop)
        cluster.stop()
    print(f"\nsummary ({_load()} at the end)")
    print(f"{'instances':>9} {'conv.':>6} {'flush':>6} {'lost/rep.':>10} {'added p50':>11} "
          f"{'added p99':>11} {'1st p99':>11} {'rest p99':>11} {'->commit p50':>13} "
          f"{'commit-> p50':>13} {'commit-> p99':>13}")
    for r in rounds:
        bad = r.lost_asking + r.lost_other + r.wrong + r.log_wrong
        print(f"{r.instances:>9} {r.conversations:>6} {r.flush_ms:>4}ms {bad:>10} "
              f"{ms(pct(r.added, 50)):>11} {ms(pct(r.added, 99)):>11} "
              f"{ms(pct(r.added_first, 99)):>11} {ms(pct(r.added_rest, 99)):>11} "
              f"{ms(pct(r.to_commit, 50)):>13} {ms(pct(r.from_commit, 50)):>13} "
              f"{ms(pct(r.from_commit, 99)):>13}")
        where = f"{r.instances} instances, {r.conversations} conversations, flush {r.flush_ms} ms"
        if bad or r.errors:
            failures.append(f"{where}: {bad} deltas, texts or logs lost or repeated"
                            + (f", {r.errors}" if r.errors else ""))
        if pct(r.added, 99) > 0.050:
            failures.append(f"{where}: p99 added delay {pct(r.added, 99) * 1000:.0f} ms > 50 ms")
    print("\ngoals: 0 lost or repeated deltas on either tab; the log in PostgreSQL and every "
          "copy verify and agree; p99 added delay on a tab on another instance <= 50 ms")
    print("result: " + ("all goals met" if not failures else "; ".join(failures)))
    return 1 if failures else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/bench/instances.py",
        description="Tabs of one conversation on different LOACL instances sharing a log in "
        "PostgreSQL: lost or repeated deltas, and the delay a tab on another instance adds.",
    )
    parser.add_argument("--instances", type=int, nargs="*", default=[2, 3])
    parser.add_argument("--conversations", type=int, nargs="*", default=[50, 200])
    parser.add_argument("--flush-ms", type=int, nargs="*", default=[250, 20],
                        help="LOACL's flush windows, one configuration each")
    parser.add_argument("--rate", type=float, default=20.0, help="tokens per second per stream")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per reply")
    parser.add_argument("--coalesce-ms", type=int, default=5,
                        help="LOACL's window for a socket's frames (0: none)")
    parser.add_argument("--pg-pool", type=int, default=0,
                        help="widen each instance's PostgreSQL pool to this many connections "
                        "(0: LOACL's own)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the instances' logs and copies in a folder under /tmp")
    parser.add_argument("--role", choices=["instance", "listen"], help=argparse.SUPPRESS)
    parser.add_argument("--pg-url", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--copy", help=argparse.SUPPRESS)
    parser.add_argument("--provider-url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    streaming.raise_fd_limit()  # children inherit it
    if args.role == "instance":
        run_instance(args)
        return 0
    if args.role == "listen":
        run_listener(args.pg_url, Path(args.out))
        return 0
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.keep:
        folder = Path(tempfile.mkdtemp(prefix="loacl-instances-"))
        print(f"logs and copies kept in {folder}")
        return asyncio.run(bench(args, folder))
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    raise SystemExit(main())
