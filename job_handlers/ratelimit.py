"""A request rate that holds across every worker process: one row per limit in PostgreSQL.

The row keeps the time the next request may be made (the generic cell rate algorithm). Taking
`n` tokens is one guarded UPDATE that reserves the next free slot and moves the row on by
`n / rate` seconds; the caller then sleeps until its slot. Concurrent callers in any process are
serialised by the row lock for the length of that one statement only, so they queue up in slot
order without holding anything while they wait. `burst` tokens may be taken at once after a
quiet spell. When the wait would exceed `max_wait_s`, nothing is reserved and `RateLimited`
says when to come back, so a job can retry later instead of holding a worker slot.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import pq

from job_handlers import metrics
from job_handlers.errors import RetryableJobError

RESERVE = """
WITH clock AS (SELECT clock_timestamp() AS now)
UPDATE grails_workers.rate_limits AS r
   SET next_free_at = greatest(r.next_free_at, clock.now - %(burst_window)s)
                      + %(tokens)s * %(interval)s
  FROM clock
 WHERE r.key = %(key)s
   AND greatest(r.next_free_at, clock.now - %(burst_window)s) - clock.now <= %(max_wait)s
RETURNING greatest(extract(epoch FROM
                   r.next_free_at - %(tokens)s * %(interval)s - clock.now), 0)::float8
"""
CREATE = """
INSERT INTO grails_workers.rate_limits (key, next_free_at) VALUES (%s, clock_timestamp())
ON CONFLICT (key) DO NOTHING
"""
NEXT_FREE = """
SELECT extract(epoch FROM next_free_at - clock_timestamp())::float8
  FROM grails_workers.rate_limits WHERE key = %s
"""


class RateLimited(RetryableJobError):
    """The limit's queue is longer than a job should wait: retry after `retry_after_s`."""

    def __init__(self, key: str, retry_after_s: float):
        super().__init__(f"rate limit {key!r}: the next free slot is {retry_after_s:.1f} s away;"
                         " retrying later", retry_after_s=retry_after_s)
        self.key = key


class RateLimiter:
    def __init__(self, key: str, rate_per_s: float, burst: int = 1, max_wait_s: float = 30.0):
        if rate_per_s <= 0:
            raise ValueError(f"rate limit {key!r}: rate must be positive, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"rate limit {key!r}: burst must be at least 1, got {burst}")
        self.key = key
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_wait_s = max_wait_s
        self._row_exists = False

    async def acquire(self, conn: psycopg.AsyncConnection[Any], tokens: int = 1) -> float:
        """Wait for `tokens` requests' worth of the limit; the seconds waited.

        `conn` must not be inside a transaction: the reservation commits at once so no other
        process waits on this one's row lock.
        """
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            raise RuntimeError(f"rate limit {self.key!r}: acquire() needs a connection outside "
                               "a transaction (the row lock would be held until it ends)")
        interval = 1.0 / self.rate_per_s
        params = {
            "key": self.key, "tokens": tokens,
            "interval": _seconds(interval), "burst_window": _seconds((self.burst - 1) * interval),
            "max_wait": _seconds(self.max_wait_s),
        }
        if not self._row_exists:
            # committed on its own: a reservation must never run while the row is uncommitted
            # (its snapshot would not see the row at all)
            async with conn.transaction():
                await conn.execute(CREATE, [self.key])
            self._row_exists = True
        async with conn.transaction():
            cur = await conn.execute(RESERVE, params)
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(NEXT_FREE, [self.key])
                ahead = await cur.fetchone()
                raise RateLimited(self.key, max(float(ahead[0]) if ahead else 0.0, 0.0))
        wait: float = row[0]
        metrics.RATE_LIMIT_WAIT.labels(self.key).observe(wait)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
