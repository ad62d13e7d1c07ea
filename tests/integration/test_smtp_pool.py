"""Worker processes keep a few SMTP sessions open: a burst of emails does not open one session
per message, and a session the server dropped is replaced without losing a message."""

from __future__ import annotations

import asyncio

from delivery import SmtpCatcher

from job_handlers.notify import render, smtp


def message(n: int) -> smtp.EmailMessage:
    return smtp.build_message(sender="a@x.org", recipient=f"r{n}@y.org",
                              content=render.Rendered(subject=f"m{n}", html="<p>h</p>", text="t"),
                              unsubscribe_url="https://u/", message_id_domain="x.org",
                              message_key=f"n-{n}")


def test_a_burst_reuses_a_few_sessions_and_survives_a_server_restart() -> None:
    catcher = SmtpCatcher().start()
    pool = smtp.SmtpPool(smtp.parse_smtp_url(catcher.url, 5), size=3)

    async def burst(first: int) -> None:
        await asyncio.gather(*(pool.send(message(n)) for n in range(first, first + 20)))

    async def scenario() -> None:
        await burst(0)
        assert catcher.count() == 20
        assert len({m.peer for m in catcher.messages}) <= 3
        catcher.stop()  # every pooled session is now dead
        catcher.start()
        await burst(20)
        pool.close()

    try:
        asyncio.run(scenario())
        assert sorted(str(m.message["Subject"]) for m in catcher.messages) == sorted(
            f"m{n}" for n in range(40))
    finally:
        catcher.stop()
