"""Expiry: `expire-orders` marks one order expired at its time; `batch-expire-orders` is the
safety net that expires whatever a missed job left behind.

Both write with guarded statements (`status = 'active' AND expires_at <= now()`), so a job that
runs early, twice, or after the order was sold, cancelled or given a later expiry changes
nothing.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Literal

from procrastinate import App, JobContext
from procrastinate.retry import BaseRetryStrategy
from psycopg import sql
from pydantic import BaseModel, ConfigDict

from job_handlers import db, metrics
from job_handlers.errors import PermanentJobError
from job_handlers.settings import WorkerSettings
from job_handlers.tasknames import BATCH_EXPIRE_ORDERS, EXPIRE_ORDERS, EXPIRY_QUEUE

log = logging.getLogger(__name__)

ORDERS: dict[str, tuple[str, str]] = {  # type -> (table, status that can expire)
    "listing": ("listings", "active"),
    "offer": ("offers", "pending"),
}


class ExpireArgs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["listing", "offer"]
    id: int
    expires_at: datetime | None = None
    event_key: str | None = None


async def _set_expired(conn: Any, table: str) -> sql.Composable:
    updated_at = (sql.SQL(", updated_at = now()") if await db.has_column(conn, table, "updated_at")
                  else sql.SQL(""))
    return sql.SQL("SET status = 'expired'{}").format(updated_at)


CLAIM_DUE_SIBLINGS = """
WITH claimed AS (
    SELECT j.id FROM procrastinate_jobs j
     WHERE j.queue_name = %(queue)s AND j.task_name = %(task)s AND j.status = 'todo'
       AND j.attempts = 0 AND j.lock IS NULL AND j.id <> %(me)s
       AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
       AND CASE j.args->>'type'
             WHEN 'listing' THEN EXISTS (SELECT 1 FROM listings o WHERE o.id = CASE WHEN
                  j.args->>'id' ~ '^[0-9]{1,18}$' THEN (j.args->>'id')::bigint END OFFSET 0)
             WHEN 'offer' THEN EXISTS (SELECT 1 FROM offers o WHERE o.id = CASE WHEN
                  j.args->>'id' ~ '^[0-9]{1,18}$' THEN (j.args->>'id')::bigint END OFFSET 0)
             ELSE false END
     ORDER BY j.priority DESC, j.id
     LIMIT %(limit)s FOR UPDATE OF j SKIP LOCKED)
UPDATE procrastinate_jobs j SET status = 'doing' FROM claimed WHERE j.id = claimed.id
RETURNING j.id, j.args->>'type', (j.args->>'id')::bigint
"""
# OFFSET 0 keeps each EXISTS a per-row index probe: without it the planner may hash the whole
# listings primary key for every claim (57 ms at 200,000 rows, measured, against ~2 ms).

# One claim at a time per process: concurrent claims only block each other and the fetch.
_claiming = asyncio.Lock()


async def _expire_ids(conn: Any, kind: str, ids: list[int]) -> int:
    """The guarded UPDATE for many orders of one kind; records each one's lateness."""
    table, live_status = ORDERS[kind]
    query = sql.SQL(
        "UPDATE {table} {set} WHERE id = ANY(%s) AND status = %s AND expires_at <= now()"
        " RETURNING extract(epoch FROM clock_timestamp() - expires_at)::float8"
    ).format(table=sql.Identifier(table), set=await _set_expired(conn, table))
    cur = await conn.execute(query, [ids, live_status])
    lateness = [row[0] for row in await cur.fetchall()]
    histogram = metrics.EXPIRY_LATENESS.labels(kind)
    for late in lateness:
        histogram.observe(max(0.0, late))
    return len(lateness)


async def _expire_due_siblings(conn: Any, job_id: int, batch: int) -> tuple[int, int]:
    """Claim other due expire-orders jobs and do them in this transaction.

    A stock procrastinate worker fetches one job per query; at thousands of expiries a
    minute the round trips, not the UPDATEs, are the cost. Only first attempts whose order
    exists are claimed, so a poisoned job is left to fail on its own. Claimed jobs go
    todo -> doing -> succeeded through procrastinate's own function, so their events are the
    ones a worker would have written. Any error rolls the claim back to the savepoint: the
    siblings stay queued and run one by one.
    """
    try:
        async with conn.transaction():  # a savepoint inside the job's transaction
            cur = await conn.execute(CLAIM_DUE_SIBLINGS, {
                "queue": EXPIRY_QUEUE, "task": EXPIRE_ORDERS, "me": job_id, "limit": batch})
            claimed = await cur.fetchall()
            if not claimed:
                return 0, 0
            expired = 0
            for kind in ORDERS:
                ids = [order_id for _, k, order_id in claimed if k == kind]
                if ids:
                    expired += await _expire_ids(conn, kind, ids)
            await conn.execute(
                "SELECT procrastinate_finish_job_v1(id, 'succeeded', false)"
                " FROM unnest(%s::bigint[]) AS id", [[row[0] for row in claimed]])
        metrics.JOBS.labels(EXPIRE_ORDERS, "succeeded").inc(len(claimed))
        return len(claimed), expired
    except Exception:
        log.exception("claiming due expire-orders jobs with job %s failed; they stay queued",
                      job_id)
        return 0, 0


async def expire_one(app: App, args: ExpireArgs, job_id: int | None = None,
                     batch: int = 0) -> str:
    table, live_status = ORDERS[args.type]
    async with db.pool(app).connection() as conn:
        expired = await _expire_ids(conn, args.type, [args.id])
        if expired:
            log.debug("expired %s %d", args.type, args.id)
        else:
            cur = await conn.execute(
                sql.SQL("SELECT status, expires_at <= now() FROM {} WHERE id = %s").format(
                    sql.Identifier(table)), [args.id])
            current = await cur.fetchone()
            if current is None:
                raise PermanentJobError(f"{EXPIRE_ORDERS}: {args.type} {args.id} does not exist")
            status, due = current
            reason = f"status is {status!r}" if status != live_status else (
                "expires_at has not passed (it moved later, or no expiry)" if not due
                else "raced")
            log.info("%s %d not expired: %s", args.type, args.id, reason)
        if job_id is not None and batch and not _claiming.locked():
            async with _claiming:
                siblings, sibling_expired = await _expire_due_siblings(conn, job_id, batch)
            if siblings:
                log.info("expire-orders job %s also ran %d due sibling job(s): %d order(s) "
                         "expired", job_id, siblings, sibling_expired)
    return "expired" if expired else "unchanged"


async def expire_overdue(app: App, settings: WorkerSettings) -> dict[str, int]:
    """Expire every order overdue by more than the grace period, a chunk per transaction."""
    caught: dict[str, int] = {}
    async with db.pool(app).connection() as conn:
        await conn.set_autocommit(True)
        for kind, (table, live_status) in ORDERS.items():
            query = sql.SQL(
                "WITH due AS (SELECT id FROM {table} WHERE status = %(status)s"
                " AND expires_at <= now() - make_interval(secs => %(grace)s)"
                " ORDER BY expires_at LIMIT %(chunk)s FOR UPDATE SKIP LOCKED)"
                " UPDATE {table} t {set} FROM due WHERE t.id = due.id RETURNING t.id"
            ).format(table=sql.Identifier(table), set=await _set_expired(conn, table))
            total, sample = 0, list[int]()
            while True:
                cur = await conn.execute(query, {"status": live_status, "chunk":
                                                 settings.expire_chunk,
                                                 "grace": settings.expire_grace_s})
                ids = [r[0] for r in await cur.fetchall()]
                total += len(ids)
                sample.extend(ids[: 10 - len(sample)])
                if len(ids) < settings.expire_chunk:
                    break
            caught[kind] = total
            if total:
                metrics.BATCH_NET_CATCHES.labels(kind).inc(total)
                log.warning(
                    "safety net expired %d %s(s) overdue by more than %.0f s: their scheduled "
                    "expire-orders jobs were missed (ids %s%s)", total, kind,
                    settings.expire_grace_s, sample, "..." if total > len(sample) else "")
    return caught


def register(app: App, settings: WorkerSettings, retry: BaseRetryStrategy) -> None:
    @app.task(name=EXPIRE_ORDERS, queue=EXPIRY_QUEUE, retry=retry, pass_context=True)
    async def expire_orders(context: JobContext, /, **kwargs: Any) -> str:
        return await expire_one(context.app, ExpireArgs.model_validate(kwargs),
                                context.job.id, settings.expire_batch)

    @app.periodic(cron=settings.batch_expire_cron)
    @app.task(name=BATCH_EXPIRE_ORDERS, queue=EXPIRY_QUEUE, retry=retry, pass_context=True)
    async def batch_expire_orders(context: JobContext, timestamp: int) -> dict[str, int]:
        del timestamp  # the net works on "overdue now", never on the tick it was given
        return await expire_overdue(context.app, settings)
