"""What LOACL adds to a tool call's round trip.

Three child processes, so that none waits on another's interpreter: LOACL's OpenAI test server
(a timing wrapper notes when the last byte of each streamed answer leaves it, and when each
request arrives), the owner's endpoint (notes when each call arrives and when its answer
leaves), and the LOACL server. This process plays one visitor, asking one question after
another; each question makes the model call the tool once, then answer.

For each question, two legs (goal: p50 at most 5 ms each):

- call: from the model's completed call (the test server sent ``response.completed`` of the
  round that called the tool) to the endpoint receiving the call: LOACL reads the end of the
  stream, logs ``tool.called``, checks the arguments against the schema, signs and POSTs;
- answer: from the endpoint's answer leaving it to the next model request arriving at the
  test server: LOACL reads the answer, logs ``tool.returned`` and builds the next request.

The machine's load average is printed with the figures: on a loaded machine every leg
waits for a core, and the figures say more about the machine than about LOACL.

All clocks are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process). The exit
status is 1 when a goal is missed.

    python scripts/bench/tools.py [--questions 200] [--warmup 10]
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ORIGIN = "http://localhost:3000"
PASSWORD = "correct horse battery staple"
MODEL = "gpt-fake-1"
GOAL_MS = 5.0
SCHEMA = {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]}


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def _serve(app: Any, lifespan: str = "off") -> None:
    import uvicorn

    sock = _listen()
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan=lifespan,  # type: ignore[arg-type]
                            ws="websockets-sansio")
    server = uvicorn.Server(config)
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    server.run(sockets=[sock])


class Timed:
    """ASGI wrapper noting, per request to ``path``, when it arrived and when its last body
    chunk was handed to the transport; ``GET /_bench/timings`` returns and forgets them."""

    def __init__(self, app: Any, path: str) -> None:
        self.app = app
        self.path = path
        self.marks: list[dict[str, float]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_bench/timings":
            body = json.dumps(self.marks).encode()
            self.marks = []
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        mark = {"arrived": time.monotonic(), "sent": 0.0}
        self.marks.append(mark)

        async def timed(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                mark["sent"] = time.monotonic()

        await self.app(scope, receive, timed)


def run_provider() -> None:
    from loacl.openai_testserver import OpenAITestServer

    _serve(Timed(OpenAITestServer().app, "/v1/responses"))


def run_endpoint() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def order(request: Request) -> Response:
        call = json.loads(await request.body())
        answer = {"order": call["arguments"]["order"], "state": "shipped"}
        return Response(json.dumps(answer), media_type="application/json")

    _serve(Timed(Starlette(routes=[Route("/order", order, methods=["POST"])]), "/order"))


def run_loacl(folder: str, provider_url: str) -> None:
    from loacl.http.app import create_app
    from loacl.logs import configure_logging
    from loacl.settings import Settings

    path = Path(folder)
    settings = Settings(
        database_url=f"sqlite:///{path / 'loacl.db'}", data_dir=path / "data",
        openai_api_key="sk-bench", openai_base_url=f"{provider_url}/v1",
        require_verified_email=False, argon2_time_cost=1, argon2_memory_kib=64,
        argon2_parallelism=1, log_level="warning", tools_allow_private_networks=True,
        messages_per_ip_minute=0, messages_per_visitor_day=0, messages_per_ip_day=0,
        sessions_per_ip_hour=0,
    )
    configure_logging(settings.log_level, settings.log_format)
    _serve(create_app(settings), lifespan="on")


class Child:
    def __init__(self, *args: str, log: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, *args], stdout=subprocess.PIPE,
            stderr=log.open("wb"), text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise RuntimeError(f"a child did not start: {log.read_text()}")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=60)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def legs(provider_url: str, endpoint_url: str) -> tuple[float, float]:
    """The two legs of the round trip just made, in ms, from the children's notes."""
    import httpx

    model = httpx.get(f"{provider_url}/_bench/timings").json()
    owner_side = httpx.get(f"{endpoint_url}/_bench/timings").json()
    assert len(model) == 2 and len(owner_side) == 1, (model, owner_side)
    return ((owner_side[0]["arrived"] - model[0]["sent"]) * 1000,
            (model[1]["arrived"] - owner_side[0]["sent"]) * 1000)


def bench(args: argparse.Namespace, folder: Path) -> int:
    import httpx

    provider = Child("--role", "provider", log=folder / "provider.log")
    endpoint = Child("--role", "endpoint", log=folder / "endpoint.log")
    loacl = Child("--role", "loacl", "--folder", str(folder), "--provider-url", provider.url,
                  log=folder / "loacl.log")
    calls_ms: list[float] = []
    answers_ms: list[float] = []
    try:
        with httpx.Client(base_url=loacl.url, timeout=60) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("LOACL did not start")
                time.sleep(0.05)
            http.post("/api/v1/auth/register", json={"email": "b@example.com",
                                                     "password": PASSWORD})
            token = http.post("/api/v1/auth/login", json={
                "email": "b@example.com", "password": PASSWORD}).json()["access_token"]
            owner = {"Authorization": f"Bearer {token}"}
            assistant = http.post("/api/v1/assistants", headers=owner, json={
                "name": "Bench", "provider": "openai", "model": MODEL, "tools": [{
                    "name": "order_status", "parameters": SCHEMA,
                    "url": f"{endpoint.url}/order", "status_text": "Looking…"}]}).json()
            widget = http.post("/api/v1/widgets", headers=owner, json={
                "name": "Bench", "assistant_id": assistant["id"], "allowed_origins": [ORIGIN],
                "limits": {"messages_per_minute": 600}}).json()
            for n in range(args.warmup + args.questions):
                session = http.post(f"/api/v1/widgets/{widget['id']}/sessions", json={},
                                    headers={"Origin": ORIGIN}).json()
                visitor = {"Origin": ORIGIN,
                           "Authorization": f"Bearer {session['visitor_token']}"}
                httpx.post(f"{provider.url}/_admin/script", json={"calls": [{
                    "name": "order_status", "arguments": json.dumps({"order": f"A-{n}"})}]})
                reply = http.post(f"/api/v1/widgets/{widget['id']}/messages",
                                  json={"text": f"Where is A-{n}?"}, headers=visitor).json()
                assert reply["reply"]["status"] == "completed", reply
                call, answer = legs(provider.url, endpoint.url)
                if n < args.warmup:
                    continue
                calls_ms.append(call)
                answers_ms.append(answer)
    finally:
        for child in (loacl, endpoint, provider):
            child.stop()
    print(f"tool round trips: {len(calls_ms)} (after {args.warmup} to warm up)")
    with open("/proc/loadavg") as load:
        print(f"load average while measured: {load.read().split()[0]}")
    missed = 0
    for name, values in (
        ("model's call -> endpoint receives it", calls_ms),
        ("endpoint's answer -> next model request", answers_ms),
    ):
        p50, p99 = statistics.median(values), percentile(values, 99)
        ok = p50 <= GOAL_MS
        missed += not ok
        print(f"  {name:42s} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
              f"(goal p50 <= {GOAL_MS:g} ms: {'met' if ok else 'MISSED'})")
    return 1 if missed else 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--role", choices=["provider", "endpoint", "loacl"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--provider-url", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "provider":
        run_provider()
        return 0
    if args.role == "endpoint":
        run_endpoint()
        return 0
    if args.role == "loacl":
        run_loacl(args.folder, args.provider_url)
        return 0
    with tempfile.TemporaryDirectory(prefix="loacl-bench-tools-") as folder:
        return bench(args, Path(folder))


if __name__ == "__main__":
    raise SystemExit(main())
