"""A reply followed on another instance gets its text from two sides, live notifications and
the log's copied deltas, in any order, some twice, some never: what its listeners get is one
gapless text, each character once (services.remote_replies). And what is sent live fits
PostgreSQL's notifications. The servers themselves: tests/test_instances.py."""

from __future__ import annotations

import asyncio
import json

from loacl.services.remote_replies import extend, payloads
from loacl.services.replies import Piece, Run
from loacl.store.postgres.upstream import PAYLOAD_BYTES

TEXT = "Grüße 日本語 🙂 and a reply long enough to arrive in many pieces.\n\u0001\"quoted\""


def drained(queue: asyncio.Queue[Piece]) -> list[Piece]:
    pieces = []
    while not queue.empty():
        pieces.append(queue.get_nowait())
    return pieces


async def test_pieces_from_both_sides_make_one_gapless_text() -> None:
    run = Run("c1", "r1", "m1")
    queue = run.listen()
    # Live pieces, a repeat, an overlap, a gap (a notification lost), then the log's deltas,
    # which begin again at 0 and bring what was lost; then live again, partly behind.
    for offset, length in [(0, 5), (0, 3), (3, 6), (20, 10), (0, 12), (12, 8), (15, 30),
                           (45, 3), (40, len(TEXT) - 40)]:
        extend(run, offset, TEXT[offset:offset + length])
    assert run.text == TEXT
    pieces = drained(queue)
    at = 0
    for piece in pieces:
        assert isinstance(piece, tuple)
        offset, text = piece
        assert offset == at and text, f"a piece at {offset}, expected {at}"
        at += len(text)
    assert at == len(TEXT)


async def test_a_piece_past_the_end_waits_for_what_goes_before_it() -> None:
    run = Run("c1", "r1", "m1")
    queue = run.listen()
    extend(run, 10, TEXT[10:20])
    assert run.text == "" and drained(queue) == []
    extend(run, 0, TEXT[:10])
    extend(run, 10, TEXT[10:20])
    assert run.text == TEXT[:20]
    assert drained(queue) == [(0, TEXT[:10]), (10, TEXT[10:20])]


def test_live_payloads_fit_a_notification_and_give_the_text_back() -> None:
    long = TEXT * 300  # about 20,000 characters, many of them several bytes long
    sent = payloads([("r1", 0, long), ("r2", 7, "short")])
    assert len(sent) > 1
    assert all(len(p.encode()) < PAYLOAD_BYTES for p in sent)
    got: dict[str, list[tuple[int, str]]] = {}
    for payload in sent:
        for reply_id, offset, text in json.loads(payload):
            got.setdefault(reply_id, []).append((offset, text))
    assert got["r2"] == [(7, "short")]
    at = 0
    for offset, text in got["r1"]:
        assert offset == at
        at += len(text)
    assert "".join(t for _, t in got["r1"]) == long
