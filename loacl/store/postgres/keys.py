"""Data keys in PostgreSQL, for the same ``Keyring`` (store.keys) the SQLite store uses.

The keyring opens sealed values synchronously, inside decoding; a PostgreSQL read cannot run
there. So every read finds, before decoding, the key ids its rows name and loads those the
keyring does not hold (``preload``), in the same round of queries as the read itself."""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from loacl.domain.errors import LoaclError
from loacl.store.keys import Keyring, MasterKeys, SealKey, erased_message, key_head
from loacl.store.postgres import Connection

# A sealed value in JSON text: the escaped NUL, then base64 whose first 8 characters hold the
# version byte and the 4-byte key id. An escaped plain value (NUL and "=") does not match.
_SEALED = re.compile(r"\\u0000([A-Za-z0-9+/]{8})")


def key_ids(texts: Iterable[str]) -> set[int]:
    """The ids of the data keys that sealed values in these JSON texts name."""
    found: set[int] = set()
    for text in texts:
        if "\\u0000" not in text:
            continue
        for match in _SEALED.finditer(text):
            raw = binascii.a2b_base64(match[1])
            found.add(int.from_bytes(raw[1:5], "big"))
    return found


async def read_state(conn: Connection, keyring: Keyring) -> None:
    row = await conn.fetchrow("SELECT sealed_after, erasures FROM key_state WHERE id = 1")
    if row is not None:
        keyring.sealed_after = int(row["sealed_after"])
        keyring.observe(int(row["erasures"]))


async def preload(conn: Connection, keyring: Keyring, rows: Sequence[Any]) -> None:
    """Load the keys the rows' sealed values name and the keyring lacks (rows as the events
    table's columns: payload and metadata at 5 and 6)."""
    await read_state(conn, keyring)  # an erasure by another instance is seen at the next read
    wanted = [
        key_id for key_id in key_ids(text for row in rows for text in (row[5], row[6]))
        if not keyring.has_head(key_head(key_id))
    ]
    if not wanted:
        return
    found = await conn.fetch(
        "SELECT key_id, subject, wrapped, master_id FROM data_keys WHERE key_id = ANY($1)",
        wanted,
    )
    for r in found:
        keyring.learn(r["subject"], r["key_id"], r["wrapped"], r["master_id"])
    missing = set(wanted) - {r["key_id"] for r in found}
    if missing:
        raise LoaclError(
            "data_key_missing",
            f"data keys {sorted(missing)} are not in data_keys: the table was changed outside "
            "LOACL",
        )


async def prepare(
    conn: Connection, keyring: Keyring, subjects: Iterable[str],
    now: datetime | None = None,
) -> None:
    """Give each subject a data key, in a transaction of its own (as ``Keyring.prepare``), so
    that no event is ever committed naming a key whose row was rolled back."""
    wanted = [s for s in dict.fromkeys(subjects) if not keyring.known(s)]
    if not wanted:
        return
    at = (now or datetime.now(UTC)).isoformat(timespec="microseconds")
    async with conn.transaction():
        mid = await conn.fetchval("SELECT master_id FROM key_state WHERE id = 1 FOR UPDATE")
        if mid is None:
            mid = keyring.masters.current_id
            await conn.execute("UPDATE key_state SET master_id = $1 WHERE id = 1", mid)
        elif not keyring.masters.knows(mid):
            raise LoaclError(
                "master_key_missing",
                f"new data keys are to be sealed with master key {mid}, which this LOACL does "
                "not have",
            )
        await conn.executemany(
            "INSERT INTO data_keys (subject, wrapped, master_id, created_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (subject) DO NOTHING",
            [(s, keyring.masters.wrap(mid, s, AESGCM.generate_key(256)), mid, at)
             for s in wanted],
        )


async def for_sealing(
    conn: Connection, keyring: Keyring, subject: str, *, required: bool
) -> SealKey | None:
    """The subject's key, from memory or ``data_keys``; an erased subject is refused."""
    known = keyring.sealing_key(subject)
    if known is not None:
        return known
    row = await conn.fetchrow(
        "SELECT key_id, wrapped, master_id FROM data_keys WHERE subject = $1", subject
    )
    if row is None:
        if required:
            raise LoaclError("store_error", f"{subject} has no data key")
        return None
    if row["wrapped"] is None:
        raise LoaclError("subject_erased", erased_message(subject))
    keyring.learn(subject, row["key_id"], row["wrapped"], row["master_id"])
    return keyring.sealing_key(subject)


async def destroy(conn: Connection, subject: str, at: str) -> None:
    """Null the subject's key (or record that it has none, so it never gets one) and move the
    erasure count, inside the caller's transaction (``projections.privacy.destroy_key``)."""
    await conn.execute(
        "INSERT INTO data_keys (subject, wrapped, master_id, created_at, erased_at) "
        "VALUES ($1, NULL, NULL, $2, $2) "
        "ON CONFLICT (subject) DO UPDATE SET wrapped = NULL, "
        "erased_at = coalesce(data_keys.erased_at, excluded.erased_at)",
        subject, at,
    )
    await conn.execute("UPDATE key_state SET erasures = erasures + 1 WHERE id = 1")


async def rewrap(conn: Connection, masters: MasterKeys, new: str, batch: int) -> int:
    """Seal every data key in PostgreSQL with master key ``new`` (``loacl keys rotate``): name
    it in ``key_state`` first, so that keys made from then on by any instance are sealed with
    it, then seal the others again in batches, each its own transaction; how many."""
    await conn.execute("UPDATE key_state SET master_id = $1 WHERE id = 1", new)
    done = 0
    while True:
        async with conn.transaction():
            rows = await conn.fetch(
                "SELECT key_id, subject, wrapped, master_id FROM data_keys "
                "WHERE wrapped IS NOT NULL AND master_id IS DISTINCT FROM $1 "
                "ORDER BY key_id LIMIT $2 FOR UPDATE", new, batch,
            )
            await conn.executemany(
                "UPDATE data_keys SET wrapped = $1, master_id = $2 WHERE key_id = $3",
                [(masters.wrap(new, r["subject"],
                               masters.unwrap(r["master_id"], r["subject"], r["wrapped"])),
                  new, r["key_id"]) for r in rows],
            )
        done += len(rows)
        if len(rows) < batch:
            return done
