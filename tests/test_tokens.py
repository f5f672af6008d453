from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import OctKey

from loacl.domain.errors import LoaclError
from loacl.services.tokens import (
    Tokens,
    new_refresh_token,
    password_fingerprint,
    token_hash,
)

SECRET = "test-jwt-secret-" + "k" * 40
START = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)
ALGORITHMS = ["HS256", "HS384", "HS512"]
PURPOSES = ["verify-email", "reset-password"]


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def make_tokens(algorithm: str = "HS256", clock: Clock | None = None) -> Tokens:
    return Tokens(SECRET, algorithm, 30, clock or Clock())


TOKENS = make_tokens()
ACCESS = TOKENS.issue_access("user-1", "session-1")


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def refused(read: Any, token: str, code: str = "invalid_token") -> None:
    with pytest.raises(LoaclError) as caught:
        read(token)
    assert caught.value.code == code


def test_access_token_round_trip_and_claims() -> None:
    claims = TOKENS.read_access(ACCESS)
    assert (claims.user_id, claims.session_id, claims.workspace_id) == (
        "user-1", "session-1", "user-1")  # no workspace named: the personal one
    raw = jwt.decode(ACCESS, OctKey.import_key(SECRET)).claims
    assert set(raw) == {"sub", "sid", "ws", "iat", "exp", "jti", "iss", "aud"}
    assert raw["iat"] == int(START.timestamp())
    assert raw["exp"] - raw["iat"] == 30 * 60 == TOKENS.access_seconds
    assert TOKENS.issue_access("user-1", "session-1") != ACCESS  # a fresh jti each time


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_configured_algorithm_works_and_refuses_the_others(algorithm: str) -> None:
    tokens = make_tokens(algorithm)
    token = tokens.issue_access("u", "s")
    assert json.loads(unb64(token.split(".")[0]))["alg"] == algorithm
    assert tokens.read_access(token).user_id == "u"
    for other in ALGORITHMS:
        if other != algorithm:
            refused(make_tokens(other).read_access, token)


def test_expiry_follows_the_clock() -> None:
    clock = Clock()
    tokens = make_tokens(clock=clock)
    token = tokens.issue_access("u", "s")
    clock.now = START + timedelta(minutes=30) - timedelta(seconds=1)
    assert tokens.read_access(token).session_id == "s"
    clock.now = START + timedelta(minutes=30)
    refused(tokens.read_access, token, "token_expired")
    clock.now = START - timedelta(minutes=5)
    refused(tokens.read_access, token)  # issued in the future


# -- tampering -----------------------------------------------------------------------------------

characters = st.characters(codec="ascii", exclude_categories=["Cc"]) | st.sampled_from("é\n\t")


@given(st.data())
def test_flipped_character_is_refused(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(ACCESS) - 1))
    char = data.draw(characters.filter(lambda c: c != ACCESS[index]))
    refused(TOKENS.read_access, ACCESS[:index] + char + ACCESS[index + 1:])


@given(st.integers(0, len(ACCESS)), characters)
def test_inserted_character_is_refused(index: int, char: str) -> None:
    refused(TOKENS.read_access, ACCESS[:index] + char + ACCESS[index:])


@given(st.integers(0, len(ACCESS) - 1))
def test_deleted_character_is_refused(index: int) -> None:
    refused(TOKENS.read_access, ACCESS[:index] + ACCESS[index + 1:])


@given(st.sampled_from(["none", "None", "NONE", "nOnE"]), st.booleans())
def test_alg_none_is_refused(alg: str, keep_signature: bool) -> None:
    _, payload, signature = ACCESS.split(".")
    forged_header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    refused(TOKENS.read_access,
            f"{forged_header}.{payload}.{signature if keep_signature else ''}")


@given(st.sampled_from(ALGORITHMS[1:]), st.booleans())
def test_other_algorithm_is_refused(alg: str, resign: bool) -> None:
    _, payload, signature = ACCESS.split(".")
    claims = json.loads(unb64(payload))
    if resign:
        token = jwt.encode({"alg": alg}, claims, OctKey.import_key(SECRET), algorithms=[alg])
    else:  # only the header says another algorithm
        token = f"{b64(json.dumps({'alg': alg}).encode())}.{payload}.{signature}"
    refused(TOKENS.read_access, token)


@given(st.text(min_size=32, max_size=80))
def test_other_key_is_refused(key: str) -> None:
    assume(key != SECRET)
    claims = json.loads(unb64(ACCESS.split(".")[1]))
    token = jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(key))
    refused(TOKENS.read_access, token)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=3),
    max_leaves=8,
)
claim_names = st.sampled_from(["iss", "aud", "sub", "sid", "iat", "exp", "jti", "nbf"])


def sign(header: Any, claims: Any, key: str = SECRET) -> str:
    """A compact JWS built by hand, so that any header and payload can be signed."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def test_hand_signed_token_passes() -> None:
    claims = json.loads(unb64(ACCESS.split(".")[1]))
    assert TOKENS.read_access(sign({"alg": "HS256"}, claims)).user_id == "user-1"


@given(st.dictionaries(claim_names, json_values),
       st.dictionaries(st.text(max_size=5), json_values, max_size=3), json_values)
def test_signed_garbage_never_crashes(changes: dict[str, Any], header_extra: dict[str, Any],
                                      anything: Any) -> None:
    """Even a token signed with the right key gives a LoaclError, never another exception,
    whatever its header and claims hold."""
    claims = {**json.loads(unb64(ACCESS.split(".")[1])), **changes}
    for header, payload in (({**header_extra, "alg": "HS256"}, claims),
                            ({"alg": "HS256"}, anything), (anything, claims)):
        try:
            TOKENS.read_access(sign(header, payload))
        except LoaclError as exc:
            assert exc.code in {"invalid_token", "token_expired"}


@given(st.text(max_size=300) | st.from_regex(r"\A[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\Z"))
def test_arbitrary_text_is_refused(token: str) -> None:
    refused(TOKENS.read_access, token)


# -- link tokens ---------------------------------------------------------------------------------

purposes = st.sampled_from(PURPOSES) | st.from_regex(r"\A[a-z][a-z-]{0,15}\Z")


@given(purposes, purposes)
def test_link_token_of_one_purpose_never_passes_as_another(issued: str, read: str) -> None:
    token = TOKENS.issue_link(issued, "user-1", timedelta(hours=1), email="a@example.com")
    if issued == read:
        assert TOKENS.read_link(read, token, "email")["sub"] == "user-1"
    else:
        refused(lambda t: TOKENS.read_link(read, t, "email"), token)
    refused(TOKENS.read_access, token)


@given(purposes)
def test_access_token_never_passes_as_a_link(purpose: str) -> None:
    refused(lambda t: TOKENS.read_link(purpose, t), ACCESS)


def test_link_token_needs_its_extra_claims_and_expires() -> None:
    clock = Clock()
    tokens = make_tokens(clock=clock)
    token = tokens.issue_link("reset-password", "u", timedelta(hours=1), pwd="abc")
    assert tokens.read_link("reset-password", token, "pwd")["pwd"] == "abc"
    refused(lambda t: tokens.read_link("reset-password", t, "pwd", "email"), token)
    clock.now = START + timedelta(hours=1)
    refused(lambda t: tokens.read_link("reset-password", t, "pwd"), token, "token_expired")


# -- opaque tokens -------------------------------------------------------------------------------


def test_refresh_tokens_are_256_random_bits_stored_as_hashes() -> None:
    tokens = {new_refresh_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        assert len(unb64(token)) == 32
        assert token_hash(token) != token and len(token_hash(token)) == 64
    assert token_hash("a") == token_hash("a") != token_hash("b")


def test_password_fingerprint_changes_with_the_hash() -> None:
    assert password_fingerprint("$argon2id$one") == password_fingerprint("$argon2id$one")
    assert password_fingerprint("$argon2id$one") != password_fingerprint("$argon2id$two")
    assert "$argon2id$one" not in password_fingerprint("$argon2id$one")
