"""Signed tokens (JWT, joserfc): access tokens, and single-purpose e-mail link tokens.

Each purpose has its own audience, so a token made for one can never pass as another.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import OctKey
from joserfc.jwt import ClaimsOption, JWTClaimsRegistry

from loacl.domain.errors import LoaclError

ISSUER = "loacl"
ACCESS_AUDIENCE = "loacl-api"


def new_id() -> str:
    return uuid.uuid4().hex


def new_refresh_token() -> str:
    return secrets.token_urlsafe(32)  # 256 random bits


def token_hash(token: str) -> str:
    """How opaque tokens are stored: never in the clear."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    session_id: str
    expires_at: int
    # The workspace the token acts in (claim ``ws``); a token from before workspaces names
    # none, and acts in the account's personal one, whose id is the account's.
    workspace_id: str


class Tokens:
    def __init__(
        self, secret: str, algorithm: str, access_minutes: int, clock: Callable[[], datetime]
    ) -> None:
        self._key = OctKey.import_key(secret)
        self.algorithm = algorithm
        self.access_seconds = access_minutes * 60
        self.clock = clock

    def _now(self) -> int:
        return int(self.clock().timestamp())

    def _encode(self, audience: str, subject: str, lifetime: int, **extra: Any) -> str:
        now = self._now()
        claims = {
            "iss": ISSUER, "aud": audience, "sub": subject, "iat": now, "exp": now + lifetime,
            "jti": new_id(), **extra,
        }
        # joserfc allows only its "recommended" algorithms unless told: HS384/HS512 need naming.
        return jwt.encode({"alg": self.algorithm}, claims, self._key, algorithms=[self.algorithm])

    def _decode(self, token: str, audience: str, *essential: str) -> dict[str, Any]:
        try:
            decoded = jwt.decode(token, self._key, algorithms=[self.algorithm])
            required: ClaimsOption = {"essential": True}
            options: dict[str, ClaimsOption] = {
                "iss": {"essential": True, "value": ISSUER},
                "aud": {"essential": True, "value": audience},
                **dict.fromkeys(("sub", "exp", "iat", "jti", *essential), required),
            }
            registry = JWTClaimsRegistry(now=self._now, leeway=0, **options)
            registry.validate(decoded.claims)
        except ExpiredTokenError:
            raise LoaclError("token_expired", "the token has expired") from None
        except (JoseError, ValueError, TypeError):
            raise LoaclError("invalid_token", "the token is not valid") from None
        return decoded.claims

    def issue_access(self, user_id: str, session_id: str, workspace_id: str | None = None) -> str:
        return self._encode(ACCESS_AUDIENCE, user_id, self.access_seconds, sid=session_id,
                            ws=workspace_id or user_id)

    def read_access(self, token: str) -> AccessClaims:
        claims = self._decode(token, ACCESS_AUDIENCE, "sid")
        user_id = str(claims["sub"])
        return AccessClaims(user_id, str(claims["sid"]), int(claims["exp"]),
                            str(claims.get("ws") or user_id))

    def issue_link(self, purpose: str, subject: str, lifetime: timedelta, **extra: Any) -> str:
        return self._encode(f"loacl-{purpose}", subject, int(lifetime.total_seconds()), **extra)

    def read_link(self, purpose: str, token: str, *essential: str) -> dict[str, Any]:
        return self._decode(token, f"loacl-{purpose}", *essential)


def password_fingerprint(password_hash: str) -> str:
    """Put in reset tokens: once the password changes, the token no longer matches."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:24]
