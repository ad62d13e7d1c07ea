"""Email over TLS when SMTP_URL asks for it: implicit TLS (smtps://) and required STARTTLS,
against aiosmtpd servers with a test CA's certificate, through the workers' session pool."""

from __future__ import annotations

import asyncio
import ssl

import aiosmtplib
import pytest
import trustme
from aiosmtpd.controller import Controller
from delivery import SmtpCatcher

from job_handlers.notify import render, smtp

CONTENT = render.Rendered(subject="s", html="<p>h</p>", text="t")


def message() -> smtp.EmailMessage:
    return smtp.build_message(sender="a@x.org", recipient="b@y.org", content=CONTENT,
                              unsubscribe_url="https://u/", message_id_domain="x.org",
                              message_key="n-1")


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def send(config: smtp.SmtpConfig, tls_context: ssl.SSLContext | None = None) -> None:
    async def once() -> None:
        pool = smtp.SmtpPool(config, size=1, tls_context=tls_context)
        try:
            await pool.send(message())
        finally:
            pool.close()

    asyncio.run(once())


def contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def test_implicit_tls(ca: trustme.CA) -> None:
    server_ctx, client_ctx = contexts(ca)
    catcher = SmtpCatcher()
    controller = Controller(catcher, hostname="localhost", port=catcher.port,
                            ssl_context=server_ctx)
    controller.start()
    try:
        config = smtp.parse_smtp_url(f"smtps://localhost:{catcher.port}", 5)
        send(config, client_ctx)
        assert catcher.count() == 1
        with pytest.raises(aiosmtplib.SMTPConnectError):  # an untrusted certificate
            send(config)
    finally:
        controller.stop()


def test_required_starttls(ca: trustme.CA) -> None:
    server_ctx, client_ctx = contexts(ca)
    catcher = SmtpCatcher()
    controller = Controller(catcher, hostname="localhost", port=catcher.port,
                            tls_context=server_ctx, require_starttls=True)
    controller.start()
    try:
        url = f"smtp://localhost:{catcher.port}?starttls=required"
        send(smtp.parse_smtp_url(url, 5), client_ctx)
        assert catcher.count() == 1
        plain = smtp.parse_smtp_url(f"smtp://localhost:{catcher.port}?starttls=false", 5)
        with pytest.raises(aiosmtplib.SMTPResponseException, match="STARTTLS"):
            send(plain)
        assert catcher.count() == 1
    finally:
        controller.stop()
