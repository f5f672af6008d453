"""Accounts end to end: a real uvicorn server, a real SMTP server (aiosmtpd), real HTTP (httpx).

The tokens a user needs are taken out of the mails the SMTP server received, as a user would.
"""

from __future__ import annotations

import email
import re
import socket
import sqlite3
import threading
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from structlog.testing import capture_logs

from loacl.http.app import create_app
from loacl.settings import Settings
from tests.live import serve

pytestmark = pytest.mark.e2e

SECRET = "e2e-jwt-secret-" + "z" * 40
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a brand new passphrase"
MAIL_WAIT = 15.0  # seconds; a bound, not a measurement


class Inbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self._changed = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        with self._changed:
            self.messages.append(parsed)
            self._changed.notify_all()
        return "250 OK"

    def wait(self, count: int) -> list[EmailMessage]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, MAIL_WAIT):
                raise AssertionError(f"expected {count} mails, got {len(self.messages)}")
            return list(self.messages)

    def token(self, count: int, subject_word: str, to: str) -> str:
        """Wait for the ``count``-th mail; it must be a ``subject_word`` mail to ``to``."""
        message = self.wait(count)[count - 1]
        assert subject_word in str(message["Subject"]) and message["To"] == to, message
        match = re.search(r"Your token:\s+(\S+)", message.get_content())
        assert match, message.get_content()
        return match.group(1)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    port = unused_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def smtp_settings(settings: Settings, port: int) -> Settings:
    return settings.model_copy(update={
        "jwt_secret_key": SECRET, "smtp_host": "127.0.0.1", "smtp_port": port,
        "smtp_security": "none",
    })


def ok(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def stored_text(settings: Settings) -> tuple[list[str], str]:
    """The events' types, and every payload and metadata text of the log with the read tables."""
    conn = sqlite3.connect(settings.database_path)
    try:
        rows = conn.execute("SELECT type, payload, metadata FROM events ORDER BY seq").fetchall()
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    return [r[0] for r in rows], "\n".join(f"{r[1]}\n{r[2]}" for r in rows) + dump


def test_sign_up_to_logout_and_reset_through_the_mail(
    settings: Settings, inbox: tuple[Inbox, int]
) -> None:
    mails, port = inbox
    settings = smtp_settings(settings, port)
    owner = "Ada@Example.COM"
    secrets: list[str] = [PASSWORD, NEW_PASSWORD, SECRET]
    with capture_logs() as logs, serve(create_app(settings)) as base, httpx.Client(
        base_url=f"{base}/api/v1/auth", timeout=10
    ) as http:
        registered = ok(http.post("register", json={"email": owner, "password": PASSWORD,
                                                    "name": "Ada"}), 202)
        assert registered == {"email": "Ada@example.com", "status": "mail_sent"}
        verify = mails.token(1, "Confirm", "Ada@example.com")
        secrets.append(verify)

        pair = ok(http.post("login", json={"email": "ada@example.com", "password": PASSWORD}),
                  200)
        assert pair["token_type"] == "bearer"
        assert http.post("login", json={"email": owner, "password": PASSWORD}).status_code == 200
        secrets += [pair["access_token"], pair["refresh_token"]]
        user = ok(http.get("me", headers=bearer(pair["access_token"])), 200)
        assert user["email"] == "Ada@example.com" and user["email_verified"] is False

        verified = ok(http.post("verify-email", json={"token": verify}), 200)
        assert verified["email_verified"] is True
        refused(http.post("verify-email", json={"token": verify}), 400,
                "invalid_verification_token")
        assert ok(http.get("me", headers=bearer(pair["access_token"])), 200)["email_verified"]

        rotated = ok(http.post("refresh-token", json={"refresh_token": pair["refresh_token"]}),
                     200)
        secrets += [rotated["access_token"], rotated["refresh_token"]]
        assert rotated["refresh_token"] != pair["refresh_token"]
        assert ok(http.get("me", headers=bearer(rotated["access_token"])), 200)["id"] == user["id"]

        assert http.post("logout", headers=bearer(rotated["access_token"])).status_code == 204
        refused(http.get("me", headers=bearer(rotated["access_token"])), 401, "invalid_token")
        refused(http.get("me", headers=bearer(pair["access_token"])), 401, "invalid_token")
        refused(http.post("refresh-token", json={"refresh_token": rotated["refresh_token"]}),
                401, "invalid_refresh_token")

        # A stolen refresh token: the first use rotates it, the second ends the session.
        stolen = ok(http.post("login", json={"email": owner, "password": PASSWORD}), 200)
        after = ok(http.post("refresh-token", json={"refresh_token": stolen["refresh_token"]}),
                   200)
        secrets += [stolen["access_token"], stolen["refresh_token"], after["access_token"],
                    after["refresh_token"]]
        refused(http.post("refresh-token", json={"refresh_token": stolen["refresh_token"]}),
                401, "refresh_token_reused")
        refused(http.get("me", headers=bearer(after["access_token"])), 401, "invalid_token")

        # Reset: an unknown address gets the same answer and no mail.
        assert http.post("reset-password", json={"email": "ghost@example.com"}).status_code == 202
        session = ok(http.post("login", json={"email": owner, "password": PASSWORD}), 200)
        secrets += [session["access_token"], session["refresh_token"]]
        assert http.post("reset-password", json={"email": "ADA@example.com"}).status_code == 202
        reset = mails.token(2, "Reset", "Ada@example.com")
        secrets.append(reset)
        assert http.post("reset-password/confirm",
                         json={"token": reset, "password": NEW_PASSWORD}).status_code == 204
        refused(http.post("reset-password/confirm", json={"token": reset, "password": PASSWORD}),
                400, "invalid_reset_token")
        refused(http.get("me", headers=bearer(session["access_token"])), 401, "invalid_token")
        refused(http.post("refresh-token", json={"refresh_token": session["refresh_token"]}),
                401, "invalid_refresh_token")
        refused(http.post("login", json={"email": owner, "password": PASSWORD}), 401,
                "invalid_credentials")
        final = ok(http.post("login", json={"email": owner, "password": NEW_PASSWORD}), 200)
        secrets += [final["access_token"], final["refresh_token"]]
        assert ok(http.get("me", headers=bearer(final["access_token"])), 200)["id"] == user["id"]

    assert len(mails.messages) == 2  # the ghost got nothing
    assert not (settings.data_dir / "outbox").exists()
    types, text = stored_text(settings)
    assert types == [
        "user.registered", "session.started", "session.started", "user.email_verified",
        "session.refreshed", "session.revoked", "session.started", "session.refreshed",
        "session.revoked", "session.started", "user.password_changed", "session.revoked",
        "session.revoked", "session.started",
    ]
    # Secrets never enter the log, the read tables, or (with a mail server) the logs.
    logged = repr(logs)
    assert "mail.sent" in logged and "auth.refresh_token_reused" in logged
    for secret in secrets:
        assert secret not in text, secret
        assert secret not in logged, secret


def test_without_a_mail_server_the_link_is_logged(settings: Settings) -> None:
    """By design: the operator finds the link in the log and the mail in data/outbox/. This is
    also the proof that the scan above would see a leaked token."""
    settings = settings.model_copy(update={"jwt_secret_key": SECRET})
    with capture_logs() as logs, serve(create_app(settings)) as base:
        response = httpx.post(f"{base}/api/v1/auth/register",
                              json={"email": "ada@example.com", "password": PASSWORD})
        assert response.status_code == 202
    # The server is stopped, so the queued mail was written.
    [path] = (settings.data_dir / "outbox").glob("*.eml")
    message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    match = re.search(r"Your token:\s+(\S+)", message.get_content())
    assert match
    assert match.group(1) in repr(logs)
    assert PASSWORD not in repr(logs)
    _, text = stored_text(settings)
    assert match.group(1) not in text and PASSWORD not in text
