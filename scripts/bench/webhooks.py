"""Webhook delivery under load: throughput, and the delay from an event's commit to its arrival
at the receiver (p50, p99), with many conversations active at once.

A LOACL server (its own process, the demo provider answering at once) with one endpoint that
takes every event type, and a receiver in this process (a threaded HTTP server on loopback that
answers 204 and notes when each delivery arrived). ``--conversations`` visitors each start a
conversation and ask ``--messages`` questions, several at a time; every conversation's events
must arrive in order and none may be missing. The delay is the arrival time minus the event's
``timestamp`` (the time the log recorded it; one clock, one machine).

Each run starts one server per ``--concurrency`` value (``LOACL_WEBHOOK_CONCURRENCY``, the
deliveries sent at once) with the same workload, one after the other, and prints them side by
side: 16 was the fixed figure before it became a setting, 64 is the default now.

    python -m scripts.bench.webhooks [--conversations 1000] [--messages 1] [--parallel 32]
        [--concurrency 16,64]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from scripts.bench.metrics import ORIGIN, PASSWORD, server


@dataclass
class Arrivals:
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)


def receiver(arrivals: Arrivals) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as receivers in the field do

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            now = time.time()
            with arrivals.lock:
                arrivals.seen.append((now, self.headers["webhook-id"], json.loads(body)))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    found = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.daemon_threads = True
    threading.Thread(target=found.serve_forever, daemon=True).start()
    return found


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def breakdown(database: Path) -> dict[str, list[float]]:
    """Where the time went, per delivery, from the server's own records: commit to the outbox
    row (the subscriber), and the outbox row to the end of the attempt (the dispatcher)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT e.recorded_at, d.created_at, d.last_attempt_at FROM webhook_deliveries d "
            "JOIN events e ON e.seq = d.source_seq WHERE d.status = 'delivered'").fetchall()
    finally:
        conn.close()

    def at(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    return {"commit to outbox": [at(b) - at(a) for a, b, _ in rows],
            "outbox to sent": [at(c) - at(b) for _, b, c in rows]}


@dataclass
class Result:
    concurrency: int
    deliveries: int
    posting: float
    total: float
    delays: list[float]
    stages: dict[str, list[float]]
    reordered: int
    duplicates: int


def run(args: argparse.Namespace, concurrency: int) -> Result | None:
    arrivals = Arrivals()
    hook_server = receiver(arrivals)
    hook_url = f"http://127.0.0.1:{hook_server.server_address[1]}/hook"
    extra = {"LOACL_OUTBOUND_ALLOW_PRIVATE": "1", "LOACL_OUTBOUND_ALLOW_HTTP": "1",
             "LOACL_WEBHOOK_CONCURRENCY": str(concurrency)}
    with (tempfile.TemporaryDirectory() as tmp,
          server("hooks", Path(tmp), metrics=False, extra=extra) as loacl,
          httpx.Client(timeout=120, limits=httpx.Limits(max_connections=args.parallel)) as http):
        email = "owner@example.com"
        http.post(f"{loacl.url}/api/v1/auth/register", json={"email": email,
                                                              "password": PASSWORD})
        token = http.post(f"{loacl.url}/api/v1/auth/login", json={
            "email": email, "password": PASSWORD}).json()["access_token"]
        owner = {"Authorization": f"Bearer {token}"}
        assistant = http.post(f"{loacl.url}/api/v1/assistants", headers=owner, json={
            "name": "Bench", "provider": "demo", "model": "demo"}).json()["id"]
        widget = http.post(f"{loacl.url}/api/v1/widgets", headers=owner, json={
            "name": "Bench", "assistant_id": assistant, "allowed_origins": [ORIGIN],
            "limits": {"messages_per_minute": 600}}).json()["id"]
        made = http.post(f"{loacl.url}/api/v1/webhooks", headers=owner, json={
            "url": hook_url, "event_types": ["conversation.started", "message.posted",
                                             "reply.completed", "reply.failed"]})
        assert made.status_code == 201, made.text
        base = f"{loacl.url}/api/v1/widgets/{widget}"

        def visitor(_: int) -> None:
            session = http.post(f"{base}/sessions", json={}, headers={"Origin": ORIGIN}).json()
            for n in range(args.messages):
                answer = http.post(f"{base}/messages", json={"text": f"question {n}"}, headers={
                    "Origin": ORIGIN, "Authorization": f"Bearer {session['visitor_token']}"})
                assert answer.status_code in (200, 201), answer.text

        started = time.time()
        with ThreadPoolExecutor(args.parallel) as pool:
            list(pool.map(visitor, range(args.conversations)))
        posted = time.time()
        expected = args.conversations * (1 + 2 * args.messages)
        deadline = time.monotonic() + 900
        while len({i for _, i, _ in arrivals.seen}) < expected:
            if time.monotonic() > deadline:
                print(f"only {len(arrivals.seen)} of {expected} deliveries arrived")
                return None
            time.sleep(0.05)
        done = time.time()
        stages = breakdown(Path(tmp) / "hooks" / "loacl.db")
    hook_server.shutdown()
    seen = arrivals.seen
    delays = [at - datetime.fromisoformat(p["timestamp"]).timestamp() for at, _, p in seen]
    per: dict[str, list[str]] = {}
    for _, message_id, payload in seen:
        per.setdefault(payload["data"]["conversation_id"], []).append(message_id)
    reordered = sum(
        1 for ids in per.values()
        if [int(i.split("_")[1]) for i in ids] != sorted(int(i.split("_")[1]) for i in ids)
    )
    duplicates = len(seen) - len({i for _, i, _ in seen})
    return Result(concurrency, expected, posted - started, done - started, delays, stages,
                  reordered, duplicates)


def ms(values: list[float], share: float) -> str:
    return f"{percentile(values, share) * 1000:.0f}" if values else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument("--concurrency", default="16,64",
                        help="LOACL_WEBHOOK_CONCURRENCY values to run, comma-separated")
    args = parser.parse_args()
    results: list[Result] = []
    for value in (int(v) for v in args.concurrency.split(",")):
        found = run(args, value)
        if found is None:
            return 1
        results.append(found)
    first = results[0]
    print(f"{args.conversations} conversations, {args.messages} message(s) each, "
          f"{args.parallel} visitors at a time: {first.deliveries} deliveries per run")
    print(f"{'sent at once':>12} {'posting s':>9} {'all in s':>8} {'deliv/s':>7} "
          f"{'p50 ms':>6} {'p99 ms':>6} {'max ms':>6}  {'to outbox p50/p99':>17}  "
          f"{'outbox to sent p50/p99':>22}  reordered dups")
    for r in results:
        outbox, sent = r.stages["commit to outbox"], r.stages["outbox to sent"]
        print(f"{r.concurrency:>12} {r.posting:>9.1f} {r.total:>8.1f} "
              f"{r.deliveries / r.total:>7.0f} {ms(r.delays, 0.5):>6} {ms(r.delays, 0.99):>6} "
              f"{max(r.delays) * 1000:>6.0f}  {ms(outbox, 0.5) + '/' + ms(outbox, 0.99):>17}  "
              f"{ms(sent, 0.5) + '/' + ms(sent, 0.99):>22}  {r.reordered:>9} {r.duplicates:>4}")
    return 0 if all(r.reordered == 0 and r.duplicates == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
