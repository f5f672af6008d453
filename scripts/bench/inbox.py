"""The owner inbox's server time on a real database: one owner with 10,000 conversations (and as
many of other owners', for noise), each a visitor's message and the assistant's reply, written
through LOACL's own event store and projections (so the read tables and the search index are
what a server builds).

Printed, each the best of several runs of the query the server runs for the request
(``store.views.inbox.inbox``, on the store's read connection):

- the first page (20) of the inbox, with the inbox index, and without it (dropped) side by side;
- the first page filtered by widget;
- a search for a word in 1% of the conversations, and for a word in every one of them;
- the query plans, so that the index doing the work is visible.

    python scripts/bench/inbox.py [--conversations 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from loacl.domain.assistants import AssistantCreated, AssistantDefinition
from loacl.domain.conversations import (
    AssistantCompleted,
    AssistantStarted,
    MessagePosted,
    Usage,
)
from loacl.domain.events import Event
from loacl.domain.widgets import ConversationStarted, WidgetCreated, WidgetDefinition
from loacl.store import migrations
from loacl.store.eventstore import EventStore
from loacl.store.projections import default_projections
from loacl.store.sqlite import connect
from loacl.store.views.inbox import InboxFilter, inbox

OWNER = "owner-a"
NOISE = ("owner-b", "owner-c")
WIDGETS = 4
WRITERS = 50
RUNS = 7
WORDS = ("shipping", "refund", "invoice", "password", "delivery", "warranty", "discount")


def conversation_events(n: int, widget_id: str) -> list[Event]:
    cid = f"c-{widget_id}-{n}"
    rare = f" zebra{n % 100}" if n % 100 == 0 else ""
    question = f"Hello, a question about {WORDS[n % len(WORDS)]} number {n}{rare}, and hello"
    answer = f"Thanks for asking about {WORDS[(n + 3) % len(WORDS)]}; here is what to do."
    return [
        ConversationStarted(conversation_id=cid, widget_id=widget_id, visitor_id=f"v-{n}"),
        MessagePosted(conversation_id=cid, message_id=f"m-{cid}", text=question),
        AssistantStarted(conversation_id=cid, message_id=f"r-{cid}", reply_to=f"m-{cid}",
                         assistant_id="a", provider="demo", model="demo"),
        AssistantCompleted(message_id=f"r-{cid}", text=answer,
                           usage=Usage(input_tokens=20, output_tokens=12)),
    ]


async def fill(store: EventStore, per_owner: int) -> None:
    owners = (OWNER, *NOISE)
    widgets = {owner: [f"w-{owner}-{k}" for k in range(WIDGETS)] for owner in owners}
    await store.append("assistant-a", [AssistantCreated(
        assistant_id="a", owner_id=OWNER,
        definition=AssistantDefinition(name="Helper", provider="demo", model="demo"))])
    for owner, ids in widgets.items():
        for widget_id in ids:
            await store.append(f"widget-{widget_id}", [WidgetCreated(
                widget_id=widget_id, owner_id=owner,
                definition=WidgetDefinition(name=f"Site {widget_id}", assistant_id="a"))])
    jobs = [(n, widgets[owner][n % WIDGETS]) for n in range(per_owner) for owner in owners]
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def writer() -> None:
        while not queue.empty():
            n, widget_id = queue.get_nowait()
            events = conversation_events(n, widget_id)
            cid = events[0].conversation_id  # type: ignore[attr-defined]
            await store.append(f"conversation-{cid}", events)

    await asyncio.gather(*(writer() for _ in range(WRITERS)))


async def best_ms(run: Callable[[], Awaitable[object]]) -> float:
    await run()  # warm the page cache and the statement cache
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        await run()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def plan(path: Path, where: str, params: tuple[object, ...]) -> str:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            f"EXPLAIN QUERY PLAN SELECT c.conversation_id FROM conversations c WHERE {where} "
            "ORDER BY c.last_activity_seq DESC LIMIT 21", params).fetchall()
    finally:
        conn.close()
    return "; ".join(str(r[-1]) for r in rows)


async def measure(path: Path, label: str) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with EventStore(path, default_projections()) as store:
        first = await inbox(store, OWNER, InboxFilter(), None, 20)
        assert len(first.items) == 20 and first.next_cursor is not None
        figures["first page"] = await best_ms(
            lambda: inbox(store, OWNER, InboxFilter(), None, 20))
        figures["second page"] = await best_ms(
            lambda: inbox(store, OWNER, InboxFilter(), first.next_cursor, 20))
        figures["by widget"] = await best_ms(
            lambda: inbox(store, OWNER, InboxFilter(widget_id=f"w-{OWNER}-1"), None, 20))
        rare = await inbox(store, OWNER, InboxFilter(text="zebra0"), None, 20)
        assert rare.items, "the rare word finds nothing"
        figures["search, 1% match"] = await best_ms(
            lambda: inbox(store, OWNER, InboxFilter(text="zebra0"), None, 20))
        figures["search, all match"] = await best_ms(
            lambda: inbox(store, OWNER, InboxFilter(text="hello"), None, 20))
    print(f"\n{label}")
    for name, ms in figures.items():
        print(f"  {name:<20} {ms:8.2f} ms")
    return figures


async def main(per_owner: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "inbox.db"
        conn = connect(path)
        migrations.up(conn)
        conn.close()
        start = time.perf_counter()
        async with EventStore(path, default_projections()) as store:
            await fill(store, per_owner)
        total = per_owner * (1 + len(NOISE))
        print(f"{total} conversations ({per_owner} of the measured owner), "
              f"{total * 4} events, written in {time.perf_counter() - start:.1f} s; "
              f"file {path.stat().st_size / 1e6:.1f} MB")
        print("plan, first page:",
              plan(path, "c.owner_id = ?", (OWNER,)))
        indexed = await measure(path, "with the inbox index (conversations_inbox)")
        conn = sqlite3.connect(path)
        conn.execute("DROP INDEX conversations_inbox")
        conn.execute("DROP INDEX conversations_inbox_widget")
        conn.close()
        print("plan without it:", plan(path, "c.owner_id = ?", (OWNER,)))
        bare = await measure(path, "without it")
        print("\nfirst page: {:.1f}x faster with the index; budget 50 ms: {}".format(
            bare["first page"] / indexed["first page"],
            "met" if indexed["first page"] <= 50 else "NOT met"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=10_000)
    asyncio.run(main(parser.parse_args().conversations))
