"""Outgoing mail: real SMTP when configured, else ``.eml`` files in ``data/outbox/``.

Sending happens in the background: the account is already in the log, so a mail server that is
down delays a mail (retried, then kept in the outbox) but never loses an account.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Protocol

import structlog

from loacl.private import write_private
from loacl.settings import Settings

log = structlog.get_logger(__name__)


class Transport(Protocol):
    def deliver(self, message: EmailMessage) -> None: ...


class SmtpTransport:
    def __init__(self, settings: Settings) -> None:
        assert settings.smtp_host
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.security = settings.smtp_security
        self.username = settings.smtp_username
        self.password = settings.smtp_password

    def deliver(self, message: EmailMessage) -> None:
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if self.security == "tls":
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=30, context=context)
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=30)
        with smtp:
            if self.security == "starttls":
                smtp.starttls(context=context)
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message)


class OutboxTransport:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def deliver(self, message: EmailMessage) -> None:
        name = str(message["Message-ID"]).strip("<>").replace("@", "_").replace("/", "_")
        path = self.folder / f"{name}.eml"
        # 0600: an outbox mail holds a live verification or reset token.
        write_private(path, bytes(message))
        log.info("mail.written", path=str(path), to=message["To"], subject=message["Subject"])


class Mailer:
    def __init__(
        self,
        transport: Transport,
        sender: str,
        outbox: Path,
        attempts: int = 3,
        backoff: float = 1.0,
    ) -> None:
        self.transport = transport
        self.sender = sender
        self.outbox = outbox
        self.attempts = attempts
        self.backoff = backoff
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> Mailer:
        outbox = settings.data_dir / "outbox"
        transport: Transport = (
            SmtpTransport(settings) if settings.smtp_host else OutboxTransport(outbox)
        )
        return cls(transport, settings.mail_from, outbox)

    def compose(
        self, to: str, subject: str, body: str, message_id: str | None = None
    ) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message["Message-ID"] = message_id or make_msgid(domain="loacl")
        # Plain ASCII goes as it is (7bit): quoted-printable would break a long link in the
        # raw .eml with soft line breaks, so that copying it out of the file fails. SMTP's
        # line limit (998) still holds; anything else is left to the default choice.
        plain = body.isascii() and all(len(line) <= 998 for line in body.splitlines())
        message.set_content(body, cte="7bit" if plain else None)
        return message

    async def deliver(self, to: str, subject: str, body: str, message_id: str) -> None:
        """Send a mail and wait until it is sent or kept in the outbox. ``message_id`` is
        stable, so that a mail sent again after a crash is known for the same one."""
        await self._send(self.compose(to, subject, body, message_id))

    def send(self, to: str, subject: str, body: str) -> None:
        """Queue a mail; returns at once."""
        task = asyncio.create_task(self._send(self.compose(to, subject, body)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, message: EmailMessage) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                await asyncio.to_thread(self.transport.deliver, message)
                log.info("mail.sent", to=message["To"], subject=message["Subject"])
                return
            except Exception as exc:
                log.warning(
                    "mail.failed", to=message["To"], attempt=attempt, error=repr(exc)
                )
                if attempt < self.attempts:
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
        # Given up on the server: keep the mail where an operator can find and resend it.
        log.error("mail.undelivered", to=message["To"], outbox=str(self.outbox))
        await asyncio.to_thread(OutboxTransport(self.outbox).deliver, message)

    async def drain(self) -> None:
        """Wait for queued mails (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
