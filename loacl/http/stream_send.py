"""The sending side of a streaming socket: its outbox of frames, the replies it follows, and
the pacer that hands each followed reply's new text to its socket once per window."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol

import structlog
from starlette.websockets import WebSocket

from loacl.http.stream_protocol import Close, ServerFrame
from loacl.services.replies import Notice, Piece, Run

log = structlog.get_logger(__name__)

RUN_QUEUE = 1000
DELTA_CHARS = 16 * 1024  # the most text in one caught-up delta (clients limit frame sizes)



def status_frame(message_id: str, notice: Notice) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": ServerFrame.STATUS, "message_id": message_id, "state": notice.state,
    }
    if notice.retry_in is not None:
        frame |= {"retry_in": notice.retry_in, "attempt": notice.attempt, "code": notice.code}
    if notice.tool is not None:
        frame |= {"tool": notice.tool, "text": notice.text or ""}
    return frame

class Socket(Protocol):
    """What a follower needs of its socket."""

    def send(self, frame: dict[str, Any]) -> None: ...
    def send_text(self, message_id: str, offset: int, text: str) -> None: ...
    def close(self, code: int, reason: str) -> None: ...
    def ended(self, follower: Follower) -> None: ...


class Closing(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Outbox:
    """A socket's frames waiting to go out, at most ``limit``. Consecutive deltas of one reply
    leave as one frame: a socket that falls behind gets fewer, larger frames, not more work."""

    def __init__(self, limit: int) -> None:
        self.frames: deque[dict[str, Any]] = deque()
        self.limit = limit
        self.ready = asyncio.Event()
        self.ended = False

    def put(self, frame: dict[str, Any]) -> bool:
        if len(self.frames) >= self.limit:
            return False
        self.frames.append(frame)
        self.ready.set()
        return True

    def end(self) -> None:
        """No more frames: ``get`` gives what is queued, then None."""
        self.ended = True
        self.ready.set()

    async def get(self) -> dict[str, Any] | None:
        while not self.frames:
            if self.ended:
                return None
            self.ready.clear()
            await self.ready.wait()
        frame = self.frames.popleft()
        if frame["type"] != ServerFrame.DELTA:
            return frame
        parts, end = [frame["text"]], frame["offset"] + len(frame["text"])
        size = len(frame["text"])
        while self.frames:
            after = self.frames[0]
            if (after["type"] != ServerFrame.DELTA or after["message_id"] != frame["message_id"]
                    or after["offset"] != end or size + len(after["text"]) > DELTA_CHARS):
                break
            self.frames.popleft()
            parts.append(after["text"])
            end += len(after["text"])
            size += len(after["text"])
        return frame if len(parts) == 1 else {**frame, "text": "".join(parts)}


class Follower:
    """One socket following one reply: the reply's queue of pieces and how far it has sent."""

    def __init__(self, conn: Socket, run: Run, offset: int) -> None:
        self.conn = conn
        self.run = run
        # Snapshot and subscription in one step (no await between): nothing slips through.
        snapshot = run.text[offset:]
        self.queue = run.listen(RUN_QUEUE)
        conn.send_text(run.message_id, offset, snapshot)
        self.sent_to = offset + len(snapshot)
        self.gap = False
        self.task: asyncio.Task[None] | None = None
        self.pacer: Pacer | None = None

    def pump(self, items: list[Piece]) -> bool:
        """Send ``items`` and whatever else is queued as one delta (a notice as a ``status``
        frame, in its place); True once the reply's end marker came (or a gap closed the
        socket)."""
        queue, sent_to, parts = self.queue, self.sent_to, []
        while not queue.empty():
            items.append(queue.get_nowait())
        ended = False
        for item in items:
            if item is None:
                ended = True
                break
            if isinstance(item, Notice):
                self.conn.send(status_frame(self.run.message_id, item))
                continue
            at, text = item
            if at + len(text) <= sent_to:
                continue
            if at > sent_to:  # cannot happen while the run keeps order; never send a gap
                self.gap = True
                self.conn.close(Close.TOO_SLOW, "too slow to keep up; reconnect and resume")
                return True
            if at < sent_to:  # overlaps the snapshot: send only the new part
                text = text[sent_to - at:]
            parts.append(text)
            sent_to += len(text)
        if parts:
            self.conn.send_text(self.run.message_id, self.sent_to, "".join(parts))
            self.sent_to = sent_to
        return ended

    def stop(self) -> None:
        if self.pacer is not None:
            self.pacer.followers.discard(self)
        self.run.unlisten(self.queue)
        if self.task is not None:
            self.task.cancel()


class Pacer:
    """Once per window, hands every followed reply's new text to its socket, for all sockets
    of the app in one callback.

    Per piece of text, a reply then only appends to each follower's queue: no task wakes up
    until the tick, which wakes each socket's writer at most once, and the pieces that arrived
    within the window leave as one frame. Without it, each piece wakes two tasks per socket
    (its follower, then its writer) and becomes a frame of its own: one write to the socket
    each, the largest part of the socket's CPU per token when a provider sends in bursts."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.followers: set[Follower] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, follower: Follower) -> None:
        follower.pacer = self
        self.followers.add(follower)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.window, self._tick)

    def _tick(self) -> None:
        self._timer = None
        for follower in [f for f in self.followers if not f.queue.empty()]:
            try:
                ended = follower.pump([])
            except Exception as exc:  # one socket's fault must not stop every other's ticks
                log.error("stream.failed", error=repr(exc))
                ended, follower.gap = True, True
                follower.conn.close(Close.SERVER_ERROR, "server error")
            if ended:
                self.followers.discard(follower)
                follower.conn.ended(follower)
        if self.followers:
            self._timer = asyncio.get_running_loop().call_later(self.window, self._tick)


def pacer_for(websocket: WebSocket, window: float) -> Pacer:
    """The app's pacer (one per app, made on first use)."""
    state = websocket.app.state
    pacer: Pacer | None = getattr(state, "ws_pacer", None)
    if pacer is None or pacer.window != window:
        pacer = state.ws_pacer = Pacer(window)
    return pacer
