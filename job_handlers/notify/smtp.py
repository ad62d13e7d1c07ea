"""Email delivery over SMTP: a multipart message with RFC 8058 one-click unsubscribe headers."""

from __future__ import annotations

import asyncio
import email.utils
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from job_handlers.notify.render import Rendered


@dataclass(frozen=True)
class SmtpConfig:
    hostname: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool  # implicit TLS (smtps://)
    start_tls: bool | None  # None: when the server offers it; True: required
    timeout_s: float


def parse_smtp_url(url: str, timeout_s: float) -> SmtpConfig:
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError("SMTP_URL must start with smtp:// or smtps://")
    if not parts.hostname:
        raise ValueError("SMTP_URL has no host")
    options = parse_qs(parts.query)
    starttls = options.get("starttls", [""])[0].lower()
    if starttls not in ("", "required", "true", "false", "off"):
        raise ValueError("SMTP_URL's starttls must be required, false or absent")
    implicit = parts.scheme == "smtps"
    return SmtpConfig(
        hostname=parts.hostname,
        port=parts.port or (465 if implicit else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        use_tls=implicit,
        start_tls=(False if implicit or starttls in ("false", "off")
                   else True if starttls in ("required", "true") else None),
        timeout_s=timeout_s,
    )


def build_message(*, sender: str, recipient: str, content: Rendered, unsubscribe_url: str,
                  message_id_domain: str, message_key: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = content.subject
    message["Date"] = email.utils.formatdate(usegmt=True)
    # Stable per notification, so a mail system can spot the one duplicate window (see send).
    message["Message-ID"] = f"<{message_key}@{message_id_domain}>"
    message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(content.text)
    message.add_alternative(content.html, subtype="html")
    return message


class SmtpPool:
    """A few SMTP sessions kept open per worker process.

    Opening a session (TCP, EHLO, perhaps TLS and AUTH) costs more than sending one message,
    and an event's watchers are emailed in a burst. At most `size` sessions exist at once; a
    session idle longer than `idle_s` (servers drop quiet sessions) or one that saw any error
    is closed rather than reused. A reused session the server has already closed is replaced
    once, before anything was sent on it.
    """

    def __init__(self, config: SmtpConfig, size: int = 4, idle_s: float = 30.0,
                 tls_context: ssl.SSLContext | None = None):
        self.config = config
        self.idle_s = idle_s
        self.tls_context = tls_context
        self._slots = asyncio.Semaphore(size)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = client(self.config, self.tls_context)
        await smtp.connect()
        return smtp

    def _reusable(self) -> aiosmtplib.SMTP | None:
        now = time.monotonic()
        while self._idle:
            client, since = self._idle.pop()
            if now - since < self.idle_s and client.is_connected:
                return client
            client.close()
        return None

    async def send(self, message: EmailMessage) -> None:
        async with self._slots:
            client = self._reusable()
            if client is not None:
                try:
                    await client.noop()
                except (aiosmtplib.SMTPException, OSError):
                    client.close()
                    client = None
            if client is None:
                client = await self._connect()
            try:
                await client.send_message(message)
            except BaseException:
                client.close()
                raise
            self._idle.append((client, time.monotonic()))

    def close(self) -> None:
        while self._idle:
            self._idle.pop()[0].close()


def client(config: SmtpConfig, tls_context: ssl.SSLContext | None = None) -> aiosmtplib.SMTP:
    """An unconnected SMTP client for `config`. TLS verifies the server's certificate against
    the system's CAs (or `tls_context`)."""
    return aiosmtplib.SMTP(hostname=config.hostname, port=config.port,
                           username=config.username, password=config.password,
                           use_tls=config.use_tls, start_tls=config.start_tls,
                           timeout=config.timeout_s, tls_context=tls_context)


async def send(config: SmtpConfig, message: EmailMessage,
               tls_context: ssl.SSLContext | None = None) -> None:
    """One message on a session of its own (the benchmark's reference; workers use the pool)."""
    async with client(config, tls_context) as smtp:
        await smtp.send_message(message)
