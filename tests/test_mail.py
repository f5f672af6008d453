from __future__ import annotations

import email
import socket
import sqlite3
import threading
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from loacl.http.app import create_app
from loacl.services.mail import Mailer, OutboxTransport, SmtpTransport
from loacl.settings import Settings

SENDER = "LOACL <loacl@localhost>"


class Flaky:
    """A transport that fails ``failures`` times, then delivers."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.delivered: list[EmailMessage] = []

    def deliver(self, message: EmailMessage) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionRefusedError(111, "Connection refused")
        self.delivered.append(message)


def read_eml(folder: Path) -> list[EmailMessage]:
    messages = []
    for path in sorted(folder.glob("*.eml")):
        parsed = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        messages.append(parsed)
    return messages


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Collector:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        self.arrived.set()
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[Collector, int]]:
    collector = Collector()
    port = unused_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield collector, port
    finally:
        controller.stop()


async def test_outbox_writes_eml(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    mailer = Mailer(OutboxTransport(outbox), SENDER, outbox)
    with capture_logs() as logs:
        mailer.send("ada@example.com", "Hello", "Your token:\n\nabc\n")
        mailer.send("bob@example.com", "Hi", "second")
        await mailer.drain()
    messages = read_eml(outbox)
    assert sorted(m["To"] for m in messages) == ["ada@example.com", "bob@example.com"]
    ada = next(m for m in messages if m["To"] == "ada@example.com")
    assert ada["From"] == SENDER and ada["Subject"] == "Hello" and ada["Message-ID"]
    assert ada.get_content() == "Your token:\n\nabc\n"
    assert [e["event"] for e in logs].count("mail.written") == 2
    assert [e["event"] for e in logs].count("mail.sent") == 2


async def test_smtp_failure_is_retried_then_kept_in_the_outbox(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    transport = Flaky(failures=10)
    mailer = Mailer(transport, SENDER, outbox, attempts=3, backoff=0)
    with capture_logs() as logs:
        mailer.send("ada@example.com", "Hello", "body")
        await mailer.drain()
    assert transport.calls == 3
    assert transport.delivered == []
    [kept] = read_eml(outbox)
    assert kept["To"] == "ada@example.com" and kept.get_content() == "body\n"
    events = [e["event"] for e in logs]
    assert events.count("mail.failed") == 3
    assert "mail.undelivered" in events
    assert [e["attempt"] for e in logs if e["event"] == "mail.failed"] == [1, 2, 3]
    assert next(e for e in logs if e["event"] == "mail.undelivered")["log_level"] == "error"


async def test_smtp_failure_then_success_is_not_kept(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    transport = Flaky(failures=2)
    mailer = Mailer(transport, SENDER, outbox, attempts=3, backoff=0)
    mailer.send("ada@example.com", "Hello", "body")
    await mailer.drain()
    assert transport.calls == 3
    assert [m["To"] for m in transport.delivered] == ["ada@example.com"]
    assert not outbox.exists()


async def test_drain_without_mail() -> None:
    await Mailer(Flaky(0), SENDER, Path("unused")).drain()


def test_from_settings(settings: Settings) -> None:
    outbox_mailer = Mailer.from_settings(settings)
    assert isinstance(outbox_mailer.transport, OutboxTransport)
    assert outbox_mailer.transport.folder == settings.data_dir / "outbox"
    smtp = Mailer.from_settings(
        settings.model_copy(update={"smtp_host": "mail.example.com", "smtp_port": 2525,
                                    "mail_from": "x@example.com"})
    )
    assert isinstance(smtp.transport, SmtpTransport)
    assert (smtp.transport.host, smtp.transport.port) == ("mail.example.com", 2525)
    assert smtp.sender == "x@example.com"
    assert smtp.outbox == settings.data_dir / "outbox"


async def test_smtp_transport_delivers(settings: Settings,
                                       smtp_server: tuple[Collector, int]) -> None:
    collector, port = smtp_server
    config = settings.model_copy(
        update={"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none"}
    )
    mailer = Mailer.from_settings(config)
    mailer.send("ada@example.com", "Hello", "Your token:\n\n" + "t" * 400 + "\n")
    await mailer.drain()
    [received] = collector.messages
    assert received["To"] == "ada@example.com" and received["Subject"] == "Hello"
    assert "t" * 400 in received.get_content()
    assert not (settings.data_dir / "outbox").exists()


async def test_smtp_transport_logs_in(settings: Settings) -> None:
    collector, logins = Collector(), []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret-smtp")

    port = unused_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port,
                            authenticator=authenticator, auth_require_tls=False)
    controller.start()
    try:
        config = settings.model_copy(update={
            "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none",
            "smtp_username": "loacl", "smtp_password": "s3cret-smtp",
        })
        mailer = Mailer.from_settings(config)
        mailer.send("ada@example.com", "Hello", "body")
        await mailer.drain()
    finally:
        controller.stop()
    assert logins == [(b"loacl", b"s3cret-smtp")]
    assert [m["To"] for m in collector.messages] == ["ada@example.com"]


async def test_unreachable_smtp_server_keeps_the_mail(settings: Settings) -> None:
    config = settings.model_copy(
        update={"smtp_host": "127.0.0.1", "smtp_port": unused_port(), "smtp_security": "none"}
    )
    mailer = Mailer.from_settings(config)
    mailer.attempts, mailer.backoff = 2, 0
    with capture_logs() as logs:
        mailer.send("ada@example.com", "Hello", "body")
        await mailer.drain()
    assert [m["To"] for m in read_eml(settings.data_dir / "outbox")] == ["ada@example.com"]
    assert [e["event"] for e in logs].count("mail.failed") == 2


def test_failed_mail_never_loses_the_account(settings: Settings) -> None:
    transport = Flaky(failures=10)
    outbox = settings.data_dir / "outbox"
    mailer = Mailer(transport, SENDER, outbox, attempts=2, backoff=0)
    with TestClient(create_app(settings, mailer=mailer)) as client:
        response = client.post(
            "/api/v1/auth/register",
            json={"email": "ada@example.com", "password": "correct horse battery"},
        )
        assert response.status_code == 202
        login = client.post(
            "/api/v1/auth/login",
            json={"email": "ada@example.com", "password": "correct horse battery"},
        )
        assert login.status_code == 200
    # Shutting down waited for the mail: tried twice, then kept.
    assert transport.calls == 2
    [kept] = read_eml(outbox)
    assert kept["To"] == "ada@example.com"
    assert "verify-email" in kept.get_content()
    conn = sqlite3.connect(settings.database_path)
    try:
        types = [row[0] for row in conn.execute("SELECT type FROM events ORDER BY seq")]
    finally:
        conn.close()
    assert types == ["user.registered", "session.started"]


def test_account_mails_lead_with_a_console_link_kept_whole_in_the_eml(
    settings: Settings,
) -> None:
    """The verification and reset mails open with a link to the console's page for them; the
    raw .eml has each link on one line (no quoted-printable soft breaks), so that it can be
    copied out of the file; the log line for a mail not sent shows the link too."""
    settings = settings.model_copy(update={"public_url": "https://chat.example.com/"})
    outbox = settings.data_dir / "outbox"
    with capture_logs() as logs, TestClient(create_app(settings)) as client:
        registered = client.post("/api/v1/auth/register", json={
            "email": "ada@example.com", "password": "correct horse battery staple"})
        assert registered.status_code == 202
        assert client.post("/api/v1/auth/reset-password",
                           json={"email": "ada@example.com"}).status_code == 202
    raws = [path.read_bytes() for path in sorted(outbox.glob("*.eml"))]
    assert len(raws) == 2
    found = {}
    for raw in raws:
        assert b"Content-Transfer-Encoding: 7bit" in raw
        assert b"=\n" not in raw and b"=3D" not in raw
        message = email.message_from_bytes(raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        text = message.get_content()
        first = text.split("\n\n")[2]  # after the intro and "Open this link:"
        assert first.startswith("https://chat.example.com/console/")
        assert first.encode() in raw  # on one line, as it is
        token = first.split("?token=")[1]
        assert f"Your token:\n\n{token}" in text and "curl -X POST" in text
        assert text.index(first) < text.index("Your token:")
        page = first.split("/console/")[1].split("?")[0]
        found[page] = first
    assert set(found) == {"verify", "reset"}
    # The console's page posts the token where the curl command does.
    verify = TestClient(create_app(settings))
    with verify:
        token = found["verify"].split("?token=")[1]
        verified = verify.post("/api/v1/auth/verify-email", json={"token": token})
        assert verified.status_code == 200 and verified.json()["email_verified"] is True
    links = [entry["link"] for entry in logs if entry["event"] == "mail.outbox_link"]
    assert sorted(links) == sorted(found.values())
