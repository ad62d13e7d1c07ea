"""The shared rate limit holds across processes: counted at a real SMTP server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psycopg
import pytest
from delivery import SmtpCatcher
from marketplace import add_listing, add_name, add_user, watch
from support import WORKER, consumer_env, running_consumer, wait_until

from job_handlers.ratelimit import RateLimited, RateLimiter
from wal_consumer.settings import ConsumerSettings


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + 1.0) for i, start in enumerate(times))


def test_limiter_spaces_concurrent_callers_and_refuses_long_waits(
    ready_db: ConsumerSettings
) -> None:
    async def run() -> list[float]:
        limiter = RateLimiter("test", rate_per_s=20, max_wait_s=5)
        granted: list[float] = []

        async def caller() -> None:
            async with await psycopg.AsyncConnection.connect(ready_db.database_url) as conn:
                for _ in range(10):
                    await limiter.acquire(conn)
                    granted.append(time.monotonic())

        await asyncio.gather(*(caller() for _ in range(3)))
        impatient = RateLimiter("test", rate_per_s=20, max_wait_s=0.01)
        async with await psycopg.AsyncConnection.connect(ready_db.database_url) as conn:
            await limiter.acquire(conn, tokens=40)  # books the next two seconds
            with pytest.raises(RateLimited, match="next free slot is 2"):
                await impatient.acquire(conn)
        return granted

    granted = asyncio.run(run())
    assert len(granted) == 30
    assert max(granted) - min(granted) >= 29 / 20 - 0.05
    assert busiest_second(granted) <= 21


def test_email_rate_holds_across_two_worker_processes(
    ready_db: ConsumerSettings, conn: psycopg.Connection, tmp_path: Path
) -> None:
    catcher = SmtpCatcher().start()
    try:
        env = consumer_env(ready_db.database_url, SMTP_URL=catcher.url,
                           JOB_EMAIL_RATE_PER_S="10", JOB_POLL_INTERVAL_S="0.1",
                           JOB_RATE_LIMIT_MAX_WAIT_S="10")
        name_id = add_name(conn, "popular.eth")
        for i in range(30):
            watch(conn, add_user(conn, f"0x{i + 1:040x}", f"fan{i}@example.com"), name_id)
        with running_consumer(env, tmp_path / "consumer.log"), \
                running_consumer(env, tmp_path / "worker-1.log", WORKER) as one, \
                running_consumer(env, tmp_path / "worker-2.log", WORKER) as two:
            add_listing(conn, name_id)
            wait_until(lambda: catcher.count() == 30, timeout=30, what="30 emails")
            sent_by = [w.output().count("emailed user") for w in (one, two)]
        times = [m.at for m in catcher.messages]
        assert all(sent_by), f"both workers sent (emails per worker: {sent_by})"
        # Slots are handed out 100 ms apart; arrival adds each SMTP session's own duration,
        # which varies on a loaded machine, so a one-second window may see a few more. Without
        # the shared limit all 30 arrive within a fraction of a second.
        assert busiest_second(times) <= 13, "about 10 emails/s across both workers"
        assert max(times) - min(times) >= 2.7, "30 emails at 10/s take at least 2.9 s"
    finally:
        catcher.stop()
