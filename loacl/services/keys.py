"""The keyring of a configured LOACL: its database's data keys, opened with the master keys the
settings name (or the data folder's generated one)."""

from __future__ import annotations

import functools

from loacl.settings import Settings, master_keys
from loacl.store.eventstore import Clock
from loacl.store.keys import Keyring, MasterKeys


def keyring_for(
    settings: Settings, clock: Clock | None = None, *, create: bool = True
) -> Keyring:
    """With ``create`` false, a missing key file is an error (``FileNotFoundError``), not a
    new key."""
    return Keyring(MasterKeys(functools.partial(master_keys, settings, create=create)), clock)
