"""Streaming through LOACL's WebSocket versus the same request made directly with the SDK.

Three processes, so that each one's CPU time and memory are its own: LOACL's OpenAI test server
(fixed token rate; a timing wrapper notes when each delta leaves it), the LOACL server (a fresh
database for each phase; its peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss``, printed as it
exits), and this process, which plays the visitors and the direct SDK client.

(1) Latency, one stream at a time, the two paths interleaved: time to first token (from sending
    the message, or calling ``responses.create``) and the gap between tokens; p50, p99 and the
    difference. Also each token's delay from the moment the test server sent it.
(2) 100 and 500 concurrent streams, one visitor (own conversation and socket) each: deltas lost
    or duplicated on the sockets and in the log (must be 0), each token's delay from the test
    server to the visitor (p50/p99), and that minus the direct SDK's (the added delay), events
    written per second, the server's peak RSS and CPU time (and the other two processes').
    Then the same load through a bare relay (a fourth process: the same provider code and
    WebSocket server, no log, no checks), the floor: both CPU costs per token, their ratio, and
    both added delays.
(3) 500 concurrent streams from the demo provider, at the same rate: LOACL's own part without
    the SDK (lost or repeated deltas, gaps at the visitor, CPU per token).

Each LOACL server answers one reply before it is measured: the first one after start-up pays for
the SDK's lazy imports. All clocks are ``time.monotonic()`` (CLOCK_MONOTONIC: one clock for
every process). The exit status is 1 when a goal is missed.

    python scripts/bench/streaming.py [--rate 20] [--tokens 40] [--streams 100 500]
        [--demo-streams 500] [--flush-ms 250] [--coalesce-ms 5] [--deflate]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ORIGIN = "http://localhost:3000"
PASSWORD = "correct horse battery staple"
MODEL = "gpt-fake-1"
WAIT = 120.0  # the bound on any one phase's wait


# -- the test server, with a timing wrapper (child process) ----------------------------------


class TimedProvider:
    """ASGI wrapper around the OpenAI test server that notes when each body chunk of
    ``/v1/responses`` is handed to the transport, and serves the notes as text offsets."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.responses: list[list[tuple[float, bytes]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path == "/_bench/timings":
            body = json.dumps(self._timings()).encode()
            self.responses = []
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] != "http" or path != "/v1/responses":
            await self.app(scope, receive, send)
            return
        chunks: list[tuple[float, bytes]] = []
        self.responses.append(chunks)

        async def timed(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.append((time.monotonic(), message["body"]))
            await send(message)

        await self.app(scope, receive, timed)

    def _timings(self) -> dict[str, list[tuple[float, int]]]:
        """For each streamed reply (by its whole text): (time sent, text length so far)."""
        out: dict[str, list[tuple[float, int]]] = {}
        for chunks in self.responses:
            text, marks = "", []
            for at, body in chunks:
                for block in body.decode().split("\n\n"):
                    for line in block.splitlines():
                        if not line.startswith("data: "):
                            continue
                        event = json.loads(line[6:])
                        if event.get("type") == "response.output_text.delta":
                            text += event["delta"]
                            marks.append((at, len(text)))
            if marks:
                out[text] = marks
        return out


def run_provider(token_delay: float) -> None:
    import uvicorn

    from loacl.openai_testserver import OpenAITestServer

    server = OpenAITestServer(token_delay=token_delay)
    sock = _listen()
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(TimedProvider(server.app), lifespan="off", log_level="warning",
                            ws="none", backlog=4096)
    uvicorn.Server(config).run(sockets=[sock])


# -- the LOACL server (child process) ----------------------------------------------------------


def run_loacl(folder: Path, provider_url: str, flush_ms: int, coalesce_ms: int, rate: float,
              deflate: bool) -> None:
    from loacl.http.app import create_app
    from loacl.logs import configure_logging
    from loacl.settings import Settings

    settings = Settings(
        database_url=f"sqlite:///{folder / 'loacl.db'}", data_dir=folder / "data",
        openai_api_key="sk-bench", openai_base_url=f"{provider_url}/v1",
        require_verified_email=False, argon2_time_cost=1, argon2_memory_kib=64,
        argon2_parallelism=1, provider_concurrency=1000, log_level="warning",
        flush_interval_ms=flush_ms, ws_coalesce_ms=coalesce_ms, demo_delay=1 / rate,
        # Every visitor comes from one loopback address: the per-address limits would refuse
        # most of them (4 replies at once, 64 sockets).
        replies_per_ip=100_000, sockets_per_ip=100_000, sessions_per_ip_hour=100_000,
        messages_per_ip_minute=100_000, messages_per_ip_day=100_000,
    )
    configure_logging(settings.log_level, settings.log_format)
    _serve_child(create_app(settings), lifespan="on", deflate=deflate)


def _serve_child(app: Any, *, lifespan: Literal["on", "off"], deflate: bool) -> None:
    """Serve ``app`` on a loopback port (printed first), until SIGTERM; then print this
    process's peak memory and CPU time as one JSON line."""
    import uvicorn

    sock = _listen()
    print(f"http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, ws="websockets-sansio",
                            backlog=4096, lifespan=lifespan, ws_per_message_deflate=deflate)
    server = _Server(config)
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    server.run(sockets=[sock])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"maxrss_kib": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}),
          flush=True)


# -- the relay floor (child process) -------------------------------------------------------------


def relay_app(provider_url: str) -> Any:
    """The least a server can do to stream replies to sockets: per socket, the same upstream
    request through the same provider code as LOACL (SDK client, aiohttp transport, SSE lines
    read with msgspec), each delta sent as a JSON frame at once. No log, no auth, no checks,
    no queues: the floor LOACL's CPU per token is held against."""
    import msgspec
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from loacl.domain.assistants import AssistantDefinition
    from loacl.providers import provider_for
    from loacl.providers.base import ReplyRequest, ReplyResult, Turn
    from loacl.settings import Settings

    settings = Settings(openai_api_key="sk-bench", openai_base_url=f"{provider_url}/v1",
                        provider_max_retries=0, demo_widget=False)
    provider = provider_for(settings, "openai")
    assistant = AssistantDefinition(name="Relay", provider="openai", model=MODEL)
    encode = msgspec.json.Encoder().encode
    replies = itertools.count()

    async def relay(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(encode({"type": "ready"}).decode())
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                frame = json.loads(await websocket.receive_text())
                message_id, offset = f"relay{next(replies)}", 0
                request = ReplyRequest(assistant, [Turn("user", frame["text"])])
                async for delta in provider.stream(request, ReplyResult()):
                    await websocket.send_text(encode({
                        "type": "delta", "message_id": message_id, "offset": offset,
                        "text": delta}).decode())
                    offset += len(delta)
                await websocket.send_text(encode({
                    "type": "done", "message_id": message_id, "status": "completed",
                    "length": offset}).decode())

    return Starlette(routes=[WebSocketRoute("/relay", relay)])


def run_relay(provider_url: str) -> None:
    _serve_child(relay_app(provider_url), lifespan="off", deflate=False)


class _Server:
    """uvicorn's server, minus its signal capture (which re-raises SIGTERM when it is done,
    ending the process before it can report its peak memory)."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Quiet(uvicorn.Server):
            def capture_signals(self) -> Any:
                return contextlib.nullcontext()

        return Quiet(config)


def _listen() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    return sock


# -- the parent: processes -----------------------------------------------------------------------


class Child:
    """A child process running ``script`` (this one by default) with ``args``; it prints its
    URL first."""

    def __init__(self, args: list[str], log: Path, script: str = __file__) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, script, *args], stdout=subprocess.PIPE,
            stderr=log.open("wb"), text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise RuntimeError(f"a child did not start: {log.read_text()}")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=60)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


def wait_ready(url: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready")


# -- the parent: visitors ------------------------------------------------------------------------


@dataclass
class Stream:
    """One visitor's socket and what arrived on it, as (time, raw frame)."""

    token: str
    conversation_id: str
    ws: Any = None
    frames: list[tuple[float, str]] = field(default_factory=list)
    sent_at: float = 0.0
    text: str = ""


async def setup_widget(url: str, provider: str = "openai", model: str = MODEL) -> str:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        email = "bench@example.com"
        await http.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        login = await http.post("/api/v1/auth/login",
                                json={"email": email, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        assistant = await http.post("/api/v1/assistants", headers=headers,
                                    json={"name": "Bench", "provider": provider,
                                          "model": model})
        widget = await http.post("/api/v1/widgets", headers=headers, json={
            "name": "Bench", "assistant_id": assistant.json()["id"],
            "allowed_origins": [ORIGIN], "limits": {"messages_per_minute": 600},
        })
        widget.raise_for_status()
        return str(widget.json()["id"])


async def open_streams(url: str, widget_id: str, count: int) -> list[Stream]:
    import httpx
    from websockets.asyncio.client import connect
    from websockets.typing import Origin

    gate = asyncio.Semaphore(50)
    # Idle connections expire here before uvicorn's 5 s keep-alive ends them under our feet.
    limits = httpx.Limits(max_connections=50, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def one() -> Stream:
            async with gate:
                response = await http.post(f"/api/v1/widgets/{widget_id}/sessions", json={},
                                           headers={"Origin": ORIGIN})
                response.raise_for_status()
                body = response.json()
                stream = Stream(body["visitor_token"], body["conversation_id"])
                base = url.replace("http://", "ws://")
                stream.ws = await connect(
                    f"{base}/api/v1/widgets/{widget_id}/stream?token={stream.token}",
                    origin=Origin(ORIGIN), open_timeout=60, ping_interval=None,
                    max_queue=None,
                )
                ready = json.loads(await asyncio.wait_for(stream.ws.recv(), 60))
                assert ready["type"] == "ready", ready
                return stream

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def ask(stream: Stream, text: str) -> None:
    """Send ``text``; note every frame's arrival until the reply's ``done`` (or the message's
    refusal: an error frame about no reply)."""
    stream.frames = []
    stream.sent_at = time.monotonic()
    await stream.ws.send(json.dumps({"type": "message", "text": text}))
    async for raw in stream.ws:
        stream.frames.append((time.monotonic(), raw))
        # The server writes frames compactly, "type" first.
        if raw.startswith('{"type":"done"') or (
            raw.startswith('{"type":"error"') and '"message_id"' not in raw
        ):
            return


def reply_for(tag: str, tokens: int) -> tuple[str, str]:
    """A message whose default reply (``echo:``) is a unique text of ``tokens`` deltas."""
    text = tag + "".join(f" t{i:03d}" for i in range(tokens - 1))
    return f"echo:{text}", text


@dataclass
class Seen:
    """One reply as a visitor saw it."""

    text: str
    lost_or_repeated: int  # deltas whose offset was not where the text so far ended
    arrivals: list[tuple[float, int]]  # (time, text length so far)
    reply_id: str | None
    errors: list[str]


def read_frames(stream: Stream) -> Seen:
    text, bad, arrivals, reply_id, errors = "", 0, [], None, []
    for at, raw in stream.frames:
        frame = json.loads(raw)
        if frame["type"] == "error":
            errors.append(frame["code"])
        elif frame["type"] == "done" and frame["status"] != "completed":
            errors.append(frame["status"])
        elif frame["type"] == "delta":
            reply_id = frame["message_id"]
            if frame["offset"] != len(text):
                bad += 1
                text = text[: frame["offset"]]
            text += frame["text"]
            arrivals.append((at, len(text)))
    return Seen(text, bad, arrivals, reply_id, errors)


def token_delays(marks: Sequence[tuple[float, int]], arrivals: Sequence[tuple[float, int]]
                 ) -> list[float]:
    """For each token the provider sent (time, length so far): when the visitor had that
    length, minus when it was sent."""
    out, j = [], 0
    for sent, length in marks:
        while j < len(arrivals) and arrivals[j][1] < length:
            j += 1
        if j == len(arrivals):
            break
        out.append(arrivals[j][0] - sent)
    return out


async def timings(provider_url: str) -> dict[str, list[tuple[float, int]]]:
    import httpx

    async with httpx.AsyncClient(timeout=60) as http:
        body: dict[str, list[tuple[float, int]]] = (
            await http.get(f"{provider_url}/_bench/timings")).json()
        return body


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def ms(value: float) -> str:
    return f"{value * 1000:8.1f} ms"


# -- phase 1: one stream at a time -------------------------------------------------------------


async def latency(provider_url: str, loacl_url: str, samples: int, tokens: int
                  ) -> dict[str, float]:
    import openai

    widget_id = await setup_widget(loacl_url)
    # A visitor (own conversation, socket already open) per reply: a conversation's history
    # goes with each turn, and the direct requests have none.
    visitors = await open_streams(loacl_url, widget_id, samples + 1)
    # The same transport LOACL's providers use (the SDK's aiohttp extra).
    client = openai.AsyncOpenAI(api_key="sk-bench", base_url=f"{provider_url}/v1",
                                max_retries=0, http_client=openai.DefaultAioHttpClient())
    direct: dict[str, Any] = {"ttft": [], "gaps": [], "texts": {}}
    through: dict[str, Any] = {"ttft": [], "gaps": [], "texts": {}}
    await timings(provider_url)  # forget the model check's request

    async def via_sdk(i: int) -> None:
        message, expected = reply_for(f"d{i:04d}", tokens)
        started = time.monotonic()
        stream = await client.responses.create(
            model=MODEL, stream=True, store=False,
            input=[{"role": "user", "content": [{"type": "input_text", "text": message}]}],
        )
        arrivals, text = [], ""
        async for event in stream:
            if event.type == "response.output_text.delta":
                text += event.delta
                arrivals.append((time.monotonic(), len(text)))
        assert text == expected
        direct["ttft"].append(arrivals[0][0] - started)
        direct["gaps"] += [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
        direct["texts"][text] = arrivals

    async def via_loacl(i: int) -> None:
        message, expected = reply_for(f"l{i:04d}", tokens)
        visitor = visitors[i]
        await ask(visitor, message)
        seen = read_frames(visitor)
        assert seen.text == expected and seen.lost_or_repeated == 0, seen
        through["ttft"].append(seen.arrivals[0][0] - visitor.sent_at)
        through["gaps"] += [b[0] - a[0]
                            for a, b in itertools.pairwise(seen.arrivals)]
        through["texts"][seen.text] = seen.arrivals

    await via_sdk(-1)  # warm both paths (connections, first imports)
    await via_loacl(-1)
    for i in range(samples):
        await via_sdk(i)
        await via_loacl(i)
    marks = await timings(provider_url)
    for path in (direct, through):
        path["delays"] = [d for text, arrivals in path["texts"].items() if text in marks
                          for d in token_delays(marks[text], arrivals)]
    await client.close()
    await asyncio.gather(*(v.ws.close() for v in visitors))

    print(f"\n(1) one stream at a time, {samples} replies of {tokens} tokens per path")
    print(f"{'':34}{'direct SDK':>12}{'LOACL WS':>12}{'added':>12}")
    result: dict[str, float] = {}
    for name, key in (("time to first token", "ttft"), ("gap between tokens", "gaps"),
                      ("token delay from the provider", "delays")):
        for q in (50, 99):
            d, t = pct(direct[key], q), pct(through[key], q)
            result[f"{key}_p{q}_added"] = t - d
            result[f"{key}_p{q}_direct"] = d
            print(f"{name + f' p{q}':34}{ms(d):>12}{ms(t):>12}{ms(t - d):>12}")
    return result


# -- phase 2: many at once ---------------------------------------------------------------------


@dataclass
class Load:
    """What one server did with one round of concurrent replies."""

    lost: int = 0  # deltas lost or repeated on the sockets
    wrong: int = 0  # replies whose text differs
    errors: dict[str, int] = field(default_factory=dict)
    delays: list[float] = field(default_factory=list)  # provider sent -> visitor has it
    ttft: list[float] = field(default_factory=list)
    to_provider: list[float] = field(default_factory=list)  # message -> first token sent
    provider_gaps: list[float] = field(default_factory=list)
    reply_ids: dict[str, str] = field(default_factory=dict)
    tokens: int = 0  # tokens the test server sent
    elapsed: float = 0.0
    cpu: float = 0.0  # the server's CPU seconds
    cpu_provider: float = 0.0
    cpu_visitors: float = 0.0

    @property
    def per_token(self) -> float:
        return self.cpu / max(self.tokens, 1)


async def drive(provider: Child, server: Child, streams: list[Stream],
                wanted: list[tuple[str, str]]) -> Load:
    """Ask every stream its question at once; what arrived, and the CPU each process spent."""
    pids = (server.process.pid, provider.process.pid, os.getpid())
    await timings(provider.url)  # forget the warm-up
    cpu_before = [_cpu_seconds(pid) for pid in pids]
    started = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(ask(s, m) for s, (m, _) in zip(streams, wanted, strict=True))), WAIT
    )
    load = Load(elapsed=time.monotonic() - started)
    load.cpu, load.cpu_provider, load.cpu_visitors = (
        _cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True)
    )
    marks = await timings(provider.url)
    for stream, (_, expected) in zip(streams, wanted, strict=True):
        seen = read_frames(stream)
        load.lost += seen.lost_or_repeated
        load.wrong += seen.text != expected
        for code in seen.errors:
            load.errors[code] = load.errors.get(code, 0) + 1
        if seen.reply_id:
            load.reply_ids[seen.reply_id] = expected
        if seen.arrivals:
            load.ttft.append(seen.arrivals[0][0] - stream.sent_at)
        if expected in marks:
            load.delays += token_delays(marks[expected], seen.arrivals)
            load.to_provider.append(marks[expected][0][0] - stream.sent_at)
            load.tokens += len(marks[expected])
    load.provider_gaps = [b[0] - a[0] for m in marks.values() for a, b in itertools.pairwise(m)]
    await asyncio.gather(*(s.ws.close() for s in streams), return_exceptions=True)
    return load


def print_delays(load: Load, direct_delay_p50: float) -> None:
    print(f"    deltas lost or repeated on the sockets   {load.lost}  (texts wrong: {load.wrong})")
    if load.errors:
        print(f"    replies refused or failed                {load.errors}")
    delays = load.delays
    print(f"    token delay provider -> visitor  p50 {ms(pct(delays, 50))}"
          f"   p99 {ms(pct(delays, 99))}")
    print(f"    added (minus the direct SDK's p50) p50 {ms(pct(delays, 50) - direct_delay_p50)}"
          f"   p99 {ms(pct(delays, 99) - direct_delay_p50)}")
    print(f"    time to first token              p50 {ms(pct(load.ttft, 50))}"
          f"   p99 {ms(pct(load.ttft, 99))}")


async def concurrent(provider: Child, loacl: Child, database: Path, count: int, tokens: int,
                     direct_delay_p50: float) -> Load:
    widget_id = await setup_widget(loacl.url)
    streams = await open_streams(loacl.url, widget_id, count + 1)
    # One reply first: the server's first one pays for lazy SDK imports and its client.
    warm = streams.pop()
    await ask(warm, reply_for("warm", 3)[0])
    await warm.ws.close()
    rss_before = loacl.rss_kib()
    head_before = _head(database)
    wanted = [reply_for(f"c{count}s{i:04d}", tokens) for i in range(count)]
    load = await drive(provider, loacl, streams, wanted)
    log_bad = _check_log(database, load.reply_ids)
    load.wrong += log_bad
    events = _head(database) - head_before
    elapsed = load.elapsed
    print(f"\n(2) {count} concurrent streams of {tokens} tokens ({len(load.delays)} tokens timed)")
    print_delays(load, direct_delay_p50)
    print(f"    replies whose log differs from the text   {log_bad}")
    print(f"    message -> provider's first token p50 {ms(pct(load.to_provider, 50))}"
          f"   p99 {ms(pct(load.to_provider, 99))}")
    print(f"    provider's own gap between tokens p50 {ms(pct(load.provider_gaps, 50))}"
          f"   p99 {ms(pct(load.provider_gaps, 99))}")
    print(f"    events written {events} in {elapsed:.2f} s = {events / elapsed:,.0f} events/s")
    print(f"    CPU: LOACL server {load.cpu:.2f} s ({load.cpu / elapsed:.0%} of one core, "
          f"{load.per_token * 1e6:.0f} us per token), test server {load.cpu_provider:.2f} s "
          f"({load.cpu_provider / elapsed:.0%}), visitors {load.cpu_visitors:.2f} s "
          f"({load.cpu_visitors / elapsed:.0%})")
    print(f"    LOACL server RSS before {rss_before / 1024:.0f} MiB")
    return load


async def open_relay_streams(url: str, count: int) -> list[Stream]:
    from websockets.asyncio.client import connect

    gate = asyncio.Semaphore(50)

    async def one() -> Stream:
        async with gate:
            stream = Stream("", "")
            stream.ws = await connect(f"{url.replace('http://', 'ws://')}/relay",
                                      open_timeout=60, ping_interval=None, max_queue=None)
            ready = json.loads(await asyncio.wait_for(stream.ws.recv(), 60))
            assert ready["type"] == "ready", ready
            return stream

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def relayed(provider: Child, relay: Child, count: int, tokens: int,
                  direct_delay_p50: float) -> Load:
    """The same load through the bare relay: the floor."""
    streams = await open_relay_streams(relay.url, count + 1)
    warm = streams.pop()
    await ask(warm, reply_for("warm", 3)[0])
    await warm.ws.close()
    wanted = [reply_for(f"r{count}s{i:04d}", tokens) for i in range(count)]
    load = await drive(provider, relay, streams, wanted)
    print(f"    the bare relay, same load ({len(load.delays)} tokens timed):")
    print_delays(load, direct_delay_p50)
    print(f"    CPU: relay {load.cpu:.2f} s ({load.cpu / load.elapsed:.0%} of one core, "
          f"{load.per_token * 1e6:.0f} us per token)")
    return load


async def demo(loacl: Child, database: Path, count: int, rate: float) -> dict[str, float]:
    """LOACL's own part, without the SDK: the demo provider, in the server, at the same rate."""
    from loacl.providers.demo import ANSWER

    widget_id = await setup_widget(loacl.url, "demo", "demo")
    streams = await open_streams(loacl.url, widget_id, count + 1)
    warm = streams.pop()
    await ask(warm, "warm")
    await warm.ws.close()
    head_before, cpu_before = _head(database), _cpu_seconds(loacl.process.pid)
    questions = [f"demo {count} s{i:04d}" for i in range(count)]
    started = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(ask(s, q) for s, q in zip(streams, questions, strict=True))), WAIT
    )
    elapsed = time.monotonic() - started
    cpu = _cpu_seconds(loacl.process.pid) - cpu_before
    lost = wrong = tokens = frames = 0
    gaps: list[float] = []
    ttft: list[float] = []
    reply_ids: dict[str, str] = {}
    for stream, question in zip(streams, questions, strict=True):
        seen = read_frames(stream)
        expected = ANSWER.format(question=question)
        lost += seen.lost_or_repeated
        wrong += seen.text != expected
        tokens += len(re.findall(r"\S+\s*|\s+", expected))  # the demo's pieces
        frames += len(seen.arrivals)
        if seen.reply_id:
            reply_ids[seen.reply_id] = expected
        if seen.arrivals:
            ttft.append(seen.arrivals[0][0] - stream.sent_at)
        gaps += [b[0] - a[0] for a, b in itertools.pairwise(seen.arrivals)]
    log_bad = _check_log(database, reply_ids)
    await asyncio.gather(*(s.ws.close() for s in streams), return_exceptions=True)
    events = _head(database) - head_before
    print(f"\n(3) {count} concurrent streams from the demo provider (no SDK), {rate:g} tokens/s: "
          f"{tokens} tokens in {frames} delta frames")
    print(f"    deltas lost or repeated {lost}, texts wrong {wrong}, logs wrong {log_bad}")
    print(f"    gap between tokens at the visitor p50 {ms(pct(gaps, 50))}   p99 {ms(pct(gaps, 99))}"
          f"   (the provider's: {ms(1 / rate).strip()})")
    print(f"    time to first token (incl. the first {ms(1 / rate).strip()})"
          f" p50 {ms(pct(ttft, 50))}   p99 {ms(pct(ttft, 99))}")
    print(f"    events written {events} in {elapsed:.2f} s = {events / elapsed:,.0f} events/s; "
          f"LOACL server CPU {cpu:.2f} s ({cpu / elapsed:.0%} of one core, "
          f"{cpu / max(tokens, 1) * 1e6:.0f} us per token)")
    return {"lost": lost + wrong + log_bad, "gap_p99": pct(gaps, 99)}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _head(database: Path) -> int:
    conn = sqlite3.connect(database, timeout=60)
    try:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
    finally:
        conn.close()


def _check_log(database: Path, replies: dict[str, str]) -> int:
    """Replies whose delta events are not contiguous or do not add up to the text (opened
    with the server's master key: a reply's text is a personal field, sealed in the log)."""
    from loacl.services.keys import keyring_for
    from loacl.settings import Settings
    from loacl.store import tail
    from loacl.store.sqlite import connect

    conn = connect(database)
    settings = Settings(database_url=f"sqlite:///{database}", data_dir=database.parent / "data")
    keys = keyring_for(settings, create=False).attach(conn)
    try:
        pieces: dict[str, list[tuple[int, str]]] = {r: [] for r in replies}
        position = 0
        events = []
        while page := tail.page_after(conn, position, 5000):
            events += [e for e in page if e.type == "assistant.delta"]
            position = page[-1].seq
        for event in events:
            body = json.loads(tail.opened(event, keys).payload)
            if body["message_id"] in pieces:
                pieces[body["message_id"]].append((body["offset"], body["text"]))
        bad = 0
        for reply_id, expected in replies.items():
            text = ""
            for offset, piece in pieces[reply_id]:
                bad_piece = offset != len(text)
                text += piece
                if bad_piece:
                    bad += 1
                    break
            else:
                bad += text != expected
        return bad
    finally:
        conn.close()


# -- main --------------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/bench/streaming.py",
        description="Time to first token, gaps between tokens and per-token delay through "
        "LOACL's WebSocket versus the direct SDK, then 100 and 500 concurrent streams: lost "
        "or repeated deltas, added delay, events per second, the server's peak memory.",
    )
    parser.add_argument("--rate", type=float, default=20.0, help="tokens per second per stream")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per reply in (2)")
    parser.add_argument("--samples", type=int, default=30, help="replies per path in (1)")
    parser.add_argument("--latency-tokens", type=int, default=10, help="tokens per reply in (1)")
    parser.add_argument("--streams", type=int, nargs="*", default=[100, 500])
    parser.add_argument("--demo-streams", type=int, nargs="*", default=[500],
                        help="concurrent streams from the demo provider in (3)")
    parser.add_argument("--flush-ms", type=int, default=250, help="LOACL's flush window")
    parser.add_argument("--coalesce-ms", type=int, default=5,
                        help="LOACL's window for a socket's frames (0: none)")
    parser.add_argument("--deflate", dest="no_deflate", action="store_false",
                        help="offer permessage-deflate on WebSockets (`loacl serve` does not)")
    parser.add_argument("--role", choices=["provider", "loacl", "relay"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--provider-url", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


async def bench(args: argparse.Namespace, folder: Path) -> int:
    provider = Child(["--role", "provider", "--rate", str(args.rate)], folder / "provider.log")
    failures: list[str] = []
    try:
        wait_ready_provider(provider.url)
        print(f"token rate {args.rate:g}/s per stream; flush window {args.flush_ms} ms; "
              f"socket coalescing window {args.coalesce_ms} ms; "
              f"permessage-deflate {'off' if args.no_deflate else 'on'}; {os.cpu_count()} "
              "CPUs; the test server, LOACL and the visitors in 3 processes")

        async def with_loacl(name: str, work: Callable[[Child, Path], Awaitable[Any]]) -> Any:
            data = folder / name
            data.mkdir()
            loacl = Child(["--role", "loacl", "--folder", str(data), "--provider-url",
                           provider.url, "--flush-ms", str(args.flush_ms), "--coalesce-ms",
                           str(args.coalesce_ms), "--rate",
                           str(args.rate), *([] if args.no_deflate else ["--deflate"])],
                          data / "server.log")
            try:
                wait_ready(loacl.url)
                result = await work(loacl, data / "loacl.db")
            finally:
                usage = loacl.stop()
            print(f"    LOACL server peak RSS (maxrss) {usage.get('maxrss_kib', 0) / 1024:.0f} MiB")
            return result

        async def with_relay(count: int) -> Load:
            relay = Child(["--role", "relay", "--provider-url", provider.url],
                          folder / f"relay{count}.log")
            try:
                return await relayed(provider, relay, count, args.tokens,
                                     first["delays_p50_direct"])
            finally:
                relay.stop()

        async def one_at_a_time(loacl: Child, database: Path) -> dict[str, float]:
            return await latency(provider.url, loacl.url, args.samples, args.latency_tokens)

        first: dict[str, float] = await with_loacl("latency", one_at_a_time)
        if first["ttft_p50_added"] > 0.010:
            failures.append(f"p50 added time to first token {first['ttft_p50_added'] * 1000:.1f}"
                            " ms > 10 ms")
        for count in args.streams:
            async def many(loacl: Child, database: Path, n: int = count) -> Load:
                return await concurrent(provider, loacl, database, n, args.tokens,
                                        first["delays_p50_direct"])

            load: Load = await with_loacl(f"streams{count}", many)
            floor = await with_relay(count)
            failures += compare(count, load, floor, first["delays_p50_direct"])
        for count in args.demo_streams:
            async def from_demo(loacl: Child, database: Path, n: int = count
                                ) -> dict[str, float]:
                return await demo(loacl, database, n, args.rate)

            result = await with_loacl(f"demo{count}", from_demo)
            if result["lost"]:
                failures.append(f"demo {count} streams: {result['lost']} lost or repeated")
    finally:
        provider.stop()
    print("\ngoals: p50 added time to first token <= 10 ms; 500 streams at 20 tokens/s with "
          "p99 added per-token delay <= 50 ms; LOACL's CPU per token <= 1.5 x the bare "
          "relay's; 0 lost or repeated deltas")
    print("result: " + ("all goals met" if not failures else "; ".join(failures)))
    return 1 if failures else 0


def compare(count: int, load: Load, floor: Load, direct_delay_p50: float) -> list[str]:
    """LOACL against the relay at one load: the figures, and the goals missed."""
    ratio = load.per_token / max(floor.per_token, 1e-9)
    added = pct(load.delays, 99) - direct_delay_p50
    print(f"    CPU per token: LOACL {load.per_token * 1e6:.0f} us, relay "
          f"{floor.per_token * 1e6:.0f} us, ratio {ratio:.2f}; added delay p99: LOACL "
          f"{ms(added).strip()}, relay {ms(pct(floor.delays, 99) - direct_delay_p50).strip()}")
    failures = []
    if load.lost or load.wrong or floor.lost or floor.wrong:
        failures.append(f"{count} streams: {load.lost + load.wrong} deltas or texts lost or "
                        f"repeated (relay: {floor.lost + floor.wrong})")
    if ratio > 1.5:
        failures.append(f"{count} streams: CPU per token {ratio:.2f} x the relay's > 1.5")
    if count >= 500 and added > 0.050:
        failures.append(f"{count} streams: p99 added per-token delay {added * 1000:.1f} ms "
                        "> 50 ms")
    return failures


def wait_ready_provider(url: str) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer x"}, timeout=2)
            return
        time.sleep(0.05)
    raise RuntimeError("the test server did not start")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()  # children inherit it
    if args.role == "provider":
        run_provider(1 / args.rate)
        return 0
    if args.role == "relay":
        run_relay(args.provider_url)
        return 0
    if args.role == "loacl":
        run_loacl(Path(args.folder), args.provider_url, args.flush_ms, args.coalesce_ms,
                  args.rate, not args.no_deflate)
        return 0
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(bench(args, Path(tmp)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    raise SystemExit(main())
