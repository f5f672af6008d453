"""Owner accounts: register, verify, log in, refresh, log out, reset the password."""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import structlog
from email_validator import EmailNotValidError, validate_email

from loacl.domain import accounts as domain
from loacl.domain.errors import ConflictError, LoaclError
from loacl.domain.events import Metadata
from loacl.domain.privacy import OWNER, subject
from loacl.services.mail import Mailer, OutboxTransport
from loacl.services.passwords import Passwords, check_password
from loacl.services.ratelimit import RateLimiter
from loacl.services.throttle import LoginThrottle, source_key
from loacl.services.tokens import (
    Tokens,
    new_id,
    new_refresh_token,
    password_fingerprint,
    token_hash,
)
from loacl.settings import Settings
from loacl.store.codec import format_time
from loacl.store.eventstore import NO_STREAM, Clock, EventStore, utc_now
from loacl.store.views import accounts as accounts_view
from loacl.store.views import workspaces as workspace_views
from loacl.store.views.accounts import SessionView, UserView

log = structlog.get_logger(__name__)

HOUR = 60 * 60
RETRIES = 3  # a use case re-decides this often when its stream moved on meanwhile


def normalize_email(email: str, field: str = "email") -> str:
    try:
        return validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise LoaclError(
            "validation_error", f"{field}: {exc}", errors=[{"field": field, "message": str(exc)}]
        ) from None


def owner_subject(user_id: str) -> str:
    """The subject a session's events belong to: its owner's account."""
    return subject(OWNER, user_id)


@dataclass(frozen=True)
class Principal:
    """An authenticated account, and the workspace its access token acts in (not yet checked
    against the members: see ``http.auth.current_member``)."""

    user_id: str
    session_id: str
    email: str
    verified: bool
    workspace_id: str = ""


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    workspace_id: str = ""  # the workspace the access token acts in


class Accounts:
    def __init__(
        self,
        store: EventStore,
        settings: Settings,
        passwords: Passwords,
        tokens: Tokens,
        mailer: Mailer,
        clock: Clock,
    ) -> None:
        self.store = store
        self.settings = settings
        self.passwords = passwords
        self.tokens = tokens
        self.mailer = mailer
        self.clock = clock
        # The app's clock, so that the windows move with it (and with a test's).
        def seconds() -> float:
            return clock().timestamp()

        self.logins = LoginThrottle(
            per_source=settings.login_ip_failures,
            per_account_source=settings.login_account_failures,
            account_alarm=settings.login_account_alarm,
            window_seconds=settings.login_window_minutes * 60,
            clock=seconds,
        )
        self.registrations = RateLimiter(settings.register_per_ip_hour, HOUR, seconds)
        self.resets = RateLimiter(settings.reset_per_ip_hour, HOUR, seconds)
        self.mail_limit = RateLimiter(3, HOUR, seconds)

    @classmethod
    def for_operator(cls, store: EventStore, settings: Settings) -> Accounts:
        """The service as the CLI uses it: it creates owners and sends no mail."""
        passwords = Passwords(
            settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism
        )
        # A key of this process alone: the CLI issues no tokens, and so neither reads nor
        # creates the server's key file.
        tokens = Tokens(
            secrets.token_urlsafe(48), settings.jwt_algorithm,
            settings.access_token_expire_minutes, utc_now,
        )
        return cls(store, settings, passwords, tokens, Mailer.from_settings(settings), utc_now)

    # -- reading ----------------------------------------------------------------------------

    async def user(self, user_id: str) -> UserView:
        found = await accounts_view.user_by_id(self.store, user_id)
        if found is None:
            raise LoaclError("not_found", "no such user")
        return found

    async def _load_user(self, user_id: str) -> tuple[domain.User, int]:
        return await self.store.load(
            domain.user_stream(user_id), domain.User(), domain.evolve_user
        )

    async def _user_of_link(
        self, kind: str, token: str, claim: str, invalid: LoaclError
    ) -> tuple[dict[str, Any], domain.User, int]:
        """The claims of a mailed link and the user it names, or ``invalid`` (never saying
        which part was wrong)."""
        try:
            claims = self.tokens.read_link(kind, token, claim)
        except LoaclError:
            raise invalid from None
        state, version = await self._load_user(str(claims["sub"]))
        if not state.exists:
            raise invalid
        return claims, state, version

    async def _load_session(self, session_id: str) -> tuple[domain.Session, int]:
        return await self.store.load(
            domain.session_stream(session_id), domain.Session(), domain.evolve_session
        )

    # -- mail -------------------------------------------------------------------------------

    def _send_link(self, to: str, subject: str, intro: str, page: str, path: str, token: str,
                   base_url: str) -> None:
        """A mail whose link opens the console's ``page`` with the token (the page posts it
        to ``path``); the token and a curl command for the same follow, for API users."""
        base = (self.settings.public_url or base_url).rstrip("/")
        link = f"{base}/console/{page}?token={quote(token, safe='')}"
        body = (
            f"{intro}\n\n"
            f"Open this link:\n\n{link}\n\n"
            "Or, without a browser:\n\n"
            f"Your token:\n\n{token}\n\n"
            f"Send it to LOACL:\n\n"
            f"  curl -X POST {base}{path} -H 'Content-Type: application/json' "
            f"-d '{{\"token\": \"{token}\"}}'\n\n"
            "If you did not ask for this, ignore this mail.\n"
        )
        self.mailer.send(to, subject, body)
        if isinstance(self.mailer.transport, OutboxTransport):
            # No mail server configured: the operator finds the link in the log.
            log.info("mail.outbox_link", to=to, subject=subject, link=link,
                     endpoint=f"{base}{path}", token=token)

    def _send_verification(self, user_id: str, email: str, base_url: str) -> None:
        token = self.tokens.issue_link(
            "verify-email", user_id, timedelta(hours=self.settings.email_token_hours),
            email=email,
        )
        self._send_link(
            email, "Confirm your e-mail address for LOACL",
            "Welcome to LOACL. Confirm your e-mail address to create assistants and widgets.",
            "verify", "/api/v1/auth/verify-email", token, base_url,
        )

    def _send_taken_notice(self, user_id: str, email: str, base_url: str) -> None:
        if self.mail_limit.retry_after(f"taken:{user_id}"):
            log.info("auth.taken_notice_rate_limited", user_id=user_id)
            return
        self.mail_limit.hit(f"taken:{user_id}")
        base = (self.settings.public_url or base_url).rstrip("/")
        self.mailer.send(
            email, "Someone tried to register your address with LOACL",
            "Someone (perhaps you) tried to register a new LOACL account with this e-mail "
            "address, which has an account already. No second account was made.\n\n"
            f"To log in, use your password at {base}/console/ . If you forgot it, ask for a "
            "reset there, or:\n\n"
            f"  curl -X POST {base}/api/v1/auth/reset-password -H 'Content-Type: "
            f"application/json' -d '{{\"email\": \"{email}\"}}'\n\n"
            "If it was not you, ignore this mail: nothing changed.\n",
        )

    # -- use cases --------------------------------------------------------------------------

    async def register(
        self, email: str, password: str, name: str | None, client_ip: str, base_url: str,
        meta: Metadata,
    ) -> str:
        """Register an owner and mail the verification link; returns the normalised address.

        An address that has an account already gets the same answer (nobody learns who has
        one); its owner gets a mail saying that someone tried, instead of a second account.
        Counted per client address before the password is hashed."""
        email = normalize_email(email)
        check_password(password)
        self.registrations.check(
            f"register:{source_key(client_ip)}", "too many registrations; try again later"
        )
        existing = await accounts_view.credentials(self.store, email)
        if existing is None:
            try:
                user = await self._create(email, password, name, verified=False, meta=meta)
            except LoaclError as exc:
                if exc.code != "email_taken":
                    raise
                # Registered at this very moment by another request: the same as taken.
                existing = await accounts_view.credentials(self.store, email)
            else:
                self._send_verification(user.user_id, user.email, base_url)
                return user.email
        else:
            # As long as a new account takes, so that the time does not tell either.
            await self.passwords.hash(password)
        if existing is not None:
            self._send_taken_notice(existing.user_id, existing.email, base_url)
        return email

    async def create_user(
        self, email: str, password: str, name: str | None, *, verified: bool, meta: Metadata
    ) -> UserView:
        """An owner made by the operator (``loacl users create``): no mail is sent, and with
        ``verified`` the address counts as confirmed at once."""
        return await self._create(email, password, name, verified=verified, meta=meta)

    async def _create(
        self, email: str, password: str, name: str | None, *, verified: bool, meta: Metadata
    ) -> UserView:
        email = normalize_email(email)
        check_password(password)
        user_id = new_id()
        events = domain.register(user_id, email, name, await self.passwords.hash(password))
        if verified:
            state = domain.User()
            for event in events:
                state = domain.evolve_user(state, event)
            events = [*events, *domain.verify_email(state)]
        await self.store.append(
            domain.user_stream(user_id), events, expected_version=NO_STREAM, metadata=meta
        )
        return await self.user(user_id)

    async def verify_email(self, token: str, meta: Metadata) -> UserView:
        invalid = LoaclError(
            "invalid_verification_token", "this verification link is not valid or has expired"
        )
        claims, state, version = await self._user_of_link("verify-email", token, "email", invalid)
        if state.email != claims["email"]:
            raise invalid
        if state.verified:
            raise LoaclError(
                "invalid_verification_token", "this e-mail address is already verified"
            )
        await self.store.append(
            domain.user_stream(state.user_id), domain.verify_email(state),
            expected_version=version, metadata=meta,
        )
        return await self.user(state.user_id)

    async def resend_verification(self, principal: Principal, base_url: str) -> None:
        if principal.verified:
            raise LoaclError("already_verified", "this e-mail address is already verified")
        self.mail_limit.check(
            f"verify:{principal.user_id}", "verification mails are limited; try again later"
        )
        self._send_verification(principal.user_id, principal.email, base_url)

    async def login(self, email: str, password: str, client_ip: str, meta: Metadata,
                    workspace_id: str | None = None) -> TokenPair:
        try:
            email = normalize_email(email)
        except LoaclError:
            email = email.strip().lower()
        # Counted before the slow hash check, as a failure until it proves right: parallel
        # guesses are each counted before any is checked.
        attempt = self.logins.begin(email.lower(), client_ip)
        found = await accounts_view.credentials(self.store, email)
        stored = found.password_hash if found is not None else None
        if not await self.passwords.verify(stored, password) or found is None:
            log.info("auth.login_failed", source=attempt.source)
            raise LoaclError("invalid_credentials", "wrong e-mail address or password")
        self.logins.succeeded(attempt)
        user_id = found.user_id
        if self.passwords.needs_rehash(stored or ""):
            state, version = await self._load_user(user_id)
            new_hash = await self.passwords.hash(password)
            # A conflict: another login rehashed it meanwhile (or a reset changed it); the next
            # login rehashes if it still needs it.
            with contextlib.suppress(ConflictError):
                await self.store.append(
                    domain.user_stream(user_id),
                    domain.change_password(state, new_hash, "rehash"),
                    expected_version=version, metadata=meta,
                )
        return await self._start_session(user_id, meta, workspace_id)

    async def check_password(self, user_id: str, password: str, client_ip: str) -> None:
        """Refuse, as a failed login would (and counted as one), unless ``password`` is the
        owner's: asked again before what cannot be undone (deleting the account)."""
        user = await self.user(user_id)
        attempt = self.logins.begin(user.email.lower(), client_ip)
        found = await accounts_view.credentials(self.store, user.email)
        if found is None or not await self.passwords.verify(found.password_hash, password):
            raise LoaclError("invalid_credentials", "wrong password")
        self.logins.succeeded(attempt)

    async def _start_session(
        self, user_id: str, meta: Metadata, workspace_id: str | None = None
    ) -> TokenPair:
        workspace_id = await self._workspace(user_id, workspace_id)
        session_id = new_id()
        refresh = new_refresh_token()
        expires = self.clock() + timedelta(days=self.settings.refresh_token_days)
        await self.store.append(
            domain.session_stream(session_id),
            domain.start_session(session_id, user_id, token_hash(refresh), expires),
            expected_version=NO_STREAM, metadata=meta, subject=owner_subject(user_id),
        )
        return TokenPair(
            self.tokens.issue_access(user_id, session_id, workspace_id), refresh,
            self.tokens.access_seconds, workspace_id,
        )

    async def refresh(
        self, refresh_token: str, meta: Metadata, workspace_id: str | None = None
    ) -> TokenPair:
        presented = token_hash(refresh_token)
        session_id = await accounts_view.session_of_refresh_token(self.store, presented)
        if session_id is None:
            raise LoaclError("invalid_refresh_token", "the refresh token is not valid")
        for attempt in range(1, RETRIES + 1):
            state, version = await self._load_session(session_id)
            new_token = new_refresh_token()
            expires = self.clock() + timedelta(days=self.settings.refresh_token_days)
            events = domain.refresh_session(
                state, presented, token_hash(new_token), expires, self.clock()
            )
            try:
                await self.store.append(
                    domain.session_stream(state.session_id), events,
                    expected_version=version, metadata=meta,
                    subject=owner_subject(state.user_id),
                )
                break
            except ConflictError:
                # The session moved on meanwhile (the same token used twice at once, a logout):
                # decide again on what it is now.
                if attempt == RETRIES:
                    raise
        if isinstance(events[0], domain.SessionRevoked):
            log.warning("auth.refresh_token_reused", session_id=state.session_id)
            raise LoaclError(
                "refresh_token_reused",
                "this refresh token was already used; the session is revoked, log in again",
            )
        # Asked for a workspace the account is no member of (any more): its default one, so
        # that a removed member's console lands where it still may act.
        chosen = await self.default_workspace(state.user_id)
        if workspace_id is not None and await workspace_views.role_of(
            self.store, workspace_id, state.user_id
        ) is not None:
            chosen = workspace_id
        return TokenPair(
            self.tokens.issue_access(state.user_id, state.session_id, chosen), new_token,
            self.tokens.access_seconds, chosen,
        )

    async def logout(self, principal: Principal, meta: Metadata) -> None:
        await self._revoke(principal.session_id, "logout", meta)

    async def logout_by_refresh_token(
        self, refresh_token: str, user_id: str | None, meta: Metadata
    ) -> None:
        """End the session whose current refresh token this is (of ``user_id``, when given).
        Anything else (a rotated token, another owner's) ends nothing: logging out must not
        become a way to end sessions with an old copy of a token."""
        session_id = await accounts_view.session_of_refresh_token(
            self.store, token_hash(refresh_token)
        )
        if session_id is None:
            return
        state, _ = await self._load_session(session_id)
        if state.current_token_hash != token_hash(refresh_token) or (
            user_id is not None and state.user_id != user_id
        ):
            return
        await self._revoke(session_id, "logout", meta)

    async def _revoke(self, session_id: str, reason: str, meta: Metadata) -> None:
        for attempt in range(1, RETRIES + 1):
            state, version = await self._load_session(session_id)
            try:
                await self.store.append(
                    domain.session_stream(session_id), domain.revoke_session(state, reason),
                    expected_version=version, metadata=meta,
                    subject=owner_subject(state.user_id),
                )
                return
            except ConflictError:
                # Refreshed meanwhile: a logout or reset must still end the session.
                if attempt == RETRIES:
                    raise

    async def request_reset(self, email: str, client_ip: str, base_url: str) -> None:
        """Always succeeds from the caller's view: nobody learns whether an account exists.
        Limited per client address (429), whatever the address asked for."""
        self.resets.check(
            f"reset:{source_key(client_ip)}", "too many reset requests; try again later"
        )
        try:
            email = normalize_email(email)
        except LoaclError:
            return
        found = await accounts_view.credentials(self.store, email)
        if found is None:
            return
        if self.mail_limit.retry_after(f"reset:{found.user_id}"):
            log.info("auth.reset_rate_limited", user_id=found.user_id)
            return
        self.mail_limit.hit(f"reset:{found.user_id}")
        token = self.tokens.issue_link(
            "reset-password", found.user_id,
            timedelta(minutes=self.settings.reset_token_minutes),
            pwd=password_fingerprint(found.password_hash),
        )
        self._send_link(
            found.email, "Reset your LOACL password",
            "Someone (we hope you) asked to reset the password of this LOACL account. Open the "
            "link to choose a new password (or send the token below with your new password "
            "as \"password\").",
            "reset", "/api/v1/auth/reset-password/confirm", token, base_url,
        )

    async def confirm_reset(self, token: str, password: str, meta: Metadata) -> None:
        invalid = LoaclError(
            "invalid_reset_token", "this reset link is not valid, was used, or has expired"
        )
        claims, state, version = await self._user_of_link("reset-password", token, "pwd", invalid)
        if password_fingerprint(state.password_hash) != claims["pwd"]:
            raise invalid
        check_password(password)
        await self.store.append(
            domain.user_stream(state.user_id),
            domain.change_password(state, await self.passwords.hash(password), "reset"),
            expected_version=version, metadata=meta,
        )
        for session_id in await accounts_view.open_sessions(self.store, state.user_id):
            await self._revoke(session_id, "password_reset", meta)

    async def change_password(
        self, principal: Principal, current: str, new: str, client_ip: str, meta: Metadata
    ) -> None:
        """Set a new password, the current one given (and counted as a login attempt), and end
        every other session of the owner: whoever else held one is out."""
        await self.check_password(principal.user_id, current, client_ip)
        check_password(new)
        new_hash = await self.passwords.hash(new)
        for attempt in range(1, RETRIES + 1):
            state, version = await self._load_user(principal.user_id)
            try:
                await self.store.append(
                    domain.user_stream(principal.user_id),
                    domain.change_password(state, new_hash, "change"),
                    expected_version=version, metadata=meta,
                )
                break
            except ConflictError:
                if attempt == RETRIES:
                    raise
        for session_id in await accounts_view.open_sessions(self.store, principal.user_id):
            if session_id != principal.session_id:
                await self._revoke(session_id, "password_changed", meta)

    async def sessions(self, principal: Principal) -> list[SessionView]:
        return await accounts_view.active_sessions(
            self.store, principal.user_id, format_time(self.clock())
        )

    async def end_session(self, principal: Principal, session_id: str, meta: Metadata) -> None:
        """End one of the owner's active sessions (this one too, as a logout would); another
        owner's, an ended one or none at all is not found."""
        active = {s.session_id for s in await self.sessions(principal)}
        if session_id not in active:
            raise LoaclError("not_found", "no such session")
        await self._revoke(session_id, "logout" if session_id == principal.session_id
                           else "revoked", meta)

    async def authenticate(self, access_token: str) -> Principal:
        claims = self.tokens.read_access(access_token)
        session = await accounts_view.session_user(self.store, claims.session_id, claims.user_id)
        if session is None or not session.active:
            raise LoaclError("invalid_token", "this session has ended; log in again")
        return Principal(
            claims.user_id, claims.session_id, session.email,
            session.email_verified_at is not None, claims.workspace_id,
        )

    async def default_workspace(self, user_id: str) -> str:
        """Where a new access token acts unless told: the personal workspace, else the first
        one joined (the personal id when there is none: such a token is refused everywhere a
        workspace is needed)."""
        found = await workspace_views.workspaces_of(self.store, user_id)
        return found[0].workspace_id if found else user_id

    async def _workspace(self, user_id: str, workspace_id: str | None) -> str:
        if workspace_id is None:
            return await self.default_workspace(user_id)
        if await workspace_views.role_of(self.store, workspace_id, user_id) is None:
            raise LoaclError("not_found", "no such workspace")
        return workspace_id

    async def switch(self, principal: Principal, workspace_id: str) -> TokenPair:
        """An access token of the same session acting in another workspace of the account's
        (no refresh token: the session's stays as it is)."""
        workspace_id = await self._workspace(principal.user_id, workspace_id)
        return TokenPair(
            self.tokens.issue_access(principal.user_id, principal.session_id, workspace_id), "",
            self.tokens.access_seconds, workspace_id,
        )

    async def rename(self, user_id: str, name: str | None, meta: Metadata) -> UserView:
        """Set the account's display name (None: the e-mail address's local part)."""
        for attempt in range(1, RETRIES + 1):
            state, version = await self._load_user(user_id)
            try:
                await self.store.append(
                    domain.user_stream(user_id), domain.rename(state, name),
                    expected_version=version, metadata=meta,
                )
                break
            except ConflictError:
                if attempt == RETRIES:
                    raise
        return await self.user(user_id)

    async def start_session_in(
        self, user_id: str, workspace_id: str, meta: Metadata
    ) -> TokenPair:
        return await self._start_session(user_id, meta, workspace_id)
