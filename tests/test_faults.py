"""The disk filling up under visitors streaming replies (over HTTP, and fifty over WebSockets),
on a real (small) file system.

The database lives on a 24 MB tmpfs that the test mounts; a filler file then takes the rest of
its space while replies stream, and is removed again. Every visitor is told how their reply
ended (never ``streaming`` for one that stopped), nothing acknowledged is lost, and once the
space is back every conversation answers again, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from loacl.openai_testserver import OpenAITestServer, Stall, running
from loacl.settings import Settings
from loacl.store import audit
from loacl.store.sqlite import connect
from tests.test_chat import chat_settings, live
from tests.test_stream import provider_server, reply_text, start

WAIT = 60.0  # a guard against a hang, never a measurement
VISITORS = 20
FIFTY = 50
ANSWER = " ".join(f"word{n}" for n in range(120))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(folder)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        # The one case for a skip: CI runs as root and mounts it; say why when it cannot.
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode()!r}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of ``folder``'s file system."""
    filler = folder / "filler"
    # Unbuffered: a buffered file would raise ENOSPC again when it is closed.
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 65536)
    finally:
        os.close(fd)
    return filler


def streaming(database: Path) -> int:
    conn = sqlite3.connect(database, timeout=WAIT)
    try:
        return int(conn.execute(
            "SELECT count(*) FROM messages WHERE status = 'streaming'").fetchone()[0])
    finally:
        conn.close()


async def test_a_full_disk_strands_nothing_and_hides_nothing(
    small_disk: Path, tmp_path: Path
) -> None:
    provider = OpenAITestServer(token_delay=0.01)
    with running(provider) as root:
        settings = chat_settings(
            tmp_path, root, database_url=f"sqlite:///{small_disk / 'loacl.db'}",
            flush_interval_ms=20,
        )
        with live(settings) as site:
            site.register()
            widget_id = site.widget("openai")
            visitors = [site.visitor(widget_id) for _ in range(VISITORS)]

            async def ask(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
                return await client.post(f"/api/v1/widgets/{widget_id}/messages",
                                         json={"text": "echo:" + ANSWER}, headers=headers)

            async with httpx.AsyncClient(base_url=site.url, timeout=WAIT) as client:
                asking = [asyncio.create_task(ask(client, v.headers)) for v in visitors]
                deadline = time.monotonic() + WAIT
                while len(provider.requests_to("responses")) < VISITORS // 2:
                    assert time.monotonic() < deadline, "the replies never started"
                    await asyncio.sleep(0.01)
                filler = await asyncio.to_thread(fill, small_disk)
                answers = await asyncio.gather(*asking)
                told = [(a.status_code, a.json()) for a in answers]
                filler.unlink()  # the space is back

                # Every visitor was told how the reply ended, and none that it still streams.
                for status, body in told:
                    assert status in (201, 503), body
                    if status == 201:
                        assert body["reply"]["status"] == "completed", body
                    elif "reply" in body:
                        assert body["reply"]["status"] == "failed", body
                        assert body["code"] in ("store_unavailable", "database_unavailable")
                assert any(status == 503 for status, _ in told), "the disk never filled"

                # Without a restart, every reply that stopped reaches the log's end...
                deadline = time.monotonic() + WAIT
                while streaming(settings.database_path):
                    assert time.monotonic() < deadline, "a conversation stayed stuck"
                    await asyncio.sleep(0.1)
                # ...and every conversation answers again.
                again = await asyncio.gather(*(ask(client, v.headers) for v in visitors))
                assert [a.status_code for a in again] == [201] * VISITORS, [
                    a.text for a in again if a.status_code != 201]

        # Nothing acknowledged is lost.
        acknowledged = [body["message"]["id"] for _, body in told if "message" in body]
        conn = connect(settings.database_path)
        try:
            kept = {row[0] for row in conn.execute("SELECT message_id FROM messages")}
            assert set(acknowledged) <= kept
            assert audit.verify(conn).ok
        finally:
            conn.close()




@pytest.mark.long
async def test_a_full_disk_under_fifty_streaming_sockets(
    small_disk: Path, settings: Settings
) -> None:
    text = reply_text(60)
    with provider_server(token_delay=0.01) as provider, start(
        settings, provider, database_url=f"sqlite:///{small_disk / 'loacl.db'}",
        flush_interval_ms=20, provider_concurrency=100,
    ) as live:
        # Each reply pauses after a few pieces, so that the disk fills while every one of them
        # is mid-stream, however fast or loaded the machine.
        for _ in range(FIFTY):
            live.provider.script(text, [Stall(seconds=5, after_deltas=5)])
        async with AsyncExitStack() as stack:
            tabs = [await stack.enter_async_context(live.tab(live.session()))
                    for _ in range(FIFTY)]
            for n, tab in enumerate(tabs):
                await tab.send({"type": "message", "text": f"Tell me, {n}",
                                "client_message_id": f"m{n}"})
            acks = [await tab.next_kind("ack", "error") for tab in tabs]
            filler = await asyncio.to_thread(fill, small_disk)
            ends = [await tab.follow(ack["reply_id"]) for tab, ack in zip(tabs, acks, strict=True)
                    if ack["type"] == "ack"]
            filler.unlink()
            # Every socket was told how its reply ended; none that it is still streaming.
            statuses = [reply.done["status"] for reply in ends if reply.done is not None]
            assert len(statuses) == len(ends)
            assert set(statuses) <= {"completed", "failed"}, statuses
            assert "failed" in statuses, "the disk never filled mid-reply"
            for reply in ends:
                if reply.done is not None and reply.done["status"] == "failed":
                    assert [e["code"] for e in reply.errors] in (
                        ["store_unavailable"], ["database_unavailable"]), reply.errors
            # Once the space is back, without a restart, no conversation stays stuck...
            deadline = time.monotonic() + WAIT
            while streaming(live.settings.database_path):
                assert time.monotonic() < deadline, "a conversation stayed stuck"
                await asyncio.sleep(0.1)
            # ...and every socket gets an answer to its next question.
            for _ in range(FIFTY):
                live.provider.script("Back again.")
            for n, tab in enumerate(tabs):
                await tab.send({"type": "message", "text": f"Again, {n}"})
            for tab in tabs:
                again = await tab.next_kind("ack")
                assert (await tab.follow(again["reply_id"])).text == "Back again."
        acknowledged = {ack["message_id"] for ack in acks if ack["type"] == "ack"}
        conn = connect(live.settings.database_path)
        try:
            kept = {row[0] for row in conn.execute("SELECT message_id FROM messages")}
            assert acknowledged <= kept, "an acknowledged message was lost"
            assert audit.verify(conn).ok
        finally:
            conn.close()
