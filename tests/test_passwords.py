from __future__ import annotations

from typing import Any

import pytest
from argon2 import PasswordHasher
from hypothesis import assume, given
from hypothesis import strategies as st

from loacl.domain.errors import LoaclError
from loacl.services.passwords import (
    MAX_LENGTH,
    MIN_LENGTH,
    Passwords,
    check_password,
    common_passwords,
)
from loacl.settings import Settings


def cheap(time_cost: int = 1, memory_kib: int = 64) -> Passwords:
    return Passwords(time_cost, memory_kib, 1)


def refusal(password: str) -> str:
    with pytest.raises(LoaclError) as caught:
        check_password(password)
    assert caught.value.code == "validation_error"
    errors: list[dict[str, str]] = caught.value.extra["errors"]
    assert [e["field"] for e in errors] == ["password"]
    return errors[0]["message"]


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "length out of range"),
        ("Tq9#mLw", "length out of range"),
        ("x" * (MAX_LENGTH + 1), "length out of range"),
        ("password", "too common"),
        ("Password123", "too common"),
        ("QWERTYUIOP", "too common"),
        ("iloveyou1", "too common"),
    ],
)
def test_refused(password: str, message: str) -> None:
    assert refusal(password) == message


@pytest.mark.parametrize(
    "password", ["Tq9#mLw2", "x" * MAX_LENGTH, "é" * MIN_LENGTH, "correct horse battery"]
)
def test_accepted(password: str) -> None:
    check_password(password)


def test_the_bounds() -> None:
    assert (MIN_LENGTH, MAX_LENGTH) == (8, 256)


def test_every_bundled_common_password_is_refused() -> None:
    listed = common_passwords()
    assert len(listed) > 1000
    assert "" not in listed and not any(p.startswith("#") for p in listed)
    for password in listed:
        message = refusal(password)
        if MIN_LENGTH <= len(password) <= MAX_LENGTH:
            assert message == "too common", password
        assert refusal(password.upper()) in {"too common", "length out of range"}


@given(st.text(min_size=MIN_LENGTH, max_size=MAX_LENGTH))
def test_any_uncommon_password_of_the_right_length_passes(password: str) -> None:
    assume(password.lower() not in common_passwords())
    check_password(password)


@given(st.text(max_size=MIN_LENGTH - 1) | st.text(min_size=MAX_LENGTH + 1, max_size=400))
def test_any_password_of_the_wrong_length_is_refused(password: str) -> None:
    assert refusal(password) == "length out of range"


async def test_hash_and_verify() -> None:
    passwords = cheap()
    stored = await passwords.hash("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert await passwords.hash("correct horse battery") != stored  # salted
    assert await passwords.verify(stored, "correct horse battery") is True
    assert await passwords.verify(stored, "correct horse batterY") is False
    assert await passwords.verify("not-a-hash", "correct horse battery") is False
    assert await passwords.verify("", "correct horse battery") is False


async def test_unknown_account_path_runs_the_hasher_and_returns_false(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    passwords = cheap()
    verified: list[str] = []
    real = PasswordHasher.verify

    def spy(self: PasswordHasher, hash: str | bytes, password: str | bytes) -> Any:
        verified.append(str(hash))
        return real(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", spy)
    assert await passwords.verify(None, "correct horse battery") is False
    assert len(verified) == 1 and verified[0].startswith("$argon2id$")
    # The dummy hash is made with the same parameters, so it costs as much as a real one.
    assert not passwords.needs_rehash(verified[0])


async def test_rehash_detection() -> None:
    weak = await cheap().hash("correct horse battery")
    assert cheap().needs_rehash(weak) is False
    assert cheap(time_cost=2).needs_rehash(weak) is True
    assert cheap(memory_kib=128).needs_rehash(weak) is True
    assert Passwords(1, 64, 2).needs_rehash(weak) is True


async def test_production_defaults() -> None:
    defaults = Settings()
    passwords = Passwords(
        defaults.argon2_time_cost, defaults.argon2_memory_kib, defaults.argon2_parallelism
    )
    stored = await passwords.hash("correct horse battery")
    assert "$m=65536,t=3,p=4$" in stored
    assert await passwords.verify(stored, "correct horse battery") is True
    assert cheap().needs_rehash(stored) is True
