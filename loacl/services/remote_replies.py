"""Replies streaming on another LOACL instance, followed here; and this instance's replies sent
live to the others that follow them.

Sockets follow a reply through its ``Run`` (services.replies): the text so far, then each piece
as it comes. A reply another instance runs has no run here, so this service makes one from the
events copied in from PostgreSQL: ``assistant.started`` opens it, each ``assistant.delta``
adds its text at its offset, the end event ends it. The store tells this service before its
subscribers (``EventStore.on_copied``), so a tab told of the start finds the run. A tab on this
instance then follows it (and resumes it) exactly as one of a reply running here.

The log has a reply's text once per flush window (``flush_interval_ms``); a tab here should not
wait for that. So when a tab here begins to follow a reply another instance runs, this instance
says so (a notification on ``FOLLOW``: the conversation and the reply), and the instance running
it sends, once per socket window (``ws_coalesce_ms``), the text that reply gained since its last
sending (a notification on ``LIVE``; the first sending after a ``FOLLOW`` starts from the
reply's beginning). Only replies some other instance follows are sent, and only while they run.

Nor should a tab here wait for its copy to bring a reply's start, which under load comes a
batch or more later than the first tokens. The instance that starts a reply says so on
``STARTED`` once the start is committed in PostgreSQL: the conversation, the reply, the start's
position, and the visitor's message it answers (the ``started`` frame shows it). An instance
with tabs on that conversation, whose copy is not yet at that position, makes the run at once
and tells them (``Chat.started_elsewhere``); the copy's start, when it comes, finds the run
there. A copy already at the position has taken the start itself (and maybe the end): the
notification is late and is dropped. A message too long for one notification is not sent; its
reply starts here when the copy has it, as before.

The log stays the truth: a piece, from either side, is taken only where it continues the text
this instance has (its offset at or before the end, and reaching past it); what goes before is
dropped and what leaves a gap waits for the log, which brings every character in order. A tab
therefore never gets a character twice or out of order, and a notification lost (with a
connection) costs time, not text. Notifications are not rows: the text sent live never lands in
PostgreSQL's tables or its WAL, only in its notification queue until every listener read it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence

import msgspec
import structlog

from loacl.domain import conversations as domain
from loacl.domain.events import RecordedEvent
from loacl.services.chat import Chat
from loacl.services.replies import Run
from loacl.store.postgres.upstream import FOLLOW, LIVE, PAYLOAD_BYTES, STARTED, PgUpstream
from loacl.store.views.conversations import MessageView

log = structlog.get_logger(__name__)

_ENDS = (domain.AssistantCompleted, domain.AssistantFailed, domain.AssistantInterrupted)
_STATUS = {domain.AssistantCompleted: "completed", domain.AssistantFailed: "failed",
           domain.AssistantInterrupted: "interrupted"}


_REPLY_EVENTS = (domain.AssistantStarted, domain.AssistantDelta, *_ENDS)
# A piece's characters at most in one entry: even escaped (six bytes a character) an entry fits
# a notification.
_PIECE_CHARS = 1000

# STARTED's payload: [conversation, reply, reply_to, the start's position, the message].
_Start = tuple[str, str, str, int, MessageView]
_encode_start = msgspec.json.Encoder().encode
_decode_start = msgspec.json.Decoder(_Start).decode


def extend(run: Run, offset: int, text: str) -> None:
    """Add to ``run`` the part of ``text`` (which begins at ``offset``) that continues it, and
    tell its listeners; nothing when the piece ends before the run's text or leaves a gap."""
    known = len(run.text)
    if offset > known or offset + len(text) <= known:
        return
    piece = text[known - offset:]
    run.text += piece
    run._emit(known, piece)


def payloads(entries: Sequence[tuple[str, int, str]]) -> list[str]:
    """Entries (reply, offset, text) as JSON arrays, as few as fit ``PAYLOAD_BYTES`` each."""
    out: list[str] = []
    chunk: list[str] = []
    size = 2
    for reply_id, offset, text in entries:
        for at in range(0, len(text), _PIECE_CHARS):
            entry = json.dumps([reply_id, offset + at, text[at:at + _PIECE_CHARS]],
                               ensure_ascii=False, separators=(",", ":"))
            length = len(entry.encode()) + 1
            if chunk and size + length > PAYLOAD_BYTES:
                out.append("[" + ",".join(chunk) + "]")
                chunk, size = [], 2
            chunk.append(entry)
            size += length
    if chunk:
        out.append("[" + ",".join(chunk) + "]")
    return out


class RemoteReplies:
    def __init__(self, chat: Chat, upstream: PgUpstream | None = None,
                 window: float = 0.005) -> None:
        self.chat = chat
        self.upstream = upstream
        self.window = window  # seconds: this instance's replies are sent once per window
        self.runs: dict[str, Run] = {}  # by reply id: the replies another instance runs
        # This instance's replies that another instance follows: each one's characters sent.
        self.sent: dict[str, int] = {}
        self.watched: dict[str, Run] = {}
        self._due: set[str] = set()  # replies with text not sent yet (or ended)
        # Notifications to send: (channel, payload), in order. One task sends them, all that
        # wait in one statement: a burst of replies starting (each a STARTED, and a FOLLOW from
        # each instance with a tab on it) costs a few round trips, not one each in a queue.
        self._outbox: list[tuple[str, str]] = []
        self._sending: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()
        if upstream is not None:
            upstream.heard = self.heard
            chat.announce = self.announce

    def stop(self) -> None:
        if self.upstream is not None:
            self.upstream.heard = None
            self.chat.announce = None
        for run in self.runs.values():
            run._finish()
        self.runs.clear()
        for run in self.watched.values():
            run.watch = None
        self.watched.clear()
        self.sent.clear()
        self._outbox.clear()
        if self._sending is not None:
            self._sending.cancel()

    # -- following another instance's replies --------------------------------------------------

    def take_all(self, copied: Sequence[RecordedEvent]) -> None:
        for recorded in copied:
            if isinstance(recorded.event, _REPLY_EVENTS):
                self.take(recorded)

    def take(self, recorded: RecordedEvent) -> None:
        event = recorded.event
        if isinstance(event, domain.AssistantStarted):
            if event.message_id not in self.runs:  # not made already from its STARTED
                self._run(event.conversation_id, event.message_id, event.reply_to,
                          recorded.seq)
            return
        assert isinstance(event, (domain.AssistantDelta, *_ENDS))
        found = self.runs.get(event.message_id)
        if found is None:  # started before this instance began to follow
            return
        run = found
        if isinstance(event, domain.AssistantDelta):
            extend(run, event.offset, event.text)
            return
        assert isinstance(event, _ENDS)
        if event.text.startswith(run.text):
            extend(run, 0, event.text)
        run.status = _STATUS[type(event)]
        run._finish()
        del self.runs[event.message_id]
        if self.chat.runs.get(run.conversation_id) is run:
            del self.chat.runs[run.conversation_id]

    def _run(self, conversation_id: str, reply_id: str, reply_to: str, seq: int) -> Run:
        run = Run(conversation_id, reply_id, reply_to, start_seq=seq)
        run.joined = self._joined
        self.runs[reply_id] = run
        self.chat.runs[conversation_id] = run
        return run

    def started(self, payload: str) -> None:
        """Another instance started a reply: where tabs here are on its conversation and the
        copy has not brought the start yet, make its run and tell them."""
        try:
            conversation_id, reply_id, reply_to, seq, message = _decode_start(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("remote_replies.bad_payload", size=len(payload))
            return
        if (reply_id in self.runs or not self.chat.started_elsewhere.listened(conversation_id)
                or self.chat.store.notifier.head >= seq):
            return  # made already, nobody here to tell, or the copy has it (this instance's own)
        run = self._run(conversation_id, reply_id, reply_to, seq)
        self.chat.started_elsewhere.tell(run, message)

    def announce(self, run: Run, message: MessageView) -> None:
        """A reply started here (its start committed): tell the other instances."""
        payload = _encode_start((run.conversation_id, run.message_id, run.reply_to,
                                 run.start_seq, message))
        if len(payload) < PAYLOAD_BYTES:
            self._post(STARTED, payload.decode())

    def _joined(self, run: Run) -> None:
        """A tab here follows a reply another instance runs: ask for its text live (once)."""
        run.joined = None
        self._post(FOLLOW, json.dumps([run.conversation_id, run.message_id]))

    def live(self, payload: str) -> None:
        """Pieces another instance sent of the replies it runs."""
        try:
            entries = json.loads(payload)
            for reply_id, offset, text in entries:
                run = self.runs.get(reply_id)
                if run is not None and isinstance(offset, int) and isinstance(text, str):
                    extend(run, offset, text)
        except (ValueError, TypeError):
            log.warning("remote_replies.bad_payload", size=len(payload))

    def heard(self, channel: str, payload: str) -> None:
        if channel == LIVE:
            self.live(payload)
        elif channel == FOLLOW:
            self.followed(payload)
        elif channel == STARTED:
            self.started(payload)

    # -- this instance's replies, sent to the instances that follow them ------------------------

    def followed(self, payload: str) -> None:
        """Another instance follows a reply: if it runs here, send its text from the start."""
        try:
            conversation_id, reply_id = json.loads(payload)
        except (ValueError, TypeError):
            log.warning("remote_replies.bad_payload", size=len(payload))
            return
        run = self.chat.runs.get(conversation_id) if isinstance(conversation_id, str) else None
        if run is None or run.message_id != reply_id or reply_id in self.runs:
            return  # not running here (any more)
        if run.finished.is_set():
            return
        self.sent[reply_id] = 0
        self.watched[reply_id] = run
        run.watch = self._watch
        self._watch(run)

    def _watch(self, run: Run) -> None:
        self._due.add(run.message_id)
        self._wake()

    def _post(self, channel: str, payload: str) -> None:
        self._outbox.append((channel, payload))
        self._wake()

    def _wake(self) -> None:
        self._wanted.set()
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(
                self._sender(), name="loacl-live-replies")

    async def _sender(self) -> None:
        """Every notification waiting, and every followed reply's new text, in one statement:
        text once per window (what comes meanwhile goes with it), a FOLLOW or STARTED at once
        (with the text due by then). While one statement is on its way the next round's
        gather."""
        while True:
            await self._wanted.wait()
            if self.window > 0 and not self._outbox:
                await asyncio.sleep(self.window)
            self._wanted.clear()
            sent, self._outbox = self._outbox, []
            sent.extend((LIVE, payload) for payload in payloads(self._take_due()))
            if sent:
                await self._send(sent)

    def _take_due(self) -> list[tuple[str, int, str]]:
        entries = []
        due, self._due = self._due, set()
        for reply_id in due:
            run = self.watched.get(reply_id)
            if run is None:
                continue
            sent = self.sent[reply_id]
            if len(run.text) > sent:
                entries.append((reply_id, sent, run.text[sent:]))
                self.sent[reply_id] = len(run.text)
            if run.finished.is_set():  # its end and all its text are in the log
                run.watch = None
                del self.watched[reply_id], self.sent[reply_id]
        return entries

    async def _send(self, sent: list[tuple[str, str]]) -> None:
        if self.upstream is None:
            return
        try:
            await self.upstream.notify(sent)
        except Exception as exc:  # the log brings the text all the same, a little later
            log.warning("remote_replies.notify_failed", notifications=len(sent),
                        error=repr(exc))

    async def close(self) -> None:
        """Stop, and wait for the sender to end."""
        self.stop()
        if self._sending is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sending
