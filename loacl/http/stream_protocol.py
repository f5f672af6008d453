"""The protocol of ``WS /api/v1/widgets/{id}/stream``: frame types, their fields, close codes.

``stream.py`` sends, compares and closes with these constants, and the socket's description in
the OpenAPI document is ``describe()`` of them: a frame or close code added here is documented.
Every frame is a JSON object whose ``type`` is one of the names below.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

MAX_TEXT_FRAME: Final = 256 * 1024  # characters in a client's text frame

class ClientFrame:
    AUTH: Final = "auth"
    MESSAGE: Final = "message"
    RESUME: Final = "resume"
    HANDOFF: Final = "handoff"
    REPLY_ADDRESS: Final = "reply_address"
    TYPING: Final = "typing"
    PING: Final = "ping"
    PONG: Final = "pong"


class ServerFrame:
    READY: Final = "ready"
    ACK: Final = "ack"
    STARTED: Final = "started"
    DELTA: Final = "delta"
    STATUS: Final = "status"
    DONE: Final = "done"
    MESSAGE: Final = "message"
    STATE: Final = "state"
    AWAY: Final = "away"
    REPLY_ADDRESS: Final = "reply_address"
    TYPING: Final = "typing"
    ERROR: Final = "error"
    PING: Final = "ping"
    PONG: Final = "pong"


class Close(IntEnum):
    """The codes a socket closes with."""

    NORMAL = 1000
    TOO_BIG = 1009
    SERVER_ERROR = 1011
    RESTARTING = 1012  # uvicorn's, on shutdown; never sent by LOACL's own code
    TOO_SLOW = 4008
    BAD_TOKEN = 4401
    ORIGIN_NOT_ALLOWED = 4403
    IDLE = 4408
    RATE_LIMITED = 4429


@dataclass(frozen=True)
class Frame:
    type: str
    fields: tuple[str, ...]  # "name?" for an optional field
    meaning: str


CLIENT_FRAMES: Final = (
    Frame(ClientFrame.AUTH, ("token",),
          "the visitor token: the first frame (unless an old client put it in the URL)"),
    Frame(ClientFrame.MESSAGE, ("text", "file_ids?", "client_message_id?"),
          "ask; a resend with the same client_message_id is answered, not asked again"),
    Frame(ClientFrame.RESUME, ("message_id?", "offset?", "after?"),
          "after a reconnect: a reply's text from a character offset on (message_id, offset); "
          "with after (the cursor of the last message the client has), every whole message "
          "after it as message frames, then the state"),
    Frame(ClientFrame.HANDOFF, ("reason?",),
          "ask for a person: the conversation waits for a member of the team (a state frame "
          "follows in every tab); the assistant stops answering"),
    Frame(ClientFrame.REPLY_ADDRESS, ("email",),
          "leave an e-mail address for the team's replies (as POST .../reply-address); "
          "answered with a reply_address frame, or an error frame with invalid_email"),
    Frame(ClientFrame.TYPING, ("typing",),
          "the visitor is typing (true) or stopped (false); passed on to the team at most "
          "once per typing_interval_seconds, never logged"),
    Frame(ClientFrame.PING, (), "answered with pong"),
    Frame(ClientFrame.PONG, (), "the answer to the server's ping"),
)

SERVER_FRAMES: Final = (
    Frame(ServerFrame.READY, ("conversation_id", "state", "agent"),
          "the socket is authenticated; state is who answers (bot, waiting, human, closed), "
          "agent the name of the member answering (in human)"),
    Frame(ServerFrame.ACK, ("client_message_id", "message_id", "reply_id", "duplicate"),
          "the message is saved; duplicate when it was a resend; reply_id is null when no "
          "reply follows (a person is asked for or answers)"),
    Frame(ServerFrame.STARTED, ("message", "reply_id"),
          "a reply started, in this tab or another"),
    Frame(ServerFrame.DELTA, ("message_id", "offset", "text"),
          "the reply's text from a character offset"),
    Frame(ServerFrame.STATUS, ("message_id", "state", "retry_in?", "attempt?", "code?",
                               "tool?", "text?"),
          "how a reply is doing while no text comes: waiting (the provider has not answered "
          "for waiting_notice_seconds), retrying (attempt failed with code; the provider is "
          "asked again in retry_in seconds), or tool (the assistant's tool named tool is being "
          "called; text is the tool's status_text, such as \"Looking up your order…\", to "
          "show until the next delta; one frame per call, several calls run at once)"),
    Frame(ServerFrame.DONE, ("message_id", "status", "usage", "length", "citations"),
          "the reply ended; trim its text to length (after a crash the saved text may be "
          "shorter than what was streamed); citations are the sources its [n] marks name "
          "(document, page, passage), empty when none"),
    Frame(ServerFrame.MESSAGE, ("message",),
          "a whole message: a member's (role agent, with author_name), or a visitor's that "
          "no reply follows (while a person is asked for or answers), or one a resume with "
          "after missed"),
    Frame(ServerFrame.STATE, ("state", "agent"),
          "who answers changed: bot (the assistant), waiting (a person was asked for), "
          "human (agent, a member of the team, answers), closed"),
    Frame(ServerFrame.AWAY, ("reason", "next_opening", "timezone", "reply_email"),
          "after this tab's handoff frame (or in every tab when the assistant asked for a "
          "person, or after ready while the conversation waits), when nobody answers now: "
          "closed (outside the widget's office hours; the reply comes from next_opening, in "
          "timezone) or nobody (no member online); the visitor may leave an e-mail address, "
          "and reply_email is the one already left (or null)"),
    Frame(ServerFrame.REPLY_ADDRESS, ("email",),
          "the address the visitor left is saved (as the server normalized it)"),
    Frame(ServerFrame.TYPING, ("typing", "name"),
          "the member answering is typing (true) or stopped (false)"),
    Frame(ServerFrame.ERROR, ("code", "text", "message_id?", "client_message_id?",
                              "retry_after?"),
          "a frame was refused or a reply failed; code is an error code of the API"),
    Frame(ServerFrame.PING, (), "answer with pong"),
    Frame(ServerFrame.PONG, (), "the answer to the client's ping"),
)

CLOSE_MEANINGS: Final = {
    Close.NORMAL: "the server ended the socket",
    Close.TOO_BIG: f"a frame was longer than {MAX_TEXT_FRAME} characters",
    Close.SERVER_ERROR: "the server failed; reconnect",
    Close.RESTARTING: "the server is restarting; the reply in flight is kept as interrupted",
    Close.TOO_SLOW: "too slow to keep up; reconnect and resume from the last offset",
    Close.BAD_TOKEN: "the token (query parameter or auth frame) was missing or invalid, or "
                     "the first frame was not an auth frame (not JSON, or nested too deeply)",
    Close.ORIGIN_NOT_ALLOWED: "the page's Origin is not allowed (when a denial response "
                              "cannot be sent)",
    Close.IDLE: "no frame for ws_idle_seconds while no reply streamed",
    Close.RATE_LIMITED: "too many sockets open for this visitor or address (sockets_per_visitor, "
                        "sockets_per_ip); the error frame before it carries retry_after",
}


def _frames(frames: tuple[Frame, ...]) -> str:
    return "".join(
        f"\n- `{f.type}`" + (" {" + ", ".join(f.fields) + "}" if f.fields else "")
        + f": {f.meaning}"
        for f in frames
    )


def describe() -> str:
    """The socket's description for the OpenAPI document (Markdown)."""
    closes = "".join(f"\n- {int(code)}: {meaning}" for code, meaning in CLOSE_MEANINGS.items())
    return (
        "Connect from an allowed Origin and send an `auth` frame with the visitor token first "
        "(within 10 s). The `token` query parameter is kept for widgets built before that; a "
        "URL ends up in proxies' logs, so new clients never use it. Every frame is a JSON text "
        "frame with a `type`.\n\n"
        f"Client frames:{_frames(CLIENT_FRAMES)}\n\n"
        f"Server frames:{_frames(SERVER_FRAMES)}\n\n"
        f"Close codes:{closes}"
    )
