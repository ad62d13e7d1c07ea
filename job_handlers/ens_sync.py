"""ENS data sync: `sync-ens-data` for one name, `schedule-daily-ens-sync` for every listed name.

`sync-ens-data` reads the name's resolver, ETH address and text records from the chain
(chain/records.py; no database connection is held meanwhile), then in one transaction writes
`ens_names.metadata` (the record keys, null when unset; other keys are kept),
`resolver_address` and `metadata_updated_at`, and the outcome in
`grails_workers.ens_sync_status`. Names that are expired, unregistered or have no resolver get
their records cleared; invalid and unresolvable names leave `ens_names` alone. Either way the
outcome is recorded and the job succeeds: only a node that does not answer (after the RPC
retries, or with the breaker open, or a rate-limit queue too long) fails the job, which is then
retried with backoff, having written nothing.

Writing `ens_names` makes WAL the consumer reads, but its routes act on `owner_address` only,
so a sync never makes jobs.

A name never has two pending syncs: every sync job carries the queueing lock
`sync-ens-data:<ens_name_id>` (and the same lock, so two never run at once); the daily
schedule skips names whose sync is already pending, as the consumer does.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
from procrastinate import App, JobContext
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.jobs import Job
from procrastinate.retry import BaseRetryStrategy
from pydantic import BaseModel, ConfigDict

from job_handlers import db, metrics
from job_handlers.chain import records
from job_handlers.chain.access import Chain
from job_handlers.errors import PermanentJobError
from job_handlers.settings import WorkerSettings
from job_handlers.tasknames import ENS_SYNC_QUEUE, SCHEDULE_DAILY_ENS_SYNC, SYNC_ENS_DATA

log = logging.getLogger(__name__)
NORMAL_PRIORITY = 0
HIGH_PRIORITY = 10
# ens_names columns the sync writes; metadata_updated_at comes from migration 0006.
WRITES_RECORDS = {records.SYNCED, records.NO_RESOLVER, records.EXPIRED, records.UNREGISTERED}
FRESH_REASONS = {"new-listing", "manual"}  # these do not trust a cached "no resolver"


class SyncArgs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ens_name_id: int
    reason: str = "unknown"
    event_key: str | None = None


def queueing_lock(ens_name_id: int) -> str:
    return f"{SYNC_ENS_DATA}:{ens_name_id}"


def sync_job(ens_name_id: int, reason: str, event_key: str, priority: int) -> Job:
    lock = queueing_lock(ens_name_id)
    return Job(id=None, queue=ENS_SYNC_QUEUE, lock=lock, queueing_lock=lock,
               task_name=SYNC_ENS_DATA, priority=priority, scheduled_at=None,
               task_kwargs={"ens_name_id": ens_name_id, "reason": reason,
                            "event_key": event_key})


async def _write(conn: psycopg.AsyncConnection[Any], ens_name_id: int,
                 found: records.NameRecords, reason: str) -> None:
    if found.outcome in WRITES_RECORDS:
        if not await db.has_column(conn, "ens_names", "metadata_updated_at"):
            raise PermanentJobError("ens_names.metadata_updated_at is missing: run "
                                    "`wal-consumer setup` (migration 0006_ens_sync)")
        await conn.execute(
            "UPDATE ens_names SET metadata = coalesce(metadata, '{}'::jsonb) || %s::jsonb,"
            " resolver_address = %s, metadata_updated_at = now() WHERE id = %s",
            [json.dumps(found.metadata()), found.resolver, ens_name_id])
    await conn.execute(
        "INSERT INTO grails_workers.ens_sync_status (ens_name_id, name, outcome, detail,"
        " resolver_address, reason, checked_at, synced_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, now(), CASE WHEN %s THEN now() END)"
        " ON CONFLICT (ens_name_id) DO UPDATE SET name = EXCLUDED.name,"
        " outcome = EXCLUDED.outcome, detail = EXCLUDED.detail,"
        " resolver_address = EXCLUDED.resolver_address, reason = EXCLUDED.reason,"
        " checked_at = EXCLUDED.checked_at,"
        " synced_at = coalesce(EXCLUDED.synced_at, ens_sync_status.synced_at)",
        [ens_name_id, found.name, found.outcome, found.detail, found.resolver, reason,
         found.outcome == records.SYNCED])


async def sync_name(app: App, chain: Chain, args: SyncArgs) -> dict[str, Any]:
    async with db.pool(app).connection() as conn:
        cur = await conn.execute("SELECT name FROM ens_names WHERE id = %s", [args.ens_name_id])
        row = await cur.fetchone()
    if row is None:
        raise PermanentJobError(f"{SYNC_ENS_DATA}: ens_names row {args.ens_name_id} does not "
                                "exist")
    found = await records.fetch(chain.client(app), row[0],
                                trust_negative_cache=args.reason not in FRESH_REASONS)
    async with db.pool(app).connection() as conn, conn.transaction():
        await _write(conn, args.ens_name_id, found, args.reason)
    metrics.ENS_SYNCS.labels(found.outcome).inc()
    log.info("%s: %s (%s): %s%s", SYNC_ENS_DATA, found.name, args.reason, found.outcome,
             f" ({found.detail})" if found.detail else "")
    return {"name": found.name, "outcome": found.outcome, "resolver": found.resolver,
            "records": sum(v is not None for v in found.metadata().values()),
            "detail": found.detail}


async def defer_syncs(conn: psycopg.AsyncConnection[Any], app: App, jobs: list[Job]) -> int:
    """Defer sync jobs inside the caller's transaction, skipping names whose sync is pending;
    the number deferred."""
    if not jobs:
        return 0
    cur = await conn.execute(
        "SELECT queueing_lock FROM procrastinate_jobs WHERE status = 'todo'"
        " AND queueing_lock = ANY(%s)", [[j.queueing_lock for j in jobs]])
    pending = {r[0] for r in await cur.fetchall()}
    fresh = [j for j in jobs if j.queueing_lock not in pending]
    try:
        async with conn.transaction():
            if fresh:
                await app.job_manager.batch_defer_jobs_async(fresh, connection=conn)
        return len(fresh)
    except AlreadyEnqueued:  # deferred by someone else meanwhile: one by one
        deferred = 0
        for job in fresh:
            try:
                async with conn.transaction():
                    await app.job_manager.batch_defer_jobs_async([job], connection=conn)
                deferred += 1
            except AlreadyEnqueued:
                pass
        return deferred


async def schedule_daily(app: App, settings: WorkerSettings) -> dict[str, int]:
    """A normal-priority sync for every name with an active listing (invalid names excepted),
    in chunks of JOB_ENS_SYNC_CHUNK names, one transaction each."""
    day = datetime.now(UTC).date().isoformat()
    after, names, deferred = 0, 0, 0
    while True:
        async with db.pool(app).connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT DISTINCT l.ens_name_id FROM listings l WHERE l.status = 'active'"
                " AND l.ens_name_id > %s AND NOT EXISTS (SELECT 1 FROM"
                " grails_workers.ens_sync_status s WHERE s.ens_name_id = l.ens_name_id"
                " AND s.outcome = %s) ORDER BY 1 LIMIT %s",
                [after, records.INVALID_NAME, settings.ens_sync_chunk])
            ids = [r[0] for r in await cur.fetchall()]
            if not ids:
                break
            jobs = [sync_job(i, "daily", f"daily:{day}:{i}", NORMAL_PRIORITY) for i in ids]
            deferred += await defer_syncs(conn, app, jobs)
        names += len(ids)
        after = ids[-1]
    log.info("%s: %d name(s) with active listings, %d sync(s) deferred, %d already pending",
             SCHEDULE_DAILY_ENS_SYNC, names, deferred, names - deferred)
    return {"names": names, "deferred": deferred, "already_pending": names - deferred}


async def names_to_ids(conn: psycopg.AsyncConnection[Any], wanted: list[str]
                       ) -> dict[str, int]:
    cur = await conn.execute("SELECT name, id FROM ens_names WHERE lower(name) = ANY(%s)",
                             [[n.lower() for n in wanted]])
    return {str(name).lower(): int(i) for name, i in await cur.fetchall()}


def register(app: App, settings: WorkerSettings, chain: Chain,
             retry: BaseRetryStrategy) -> None:
    @app.task(name=SYNC_ENS_DATA, queue=ENS_SYNC_QUEUE, retry=retry, pass_context=True)
    async def sync_ens_data(context: JobContext, /, **kwargs: Any) -> dict[str, Any]:
        return await sync_name(context.app, chain, SyncArgs.model_validate(kwargs))

    @app.periodic(cron=settings.ens_daily_sync_cron)
    @app.task(name=SCHEDULE_DAILY_ENS_SYNC, queue=ENS_SYNC_QUEUE, pass_context=True,
              priority=HIGH_PRIORITY)
    async def schedule_daily_ens_sync(context: JobContext, timestamp: int) -> dict[str, int]:
        del timestamp  # the names are chosen by state, not by the tick (PITFALLS 24)
        return await schedule_daily(context.app, settings)
