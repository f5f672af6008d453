"""Data keys: one AES-256-GCM key per subject, sealed with a master key, kept in ``data_keys``.

The log's personal fields are sealed with their subject's data key (``store.codec``); the data
keys live only in ``data_keys``, outside the hash chain, each sealed with a master key that is
never in the database (``settings.master_keys``). Erasing a subject nulls its key: every value
sealed with it reads as ``[erased]`` from then on, and the log, unchanged, still verifies.

A sealed value is a text field of the payload (or the metadata's client IP) that begins with NUL
and goes on in base64: version 1, the key's id (4 bytes), a 12-byte nonce, the ciphertext and
its tag. The associated data names the event type and field, so a sealed value cannot be moved
to another field unnoticed. Nonces are never random draws per value (a system call each): a
random 8-byte prefix per process and a 4-byte counter, a new prefix when it wraps.

``Keyring`` keeps the keys it has opened in memory. New subjects get their key in a short
transaction of its own before the batch that first needs it (``prepare``), so that no event is
ever committed naming a key whose row was rolled back. Every erasure moves
``key_state.erasures``; a writer that sees it move forgets its keys, so a key erased by another
process (``loacl privacy erase`` beside a running server) is never used to seal again.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.domain.privacy import ERASED

MARK = "\x00"  # a sealed value (or an escaped plain one, below) begins with it
PLAIN = "\x00="  # a plain personal value that itself begins with NUL, written unsealed
VERSION = b"\x01"
_KEY_ID_BYTES = 4
_HEAD = 1 + _KEY_ID_BYTES  # version and key id
_NONCE = 12
_MAX_CACHED = 50_000
METADATA_AAD = b"metadata.client_ip"
_b2a = binascii.b2a_base64

# -- nonces -------------------------------------------------------------------------------------

# The prefix and its counter, replaced together.
_nonces: tuple[bytes, itertools.count[int]] = (os.urandom(8), itertools.count())


def _reset_nonces() -> None:
    global _nonces
    _nonces = (os.urandom(8), itertools.count())


os.register_at_fork(after_in_child=_reset_nonces)


_NONCES_PER_PREFIX = 1 << 32
_MARK_BYTES = MARK.encode()


def nonce() -> bytes:
    prefix, counter = _nonces
    n = next(counter)
    if n >= _NONCES_PER_PREFIX:
        _reset_nonces()
        return nonce()
    return prefix + n.to_bytes(4, "big")


# -- master keys --------------------------------------------------------------------------------


def master_id(key: bytes) -> str:
    """A master key's name in ``data_keys``: a fingerprint that says nothing of the key."""
    return hashlib.sha256(b"loacl master key\0" + key).hexdigest()[:16]


class MasterKeys:
    """The master keys this process knows, read again when the database names one it does not
    (``loacl keys rotate`` beside a running server adds the new one to the key file first)."""

    def __init__(self, load: Callable[[], list[bytes]]) -> None:
        self._load = load
        self._by_id: dict[str, AESGCM] = {}
        self.current_id = ""
        self.reload()

    def reload(self) -> None:
        keys = self._load()
        self.current_id = master_id(keys[0])
        self._by_id = {master_id(key): AESGCM(key) for key in keys}

    def ids(self) -> list[str]:
        return list(self._by_id)

    def knows(self, mid: str) -> bool:
        if mid not in self._by_id:
            self.reload()
        return mid in self._by_id

    def _get(self, mid: str) -> AESGCM:
        if not self.knows(mid):
            raise LoaclError(
                "master_key_missing",
                f"the data keys are sealed with master key {mid}, which this LOACL does not "
                "have: set master_key (or restore the data folder's master_key file)",
            )
        return self._by_id[mid]

    def wrap(self, mid: str, subject: str, data_key: bytes) -> bytes:
        iv = os.urandom(_NONCE)
        return iv + self._get(mid).encrypt(iv, data_key, subject.encode())

    def unwrap(self, mid: str, subject: str, wrapped: bytes) -> bytes:
        try:
            return self._get(mid).decrypt(wrapped[:_NONCE], wrapped[_NONCE:], subject.encode())
        except InvalidTag:
            raise LoaclError(
                "master_key_missing",
                f"the data key of {subject} does not open with master key {mid}: a wrong key",
            ) from None


# -- one subject's key --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SealKey:
    """A subject's data key, ready to seal with."""

    key_id: int
    head: bytes  # version and key id, the start of every value sealed with it
    aes: AESGCM

    def seal(self, aad: bytes, text: str) -> str:
        # Once per sealed value on the writer's path: ``nonce()`` inline (the same prefix and
        # counter; it is called only when the counter runs out), the NUL joined as bytes.
        prefix, counter = _nonces
        n = next(counter)
        iv = prefix + n.to_bytes(4, "big") if n < _NONCES_PER_PREFIX else nonce()
        return (_MARK_BYTES + _b2a(
            self.head + iv + self.aes.encrypt(iv, text.encode(), aad), newline=False
        )).decode("ascii")


@dataclass(frozen=True, slots=True)
class ErasedKey:
    """An erased subject's key, for writing a value again (``loacl privacy reseal``): what
    it seals names the erased key and holds nothing, and reads as ``[erased]``."""

    key_id: int

    def seal(self, aad: bytes, text: str) -> str:
        empty = key_head(self.key_id) + bytes(_NONCE + 16)
        return MARK + binascii.b2a_base64(empty, newline=False).decode("ascii")


Sealer = SealKey | ErasedKey


def key_head(key_id: int) -> bytes:
    if not 0 < key_id < 1 << (8 * _KEY_ID_BYTES):
        raise LoaclError("store_error", f"data key id {key_id} is out of range")
    return VERSION + key_id.to_bytes(_KEY_ID_BYTES, "big")


def key_of(token: str) -> int | None:
    """The id of the key a sealed value names (None for a plain one)."""
    if not token.startswith(MARK) or token.startswith(PLAIN):
        return None
    raw = binascii.a2b_base64(token[1:])
    return int.from_bytes(raw[1:_HEAD], "big")


_SELECT_SUBJECT = "SELECT key_id, wrapped, master_id FROM data_keys WHERE subject = ?"
_SELECT_ID = "SELECT subject, wrapped, master_id FROM data_keys WHERE key_id = ?"


class Keyring:
    """The data keys of one database, opened with its master keys.

    The writer seals with ``for_sealing`` on its own connection (inside its transaction);
    readers open values with ``open`` from any thread, reading a key they have not seen yet
    through the keyring's own connection (``open_reader``) or the one given to ``attach``."""

    def __init__(self, masters: MasterKeys, clock: Callable[[], datetime] | None = None) -> None:
        self.masters = masters
        self.clock = clock
        self.sealed_after = 0
        self.erasures = -1
        self._by_subject: dict[str, SealKey] = {}
        self._by_head: dict[bytes, AESGCM | None] = {}  # None: erased
        # Sealed metadata by key and metadata, and sealed client addresses by key and address
        # (store.batches): the same plaintext under the same key, never anything else.
        self._metadata: dict[tuple[int, Metadata], str] = {}
        self._addresses: dict[tuple[int, str], str] = {}
        self._reader: sqlite3.Connection | None = None
        self._own_reader = False
        self._lock = threading.Lock()

    # -- connections --------------------------------------------------------------------------

    def open_reader(self, path: Path) -> None:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA busy_timeout=5000")
        self._reader, self._own_reader = conn, True
        self.read_state(conn)

    def attach(self, conn: sqlite3.Connection) -> Keyring:
        """Read keys through ``conn`` (a tool's own connection); returns the keyring."""
        self._reader, self._own_reader = conn, False
        self.read_state(conn)
        return self

    def close(self) -> None:
        if self._reader is not None and self._own_reader:
            self._reader.close()
        self._reader = None

    def read_state(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT sealed_after, erasures FROM key_state WHERE id = 1").fetchone()
        if row is not None:
            self.sealed_after = int(row[0])
            self.observe(int(row[1]))

    def observe(self, erasures: int) -> None:
        """The erasure count the database holds now: when it moved, every key is read again."""
        if erasures != self.erasures:
            self.erasures = erasures
            self.clear()

    def clear(self) -> None:
        self._by_subject = {}
        self._by_head = {}
        self._metadata = {}
        self._addresses = {}

    def forget(self, subject: str) -> None:
        """The subject was erased: its key is gone from memory too."""
        key = self._by_subject.pop(subject, None)
        if key is not None:
            self._by_head[key.head] = None
            self._metadata = {}
            self._addresses = {}

    # -- the writer's side --------------------------------------------------------------------

    def known(self, subject: str) -> bool:
        return subject in self._by_subject

    def sealing_key(self, subject: str) -> SealKey | None:
        """The subject's key if it is in memory."""
        return self._by_subject.get(subject)

    def prepare(self, conn: sqlite3.Connection, subjects: Iterable[str]) -> None:
        """Give every subject in ``subjects`` a data key, in a transaction of its own, unless it
        has one (or had one, erased). Run outside any other transaction."""
        wanted = [s for s in dict.fromkeys(subjects) if s not in self._by_subject]
        if not wanted:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            mid = self._current_master(conn)
            now = (self.clock() if self.clock else datetime.now(UTC)).isoformat(
                timespec="microseconds"
            )
            for subject in wanted:
                conn.execute(
                    "INSERT OR IGNORE INTO data_keys (subject, wrapped, master_id, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (subject, self.masters.wrap(mid, subject, AESGCM.generate_key(256)), mid,
                     now),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _current_master(self, conn: sqlite3.Connection) -> str:
        """The master key new data keys are sealed with, as the database says (inside the
        caller's write transaction, so a rotation in another process is never missed)."""
        (mid,) = conn.execute("SELECT master_id FROM key_state WHERE id = 1").fetchone()
        if mid is None:
            mid = self.masters.current_id
            conn.execute("UPDATE key_state SET master_id = ? WHERE id = 1", (mid,))
        elif not self.masters.knows(mid):
            raise LoaclError(
                "master_key_missing",
                f"new data keys are to be sealed with master key {mid}, which this LOACL does "
                "not have",
            )
        return str(mid)

    def for_sealing(
        self, conn: sqlite3.Connection, subject: str, *, required: bool = True
    ) -> SealKey | None:
        """The subject's key, read through ``conn`` when not in memory. An erased subject is
        refused (it takes no more events); one with no key yet gets None unless ``required``."""
        found = self._by_subject.get(subject)
        if found is not None:
            return found
        row = conn.execute(_SELECT_SUBJECT, (subject,)).fetchone()
        if row is None:
            if required:
                raise LoaclError("store_error", f"{subject} has no data key")
            return None
        key_id, wrapped, mid = row
        if wrapped is None:
            raise LoaclError("subject_erased", erased_message(subject))
        key = SealKey(key_id, key_head(key_id),
                      AESGCM(self.masters.unwrap(mid, subject, wrapped)))
        self._remember(subject, key)
        return key

    def _remember(self, subject: str, key: SealKey) -> None:
        if len(self._by_head) > _MAX_CACHED:
            self.clear()
        self._by_subject[subject] = key
        self._by_head[key.head] = key.aes

    # -- for a store that reads keys itself (store.postgres.keys) -----------------------------

    def has_head(self, head: bytes) -> bool:
        """Whether values sealed under this key head open without a look-up."""
        return head in self._by_head

    def learn(self, subject: str, key_id: int, wrapped: bytes | None, mid: str | None) -> None:
        """A row of ``data_keys`` read elsewhere: kept in memory as ``_load`` would."""
        head = key_head(key_id)
        if wrapped is None or mid is None:
            self._by_head[head] = None
            return
        self._remember(
            subject, SealKey(key_id, head, AESGCM(self.masters.unwrap(mid, subject, wrapped)))
        )

    def seal_metadata(
        self, key: Sealer, metadata: Metadata, encode: Callable[[Metadata], str]
    ) -> str:
        """The metadata as ``encode`` writes it, its client IP sealed with ``key``.

        The same metadata under the same key gives the same text (every delta of a reply shares
        its request's metadata: one look-up, no encoding), and the same address under the same
        key the same sealed value (a conversation's requests come from one address: one seal
        per address, not per request). A sealed value is reused only for the identical
        plaintext, field and key: it says that two of a subject's events came from one address,
        which the plaintext said to anyone before sealing, and nothing across subjects. Both are
        forgotten with the key (``forget``, ``clear``)."""
        cached = self._metadata.get((key.key_id, metadata))
        if cached is not None:
            return cached
        ip = metadata.client_ip
        assert ip is not None
        address = self._addresses.get((key.key_id, ip))
        if address is None:
            address = key.seal(METADATA_AAD, ip)
            if len(self._addresses) > 10_000:
                self._addresses = {}
            self._addresses[(key.key_id, ip)] = address
        sealed = encode(Metadata(
            actor=metadata.actor, request_id=metadata.request_id, client_ip=address,
            causation_id=metadata.causation_id,
        ))
        if len(self._metadata) > 10_000:
            self._metadata = {}
        self._metadata[(key.key_id, metadata)] = sealed
        return sealed

    # -- the readers' side --------------------------------------------------------------------

    def open(self, token: str, aad: bytes) -> str:
        """The plain text of a sealed value (not an escaped plain one: the codec strips those),
        or ``[erased]`` once its subject is erased."""
        raw = binascii.a2b_base64(token)  # the leading NUL is not base64: it is skipped
        head = raw[:_HEAD]
        try:
            aes = self._by_head[head]
        except KeyError:
            aes = self._load(head)
        if aes is None:
            return ERASED
        try:
            return aes.decrypt(raw[_HEAD:_HEAD + _NONCE], raw[_HEAD + _NONCE:], aad).decode()
        except InvalidTag:
            raise LoaclError(
                "log_damaged", "a sealed field does not open with its key: the log was edited"
            ) from None

    def _load(self, head: bytes) -> AESGCM | None:
        if head[:1] != VERSION:
            raise LoaclError("log_damaged", "a sealed field has an unknown format")
        key_id = int.from_bytes(head[1:], "big")
        with self._lock:
            if self._reader is None:
                raise LoaclError("store_closed", "the keyring has no database to read keys from")
            row = self._reader.execute(_SELECT_ID, (key_id,)).fetchone()
        if row is None:
            raise LoaclError(
                "data_key_missing",
                f"data key {key_id} is not in data_keys: the table was changed outside LOACL, "
                "or the file was put together from two databases",
            )
        subject, wrapped, mid = row
        if wrapped is None:
            self._by_head[head] = None
            return None
        key = SealKey(key_id, head, AESGCM(self.masters.unwrap(mid, subject, wrapped)))
        self._remember(subject, key)
        return key.aes


def erased_message(subject: str) -> str:
    kind = subject.partition(":")[0]
    if kind == "owner":
        return "this account was deleted"
    return f"this {kind} was erased"
