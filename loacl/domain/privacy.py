"""Personal data: whose it is (a subject), and the fact of its erasure.

A subject is a conversation (what a visitor typed and was answered, the files they sent, the
site's id for a signed-in user) or an owner account (e-mail address, name, password hash, the
addresses it connected from). The store seals the personal fields of a subject's events with the
subject's own data key; erasing the subject destroys that key, so the log keeps its events, and
its hash chain, while their personal fields can no longer be read.

A visitor is not a subject of its own: everything a visitor leaves is in the conversations it
had (each anonymous session is one; a signed-in site user has one per widget), so erasing a
visitor erases each of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from loacl.domain.events import Event


class Erased(str):
    """What a personal field reads as once its subject is erased. A type of its own, so that a
    projection can tell the placeholder from a visitor who typed the same characters."""

    __slots__ = ()


ERASED = Erased("[erased]")

CONVERSATION = "conversation"
OWNER = "owner"
VISITOR = "visitor"  # an erasure's scope only, never a key's subject
# The streams whose events belong to a subject, by the prefix of the stream's name.
_STREAM_SUBJECTS = {"conversation": CONVERSATION, "user": OWNER}


def subject(kind: str, subject_id: str) -> str:
    return f"{kind}:{subject_id}"


def split_subject(name: str) -> tuple[str, str]:
    kind, _, subject_id = name.partition(":")
    return kind, subject_id


def subject_of_stream(stream: str) -> str | None:
    """The subject a stream's events belong to by default, or None (a widget's, an assistant's,
    a session's events name theirs when they are appended)."""
    prefix, _, rest = stream.partition("-")
    kind = _STREAM_SUBJECTS.get(prefix)
    return None if kind is None or not rest else subject(kind, rest)


def is_erased(value: object) -> bool:
    return isinstance(value, Erased)


# Why a subject was erased.
REQUESTED = "request"  # its owner (or an operator) asked
RETENTION = "retention"  # its widget keeps conversations for retention_days
ACCOUNT_DELETED = "account_deleted"  # the owner deleted the account it belonged to


@dataclass(frozen=True, slots=True, kw_only=True)
class SubjectErased(Event):
    """A subject's data key was destroyed: its personal fields read as ``[erased]`` from now on,
    in the log and in every read table. No content: who asked (``requested_by``, an owner's id,
    ``operator`` or ``retention``), why, what was asked for (``scope``: the conversation, the
    visitor or the owner account named in the request); the time is the event's."""

    event_type = "privacy.erased"
    subject: str  # conversation:ID | owner:ID
    reason: str
    requested_by: str
    scope: str
    not_personal = ("subject", "reason", "requested_by", "scope")
