"""Password rules and Argon2id hashing."""

from __future__ import annotations

import asyncio
import functools
import secrets
from importlib import resources

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from loacl.domain.errors import LoaclError

MIN_LENGTH = 8
MAX_LENGTH = 256


@functools.cache
def common_passwords() -> frozenset[str]:
    text = resources.files("loacl.data").joinpath("common_passwords.txt").read_text()
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line and not line.startswith("#")
    )


def check_password(password: str, field: str = "password") -> None:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise LoaclError(
            "validation_error",
            f"{field} must be {MIN_LENGTH} to {MAX_LENGTH} characters",
            errors=[{"field": field, "message": "length out of range"}],
        )
    if password.lower() in common_passwords():
        raise LoaclError(
            "validation_error",
            f"{field} is one of the most common passwords; choose another",
            errors=[{"field": field, "message": "too common"}],
        )


class Passwords:
    """Argon2id in a worker thread (it is slow on purpose and must not block the loop)."""

    def __init__(self, time_cost: int, memory_kib: int, parallelism: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
        )
        # Verified against when the e-mail is unknown, so both cases take about as long.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerificationError, InvalidHashError):
            return False

    async def verify(self, stored: str | None, password: str) -> bool:
        return await asyncio.to_thread(self._verify, stored, password)

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)
