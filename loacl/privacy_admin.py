"""Operator commands for personal data: ``loacl privacy erase|status|reseal`` and ``loacl keys
rotate``. Erasures go through the same store and the same service as the server's, so a running
server sees them (it forgets an erased key at its next write)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loacl.admin import open_store
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.domain.privacy import REQUESTED
from loacl.services.keys import keyring_for
from loacl.services.privacy import Erasure, Privacy
from loacl.services.retention import Retention
from loacl.settings import Settings, master_keys, parse_master_keys, write_master_keys
from loacl.store.backup import ServeLock
from loacl.store.eventstore import utc_now
from loacl.store.keys import MasterKeys, master_id
from loacl.store.postgres import keys as pgkeys
from loacl.store.postgres import migrate as pg_migrate
from loacl.store.sqlite import connect
from loacl.store.views import accounts as account_views
from loacl.store.views import privacy as views

CLI = Metadata(actor="loacl:cli")
OPERATOR = "operator"
REWRAP_BATCH = 500


async def erase(
    settings: Settings, *, conversation: str | None, visitor: str | None, owner: str | None,
    dry_run: bool,
) -> Erasure:
    async with open_store(settings) as store:
        # The WAL is cut here only when no server holds the file: a running server cuts its
        # own at its next retention round (two parties checkpointing at once is what SQLite's
        # WAL-reset bug needs, store.sqlite).
        lock = ServeLock(settings.database_path)
        alone = lock.acquire()
        try:
            service = Privacy(store, truncate_wal=alone)
            if conversation is not None:
                return await service.erase_conversation(
                    conversation, reason=REQUESTED, requested_by=OPERATOR, meta=CLI,
                    dry_run=dry_run,
                )
            if visitor is not None:
                return await service.erase_visitor(
                    visitor, reason=REQUESTED, requested_by=OPERATOR, meta=CLI, dry_run=dry_run
                )
            assert owner is not None
            user = await account_views.user_by_email(store, owner)
            if user is None:
                raise LoaclError("not_found", f"no owner with the e-mail address {owner}")
            return await service.erase_owner(
                user.user_id, requested_by=OPERATOR, meta=CLI, dry_run=dry_run
            )
        finally:
            lock.release()


async def status(settings: Settings) -> dict[str, Any]:
    async with open_store(settings) as store:
        retention = Retention(Privacy(store), utc_now, every_seconds=0, batch=1)
        due = await retention.due()
        keys = await views.key_counts(store)
        return {
            "retention": [
                {"widget_id": w.widget_id, "name": w.name, "retention_days": w.retention_days,
                 "due": w.due, "oldest_activity": w.oldest_activity}
                for w in due
            ],
            "conversations_erased": await views.erased_conversations(store),
            "conversations_of_deleted_widgets": await views.conversations_without_widget(store),
            "data_keys": {"live": keys.live, "erased": keys.erased},
            "master_key": keys.master_id,
            "data_keys_by_master_key": keys.by_master,
            "events_before_sealing": keys.sealed_after,
        }


@dataclass(frozen=True)
class Rotated:
    old: list[str]
    new: str
    rewrapped: int
    forgotten: bool  # the old keys were removed from the key file
    from_settings: bool


def rotate(settings: Settings, *, forget_old: bool) -> Rotated:
    """Seal every data key with a new master key, beside a running server.

    With the generated key file, a new key is put first in it (the old ones after it, so that a
    server still holding them, and older backups, stay readable) and ``key_state`` names it, in
    a write transaction: from then on every writer, this server's included, seals new data keys
    with it. Then the data keys are sealed again in batches, until none is left under an old
    key. With ``master_key`` set, the first key it names is the new one: put it there (the old
    one after it) and restart the server first."""
    path = settings.database_path
    if settings.postgres_url is not None:
        asyncio.run(_level(settings))  # this command's copy, made or brought level
    if not path.exists():
        raise LoaclError("database_not_found", f"no database at {path}")
    from_settings = settings.master_key is not None
    old_keys = master_keys(settings)
    if from_settings:
        keys = parse_master_keys(settings.master_key or "")
    else:
        keys = [secrets.token_bytes(32), *old_keys]
        write_master_keys(settings, keys)
    masters = MasterKeys(lambda: keys)
    new = masters.current_id
    if settings.postgres_url is not None:
        # The log's keys are PostgreSQL's: sealed again there first (every instance copies
        # them from there), then in this command's copy below. Other instances' copies are
        # given them again when they next open.
        rewrapped = asyncio.run(_rewrap_postgres(settings.postgres_url, masters, new))
    conn = connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE key_state SET master_id = ? WHERE id = 1", (new,))
        conn.execute("COMMIT")
        rewrapped = 0 if settings.postgres_url is None else rewrapped
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    "SELECT key_id, subject, wrapped, master_id FROM data_keys "
                    "WHERE wrapped IS NOT NULL AND master_id IS NOT ? LIMIT ?",
                    (new, REWRAP_BATCH),
                ).fetchall()
                for key_id, subject, wrapped, mid in rows:
                    key = masters.unwrap(mid, subject, wrapped)
                    conn.execute(
                        "UPDATE data_keys SET wrapped = ?, master_id = ? WHERE key_id = ?",
                        (masters.wrap(new, subject, key), new, key_id),
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if settings.postgres_url is None:
                rewrapped += len(rows)
            if not rows:
                break
    finally:
        conn.close()
    forgotten = False
    if forget_old and not from_settings:
        write_master_keys(settings, keys[:1])
        forgotten = True
    return Rotated([master_id(k) for k in old_keys if master_id(k) != new], new, rewrapped,
                   forgotten, from_settings)


async def _level(settings: Settings) -> None:
    async with open_store(settings):
        pass


async def _rewrap_postgres(url: str, masters: MasterKeys, new: str) -> int:
    conn = await pg_migrate.connect(url)
    try:
        return await pgkeys.rewrap(conn, masters, new, REWRAP_BATCH)
    finally:
        await conn.close()


def reseal(settings: Settings, out: Path) -> Any:
    from loacl.store import reseal as resealing

    return resealing.reseal(settings.database_path, out, keyring_for(settings))
