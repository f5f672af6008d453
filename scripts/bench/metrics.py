"""What Prometheus metrics cost per request: two LOACL servers side by side, one counting
(``metrics_enabled``, scraped every ``--scrape-seconds``) and one not, driven with the same
requests in alternating rounds; each server's CPU time is read from ``/proc/<pid>/stat``.
``--calibrate`` runs two servers without metrics, to show how far apart equal servers measure
on the machine at hand; what one scrape costs is measured apart at the end.

Requests per round, in one keep-alive client: a widget's public config (a cheap read, where a
fixed cost per request shows most), a visitor session (an event appended and committed) and,
with ``--replies``, messages answered by the demo provider (a reply streamed into the log).

Prints CPU microseconds per request for each server, per round and in total, the ratio of the
totals and the median of the rounds' ratios (goal: at most 1.05; on a busy machine the rounds
scatter, and the median says more than any one of them), and what the counting itself costs per
request in this process (timeit of the calls a request and a commit make).
Exit status 1 when the median misses the goal.

    python scripts/bench/metrics.py [--rounds 16] [--requests 600] [--replies 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

PASSWORD = "correct horse battery staple"
ORIGIN = "http://localhost:3000"
TOKEN = "bench-metrics-token-0123456789"
GOAL = 1.05
LIMITS = ("SESSIONS_PER_IP_HOUR", "MESSAGES_PER_IP_MINUTE", "MESSAGES_PER_VISITOR_DAY",
          "MESSAGES_PER_IP_DAY", "REPLIES_PER_IP", "SOCKETS_PER_IP", "SOCKETS_PER_VISITOR")


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User and system time of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    widget_id: str = ""
    cpu: float = 0.0
    requests: int = 0


@contextlib.contextmanager
def server(
    name: str, folder: Path, metrics: bool, extra: dict[str, str] | None = None
) -> Iterator[Server]:
    port = _port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{folder / name / 'loacl.db'}",
        "LOACL_DATA_DIR": str(folder / name / "data"),
        "LOACL_LOG_LEVEL": "warning",
        "LOACL_LOG_FORMAT": "json",
        "LOACL_REQUIRE_VERIFIED_EMAIL": "0",
        "LOACL_DEMO_WIDGET": "0",
        "LOACL_DEMO_DELAY": "0",
        "LOACL_ARGON2_TIME_COST": "1",
        "LOACL_ARGON2_MEMORY_KIB": "64",
        "LOACL_ARGON2_PARALLELISM": "1",
        "LOACL_METRICS_ENABLED": "1" if metrics else "0",
        "LOACL_METRICS_TOKEN": TOKEN,
        **{f"LOACL_{limit}": "0" for limit in LIMITS},
        **(extra or {}),
    }
    env.pop("OPENAI_API_KEY", None)
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    (folder / name).mkdir()
    errors = (folder / name / "stderr.log").open("wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("loacl")), "serve", "--port", str(port)], env=env,
        cwd=folder, stdout=subprocess.DEVNULL, stderr=errors,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                tail = (folder / name / "stderr.log").read_text()[-2000:]
                raise RuntimeError(f"{name} did not start:\n{tail}")
            time.sleep(0.1)
        yield Server(name, url, process)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        errors.close()


def set_up(http: httpx.Client, found: Server) -> None:
    """An owner, a demo assistant and a widget; one warm-up of each request."""
    email = "owner@example.com"
    http.post(f"{found.url}/api/v1/auth/register", json={"email": email, "password": PASSWORD})
    login = http.post(f"{found.url}/api/v1/auth/login",
                      json={"email": email, "password": PASSWORD}).json()
    headers = {"Authorization": f"Bearer {login['access_token']}"}
    assistant = http.post(f"{found.url}/api/v1/assistants", headers=headers,
                          json={"name": "Bench", "provider": "demo", "model": "demo"})
    assert assistant.status_code == 201, assistant.text
    widget = http.post(f"{found.url}/api/v1/widgets", headers=headers, json={
        "name": "Bench", "assistant_id": assistant.json()["id"], "allowed_origins": [ORIGIN],
        "limits": {"messages_per_minute": 600}})
    assert widget.status_code == 201, widget.text
    found.widget_id = widget.json()["id"]
    drive(http, found, 50, 1)


def drive(http: httpx.Client, found: Server, requests: int, replies: int) -> int:
    """The round's requests; returns how many were made."""
    base = f"{found.url}/api/v1/widgets/{found.widget_id}"
    made = 0
    sessions = max(1, requests // 10)
    for n in range(requests):
        if n < sessions:
            response = http.post(f"{base}/sessions", json={}, headers={"Origin": ORIGIN})
            assert response.status_code == 201, response.text
        else:
            response = http.get(f"{base}/config", headers={"Origin": ORIGIN})
            assert response.status_code == 200, response.text
        made += 1
    for _ in range(replies):
        session = http.post(f"{base}/sessions", json={}, headers={"Origin": ORIGIN}).json()
        answer = http.post(f"{base}/messages", json={"text": "Hello"}, headers={
            "Origin": ORIGIN, "Authorization": f"Bearer {session['visitor_token']}"})
        assert answer.status_code in (200, 201), answer.text
        made += 2
    return made


def scraper(found: Server, stop: threading.Event, every: float) -> None:
    with httpx.Client(timeout=10) as http:
        while not stop.wait(every):
            response = http.get(f"{found.url}/metrics",
                                headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--replies", type=int, default=10)
    parser.add_argument("--calibrate", action="store_true",
                        help="both servers without metrics: how far apart two equal servers "
                        "measure on this machine")
    parser.add_argument("--no-scrape", action="store_true",
                        help="count but never scrape: the counting's cost alone")
    parser.add_argument("--scrape-seconds", type=float, default=5.0,
                        help="how often the counting server is scraped during the rounds "
                        "(Prometheus's own default is 60 s; 15 s is common)")
    args = parser.parse_args()
    with (tempfile.TemporaryDirectory() as tmp,
          server("off", Path(tmp), metrics=False) as off,
          server("on", Path(tmp), metrics=not args.calibrate) as on,
          httpx.Client(timeout=60) as http):
        for found in (off, on):
            set_up(http, found)
        stop = threading.Event()
        scraping = threading.Thread(target=scraper, args=(on, stop, args.scrape_seconds),
                                    daemon=True)
        if not args.calibrate and not args.no_scrape:
            scraping.start()
        print(f"{'round':>5}  {'off µs/req':>11}  {'on µs/req':>10}  {'ratio':>6}")
        ratios: list[float] = []
        for round_no in range(args.rounds):
            order = (off, on) if round_no % 2 == 0 else (on, off)
            per: dict[str, float] = {}
            for found in order:
                before = cpu_seconds(found.process.pid)
                made = drive(http, found, args.requests, args.replies)
                time.sleep(0.3)  # the last commits and subscribers settle into this round
                used = cpu_seconds(found.process.pid) - before
                found.cpu += used
                found.requests += made
                per[found.name] = used / made * 1e6
            ratios.append(per["on"] / per["off"])
            print(f"{round_no + 1:>5}  {per['off']:>11.1f}  {per['on']:>10.1f}  "
                  f"{ratios[-1]:>6.3f}")
        stop.set()
        if scraping.is_alive():
            scraping.join()
        off_us = off.cpu / off.requests * 1e6
        on_us = on.cpu / on.requests * 1e6
        ratio = on_us / off_us
        median = statistics.median(ratios)
        print(f"total  {off_us:>11.1f}  {on_us:>10.1f}  {ratio:>6.3f}  "
              f"({on.requests} requests each)")
        print(f"median of the rounds' ratios: {median:.3f} (goal ≤ {GOAL})")
        if not args.calibrate:
            scrape_ms = scrape_cost(http, on)
            print(f"one scrape: {scrape_ms:.1f} ms of the server's CPU; scraped every 15 s "
                  f"that is {scrape_ms / 15_000 * 100:.3f}% of one core")
    counting = counting_cost()
    print(f"the counting itself: {counting:.1f} µs per request and commit, "
          f"{counting / off_us * 100:.1f}% of a request's CPU without metrics")
    return 0 if median <= GOAL else 1


def scrape_cost(http: httpx.Client, found: Server, scrapes: int = 50) -> float:
    """Milliseconds of the server's CPU per scrape of /metrics."""
    before = cpu_seconds(found.process.pid)
    for _ in range(scrapes):
        http.get(f"{found.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    return (cpu_seconds(found.process.pid) - before) / scrapes * 1000


def counting_cost(calls: int = 50_000) -> float:
    """Microseconds of what one request and one commit add: the HTTP counter and histogram,
    the commit's three figures."""
    from loacl.telemetry.metrics import Metrics

    metrics = Metrics({}, process=False)

    def one() -> None:
        metrics.request("/api/v1/widgets/{id}/config", "GET", 200, 0.0012)
        metrics.committed(1, 2, 0.0008)

    return timeit.timeit(one, number=calls) / calls * 1e6


if __name__ == "__main__":
    sys.exit(main())
